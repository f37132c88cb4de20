use sluice_config::ColumnType;

/// Why a row was not appended. The segment is unchanged after any of these.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RowError {
    #[error("the row has {found} values, the schema {expected} columns")]
    Arity { expected: usize, found: usize },
    #[error("column `{column}`: expected a {expected} value, found {found}")]
    TypeMismatch { column: String, expected: ColumnType, found: &'static str },
    #[error("column `{column}` is required but the value is null")]
    NullInRequired { column: String },
    #[error("column `{column}` would exceed 2 GiB of string data in one segment; seal it first")]
    ColumnFull { column: String },
    #[error("offset {offset} is not after the last offset {last} of this segment")]
    OffsetNotIncreasing { offset: i64, last: i64 },
    #[error("the segment holds {max} rows, the most one segment can hold")]
    SegmentFull { max: u32 },
}

/// Which part of a segment file a corruption was found in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Section {
    Header,
    Data,
    Index,
    Metadata,
    Footer,
}

impl std::fmt::Display for Section {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Section::Header => "header",
            Section::Data => "data section",
            Section::Index => "index section",
            Section::Metadata => "metadata section",
            Section::Footer => "footer",
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SegmentError {
    #[error("{file}: {section}: {reason}")]
    Corrupt { file: String, section: Section, reason: String },
    #[error("{file}: unknown segment format version {found} (this build reads version {supported})")]
    UnsupportedVersion { file: String, found: u32, supported: u32 },
    #[error("{file}: {source}")]
    Io { file: String, source: std::io::Error },
    #[error("predicate: {0}")]
    Predicate(String),
    #[error("arrow: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
}

impl SegmentError {
    pub(crate) fn corrupt(file: &str, section: Section, reason: impl Into<String>) -> Self {
        SegmentError::Corrupt { file: file.to_string(), section, reason: reason.into() }
    }
}
