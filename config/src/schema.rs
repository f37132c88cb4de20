//! A table's schema as a pipeline file writes it: its columns, their types
//! and defaults, and how timestamps are read. Shared by the pipeline file,
//! Avro schema mapping and star-tree validation.

use std::fmt;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Schema {
    /// The column that places a row in time: segment time ranges, retention
    /// and time pruning are all computed from it. Must be a timestamp column.
    pub time_column: String,
    pub columns: Vec<Column>,
}

impl Schema {
    pub fn column(&self, name: &str) -> Option<&Column> {
        self.columns.iter().find(|c| c.name == name)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Column {
    pub name: String,
    #[serde(rename = "type")]
    pub data_type: ColumnType,
    /// A required column (`nullable = false`) rejects records where the value
    /// is missing or null, unless a `default` fills it in.
    #[serde(default = "default_true")]
    pub nullable: bool,
    /// Where the value is in the record: a field name or a dotted path into
    /// nested JSON objects or Avro records (`device.os.name`). Defaults to
    /// the column name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Used when the record has no value for the column.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<Literal>,
    /// Timestamp columns only: the unit of epoch numbers and of storage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<TimeUnit>,
    /// Timestamp columns only: how the value is written in the record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<TimestampFormat>,
}

fn default_true() -> bool {
    true
}

impl Column {
    /// The field names, from the record's top, that lead to this column's
    /// value (nested JSON objects or Avro records).
    pub fn field_path(&self) -> Vec<&str> {
        self.path.as_deref().unwrap_or(&self.name).split('.').collect()
    }

    pub fn time_unit(&self) -> TimeUnit {
        self.unit.unwrap_or_default()
    }

    pub fn timestamp_format(&self) -> TimestampFormat {
        self.format.unwrap_or_default()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ColumnType {
    String,
    Bool,
    Int32,
    Int64,
    Float32,
    Float64,
    Timestamp,
}

impl fmt::Display for ColumnType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ColumnType::String => "string",
            ColumnType::Bool => "bool",
            ColumnType::Int32 => "int32",
            ColumnType::Int64 => "int64",
            ColumnType::Float32 => "float32",
            ColumnType::Float64 => "float64",
            ColumnType::Timestamp => "timestamp",
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TimeUnit {
    #[serde(rename = "s")]
    Seconds,
    #[default]
    #[serde(rename = "ms")]
    Milliseconds,
    #[serde(rename = "us")]
    Microseconds,
    #[serde(rename = "ns")]
    Nanoseconds,
}

impl TimeUnit {
    /// Nanoseconds in one unit.
    pub fn nanos(self) -> i64 {
        match self {
            TimeUnit::Seconds => 1_000_000_000,
            TimeUnit::Milliseconds => 1_000_000,
            TimeUnit::Microseconds => 1_000,
            TimeUnit::Nanoseconds => 1,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TimestampFormat {
    /// A number of `unit`s since 1970-01-01T00:00:00Z.
    #[default]
    Epoch,
    /// An RFC 3339 string such as `2026-11-25T10:00:00.123Z`.
    Rfc3339,
}

/// A literal value in a config file (column defaults).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Literal {
    Bool(bool),
    Int(i64),
    Float(f64),
    String(String),
}

impl fmt::Display for Literal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Literal::Bool(v) => write!(f, "{v}"),
            Literal::Int(v) => write!(f, "{v}"),
            Literal::Float(v) => write!(f, "{v}"),
            Literal::String(v) => write!(f, "{v:?}"),
        }
    }
}
