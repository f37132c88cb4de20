//! sluice's record decoder: a Kafka message's bytes become a row of the
//! pipeline's schema, or a [`BadRecord`] saying why not. Ingestion workers
//! decode what they commit; query nodes will decode the uncommitted tail
//! they serve with the very same code, so both classify every record alike.
//!
//! Invariants:
//! - Decoding never panics and never recurses without bound: every input is
//!   either a row or a [`BadRecord`] with its reason and the column it concerns.
//! - Conversions are strict and explicit: a JSON value becomes a column value
//!   only when its JSON type is the column's (integers into integer columns
//!   within range, numbers into float columns, strings into string columns,
//!   integers into epoch timestamps, strings into RFC 3339 timestamps).
//! - A decoder depends on the pipeline's schema only: the same config gives
//!   the same rows and the same bad-record classes on every node.
//! - A [`PartitionQueue`] owns its librdkafka queue reference and every
//!   message it hands out: a record's payload borrows its [`Batch`], which
//!   destroys the messages, and no wake-up callback outlives the queue.

mod bad_record;
mod context;
mod json;
mod partition_queue;
mod path;
mod reader;
mod source;
mod timestamp;

pub use bad_record::{BadRecord, BadRecordKind};
pub use context::{SourceConsumer, SourceContext};
pub use json::{Decoder, Row};
pub use partition_queue::{Batch, PartitionQueue};
pub use source::{consumer_config, kafka_config};
pub use timestamp::parse_rfc3339;
