//! The deep store: where sealed segment files live for good, on a local or
//! shared filesystem (`file://`), S3 and S3-compatible servers (`s3://`),
//! Google Cloud Storage (`gs://`), Azure Blob Storage (`az://`, `abfs://`)
//! or, for tests, process memory (`memory://`). Every read, write, list and
//! delete of a segment file in sluice goes through this crate, so workers and
//! query nodes share no filesystem, only the store (Quickwit's
//! `quickwit-storage` is the model).
//!
//! Invariants:
//! - An object is written whole or not at all: a single PUT, or a multipart
//!   upload completed only after its last part (aborted on failure); on
//!   `file://` a staged file renamed into place, then synced, so a committed
//!   catalog entry never points at a torn file after a crash.
//! - Transient failures (5xx, resets, timeouts) are retried with backoff
//!   inside the backend (`object_store`'s retry policy, bounded by
//!   `object_store.max_retries` and `retry_timeout`); what reaches the caller
//!   is a failure to report, count and retry at its own level.
//! - Credentials come from the environment and instance metadata chains
//!   (`AWS_*`, `GOOGLE_*`, `AZURE_*`), never from a file that ZooKeeper
//!   holds; node files carry only endpoints, regions and options.
//! - A download lands under a temporary name next to its destination and is
//!   renamed into place when complete: a reader never sees a partial file.

mod error;
mod resolve;
mod store;

pub use error::StorageError;
pub use resolve::{Resolver, SCHEMES, check_uri};
pub use store::{DeepStore, SEGMENT_EXTENSION, StoredObject, file_uri, file_uri_path};
