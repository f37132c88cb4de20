//! JSON records (one object per Kafka message) decoded against a pipeline
//! schema.
//!
//! The message is read once, front to back, by [`Reader`], following a trie
//! of the configured field paths: a key no column reads has its value
//! skipped (its grammar checked, nothing decoded), a value a column reads is
//! converted to the column's type as it is found, and strings without
//! escapes are borrowed from the message bytes. Hostile nesting cannot
//! overflow the stack: the decoder recurses only along the configured paths
//! and the reader skips every other value iteratively (tested at 500,000
//! levels).
//!
//! A record's problems are reported as one [`BadRecord`], the first of:
//! text that is not JSON (or a key the schema reads named twice in one
//! object, found as it is read), then,
//! in schema order, a column's wrong type, range or missing value. So a
//! record that is not JSON is never reported as a type error, whatever the
//! order of its fields.

use std::borrow::Cow;

use sluice_config::{ColumnType, Literal, PipelineConfig, TimeUnit, TimestampFormat};
use sluice_segments::Datum;

use crate::bad_record::{BadRecord, BadRecordKind};
use crate::path::{Key, Named, PathNode};
use crate::reader::{Raw, Reader, SyntaxError};
use crate::timestamp::parse_rfc3339;

/// A decoded row, its strings borrowed from the message where possible.
#[derive(Debug, Clone, PartialEq)]
pub struct Row<'a> {
    cells: Vec<Cell<'a>>,
}

#[derive(Debug, Clone, PartialEq)]
enum Cell<'a> {
    /// Not (yet) found in the message: only while a message is read.
    Missing,
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
        self.cells.iter().map(Cell::datum).collect()
    }
}

impl Cell<'_> {
    fn datum(&self) -> Datum<'_> {
        match self {
            Cell::Missing | Cell::Null => Datum::Null,
            Cell::Bool(v) => Datum::Bool(*v),
            Cell::Int32(v) => Datum::Int32(*v),
            Cell::Int64(v) => Datum::Int64(*v),
            Cell::Float32(v) => Datum::Float32(*v),
            Cell::Float64(v) => Datum::Float64(*v),
            Cell::Str(v) => Datum::Str(v),
            Cell::Timestamp(v) => Datum::Timestamp(*v),
        }
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
            root.insert(column.field_path()).columns.push(i);
            let mut decoder = ColumnDecoder {
                name: column.name.clone(),
                ty: column.data_type,
                nullable: column.nullable,
                unit: column.time_unit(),
                format: column.timestamp_format(),
                default: None,
            };
            // Validation guarantees a default fits its column; convert it once.
            decoder.default = column.default.as_ref().and_then(|d| decoder.convert(from_literal(d)).ok());
            columns.push(decoder);
        }
        Self { columns, root, max_message_bytes: pipeline.bad_records.max_message_bytes.as_u64() as usize }
    }

    /// Each column's default as it is stored (a timestamp in the column's
    /// unit), in schema order; None for a column without one. Query nodes
    /// answer it for segments written before the column was added.
    pub fn defaults(&self) -> Vec<Option<sluice_segments::Scalar>> {
        self.columns.iter().map(|c| c.default.as_ref().map(|cell| cell.datum().to_scalar())).collect()
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
        let mut reader = Reader::new(text);
        let mut read = Read { decoder: self, cells: vec![Cell::Missing; self.columns.len()], problem: None };
        let found = match reader.peek() {
            Some(b'{') => {
                read.object(&mut reader, &self.root)?;
                None
            }
            // The value is read first: text that is not JSON at all is that.
            _ => Some(reader.value().map_err(invalid)?.kind()),
        };
        reader.end().map_err(invalid)?;
        if let Some(found) = found {
            return Err(BadRecord::new(
                BadRecordKind::NotAnObject,
                format!("the message is {found}, not a JSON object"),
            ));
        }
        let Read { mut cells, problem, .. } = read;
        for (i, (column, cell)) in self.columns.iter().zip(&mut cells).enumerate() {
            if let Some((at, bad)) = &problem
                && *at == i
            {
                return Err(bad.clone());
            }
            if matches!(cell, Cell::Missing | Cell::Null) {
                *cell = column.absent(matches!(cell, Cell::Missing))?;
            }
        }
        Ok(Row { cells })
    }
}

fn invalid(e: SyntaxError) -> BadRecord {
    BadRecord::new(BadRecordKind::InvalidJson, e.to_string())
}

/// One message being read.
struct Read<'d, 'a> {
    decoder: &'d Decoder,
    cells: Vec<Cell<'a>>,
    /// The first column (in schema order) whose value cannot be converted.
    problem: Option<(usize, BadRecord)>,
}

impl<'a> Read<'_, 'a> {
    /// An object along the configured paths, at its `{`: known keys are
    /// read (values for columns, recursion for inner nodes), the others
    /// skipped.
    fn object(&mut self, reader: &mut Reader<'a>, node: &PathNode) -> Result<(), BadRecord> {
        reader.expect(b'{', "an object").map_err(invalid)?;
        if reader.empty_object() {
            return Ok(());
        }
        let mut named = Named::new(node);
        loop {
            let key = Key::new(reader.key().map_err(invalid)?);
            match node.child(&key) {
                None => reader.skip().map_err(invalid)?,
                Some((i, child)) => {
                    if !named.insert(i) {
                        return Err(BadRecord::new(
                            BadRecordKind::DuplicateKey,
                            format!("the key {:?}, which the schema reads, appears twice in one object", key.text),
                        ));
                    }
                    self.field(reader, child)?;
                }
            }
            if !reader.next_member().map_err(invalid)? {
                return Ok(());
            }
        }
    }

    /// The value of a key on a configured path.
    fn field(&mut self, reader: &mut Reader<'a>, node: &PathNode) -> Result<(), BadRecord> {
        if !node.is_leaf() && reader.peek() == Some(b'{') {
            // A path that is both a column and the parent of others (`a`
            // and `a.b`) gives the column an object: a type error for it.
            self.store(node, Raw::Object);
            return self.object(reader, node);
        }
        if node.columns.is_empty() {
            // An inner node whose value is not an object: the paths below
            // it are missing.
            return reader.skip().map_err(invalid);
        }
        let raw = reader.value().map_err(invalid)?;
        self.store(node, raw);
        Ok(())
    }

    fn store(&mut self, node: &PathNode, raw: Raw<'a>) {
        let Some((&last, others)) = node.columns.split_last() else { return };
        for &i in others {
            self.put(i, raw.clone());
        }
        self.put(last, raw);
    }

    fn put(&mut self, i: usize, raw: Raw<'a>) {
        self.cells[i] = match self.decoder.columns[i].convert(raw) {
            Ok(cell) => cell,
            Err(bad) => {
                if self.problem.as_ref().is_none_or(|(at, _)| i < *at) {
                    self.problem = Some((i, bad));
                }
                Cell::Null
            }
        };
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

impl ColumnDecoder {
    /// The cell of a column whose field is missing or null: its default,
    /// else NULL if it may be, else the record is bad.
    fn absent(&self, missing: bool) -> Result<Cell<'static>, BadRecord> {
        if let Some(default) = &self.default {
            return Ok(default.clone());
        }
        if self.nullable {
            return Ok(Cell::Null);
        }
        Err(if missing {
            BadRecord::column(BadRecordKind::MissingRequired, &self.name, "the required field is missing")
        } else {
            BadRecord::column(BadRecordKind::NullInRequired, &self.name, "the required field is null")
        })
    }

    /// Inlined where a field is stored: its result is built in registers,
    /// not returned through memory (stored in parts, loaded whole: a
    /// store-forwarding stall per field).
    #[inline(always)]
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
            (ColumnType::Float64, Raw::F64(v)) => {
                // Beyond f64's range the reader gives an infinity.
                if !v.is_finite() {
                    return Err(range(v.to_string()));
                }
                Cell::Float64(v)
            }
            (ColumnType::Float32, Raw::I64(v)) => Cell::Float32(v as f32),
            (ColumnType::Float32, Raw::U64(v)) => Cell::Float32(v as f32),
            (ColumnType::Float32, Raw::F64(v)) => {
                if !v.is_finite() || v.abs() > f64::from(f32::MAX) {
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
