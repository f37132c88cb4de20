//! JSON records (one object per Kafka message) decoded against a pipeline
//! schema.
//!
//! The decoder walks the JSON once with serde, following a trie of the
//! configured field paths: fields no column reads are skipped without being
//! materialised, and strings without escapes are borrowed from the message
//! bytes, so a row costs no allocation beyond its cell vector. Hostile
//! nesting cannot overflow the stack: the decoder recurses only along the
//! configured paths, and serde_json skips every other value iteratively
//! (tested at 500,000 levels); its recursion limit (`too_deep`) backs that up.

use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::HashSet;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use sluice_config::{ColumnType, Literal, PipelineConfig, TimeUnit, TimestampFormat};
use sluice_segments::Datum;

use crate::timestamp::parse_rfc3339;

/// Why a record is bad. The names are the metric labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BadRecordKind {
    Empty,
    Oversized,
    InvalidUtf8,
    InvalidJson,
    TooDeep,
    NotAnObject,
    DuplicateKey,
    MissingRequired,
    NullInRequired,
    WrongType,
    OutOfRange,
    InvalidTimestamp,
}

impl BadRecordKind {
    pub const ALL: [BadRecordKind; 12] = [
        BadRecordKind::Empty,
        BadRecordKind::Oversized,
        BadRecordKind::InvalidUtf8,
        BadRecordKind::InvalidJson,
        BadRecordKind::TooDeep,
        BadRecordKind::NotAnObject,
        BadRecordKind::DuplicateKey,
        BadRecordKind::MissingRequired,
        BadRecordKind::NullInRequired,
        BadRecordKind::WrongType,
        BadRecordKind::OutOfRange,
        BadRecordKind::InvalidTimestamp,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            BadRecordKind::Empty => "empty",
            BadRecordKind::Oversized => "oversized",
            BadRecordKind::InvalidUtf8 => "invalid_utf8",
            BadRecordKind::InvalidJson => "invalid_json",
            BadRecordKind::TooDeep => "too_deep",
            BadRecordKind::NotAnObject => "not_an_object",
            BadRecordKind::DuplicateKey => "duplicate_key",
            BadRecordKind::MissingRequired => "missing_required",
            BadRecordKind::NullInRequired => "null_in_required",
            BadRecordKind::WrongType => "wrong_type",
            BadRecordKind::OutOfRange => "out_of_range",
            BadRecordKind::InvalidTimestamp => "invalid_timestamp",
        }
    }
}

/// A record that cannot become a row: why, and the column concerned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}{}: {detail}", kind.as_str(), column.as_ref().map(|c| format!(" (column `{c}`)")).unwrap_or_default())]
pub struct BadRecord {
    pub kind: BadRecordKind,
    pub column: Option<String>,
    pub detail: String,
}

impl BadRecord {
    fn new(kind: BadRecordKind, detail: impl Into<String>) -> Self {
        Self { kind, column: None, detail: detail.into() }
    }

    fn column(kind: BadRecordKind, column: &str, detail: impl Into<String>) -> Self {
        Self { kind, column: Some(column.to_string()), detail: detail.into() }
    }
}

/// A decoded row, its strings borrowed from the message where possible.
#[derive(Debug, Clone, PartialEq)]
pub struct Row<'a> {
    cells: Vec<Cell<'a>>,
}

#[derive(Debug, Clone, PartialEq)]
enum Cell<'a> {
    Null,
    Bool(bool),
    Int32(i32),
    Int64(i64),
    Float32(f32),
    Float64(f64),
    Str(Cow<'a, str>),
    Timestamp(i64),
}

impl Row<'_> {
    /// The row as segment values, in schema order.
    pub fn datums(&self) -> Vec<Datum<'_>> {
        self.cells
            .iter()
            .map(|cell| match cell {
                Cell::Null => Datum::Null,
                Cell::Bool(v) => Datum::Bool(*v),
                Cell::Int32(v) => Datum::Int32(*v),
                Cell::Int64(v) => Datum::Int64(*v),
                Cell::Float32(v) => Datum::Float32(*v),
                Cell::Float64(v) => Datum::Float64(*v),
                Cell::Str(v) => Datum::Str(v),
                Cell::Timestamp(v) => Datum::Timestamp(*v),
            })
            .collect()
    }
}

#[derive(Debug, Clone)]
struct ColumnDecoder {
    name: String,
    ty: ColumnType,
    nullable: bool,
    unit: TimeUnit,
    format: TimestampFormat,
    default: Option<Cell<'static>>,
}

/// A node of the field-path trie.
#[derive(Debug, Default)]
struct PathNode {
    /// Columns whose path ends here.
    columns: Vec<usize>,
    /// Sorted by name. Looked up for every key of every record, so each
    /// child carries its name's first eight bytes as an integer: a lookup
    /// among a few children is a scan of integer compares, and the bytes
    /// are compared only for the one child whose prefix and length match.
    children: Vec<PathChild>,
}

#[derive(Debug)]
struct PathChild {
    prefix: u64,
    name: String,
    node: PathNode,
}

/// The first eight bytes of a key, zero-padded, as one integer.
fn prefix_of(key: &[u8]) -> u64 {
    let mut bytes = [0u8; 8];
    let n = key.len().min(8);
    bytes[..n].copy_from_slice(&key[..n]);
    u64::from_le_bytes(bytes)
}

impl PathNode {
    /// Up to this many children are scanned; more are binary-searched.
    const SCAN: usize = 16;

    fn child(&self, key: &str) -> Option<&PathNode> {
        if self.children.len() > Self::SCAN {
            let i = self.children.binary_search_by(|c| c.name.as_str().cmp(key)).ok()?;
            return Some(&self.children[i].node);
        }
        let prefix = prefix_of(key.as_bytes());
        self.children
            .iter()
            .find(|c| c.prefix == prefix && c.name.len() == key.len() && (key.len() <= 8 || c.name == key))
            .map(|c| &c.node)
    }

    fn child_mut(&mut self, key: &str) -> &mut PathNode {
        let i = match self.children.binary_search_by(|c| c.name.as_str().cmp(key)) {
            Ok(i) => i,
            Err(i) => {
                let child =
                    PathChild { prefix: prefix_of(key.as_bytes()), name: key.to_string(), node: PathNode::default() };
                self.children.insert(i, child);
                i
            }
        };
        &mut self.children[i].node
    }
}

/// The keys of one object seen so far, for duplicate detection: a vector
/// while the object is small (the common case, no hashing), a hash set past
/// [`Seen::FEW`] keys so that huge objects stay linear.
enum Seen<'de> {
    Few(Vec<Cow<'de, str>>),
    Many(HashSet<Cow<'de, str>>),
}

impl<'de> Seen<'de> {
    const FEW: usize = 16;

    fn contains(&self, key: &str) -> bool {
        match self {
            Seen::Few(keys) => keys.iter().any(|k| k == key),
            Seen::Many(keys) => keys.contains(key),
        }
    }

    fn insert(&mut self, key: Cow<'de, str>) {
        match self {
            Seen::Few(keys) if keys.len() >= Self::FEW => {
                let mut set: HashSet<Cow<'de, str>> = keys.drain(..).collect();
                set.insert(key);
                *self = Seen::Many(set);
            }
            Seen::Few(keys) => keys.push(key),
            Seen::Many(keys) => {
                keys.insert(key);
            }
        }
    }
}

pub struct Decoder {
    columns: Vec<ColumnDecoder>,
    root: PathNode,
    max_message_bytes: usize,
}

impl Decoder {
    /// A decoder for a validated pipeline.
    pub fn new(pipeline: &PipelineConfig) -> Self {
        let mut root = PathNode::default();
        let mut columns = Vec::new();
        for (i, column) in pipeline.schema.columns.iter().enumerate() {
            let mut node = &mut root;
            for segment in column.json_path() {
                node = node.child_mut(segment);
            }
            node.columns.push(i);
            let mut decoder = ColumnDecoder {
                name: column.name.clone(),
                ty: column.data_type,
                nullable: column.nullable,
                unit: column.time_unit(),
                format: column.timestamp_format(),
                default: None,
            };
            // Validation guarantees a default fits its column; convert it once.
            decoder.default = column.default.as_ref().and_then(|d| decoder.convert(Raw::from_literal(d)).ok());
            columns.push(decoder);
        }
        Self { columns, root, max_message_bytes: pipeline.bad_records.max_message_bytes.as_u64() as usize }
    }

    /// Decodes one message.
    pub fn decode<'a>(&self, bytes: &'a [u8]) -> Result<Row<'a>, BadRecord> {
        if bytes.len() > self.max_message_bytes {
            return Err(BadRecord::new(
                BadRecordKind::Oversized,
                format!("{} bytes, more than bad_records.max_message_bytes = {}", bytes.len(), self.max_message_bytes),
            ));
        }
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Err(BadRecord::new(BadRecordKind::Empty, "the message is empty"));
        }
        let text = std::str::from_utf8(bytes).map_err(|e| BadRecord::new(BadRecordKind::InvalidUtf8, e.to_string()))?;
        let mut raw: Vec<Option<Raw<'a>>> = vec![None; self.columns.len()];
        let problem = RefCell::new(None);
        let mut de = serde_json::Deserializer::from_str(text);
        let parsed =
            (ObjectSeed { node: &self.root, out: &mut raw, problem: &problem, top: true }).deserialize(&mut de);
        if let Some(bad) = problem.into_inner() {
            return Err(bad);
        }
        parsed.and_then(|_| de.end()).map_err(|e| {
            if e.to_string().contains("recursion limit exceeded") {
                BadRecord::new(BadRecordKind::TooDeep, "nested deeper than 128 levels")
            } else {
                BadRecord::new(BadRecordKind::InvalidJson, e.to_string())
            }
        })?;
        // Sized up front: collecting `Result`s gives `Vec` no size hint, so it
        // would grow (and reallocate) while filling.
        let mut cells = Vec::with_capacity(self.columns.len());
        for (column, raw) in self.columns.iter().zip(raw) {
            cells.push(column.cell(raw)?);
        }
        Ok(Row { cells })
    }
}

impl ColumnDecoder {
    fn cell<'a>(&self, raw: Option<Raw<'a>>) -> Result<Cell<'a>, BadRecord> {
        match raw {
            None | Some(Raw::Null) => {
                if let Some(default) = &self.default {
                    return Ok(default.clone());
                }
                if self.nullable {
                    return Ok(Cell::Null);
                }
                Err(match raw {
                    None => {
                        BadRecord::column(BadRecordKind::MissingRequired, &self.name, "the required field is missing")
                    }
                    _ => BadRecord::column(BadRecordKind::NullInRequired, &self.name, "the required field is null"),
                })
            }
            Some(raw) => self.convert(raw),
        }
    }

    fn convert<'a>(&self, raw: Raw<'a>) -> Result<Cell<'a>, BadRecord> {
        let wrong = |found: &str| {
            BadRecord::column(
                BadRecordKind::WrongType,
                &self.name,
                format!("expected {}, found {found}", self.expected()),
            )
        };
        let range = |value: String| {
            BadRecord::column(
                BadRecordKind::OutOfRange,
                &self.name,
                format!("{value} does not fit a {} column", self.ty),
            )
        };
        Ok(match (self.ty, raw) {
            (_, Raw::Null) => Cell::Null,
            (ColumnType::String, Raw::Str(s)) => Cell::Str(s),
            (ColumnType::Bool, Raw::Bool(b)) => Cell::Bool(b),
            (ColumnType::Int32, Raw::I64(v)) => Cell::Int32(i32::try_from(v).map_err(|_| range(v.to_string()))?),
            (ColumnType::Int32, Raw::U64(v)) => Cell::Int32(i32::try_from(v).map_err(|_| range(v.to_string()))?),
            (ColumnType::Int64, Raw::I64(v)) => Cell::Int64(v),
            (ColumnType::Int64, Raw::U64(v)) => Cell::Int64(i64::try_from(v).map_err(|_| range(v.to_string()))?),
            (ColumnType::Float64, Raw::I64(v)) => Cell::Float64(v as f64),
            (ColumnType::Float64, Raw::U64(v)) => Cell::Float64(v as f64),
            (ColumnType::Float64, Raw::F64(v)) => Cell::Float64(v),
            (ColumnType::Float32, Raw::I64(v)) => Cell::Float32(v as f32),
            (ColumnType::Float32, Raw::U64(v)) => Cell::Float32(v as f32),
            (ColumnType::Float32, Raw::F64(v)) => {
                if v.is_finite() && v.abs() > f64::from(f32::MAX) {
                    return Err(range(v.to_string()));
                }
                Cell::Float32(v as f32)
            }
            (ColumnType::Timestamp, raw) => match (self.format, raw) {
                (TimestampFormat::Epoch, Raw::I64(v)) => Cell::Timestamp(v),
                (TimestampFormat::Epoch, Raw::U64(v)) => {
                    Cell::Timestamp(i64::try_from(v).map_err(|_| range(v.to_string()))?)
                }
                (TimestampFormat::Rfc3339, Raw::Str(s)) => {
                    Cell::Timestamp(parse_rfc3339(&s, self.unit).ok_or_else(|| {
                        BadRecord::column(
                            BadRecordKind::InvalidTimestamp,
                            &self.name,
                            format!("{s:?} is not an RFC 3339 timestamp"),
                        )
                    })?)
                }
                (_, raw) => return Err(wrong(raw.kind())),
            },
            (_, raw) => return Err(wrong(raw.kind())),
        })
    }

    fn expected(&self) -> &'static str {
        match (self.ty, self.format) {
            (ColumnType::String, _) => "a string",
            (ColumnType::Bool, _) => "true or false",
            (ColumnType::Int32 | ColumnType::Int64, _) => "an integer",
            (ColumnType::Float32 | ColumnType::Float64, _) => "a number",
            (ColumnType::Timestamp, TimestampFormat::Epoch) => "an integer epoch timestamp",
            (ColumnType::Timestamp, TimestampFormat::Rfc3339) => "an RFC 3339 timestamp string",
        }
    }
}

/// A JSON value as found, before conversion to the column type.
#[derive(Debug, Clone, PartialEq)]
enum Raw<'a> {
    Null,
    Bool(bool),
    I64(i64),
    U64(u64),
    F64(f64),
    Str(Cow<'a, str>),
    Object,
    Array,
}

impl Raw<'_> {
    fn kind(&self) -> &'static str {
        match self {
            Raw::Null => "null",
            Raw::Bool(_) => "a boolean",
            Raw::I64(_) | Raw::U64(_) => "an integer",
            Raw::F64(_) => "a non-integer number",
            Raw::Str(_) => "a string",
            Raw::Object => "an object",
            Raw::Array => "an array",
        }
    }

    fn from_literal(literal: &Literal) -> Raw<'static> {
        match literal {
            Literal::Bool(v) => Raw::Bool(*v),
            Literal::Int(v) => Raw::I64(*v),
            Literal::Float(v) => Raw::F64(*v),
            Literal::String(v) => Raw::Str(Cow::Owned(v.clone())),
        }
    }
}

/// A scalar value (objects and arrays are consumed and reported as such).
struct ScalarSeed;

impl<'de> DeserializeSeed<'de> for ScalarSeed {
    type Value = Raw<'de>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Raw<'de>, D::Error> {
        d.deserialize_any(ScalarVisitor)
    }
}

struct ScalarVisitor;

impl<'de> Visitor<'de> for ScalarVisitor {
    type Value = Raw<'de>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_unit<E>(self) -> Result<Raw<'de>, E> {
        Ok(Raw::Null)
    }
    fn visit_none<E>(self) -> Result<Raw<'de>, E> {
        Ok(Raw::Null)
    }
    fn visit_bool<E>(self, v: bool) -> Result<Raw<'de>, E> {
        Ok(Raw::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Raw<'de>, E> {
        Ok(Raw::I64(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Raw<'de>, E> {
        Ok(Raw::U64(v))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Raw<'de>, E> {
        Ok(Raw::F64(v))
    }
    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Raw<'de>, E> {
        Ok(Raw::Str(Cow::Borrowed(v)))
    }
    fn visit_str<E>(self, v: &str) -> Result<Raw<'de>, E> {
        Ok(Raw::Str(Cow::Owned(v.to_string())))
    }
    fn visit_string<E>(self, v: String) -> Result<Raw<'de>, E> {
        Ok(Raw::Str(Cow::Owned(v)))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Raw<'de>, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Raw::Object)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Raw<'de>, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Raw::Array)
    }
}

/// A key, borrowed when it has no escapes.
struct KeySeed;

impl<'de> DeserializeSeed<'de> for KeySeed {
    type Value = Cow<'de, str>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Cow<'de, str>, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Cow<'de, str>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a key")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Cow<'de, str>, E> {
                Ok(Cow::Borrowed(v))
            }
            fn visit_str<E>(self, v: &str) -> Result<Cow<'de, str>, E> {
                Ok(Cow::Owned(v.to_string()))
            }
        }
        d.deserialize_str(KeyVisitor)
    }
}

/// An object along the configured paths: known keys are decoded (scalars
/// for leaves, recursion for inner nodes), unknown ones skipped.
struct ObjectSeed<'t, 'o, 'a> {
    node: &'t PathNode,
    out: &'o mut Vec<Option<Raw<'a>>>,
    problem: &'t RefCell<Option<BadRecord>>,
    /// The message's top level, which must be an object.
    top: bool,
}

impl<'de: 'a, 'a> DeserializeSeed<'de> for ObjectSeed<'_, '_, 'a> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de: 'a, 'a> Visitor<'de> for ObjectSeed<'_, '_, 'a> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut seen = Seen::Few(Vec::new());
        while let Some(key) = map.next_key_seed(KeySeed)? {
            if seen.contains(&key) {
                *self.problem.borrow_mut() = Some(BadRecord::new(
                    BadRecordKind::DuplicateKey,
                    format!("the key {key:?} appears twice in one object"),
                ));
                return Err(de::Error::custom("duplicate key"));
            }
            match self.node.child(&key) {
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
                Some(child) if child.children.is_empty() => {
                    let raw = map.next_value_seed(ScalarSeed)?;
                    for &column in &child.columns {
                        self.out[column] = Some(raw.clone());
                    }
                }
                Some(child) if child.columns.is_empty() => {
                    map.next_value_seed(ObjectSeed { node: child, out: self.out, problem: self.problem, top: false })?;
                }
                Some(child) => {
                    // A path that is both a column and the parent of others
                    // (`a` and `a.b`): rare, so decode generically.
                    let value: serde_json::Value = map.next_value()?;
                    let raw = raw_of(&value);
                    for &column in &child.columns {
                        self.out[column] = Some(raw.clone());
                    }
                    extract(child, &value, self.out);
                }
            }
            seen.insert(key);
        }
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        if self.top {
            return self.not_an_object("an array");
        }
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(())
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        if self.top { self.not_an_object("null") } else { Ok(()) }
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        if self.top { self.not_an_object("a boolean") } else { Ok(()) }
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        if self.top { self.not_an_object("a number") } else { Ok(()) }
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        if self.top { self.not_an_object("a number") } else { Ok(()) }
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        if self.top { self.not_an_object("a number") } else { Ok(()) }
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        if self.top { self.not_an_object("a string") } else { Ok(()) }
    }
}

impl ObjectSeed<'_, '_, '_> {
    fn not_an_object<E: de::Error>(&self, found: &str) -> Result<(), E> {
        *self.problem.borrow_mut() =
            Some(BadRecord::new(BadRecordKind::NotAnObject, format!("the message is {found}, not a JSON object")));
        Err(E::custom("not an object"))
    }
}

fn raw_of(value: &serde_json::Value) -> Raw<'static> {
    match value {
        serde_json::Value::Null => Raw::Null,
        serde_json::Value::Bool(b) => Raw::Bool(*b),
        serde_json::Value::Number(n) => n
            .as_i64()
            .map(Raw::I64)
            .or_else(|| n.as_u64().map(Raw::U64))
            .unwrap_or_else(|| Raw::F64(n.as_f64().unwrap_or(f64::NAN))),
        serde_json::Value::String(s) => Raw::Str(Cow::Owned(s.clone())),
        serde_json::Value::Array(_) => Raw::Array,
        serde_json::Value::Object(_) => Raw::Object,
    }
}

fn extract(node: &PathNode, value: &serde_json::Value, out: &mut [Option<Raw<'_>>]) {
    let serde_json::Value::Object(map) = value else { return };
    for PathChild { name: key, node: child, .. } in &node.children {
        if let Some(v) = map.get(key) {
            for &column in &child.columns {
                out[column] = Some(raw_of(v));
            }
            extract(child, v, out);
        }
    }
}
