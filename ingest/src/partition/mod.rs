//! One owned partition: Kafka → decode → consuming segment → seal → deep
//! store → fenced commit, until stopped or fenced.
//!
//! Exactly-once rests on three facts: the consumer seeks to the checkpoint's
//! next offset (or, for a partition never committed, the start position);
//! a segment covers every offset from that checkpoint to the last one it
//! consumed, rows and bad records alike; and the commit that advances the
//! checkpoint is fenced by the lease. Whatever was consumed but not committed
//! when a worker dies is read again by the next owner, and a worker that lost
//! its lease cannot commit what it read.

mod commit;
mod consume;
mod context;
mod dead_letters;
mod exit;
mod run;
mod state;

pub(crate) use context::now_ms;
pub use context::{PipelineContext, PipelineStartError, kafka_config};
pub use exit::{Exit, FailReason};
pub use run::ingest_partition;
