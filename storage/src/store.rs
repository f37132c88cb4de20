//! A pipeline's deep store. Layout: `<root>/<table>/<segment>.e<epoch>.seg`.
//! The lease epoch is in the file name because two writers can build a
//! segment of the same name — a zombie and the partition's new owner, at
//! the same sequence number — and a zombie's late upload must never
//! overwrite a committed file.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use futures::StreamExt;
use object_store::buffered::BufWriter;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use tokio::io::AsyncWriteExt;

use crate::error::StorageError;

pub const SEGMENT_EXTENSION: &str = "seg";

/// Objects up to this size are written with one request; larger ones as a
/// multipart upload of parts this size (S3's minimum part is 5 MiB).
const PART_SIZE: usize = 8 << 20;

/// An object found in a table's directory of the deep store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredObject {
    pub uri: String,
    /// The object's name within the table's directory.
    pub name: String,
    pub modified: SystemTime,
    pub size: u64,
}

/// The deep store rooted at one URI (made by [`crate::Resolver::deep_store`]).
#[derive(Debug, Clone)]
pub struct DeepStore {
    root_uri: String,
    store: Arc<dyn ObjectStore>,
    prefix: Path,
    /// The root's directory, for `file://` roots: written files are synced.
    local_root: Option<PathBuf>,
}

impl DeepStore {
    pub(crate) fn new(root_uri: &str, store: Arc<dyn ObjectStore>, prefix: Path) -> Self {
        let root_uri = root_uri.trim_end_matches('/').to_string();
        let local_root = root_uri
            .get(..7)
            .filter(|s| s.eq_ignore_ascii_case("file://"))
            .map(|_| PathBuf::from(format!("/{}", prefix.as_ref())));
        DeepStore { root_uri, store, prefix, local_root }
    }

    /// A deep store in local directory `dir` (absolute), with default options.
    pub fn local(dir: &std::path::Path) -> Result<DeepStore, StorageError> {
        crate::Resolver::new(Default::default()).deep_store(&file_uri(dir))
    }

    pub fn root_uri(&self) -> &str {
        &self.root_uri
    }

    /// The object name the writer holding lease `epoch` gives `segment`.
    pub fn segment_name(segment: &str, epoch: u64) -> String {
        format!("{segment}.e{epoch}.{SEGMENT_EXTENSION}")
    }

    /// The URI of object `name` in `table`'s directory.
    pub fn uri(&self, table: &str, name: &str) -> String {
        format!("{}/{table}/{name}", self.root_uri)
    }

    fn path(&self, table: &str, name: &str) -> Path {
        self.prefix.clone().join(table).join(name)
    }

    /// Writes object `name` of `table` whole, and returns its URI.
    pub async fn put(&self, table: &str, name: &str, bytes: Bytes) -> Result<String, StorageError> {
        let uri = self.uri(table, name);
        let backend = |source| StorageError::Backend { operation: "upload", uri: uri.clone(), source };
        let mut writer = BufWriter::with_capacity(self.store.clone(), self.path(table, name), PART_SIZE);
        if let Err(e) = writer.put(bytes).await {
            // Parts already sent are dropped with the upload. (After a
            // failed shutdown there is nothing left to abort: the writer
            // refuses, and S3 expires incomplete uploads by lifecycle rule.)
            let _ = writer.abort().await;
            return Err(backend(e));
        }
        writer.shutdown().await.map_err(|e| backend(io_to_store(e)))?;
        if let Some(root) = &self.local_root {
            // The rename into place happened; make it and the bytes durable
            // before the caller commits a catalog entry naming them.
            let file = root.join(table).join(name);
            let sync = |path: PathBuf| async move { tokio::fs::File::open(&path).await?.sync_all().await };
            let io = |source| StorageError::Io { operation: "sync", path: file.clone(), source };
            sync(file.clone()).await.map_err(io)?;
            let _ = sync(root.join(table)).await;
        }
        Ok(uri)
    }

    /// Every object in `table`'s directory, by name (none when it has none).
    pub async fn list(&self, table: &str) -> Result<Vec<StoredObject>, StorageError> {
        let dir = self.prefix.clone().join(table);
        let mut listing = self.store.list(Some(&dir));
        let mut objects = Vec::new();
        while let Some(meta) = listing.next().await {
            let meta = match meta {
                Ok(meta) => meta,
                Err(object_store::Error::NotFound { .. }) => break,
                Err(source) => {
                    let uri = format!("{}/{table}/", self.root_uri);
                    return Err(StorageError::Backend { operation: "list", uri, source });
                }
            };
            // Only the table's own files, not what nested directories hold.
            if meta.location.prefix_match(&dir).is_none_or(|mut rest| rest.nth(1).is_some()) {
                continue;
            }
            let Some(name) = meta.location.filename().map(str::to_string) else { continue };
            objects.push(StoredObject {
                uri: self.uri(table, &name),
                name,
                modified: SystemTime::from(meta.last_modified),
                size: meta.size,
            });
        }
        objects.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(objects)
    }

    /// Deletes object `name` of `table`; one already gone is not an error.
    pub async fn delete(&self, table: &str, name: &str) -> Result<(), StorageError> {
        delete(self.store.as_ref(), &self.path(table, name), || self.uri(table, name)).await
    }
}

/// Deletes `path`; an object already gone is not an error. `uri` names it
/// in the error.
pub(crate) async fn delete(
    store: &dyn ObjectStore,
    path: &Path,
    uri: impl FnOnce() -> String,
) -> Result<(), StorageError> {
    match store.delete(path).await {
        Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
        Err(source) => Err(StorageError::Backend { operation: "delete", uri: uri(), source }),
    }
}

/// `BufWriter` reports through `std::io`; its cause is the store's error.
fn io_to_store(e: std::io::Error) -> object_store::Error {
    object_store::Error::Generic { store: "deep store", source: Box::new(e) }
}

/// The `file://` URI of absolute path `path`.
pub fn file_uri(path: &std::path::Path) -> String {
    format!("file://{}", path.display())
}

/// The absolute path of a `file:///…` URI (None for other schemes).
pub fn file_uri_path(uri: &str) -> Option<PathBuf> {
    // Schemes are case-insensitive (RFC 3986), as config validation treats them.
    let (scheme, path) = uri.split_once("://")?;
    if !scheme.eq_ignore_ascii_case("file") {
        return None;
    }
    path.starts_with('/').then(|| PathBuf::from(path))
}
