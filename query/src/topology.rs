//! Where a table's rows are: the words for the parts of a table a query
//! node does not hold itself (segments other nodes serve, segments no live
//! node serves, tails other nodes follow), shared by the table, the tail,
//! the catalog follower and the cluster's scans.

use std::collections::BTreeMap;
use std::sync::Arc;

/// The suffix of a tail segment's name; scans count these as consuming.
pub const CONSUMING_SUFFIX: &str = "__CONSUMING";

/// A committed segment that other query nodes serve (in a cluster).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteSegment {
    pub name: String,
    pub partition: i32,
    pub end_offset: i64,
    pub rows: u64,
    /// The segment's time column and its range of values, from its
    /// catalog record.
    pub time: Option<TimeRange>,
}

/// A time column's range of values in a segment (in the column's unit).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimeRange {
    pub column: Arc<str>,
    pub from: i64,
    pub to: i64,
}

/// A committed segment no live query node serves (in a cluster).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnservedSegment {
    pub name: String,
    pub partition: i32,
    pub start_offset: i64,
}

/// The tail of a partition this node does not serve (in a cluster): its
/// rows above `after`, this node's committed end of the partition (none:
/// nothing committed yet), are read on a node that serves it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RemoteTail {
    pub partition: i32,
    pub after: Option<i64>,
}

/// The part of a table this node does not hold: segments served by other
/// query nodes, committed segments no live node serves, and tails other
/// nodes follow; and, for the tasks others send here, where each tail this
/// node serves begins. Published with the segments in one swap, so a task
/// never pairs a tail's chunks with another moment's beginning.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Elsewhere {
    pub remote: Vec<RemoteSegment>,
    pub missing: Vec<String>,
    pub remote_tails: Vec<RemoteTail>,
    /// Partition → where the tail this node serves to others begins.
    pub tails_from: BTreeMap<i32, TailStart>,
}

/// Where a tail begins: `from`, its first offset (`i64::MIN`: the start of
/// the partition), after `committed_end` when it was cut at a commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TailStart {
    pub from: i64,
    pub committed_end: Option<i64>,
}

impl Elsewhere {
    /// Whether this node holds the whole table.
    pub fn is_empty(&self) -> bool {
        self.remote.is_empty() && self.missing.is_empty() && self.remote_tails.is_empty()
    }
}
