//! How to read a pipeline's columns out of records of one writer schema:
//! compiled once per schema, run once per message.
//!
//! A plan follows the writer schema's fields in their order (Avro's binary
//! form has no field names: a record is its fields' values, one after the
//! other) and the pipeline's field paths by name. A field no column reads
//! is skipped; a field on a path is read, or descended into; a union is
//! read by its branch index, each branch with its own plan. Decoding with
//! the writer's own schema needs no schema resolution: a column finds its
//! field by name in whichever schema wrote the record, and a field the
//! writer does not have is absent (the column's default, or NULL).
//!
//! Plans recurse only along the configured paths (whose depth the config
//! bounds), and skipping is iterative: a recursive schema is never
//! followed further than a path goes.

use std::borrow::Cow;

use sluice_config::ColumnType;
use sluice_config::avro::{self as schema, AvroNode, AvroSchema, Decimal, Logical, NodeId};

use super::binary::{Cursor, invalid};
use crate::bad_record::{BadRecord, BadRecordKind};
use crate::path::PathNode;
use crate::reader::Raw;
use crate::row::{Cell, Cells, ColumnDecoder, Row};

/// One writer schema's plan.
pub(crate) struct Plan {
    schema: AvroSchema,
    root: Step,
}

enum Step {
    /// A value no column reads.
    Skip(NodeId),
    /// A union: the step of each branch, by index.
    Union(Vec<Step>),
    /// A `null` on a path: columns whose path ends here are null, those
    /// below it absent.
    Null { columns: Vec<usize> },
    /// A value the path ends at: each column reading it, and whether its
    /// type converts to the column's (when not, the record is bad).
    Value { node: NodeId, columns: Vec<(usize, bool)> },
    /// A record on a path: the step of each field, in the writer's order.
    /// A column whose path ends at the record itself has the wrong type.
    Record { fields: Vec<Step>, columns: Vec<usize> },
}

impl Plan {
    pub fn new(schema: AvroSchema, paths: &PathNode, columns: &[ColumnDecoder]) -> Self {
        let root = compile(&schema, schema.root(), paths, columns);
        Self { schema, root }
    }

    /// One message's Avro body.
    pub fn decode<'a>(&self, columns: &[ColumnDecoder], bytes: &'a [u8]) -> Result<Row<'a>, BadRecord> {
        let mut cursor = Cursor::new(bytes);
        let mut cells = Cells::new(columns.len());
        self.run(&self.root, &mut cursor, columns, &mut cells)?;
        if cursor.remaining() > 0 {
            return Err(invalid(format!(
                "{} bytes after the record's {} (written with another schema?)",
                cursor.remaining(),
                bytes.len() - cursor.remaining()
            )));
        }
        cells.finish(columns)
    }

    fn run<'a>(
        &self,
        step: &Step,
        cursor: &mut Cursor<'a>,
        columns: &[ColumnDecoder],
        cells: &mut Cells<'a>,
    ) -> Result<(), BadRecord> {
        match step {
            Step::Skip(node) => cursor.skip(&self.schema, *node),
            Step::Union(branches) => {
                let i = cursor.branch(branches.len())?;
                self.run(&branches[i], cursor, columns, cells)
            }
            Step::Null { columns } => {
                for &i in columns {
                    cells.put(i, Ok(Cell::Null));
                }
                Ok(())
            }
            Step::Value { node, columns: readers } => {
                let value = self.value(*node, cursor)?;
                for &(i, accepted) in readers {
                    let column = &columns[i];
                    let cell = if accepted {
                        convert(column, &value)
                    } else {
                        Err(BadRecord::column(
                            BadRecordKind::WrongType,
                            &column.name,
                            format!(
                                "the Avro field is {}, which does not convert to {}",
                                self.schema.describe(*node),
                                column.ty
                            ),
                        ))
                    };
                    cells.put(i, cell);
                }
                Ok(())
            }
            Step::Record { fields, columns: readers } => {
                for &i in readers {
                    let bad = BadRecord::column(
                        BadRecordKind::WrongType,
                        &columns[i].name,
                        format!("the Avro field is a record, not a {} value", columns[i].ty),
                    );
                    cells.put(i, Err(bad));
                }
                fields.iter().try_for_each(|field| self.run(field, cursor, columns, cells))
            }
        }
    }

    /// The value of a (non-union, non-record) node at the cursor.
    fn value<'a>(&self, node: NodeId, cursor: &mut Cursor<'a>) -> Result<Value<'a, '_>, BadRecord> {
        Ok(match self.schema.node(node) {
            AvroNode::Null => Value::Null,
            AvroNode::Boolean => Value::Bool(cursor.boolean()?),
            AvroNode::Int(logical) => Value::Long(i64::from(cursor.int()?), *logical),
            AvroNode::Long(logical) => Value::Long(cursor.long()?, *logical),
            AvroNode::Float => Value::Double(f64::from(cursor.float()?)),
            AvroNode::Double => Value::Double(cursor.double()?),
            AvroNode::String => Value::Str(cursor.bytes()?),
            AvroNode::Enum { symbols, .. } => Value::Symbol(&symbols[cursor.symbol(symbols.len())?]),
            AvroNode::Bytes(Some(decimal)) => Value::Decimal(cursor.bytes()?, *decimal),
            AvroNode::Fixed { size, decimal: Some(decimal), .. } => {
                Value::Decimal(cursor.take(*size, "a fixed")?, *decimal)
            }
            _ => {
                // Converts to no column (the plan says so): skipped whole.
                cursor.skip(&self.schema, node)?;
                Value::Null
            }
        })
    }
}

fn compile(schema: &AvroSchema, id: NodeId, path: &PathNode, columns: &[ColumnDecoder]) -> Step {
    match schema.node(id) {
        AvroNode::Union(branches) => Step::Union(branches.iter().map(|&b| compile(schema, b, path, columns)).collect()),
        AvroNode::Null => Step::Null { columns: path.columns.clone() },
        AvroNode::Record { fields, .. } if !path.is_leaf() => Step::Record {
            fields: fields
                .iter()
                .map(|field| match path.named(&field.name) {
                    Some(below) => compile(schema, field.node, below, columns),
                    None => Step::Skip(field.node),
                })
                .collect(),
            columns: path.columns.clone(),
        },
        // An inner node of the paths where the writer has no record: the
        // paths below it are absent.
        _ if path.columns.is_empty() => Step::Skip(id),
        node => Step::Value {
            node: id,
            columns: path
                .columns
                .iter()
                .map(|&i| (i, schema::accepts(columns[i].ty, columns[i].format, node)))
                .collect(),
        },
    }
}

/// A value read for columns: borrowed from the message (`'a`) or, for an
/// enum's symbol, from the schema (`'s`).
enum Value<'a, 's> {
    Null,
    Bool(bool),
    Long(i64, Option<Logical>),
    Double(f64),
    /// UTF-8 not yet checked.
    Str(&'a [u8]),
    Symbol(&'s str),
    /// The unscaled big-endian two's-complement integer.
    Decimal(&'a [u8], Decimal),
}

/// Converts a value of a type [`schema::accepts`] for the column. Values
/// that JSON also has go through the column's JSON rules (ranges, RFC 3339
/// strings); logical types are converted here.
fn convert<'a>(column: &ColumnDecoder, value: &Value<'a, '_>) -> Result<Cell<'a>, BadRecord> {
    let range = |what: String| {
        BadRecord::column(
            BadRecordKind::OutOfRange,
            &column.name,
            format!("{what} does not fit a {} column", column.ty),
        )
    };
    match *value {
        Value::Null => Ok(Cell::Null),
        Value::Bool(b) => column.convert(Raw::Bool(b)),
        Value::Long(v, Some(logical)) if column.ty == ColumnType::Timestamp => {
            let nanos_per: i64 = match logical {
                Logical::Date => 86_400_000_000_000,
                Logical::TimestampMillis => 1_000_000,
                Logical::TimestampMicros => 1_000,
                Logical::TimestampNanos => 1,
            };
            let per_unit = column.unit.nanos();
            // Units are powers of 1,000 apart (and a day is a whole number
            // of each): a finer column multiplies, checked; a coarser one
            // divides, floored, as a coarser clock would read the instant.
            let converted = if nanos_per >= per_unit {
                v.checked_mul(nanos_per / per_unit)
            } else {
                Some(v.div_euclid(per_unit / nanos_per))
            };
            converted.map(Cell::Timestamp).ok_or_else(|| range(format!("{v} ({logical:?})")))
        }
        Value::Long(v, _) => column.convert(Raw::I64(v)),
        Value::Double(v) => column.convert(Raw::F64(v)),
        Value::Str(bytes) => {
            let text = std::str::from_utf8(bytes).map_err(|e| {
                BadRecord::column(BadRecordKind::InvalidUtf8, &column.name, format!("an Avro string: {e}"))
            })?;
            column.convert(Raw::Str(Cow::Borrowed(text)))
        }
        Value::Symbol(symbol) => column.convert(Raw::Str(Cow::Owned(symbol.to_string()))),
        Value::Decimal(bytes, decimal) => {
            let unscaled = unscaled(bytes).ok_or_else(|| range(format!("a decimal of {} bytes", bytes.len())))?;
            match column.ty {
                ColumnType::String => Ok(Cell::Str(Cow::Owned(decimal_text(unscaled, decimal.scale)))),
                _ => column.convert(Raw::F64(unscaled as f64 / 10f64.powi(decimal.scale as i32))),
            }
        }
    }
}

/// A big-endian two's-complement integer of at most 16 bytes.
fn unscaled(bytes: &[u8]) -> Option<i128> {
    if bytes.len() > 16 {
        return None;
    }
    let fill = if bytes.first().is_some_and(|b| b & 0x80 != 0) { 0xff } else { 0 };
    let mut wide = [fill; 16];
    wide[16 - bytes.len()..].copy_from_slice(bytes);
    Some(i128::from_be_bytes(wide))
}

/// `unscaled / 10^scale`, exactly: `-12.05` for (-1205, 2).
fn decimal_text(unscaled: i128, scale: u32) -> String {
    let digits = unscaled.unsigned_abs().to_string();
    let scale = scale as usize;
    let sign = if unscaled < 0 { "-" } else { "" };
    if scale == 0 {
        return format!("{sign}{digits}");
    }
    let padded = format!("{digits:0>width$}", width = scale + 1);
    let (whole, fraction) = padded.split_at(padded.len() - scale);
    format!("{sign}{whole}.{fraction}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimals_are_exact_as_text() {
        assert_eq!(decimal_text(-1205, 2), "-12.05");
        assert_eq!(decimal_text(5, 3), "0.005");
        assert_eq!(decimal_text(0, 2), "0.00");
        assert_eq!(decimal_text(42, 0), "42");
        assert_eq!(unscaled(&[0xfb, 0x2b]), Some(-1237));
        assert_eq!(unscaled(&[0x04, 0xd5]), Some(1237));
        assert_eq!(unscaled(&[]), Some(0));
        assert_eq!(unscaled(&[0x7f; 17]), None);
        let max =
            unscaled(&[0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]);
        assert_eq!(max, Some(i128::MAX));
    }
}
