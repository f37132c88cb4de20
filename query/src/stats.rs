//! What one query's scans count, in Pinot's vocabulary ([`ScanStats`]),
//! and where the scans planned for a query report it ([`QUERY_STATS`]).

use std::sync::Arc;

/// Counters of one query's scans, in Pinot's vocabulary.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ScanStats {
    /// Segments of the tables read.
    pub segments_queried: u64,
    /// Segments left after pruning by statistics and bloom filters.
    pub segments_processed: u64,
    /// Segments with at least one matching row.
    pub segments_matched: u64,
    /// Rows selected by the pushed filters (before DataFusion's own).
    pub docs_scanned: u64,
    /// Rows in the segments of the tables read.
    pub total_docs: u64,
    /// Offsets without records within the segments read (Kafka delivered
    /// past them: compaction, transaction markers, retention).
    pub offset_gaps: u64,
    /// Tail (consuming) segments read, and the oldest of their newest
    /// records' Kafka timestamps (Pinot's `minConsumingFreshnessTimeMs`).
    pub consuming_segments: u64,
    pub min_consuming_freshness_ms: i64,
    /// Partitions whose tail was left out (over the tail memory).
    pub tails_excluded: u64,
    /// Query nodes the query's tasks went to (this one included), and the
    /// ones that answered; 0 for a query answered by this node alone.
    pub servers_queried: u64,
    pub servers_responded: u64,
    /// Committed segments no live query node serves: the answer is partial.
    pub segments_missing: u64,
    /// Partition tails no live query node serves caught up: partial too.
    pub tails_unavailable: u64,
}

impl ScanStats {
    pub fn add(&mut self, other: &ScanStats) {
        self.segments_queried += other.segments_queried;
        self.segments_processed += other.segments_processed;
        self.segments_matched += other.segments_matched;
        self.docs_scanned += other.docs_scanned;
        self.total_docs += other.total_docs;
        self.offset_gaps += other.offset_gaps;
        self.consuming_segments += other.consuming_segments;
        self.tails_excluded += other.tails_excluded;
        self.servers_queried = self.servers_queried.max(other.servers_queried);
        self.servers_responded = self.servers_responded.max(other.servers_responded);
        self.segments_missing += other.segments_missing;
        self.tails_unavailable += other.tails_unavailable;
        self.min_consuming_freshness_ms = match (self.min_consuming_freshness_ms, other.min_consuming_freshness_ms) {
            (0, theirs) => theirs,
            (ours, 0) => ours,
            (ours, theirs) => ours.min(theirs),
        };
    }
}

tokio::task_local! {
    /// Where the scans planned by one query report their counters. Planning
    /// runs in the task that called it, so a task-local reaches every scan
    /// of the query, including those DataFusion later folds into constants.
    pub static QUERY_STATS: Arc<std::sync::Mutex<ScanStats>>;
}
