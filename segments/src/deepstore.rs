//! The deep store: where sealed segment files live for good. Layout:
//! `<root>/<table>/<segment name>.e<epoch>.seg`. The lease epoch is in the
//! file name because two writers can build a segment of the same name — a
//! zombie and the partition's new owner, at the same sequence number — and a
//! zombie's late upload must never overwrite a committed file. Only `file://` roots exist today
//! (a local or shared filesystem); other schemes are refused by config
//! validation until they are implemented.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::error::SegmentError;

pub const SEGMENT_EXTENSION: &str = "seg";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeepStore {
    root: PathBuf,
}

/// A file found in a table's deep-store directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredFile {
    pub path: PathBuf,
    pub modified: SystemTime,
}

impl DeepStore {
    /// A deep store rooted at a `file:///absolute/path` URI.
    pub fn from_uri(uri: &str) -> Result<Self, SegmentError> {
        let path = file_uri_path(uri).ok_or_else(|| SegmentError::Io {
            file: uri.to_string(),
            source: std::io::Error::other("not a file:///absolute/path URI"),
        })?;
        Ok(Self { root: path })
    }

    pub fn at(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn table_dir(&self, table: &str) -> PathBuf {
        self.root.join(table)
    }

    /// Where the writer holding lease `epoch` stores segment `segment`.
    pub fn segment_path(&self, table: &str, segment: &str, epoch: u64) -> PathBuf {
        self.table_dir(table).join(format!("{segment}.e{epoch}.{SEGMENT_EXTENSION}"))
    }

    /// The URI a catalog entry records for a path of this store.
    pub fn uri_of(path: &Path) -> String {
        format!("file://{}", path.display())
    }

    /// Every file in the table's directory (none if it does not exist).
    pub fn list(&self, table: &str) -> Result<Vec<StoredFile>, SegmentError> {
        let dir = self.table_dir(table);
        let io = |source| SegmentError::Io { file: dir.display().to_string(), source };
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io(e)),
        };
        let mut files = Vec::new();
        for entry in entries {
            let entry = entry.map_err(io)?;
            let meta = entry.metadata().map_err(io)?;
            if !meta.is_file() {
                continue;
            }
            files.push(StoredFile { path: entry.path(), modified: meta.modified().map_err(io)? });
        }
        files.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(files)
    }

    /// Removes a file; a file already gone is not an error.
    pub fn remove(&self, path: &Path) -> Result<(), SegmentError> {
        match std::fs::remove_file(path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(SegmentError::Io { file: path.display().to_string(), source }),
        }
    }
}

/// The absolute path of a `file:///…` URI.
pub fn file_uri_path(uri: &str) -> Option<PathBuf> {
    // Schemes are case-insensitive (RFC 3986), as config validation treats them.
    let (scheme, path) = uri.split_once("://")?;
    if !scheme.eq_ignore_ascii_case("file") {
        return None;
    }
    path.starts_with('/').then(|| PathBuf::from(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_uri_schemes_are_case_insensitive() {
        assert_eq!(file_uri_path("FILE:///var/lib/s"), Some(PathBuf::from("/var/lib/s")));
        assert_eq!(file_uri_path("File:///x"), Some(PathBuf::from("/x")));
        assert_eq!(file_uri_path("s3://bucket/x"), None);
        assert_eq!(file_uri_path("file://relative"), None);
    }

    #[test]
    fn layout_and_listing() {
        let dir = tempfile::tempdir().unwrap();
        let uri = format!("file://{}", dir.path().display());
        let store = DeepStore::from_uri(&uri).unwrap();
        assert!(store.list("clicks").unwrap().is_empty());
        let path = store.segment_path("clicks", "clicks__0__0__20261125T1000Z", 3);
        assert!(path.ends_with("clicks/clicks__0__0__20261125T1000Z.e3.seg"));
        assert_ne!(path, store.segment_path("clicks", "clicks__0__0__20261125T1000Z", 4), "one file per writer");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, b"x").unwrap();
        std::fs::write(store.table_dir("clicks").join(".upload.tmp-1"), b"y").unwrap();
        assert_eq!(store.list("clicks").unwrap().len(), 2);
        assert_eq!(file_uri_path(&DeepStore::uri_of(&path)), Some(path.clone()));
        store.remove(&path).unwrap();
        store.remove(&path).unwrap();
        assert!(DeepStore::from_uri("s3://bucket").is_err());
        assert!(DeepStore::from_uri("file://relative").is_err());
    }
}
