//! Why a record cannot become a row: the classes counted in metrics
//! (`reason` label) and dead-lettered, whatever the input format.

/// Why a record is bad. The names are the metric labels. (Nesting has no
/// class of its own: skipped values are read iteratively at any depth, and
/// a column's path is as deep as its configuration.)
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BadRecordKind {
    Empty,
    Oversized,
    InvalidUtf8,
    InvalidJson,
    NotAnObject,
    DuplicateKey,
    MissingRequired,
    NullInRequired,
    WrongType,
    OutOfRange,
    InvalidTimestamp,
    /// Avro: the message ends inside a value (or Confluent's header).
    Truncated,
    /// Avro: bytes that no writer schema's encoding allows (a union branch
    /// or enum symbol out of range, an overlong varint, trailing bytes).
    InvalidAvro,
    /// Confluent's wire format: the first byte is not the magic 0.
    WrongMagicByte,
    /// Confluent's wire format: the registry does not have the schema id,
    /// or has something other than an Avro schema under it.
    UnknownSchemaId,
}

impl BadRecordKind {
    pub const ALL: [BadRecordKind; 15] = [
        BadRecordKind::Empty,
        BadRecordKind::Oversized,
        BadRecordKind::InvalidUtf8,
        BadRecordKind::InvalidJson,
        BadRecordKind::NotAnObject,
        BadRecordKind::DuplicateKey,
        BadRecordKind::MissingRequired,
        BadRecordKind::NullInRequired,
        BadRecordKind::WrongType,
        BadRecordKind::OutOfRange,
        BadRecordKind::InvalidTimestamp,
        BadRecordKind::Truncated,
        BadRecordKind::InvalidAvro,
        BadRecordKind::WrongMagicByte,
        BadRecordKind::UnknownSchemaId,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            BadRecordKind::Empty => "empty",
            BadRecordKind::Oversized => "oversized",
            BadRecordKind::InvalidUtf8 => "invalid_utf8",
            BadRecordKind::InvalidJson => "invalid_json",
            BadRecordKind::NotAnObject => "not_an_object",
            BadRecordKind::DuplicateKey => "duplicate_key",
            BadRecordKind::MissingRequired => "missing_required",
            BadRecordKind::NullInRequired => "null_in_required",
            BadRecordKind::WrongType => "wrong_type",
            BadRecordKind::OutOfRange => "out_of_range",
            BadRecordKind::InvalidTimestamp => "invalid_timestamp",
            BadRecordKind::Truncated => "truncated",
            BadRecordKind::InvalidAvro => "invalid_avro",
            BadRecordKind::WrongMagicByte => "wrong_magic_byte",
            BadRecordKind::UnknownSchemaId => "unknown_schema_id",
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
    pub(crate) fn new(kind: BadRecordKind, detail: impl Into<String>) -> Self {
        Self { kind, column: None, detail: detail.into() }
    }

    pub(crate) fn column(kind: BadRecordKind, column: &str, detail: impl Into<String>) -> Self {
        Self { kind, column: Some(column.to_string()), detail: detail.into() }
    }
}
