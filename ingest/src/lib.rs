//! Ingestion: Kafka partitions to committed segments. The decoder turns
//! records into rows; [`partition::ingest_partition`] runs one owned
//! partition through consume → seal → upload → fenced commit. The worker
//! process that balances partitions and serves metrics joins it next.
//!
//! Invariants:
//! - Decoding never panics and never recurses without bound: every input is
//!   either a row or a [`BadRecord`] with its reason and the column it concerns.
//! - A bad record is classified, never dropped silently: the caller counts it
//!   per reason and skips, dead-letters or fails, as the pipeline says.
//! - Conversions are strict and explicit: a JSON value becomes a column value
//!   only when its JSON type is the column's (integers into integer columns
//!   within range, numbers into float columns, strings into string columns,
//!   integers into epoch timestamps, strings into RFC 3339 timestamps).

pub mod budget;
mod decode;
pub mod metrics;
pub mod partition;
mod timestamp;
pub mod worker;

pub use decode::{BadRecord, BadRecordKind, Decoder, Row};
pub use timestamp::parse_rfc3339;
