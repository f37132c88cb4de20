//! A decoded row, and each column's conversion rules: how a value found in
//! a record becomes a cell of the column's type, and how an absent one is
//! filled in. Shared by every input format, so JSON and Avro records of the
//! same values give the same row.

use std::borrow::Cow;

use sluice_config::{ColumnType, Literal, PipelineConfig, TimeUnit, TimestampFormat};
use sluice_segments::Datum;

use crate::bad_record::{BadRecord, BadRecordKind};
use crate::reader::Raw;
use crate::timestamp::parse_rfc3339;

/// A decoded row, its strings borrowed from the message where possible.
#[derive(Debug, Clone, PartialEq)]
pub struct Row<'a> {
    pub(crate) cells: Vec<Cell<'a>>,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Cell<'a> {
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
    pub(crate) fn datum(&self) -> Datum<'_> {
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

/// A column as decoding sees it: its type and how an absent value is
/// filled in. The same for every input format.
#[derive(Debug, Clone)]
pub(crate) struct ColumnDecoder {
    pub name: String,
    pub ty: ColumnType,
    nullable: bool,
    pub unit: TimeUnit,
    pub format: TimestampFormat,
    default: Option<Cell<'static>>,
}

/// Each column of `pipeline`'s schema, in order.
pub(crate) fn column_decoders(pipeline: &PipelineConfig) -> Vec<ColumnDecoder> {
    let mut columns = Vec::new();
    for column in &pipeline.schema.columns {
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
    columns
}

/// The cells of one message being read, and its first problem.
pub(crate) struct Cells<'a> {
    pub cells: Vec<Cell<'a>>,
    /// The first column (in schema order) whose value cannot be converted.
    problem: Option<(usize, BadRecord)>,
}

impl<'a> Cells<'a> {
    pub fn new(columns: usize) -> Self {
        Self { cells: vec![Cell::Missing; columns], problem: None }
    }

    /// Column `i`'s value, or the reason it has none.
    #[inline]
    pub fn put(&mut self, i: usize, cell: Result<Cell<'a>, BadRecord>) {
        self.cells[i] = match cell {
            Ok(cell) => cell,
            Err(bad) => {
                if self.problem.as_ref().is_none_or(|(at, _)| i < *at) {
                    self.problem = Some((i, bad));
                }
                Cell::Null
            }
        };
    }

    /// The row, once the message is read: the first column's problem in
    /// schema order, else each absent value filled in (or refused).
    pub fn finish(self, columns: &[ColumnDecoder]) -> Result<Row<'a>, BadRecord> {
        let Cells { mut cells, problem } = self;
        for (i, (column, cell)) in columns.iter().zip(&mut cells).enumerate() {
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

fn from_literal(literal: &Literal) -> Raw<'static> {
    match literal {
        Literal::Bool(v) => Raw::Bool(*v),
        Literal::Int(v) => Raw::I64(*v),
        Literal::Float(v) => Raw::F64(*v),
        Literal::String(v) => Raw::Str(Cow::Owned(v.clone())),
    }
}

impl ColumnDecoder {
    pub fn default_scalar(&self) -> Option<sluice_segments::Scalar> {
        self.default.as_ref().map(|cell| cell.datum().to_scalar())
    }

    /// The cell of a column whose field is missing or null: its default,
    /// else NULL if it may be, else the record is bad.
    pub fn absent(&self, missing: bool) -> Result<Cell<'static>, BadRecord> {
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
    pub fn convert<'a>(&self, raw: Raw<'a>) -> Result<Cell<'a>, BadRecord> {
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
