//! JSON records (one object per Kafka message) decoded against a pipeline
//! schema.
//!
//! simd-json parses the message (a copy in a reused scratch buffer: it parses
//! in place) into a flat tape, which the decoder walks once following a trie
//! of the configured field paths: values no column reads are skipped by
//! their span on the tape, and strings borrow from the scratch buffer
//! (escapes are undone in place), so a row costs no allocation beyond its
//! cell vector. simd-json was measured against serde_json for this
//! (`benches/decode.rs`, figures in docs/PERFORMANCE.md) and is the faster.
//! Hostile nesting cannot overflow the stack: simd-json builds the tape
//! without recursion, and the decoder recurses only along the configured
//! paths (tested at 500,000 levels).

use std::borrow::Cow;
use std::collections::HashSet;

use simd_json::{Node, StaticNode};
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
    /// Sorted by key: looked up by binary search for every key of every
    /// record, which is cheaper than hashing short keys.
    children: Vec<(String, PathNode)>,
}

impl PathNode {
    fn child(&self, key: &str) -> Option<&PathNode> {
        self.children.binary_search_by(|(k, _)| k.as_str().cmp(key)).ok().map(|i| &self.children[i].1)
    }

    fn child_mut(&mut self, key: &str) -> &mut PathNode {
        let i = match self.children.binary_search_by(|(k, _)| k.as_str().cmp(key)) {
            Ok(i) => i,
            Err(i) => {
                self.children.insert(i, (key.to_string(), PathNode::default()));
                i
            }
        };
        &mut self.children[i].1
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

    /// Decodes one message. simd-json parses in place, so the message is
    /// copied into `scratch` first; the row's strings borrow from there (an
    /// escaped string is unescaped in place, never allocated).
    pub fn decode<'s>(&self, bytes: &[u8], scratch: &'s mut Scratch) -> Result<Row<'s>, BadRecord> {
        if bytes.len() > self.max_message_bytes {
            return Err(BadRecord::new(
                BadRecordKind::Oversized,
                format!("{} bytes, more than bad_records.max_message_bytes = {}", bytes.len(), self.max_message_bytes),
            ));
        }
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Err(BadRecord::new(BadRecordKind::Empty, "the message is empty"));
        }
        std::str::from_utf8(bytes).map_err(|e| BadRecord::new(BadRecordKind::InvalidUtf8, e.to_string()))?;
        scratch.input.clear();
        scratch.input.extend_from_slice(bytes);
        let tape = simd_json::Deserializer::from_slice_with_buffers(&mut scratch.input, &mut scratch.buffers)
            .map_err(|e| BadRecord::new(BadRecordKind::InvalidJson, e.to_string()))?
            .into_tape();
        let nodes = tape.0;
        match nodes.first() {
            Some(Node::Object { .. }) => {}
            Some(other) => {
                let found = raw_at(std::slice::from_ref(other), 0).kind();
                return Err(BadRecord::new(
                    BadRecordKind::NotAnObject,
                    format!("the message is {found}, not a JSON object"),
                ));
            }
            None => return Err(BadRecord::new(BadRecordKind::Empty, "the message is empty")),
        }
        let mut raw: Vec<Option<Raw<'s>>> = vec![None; self.columns.len()];
        walk(&self.root, &nodes, 0, &mut raw)?;
        let cells =
            self.columns.iter().zip(raw).map(|(column, raw)| column.cell(raw)).collect::<Result<Vec<_>, _>>()?;
        Ok(Row { cells })
    }
}

/// Per-thread buffers the decoder parses in (reused across messages).
#[derive(Default)]
pub struct Scratch {
    input: Vec<u8>,
    buffers: simd_json::Buffers,
}

/// Nodes the value at `nodes[0]` spans on the tape, itself included.
fn span(node: &Node<'_>) -> usize {
    match node {
        Node::Object { count, .. } | Node::Array { count, .. } => count + 1,
        _ => 1,
    }
}

/// The value at `nodes[at]`, as found.
fn raw_at<'s>(nodes: &[Node<'s>], at: usize) -> Raw<'s> {
    match nodes[at] {
        Node::String(s) => Raw::Str(Cow::Borrowed(s)),
        Node::Object { .. } => Raw::Object,
        Node::Array { .. } => Raw::Array,
        Node::Static(StaticNode::Null) => Raw::Null,
        Node::Static(StaticNode::Bool(v)) => Raw::Bool(v),
        Node::Static(StaticNode::I64(v)) => Raw::I64(v),
        Node::Static(StaticNode::U64(v)) => Raw::U64(v),
        Node::Static(StaticNode::F64(v)) => Raw::F64(v),
    }
}

/// Fills the columns whose paths run through the object at `nodes[at]`,
/// rejecting duplicate keys in every object it reads. Unread values are
/// skipped by their span, so their depth costs nothing; recursion follows
/// the configured paths only.
fn walk<'s>(path: &PathNode, nodes: &[Node<'s>], at: usize, out: &mut [Option<Raw<'s>>]) -> Result<(), BadRecord> {
    let invalid = || BadRecord::new(BadRecordKind::InvalidJson, "malformed object");
    let Some(&Node::Object { len, .. }) = nodes.get(at) else { return Err(invalid()) };
    let mut seen = Seen::Few(Vec::new());
    let mut i = at + 1;
    for _ in 0..len {
        let Some(&Node::String(key)) = nodes.get(i) else { return Err(invalid()) };
        if seen.contains(key) {
            return Err(BadRecord::new(
                BadRecordKind::DuplicateKey,
                format!("the key {key:?} appears twice in one object"),
            ));
        }
        let value = i + 1;
        let Some(node) = nodes.get(value) else { return Err(invalid()) };
        if let Some(child) = path.child(key) {
            if !child.columns.is_empty() {
                let raw = raw_at(nodes, value);
                for &column in &child.columns {
                    out[column] = Some(raw.clone());
                }
            }
            if !child.children.is_empty() && matches!(node, Node::Object { .. }) {
                walk(child, nodes, value, out)?;
            }
        }
        seen.insert(Cow::Borrowed(key));
        i = value + span(node);
    }
    Ok(())
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
