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
}

impl BadRecordKind {
    pub const ALL: [BadRecordKind; 11] = [
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
