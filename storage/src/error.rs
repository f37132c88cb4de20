use std::path::PathBuf;

/// What went wrong with the deep store, naming the URI or path.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("deep-store URI `{uri}`: {reason}")]
    Uri { uri: String, reason: String },
    #[error("deep-store option `{option}`: {reason}")]
    Option { option: String, reason: String },
    #[error("{operation} `{uri}`: {source}")]
    Backend {
        operation: &'static str,
        uri: String,
        #[source]
        source: object_store::Error,
    },
    #[error("{operation} `{}`: {source}", path.display())]
    Io {
        operation: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl StorageError {
    /// The object does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self, StorageError::Backend { source: object_store::Error::NotFound { .. }, .. })
    }
}
