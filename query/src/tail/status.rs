//! What the tail tells `/health`, metrics and `sluice status`: each
//! partition's tail, the table's consumer, and the node-wide tail memory.

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

/// One partition's tail.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TailStatus {
    pub table: String,
    pub partition: i32,
    /// Rows served from the tail.
    pub rows: u64,
    /// The first offset the tail holds (one past the committed end).
    pub from_offset: Option<i64>,
    /// Now minus the newest record's Kafka timestamp.
    pub freshness_ms: Option<i64>,
    pub over_limit: bool,
}

/// A table's tail consumer, as `/health` shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct ConsumerStatus {
    pub table: String,
    /// `running`; `erroring` while Kafka errors last (librdkafka retries);
    /// `retrying` after a failure, until the next attempt (the tail is then
    /// frozen).
    pub state: String,
    /// Failures since the node started.
    pub failures: u64,
    /// The last failure, while retrying.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Seconds until the next attempt, while retrying.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_in_s: Option<u64>,
}

/// The node's tail memory and merge lane, shared by every table.
#[derive(Debug)]
pub struct TailBudget {
    pub(super) used: AtomicU64,
    pub(super) limit: u64,
    /// Merges run one at a time, so on a small machine they take a core at
    /// most and the consumers keep theirs.
    pub(super) merge_lane: Mutex<()>,
}

impl TailBudget {
    pub fn new(limit: u64) -> Arc<Self> {
        Arc::new(TailBudget { used: AtomicU64::new(0), limit, merge_lane: Mutex::new(()) })
    }

    pub fn enabled(&self) -> bool {
        self.limit > 0
    }
}
