//! sluice's record decoder: a Kafka message's bytes (JSON, raw Avro, or
//! Avro in Confluent's wire format) become a row of the pipeline's schema,
//! or a [`BadRecord`] saying why not. Ingestion workers
//! decode what they commit; query nodes will decode the uncommitted tail
//! they serve with the very same code, so both classify every record alike.
//!
//! Invariants:
//! - Decoding never panics and never recurses without bound: every input is
//!   either a row or a [`BadRecord`] with its reason and the column it concerns.
//! - Conversions are strict and explicit: a value becomes a column value
//!   only when its type is the column's (integers into integer columns
//!   within range, numbers into float columns, strings into string columns,
//!   integers into epoch timestamps, strings into RFC 3339 timestamps), by
//!   the same rules for JSON and Avro; Avro's logical types (timestamps,
//!   dates, decimals) convert by what they mean.
//! - A record is never skipped because its schema could not be fetched: a
//!   message naming a schema id not yet known is fetched first
//!   ([`Decoder::unfetched`], [`Decoder::fetch`]), and a registry that
//!   cannot answer is an error to retry, not a bad record.
//! - A decoder depends on the pipeline's schema only: the same config gives
//!   the same rows and the same bad-record classes on every node.
//! - A [`PartitionQueue`] owns its librdkafka queue reference and every
//!   message it hands out: a record's payload borrows its [`Batch`], which
//!   destroys the messages, and no wake-up callback outlives the queue.

mod avro;
mod bad_record;
mod context;
mod decoder;
mod json;
mod partition_queue;
mod path;
mod reader;
mod row;
mod source;
mod timestamp;

pub use avro::{RegistryError, SchemaId};
pub use bad_record::{BadRecord, BadRecordKind};
pub use context::{SourceConsumer, SourceContext};
pub use decoder::Decoder;
pub use partition_queue::{Batch, PartitionQueue};
pub use row::Row;
pub use source::{consumer_config, kafka_config};
pub use timestamp::parse_rfc3339;
