//! Coordination for sluice: who owns which partition, the atomic commit of a
//! segment with its partition's next offset, the segment catalog, pipeline
//! configs and leader election. One [`Coordinator`] trait, two
//! implementations: [`ZooKeeperCoordinator`] for clusters and
//! [`InProcessCoordinator`] for a single process; both pass one contract
//! test suite.
//!
//! Invariants:
//! - The fencing token is the version of the partition's checkpoint node, not
//!   the lock node: a deleted and re-created ephemeral lock starts again at
//!   version 0, so a lock version proves nothing. Acquiring a partition bumps
//!   the checkpoint (its epoch and so its version); every commit is
//!   conditioned on the version the committer acquired.
//! - A commit is one atomic operation: the segment's catalog entry is created
//!   and the checkpoint advanced to `end_offset + 1` together, or neither.
//!   Nothing half-written is ever visible.
//! - A commit whose outcome is unknown (the connection broke) is retried with
//!   the same segment; the retry recognises a commit that already landed, so
//!   a segment is never committed twice and the checkpoint never advances
//!   twice.
//! - Offsets are continuous: a segment must start at the checkpoint's next
//!   offset. A gap or overlap is refused as `Discontinuous`, never committed.
//! - Every record stored in ZooKeeper carries a format version and records
//!   of every earlier version are read ([`record`]).
//! - A lease belongs to one session. When a session ends (expiry, explicit
//!   close), its leases are dead at once: commits under them are `Fenced`
//!   without reaching the store.

mod assignment;
mod balancer;
mod error;
mod memory;
pub mod record;
mod types;
mod zk;

use async_trait::async_trait;
use futures::future::BoxFuture;

pub use assignment::{fair_assignment, fair_share, replica_assignment};
pub use balancer::assigned_partitions;
pub use error::CoordError;
pub use memory::InProcessCoordinator;
pub use types::{Checkpoint, CommitOutcome, Lease, NodeInfo, Position, SegmentRecord, WorkerInfo, hostname, node_id};
pub use zk::{ZooKeeperAuth, ZooKeeperCoordinator, ZooKeeperOptions};

/// Resolves when the data it was returned with may have changed (a one-shot
/// watch). It also resolves when the session ends, so waiters re-read.
pub type Change = BoxFuture<'static, ()>;

/// Leadership held by one node; see [`Coordinator::campaign`].
pub struct Leadership {
    lost: Change,
    resign: Option<BoxFuture<'static, ()>>,
}

impl Leadership {
    pub(crate) fn new(lost: Change, resign: BoxFuture<'static, ()>) -> Self {
        Self { lost, resign: Some(resign) }
    }

    /// Resolves when this node is no longer the leader (session ended or its
    /// election node was removed).
    pub async fn lost(&mut self) {
        (&mut self.lost).await
    }

    /// Gives leadership up so another node takes over at once.
    pub async fn resign(mut self) {
        if let Some(resign) = self.resign.take() {
            resign.await;
        }
    }
}

#[async_trait]
pub trait Coordinator: Send + Sync {
    /// Identifies the current session; leases from another session are dead.
    fn session_id(&self) -> u64;

    // ---- membership --------------------------------------------------------

    /// Registers this worker for as long as the session lives.
    async fn register_worker(&self, worker: &WorkerInfo) -> Result<(), CoordError>;
    /// Live workers, sorted by id, and a watch on the list.
    async fn workers(&self) -> Result<(Vec<WorkerInfo>, Change), CoordError>;
    /// Registers this query node for as long as the session lives (again
    /// under a new session after an expiry, as a worker is).
    /// Registering again from the same session replaces the record (a query
    /// node publishes what it serves this way); it outlives session losses.
    async fn register_query_node(&self, node: &NodeInfo) -> Result<(), CoordError>;
    /// Live query nodes, sorted by id, and a watch on the list and on each
    /// node's record.
    async fn query_nodes(&self) -> Result<(Vec<NodeInfo>, Change), CoordError>;

    // ---- partitions --------------------------------------------------------

    /// Takes partition `partition` of `pipeline` for `owner`, or `None` when
    /// another live session holds it. Bumps the fencing epoch.
    async fn acquire(&self, pipeline: &str, partition: i32, owner: &str) -> Result<Option<Lease>, CoordError>;
    /// Gives the partition up. Only the lease's own lock is removed.
    async fn release(&self, lease: Lease) -> Result<(), CoordError>;
    /// Whether the lease is still the one in force (nobody fenced it).
    async fn still_owner(&self, lease: &Lease) -> Result<bool, CoordError>;
    /// Creates the segment's catalog entry and advances the checkpoint to
    /// `segment.end_offset + 1`, atomically, if `lease` is still in force and
    /// the segment starts where the checkpoint is. On `Committed`, `lease`
    /// carries the new checkpoint.
    async fn commit(&self, lease: &mut Lease, segment: &SegmentRecord) -> Result<CommitOutcome, CoordError>;
    /// The partition's checkpoint, if it ever had one.
    async fn checkpoint(&self, pipeline: &str, partition: i32) -> Result<Option<Checkpoint>, CoordError>;
    /// Operator reset: the partition restarts from `to`. Fences the owner.
    async fn reset_offset(&self, pipeline: &str, partition: i32, to: Position) -> Result<Checkpoint, CoordError>;
    /// Every partition of `pipeline` that has a checkpoint, with it.
    async fn checkpoints(&self, pipeline: &str) -> Result<Vec<(i32, Checkpoint)>, CoordError>;
    /// Current owner of every locked partition of `pipeline`.
    async fn partition_owners(&self, pipeline: &str) -> Result<Vec<(i32, String)>, CoordError>;

    // ---- catalog -----------------------------------------------------------

    /// Committed segments of `pipeline`, sorted by name, and a watch.
    async fn segments(&self, pipeline: &str) -> Result<(Vec<SegmentRecord>, Change), CoordError>;
    /// Removes a segment from the catalog (retention). Its checkpoint stays.
    async fn delete_segment(&self, pipeline: &str, name: &str) -> Result<(), CoordError>;

    // ---- pipeline configs --------------------------------------------------

    /// Stores (creates or replaces) a pipeline's config text.
    async fn apply_pipeline(&self, pipeline: &str, config: &str) -> Result<(), CoordError>;
    /// Removes a pipeline's config; its checkpoints and segments stay.
    async fn delete_pipeline(&self, pipeline: &str) -> Result<(), CoordError>;
    /// Every pipeline with any state (applied config, checkpoints or
    /// segments), sorted; pipelines run from files appear here too.
    async fn known_pipelines(&self) -> Result<Vec<String>, CoordError>;
    /// Every applied pipeline config, sorted by name, and a watch on the set
    /// and on each config's content.
    async fn pipelines(&self) -> Result<(Vec<(String, String)>, Change), CoordError>;

    // ---- leader election ---------------------------------------------------

    /// Waits until this node is the leader; exactly one live node is.
    async fn campaign(&self, node: &str) -> Result<Leadership, CoordError>;
}
