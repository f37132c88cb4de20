//! How a partition's ingestion ends: [`Exit`] and why it failed.

/// How a partition's ingestion ended. Whatever the exit, the lease was
/// released before the task ended, so the partition can be acquired again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exit {
    /// Asked to stop: the consumed tail was committed.
    Stopped,
    /// Someone else owns the partition now (or an operator reset its
    /// offset); nothing more was committed.
    Fenced,
    /// Ingestion could not go on; the worker retries with backoff.
    Failed { reason: FailReason, detail: String },
}

/// Why a partition failed: the `reason` label of
/// `sluice_partition_failures_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailReason {
    /// Assigning the partition to the Kafka consumer failed.
    Assign,
    /// The Kafka stream ended.
    Kafka,
    /// The pipeline's `fail` policy met a bad record.
    BadRecord,
    /// A consumed record could not be recorded in the segment.
    Segment,
    /// Sealing, or writing the object to the deep store (after the store's
    /// own retries), failed.
    Upload,
    /// The checkpoint is not where the segment starts.
    Discontinuous,
    /// Stopped while a commit's outcome was unknown.
    Commit,
    /// The schema registry could not give a record's writer schema.
    SchemaRegistry,
    /// A bug: the partition's task panicked.
    Panic,
}

impl FailReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FailReason::Assign => "assign",
            FailReason::Kafka => "kafka",
            FailReason::BadRecord => "bad_record",
            FailReason::Segment => "segment",
            FailReason::Upload => "upload",
            FailReason::Discontinuous => "discontinuous",
            FailReason::Commit => "commit",
            FailReason::SchemaRegistry => "schema_registry",
            FailReason::Panic => "panic",
        }
    }
}

impl Exit {
    pub(super) fn failed(reason: FailReason, detail: impl Into<String>) -> Exit {
        Exit::Failed { reason, detail: detail.into() }
    }
}
