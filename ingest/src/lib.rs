//! Ingestion: Kafka partitions to committed segments. The decoder
//! (`sluice-decode`, shared with query nodes) turns records into rows;
//! [`partition::ingest_partition`] runs one owned
//! partition through consume → seal → upload → fenced commit; the
//! [`worker`] runs a pipeline's share of partitions, follows membership and
//! config changes, and serves metrics.
//!
//! Invariants:
//! - A partition's records reach only its own task: a worker reads each
//!   pipeline through one Kafka consumer, and a partition's queue is split
//!   off before the partition is assigned, so librdkafka never routes its
//!   records to the shared queue. A task reads from the checkpoint's next
//!   offset, and what it consumed but did not commit is read again by the
//!   partition's next owner.
//! - A bad record is classified, never dropped silently: the caller counts it
//!   per reason and skips, dead-letters or fails, as the pipeline says.
//! - A partition task that ends for any reason releases its lease, and the
//!   worker starts it again (failures with backoff); every exit is counted
//!   by reason, and a partition that makes no progress while it has work is
//!   reported by `/health` ([`health`]).
//! - An offset gap (Kafka delivering an offset beyond the next expected
//!   one: compaction, transaction markers, a broker skipping records) is
//!   logged, counted and recorded in the segment's metadata, never silent.

pub mod budget;
pub mod duties;
pub mod health;
pub mod metrics;
pub mod partition;
pub mod worker;

pub use sluice_decode::{BadRecord, BadRecordKind, Decoder, Row, parse_rfc3339};
