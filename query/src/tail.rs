//! The real-time tail: rows not yet committed, read by the query node
//! itself from Kafka, served with the committed segments.
//!
//! Invariants:
//! - Every snapshot a query sees is a consistent cut per partition: the
//!   committed segments this node has loaded, up to the largest end offset E
//!   among them, plus the tail rows with offsets above E — never a row twice.
//!   Loading a segment and trimming the tail to the rows above its end happen
//!   under one lock and are published as one swap ([`TableView::set_committed`]),
//!   so an answer never counts a row twice and never loses one it had
//!   (the rows above E stay in the tail until a segment holds them).
//! - A merge of chunks replaces exactly the chunks it read, in one swap, and
//!   only if they are all still there: a trim that happened meanwhile wins.
//! - The tail never commits anything and never counts or dead-letters bad
//!   records: it classifies them with the workers' decoder and skips them.
//! - Tail memory is bounded by `limits.tail_memory` for the whole node; a
//!   partition whose tail would exceed it is answered from committed data
//!   only — the response says so — until its next segment loads.
//! - The consumer never stops for good while the table is served: a failure
//!   or panic is counted, shown in `/health` and retried with backoff, and
//!   the tail it built is kept (reading resumes after its last offset).
//!
//! How: a consumer per table (`follow`) appends each record to the
//! partition's consuming segment (the workers' `ConsumingSegment`: live
//! indexes, min/max); every 200 ms the changed tails seal just their new rows
//! in memory into a regular `Segment` named `<table>__<p>__CONSUMING`, so
//! indexes, pruning and the fast path serve the tail exactly as they serve
//! committed segments. Chunks are merged off the consumer's path
//! (log-structured, each at least four times the size of the next), from
//! their sealed columns ([`sluice_segments::reseal`]); a trim reseals only the
//! chunk the committed end cuts through.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::{FutureExt, StreamExt};
use rdkafka::consumer::Consumer;
use rdkafka::{Message, Offset, TopicPartitionList};
use sluice_config::PipelineConfig;
use sluice_coordinator::{Checkpoint, Coordinator, NodeInfo, Position};
use sluice_decode::Decoder;
use sluice_segments::{ConsumingSegment, Segment, SegmentSchema, reseal, seal};
use tokio::sync::watch;

use crate::topology::{Elsewhere, RemoteSegment, RemoteTail, TailStart, UnservedSegment};

use crate::scan::table::SegmentTable;
use crate::topology::CONSUMING_SUFFIX;

/// How often changed tails are sealed and published.
const PUBLISH_EVERY: Duration = Duration::from_millis(200);

/// A merged chunk is at least this many times the size of the next one.
const MERGE_RATIO: u32 = 4;

/// Backoff of a failing tail consumer.
const RETRY_MIN: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(30);

/// How often, in a cluster, the consumer's position is compared with the
/// high watermark of the tails still catching up.
const POSITION_EVERY: Duration = Duration::from_millis(500);

/// How old a catching-up tail's newest record may be for the tail to
/// serve (see [`PartitionTail::caught_up`]).
const CAUGHT_UP_LAG: Duration = Duration::from_secs(1);

/// Kafka errors that last longer than this without a record in between
/// mark the consumer `erroring` in `/health`.
const ERRORS_SHOWN_AFTER: Duration = Duration::from_secs(10);

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
    used: AtomicU64,
    limit: u64,
    /// Merges run one at a time, so on a small machine they take a core at
    /// most and the consumers keep theirs.
    merge_lane: Mutex<()>,
}

impl TailBudget {
    pub fn new(limit: u64) -> Arc<Self> {
        Arc::new(TailBudget { used: AtomicU64::new(0), limit, merge_lane: Mutex::new(()) })
    }

    pub fn enabled(&self) -> bool {
        self.limit > 0
    }
}

/// What decoding a table's records needs.
struct Decoding {
    schema: Arc<SegmentSchema>,
    decoder: Decoder,
}

#[derive(Default)]
struct PartitionTail {
    /// The first offset the tail may hold: one past the committed end.
    /// None: from the first record read.
    base: Option<i64>,
    /// Rows since the last publish; sealed into a new chunk at the next.
    builder: Option<ConsumingSegment>,
    /// Sealed chunks in offset order.
    chunks: Vec<Arc<Segment>>,
    /// A merge of some of `chunks` is running.
    merging: bool,
    dirty: bool,
    newest_ms: i64,
    /// Bytes counted in the budget.
    charged: u64,
    over_limit: bool,
    /// Where the consumer must read from again (after an over-limit reset).
    reseek: Option<i64>,
    /// In a cluster: the partition's high watermark when this node started
    /// following it; the tail is served to others (and used by this node's
    /// own queries) once it has read that far.
    catch_up_to: Option<i64>,
    ready: bool,
}

impl PartitionTail {
    /// Whether this tail holds everything up to the watermark it set out to
    /// reach, and is within the memory limit.
    fn serves(&self) -> bool {
        self.ready && !self.over_limit
    }

    /// Marks the tail ready once it has read past the watermark it set out
    /// to reach *and* its newest record is at most [`CAUGHT_UP_LAG`] old —
    /// a tail that reached an old watermark while the topic moved on is not
    /// yet as fresh as the holder a planner used before it (Pinot's
    /// freshness-based catch-up). Returns whether it just became ready.
    fn caught_up(&mut self, now_ms: i64) -> bool {
        let reached = match self.catch_up_to {
            None => true,
            Some(target) => {
                self.next_offset().is_some_and(|next| next >= target)
                    && now_ms - self.newest_ms <= CAUGHT_UP_LAG.as_millis() as i64
            }
        };
        self.became_ready(reached)
    }

    /// The consumer's position (past control records and compacted
    /// offsets) reached the partition's current high watermark: caught up,
    /// however old the newest record. Returns whether it just became ready.
    fn at_position(&mut self, next: i64, high: i64) -> bool {
        self.became_ready(next >= high)
    }

    fn became_ready(&mut self, reached: bool) -> bool {
        let became = reached && !self.ready;
        self.ready |= reached;
        became
    }

    /// The offset the consumer should read next for this tail.
    fn next_offset(&self) -> Option<i64> {
        let read = self.builder.as_ref().map(ConsumingSegment::next_offset);
        match (self.base, read) {
            (Some(b), Some(r)) => Some(b.max(r)),
            (b, r) => b.or(r),
        }
    }
}

/// Chunks to merge: adjacent, the newest of a partition's tail.
struct MergeJob {
    partition: i32,
    inputs: Vec<Arc<Segment>>,
}

#[derive(Default)]
struct ViewState {
    committed: Vec<Arc<Segment>>,
    /// In a cluster: the committed segments served by other nodes or none.
    elsewhere: Elsewhere,
    /// The largest end offset among the loaded segments, per partition.
    ends: HashMap<i32, i64>,
    tails: BTreeMap<i32, PartitionTail>,
    decoding: Option<Arc<Decoding>>,
    /// The topic's partition count, as the consumer last read it.
    partitions: i32,
}

/// A view's place in a cluster: which tails it follows, and where it says
/// which ones it serves.
struct Membership {
    cluster: Arc<crate::membership::Cluster>,
    registration: Arc<watch::Sender<NodeInfo>>,
}

/// A served table: its committed segments and, when followed, its tail.
pub struct TableView {
    table: Arc<SegmentTable>,
    state: Mutex<ViewState>,
    budget: Arc<TailBudget>,
    following: AtomicBool,
    closed: AtomicBool,
    /// The applied config the consumer should run with; a change restarts it.
    config: Mutex<Option<Arc<PipelineConfig>>>,
    config_changed: AtomicBool,
    /// Wakes a consumer waiting out its backoff when the config changes.
    config_notify: tokio::sync::Notify,
    consumer: Mutex<ConsumerStatus>,
    membership: Mutex<Option<Arc<Membership>>>,
}

impl TableView {
    pub fn new(table: Arc<SegmentTable>, budget: Arc<TailBudget>) -> Arc<Self> {
        Arc::new(TableView {
            table,
            state: Mutex::default(),
            budget,
            following: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            config: Mutex::new(None),
            config_changed: AtomicBool::new(false),
            config_notify: tokio::sync::Notify::new(),
            consumer: Mutex::default(),
            membership: Mutex::default(),
        })
    }

    /// In a cluster: this view follows only the tails assigned to this node
    /// and publishes, in `registration`, those it serves caught up.
    pub fn join_cluster(&self, cluster: Arc<crate::membership::Cluster>, registration: Arc<watch::Sender<NodeInfo>>) {
        *self.membership.lock().unwrap_or_else(|e| e.into_inner()) =
            Some(Arc::new(Membership { cluster, registration }));
    }

    fn membership(&self) -> Option<Arc<Membership>> {
        self.membership.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The partitions with a tail, as far as this node knows: the topic's
    /// count as its consumer read it, or the ones other nodes serve tails
    /// of. (A topic no node can read has no tail to miss: answers hold its
    /// committed rows, as a lone node's do, and `/health` tells.)
    fn partition_count(&self, state: &ViewState, membership: &Membership) -> i32 {
        state.partitions.max(membership.cluster.tail_partitions(self.table.name()))
    }

    /// Which of the topic's `partitions` this node should follow: all of
    /// them outside a cluster; in one, those it is an assignee of.
    fn assigned(&self, partitions: i32) -> BTreeSet<i32> {
        let Some(membership) = self.membership() else { return (0..partitions).collect() };
        let cluster = &membership.cluster;
        cluster
            .tail_assignment(self.table.name(), partitions, self.replication())
            .into_iter()
            .filter(|(_, ids)| ids.iter().any(|id| id == cluster.self_id()))
            .map(|(partition, _)| partition)
            .collect()
    }

    /// Whether this node, no longer among the assignees of `partition`,
    /// may stop following it: every assignee serves it caught up.
    fn handed_over(&self, partition: i32, partitions: i32) -> bool {
        let Some(membership) = self.membership() else { return false };
        let assignment = membership.cluster.tail_assignment(self.table.name(), partitions, self.replication());
        let assignees = assignment.get(&partition).map(Vec::as_slice).unwrap_or_default();
        membership.cluster.tail_served_by_assignees(self.table.name(), partition, assignees)
    }

    /// The table's own `replication`, from the config it is followed with.
    fn replication(&self) -> Option<u32> {
        self.config.lock().unwrap_or_else(|e| e.into_inner()).as_ref().and_then(|c| c.replication)
    }

    /// The consumer read the topic's partition count.
    fn set_partitions(&self, partitions: i32) {
        let mut state = self.lock();
        if state.partitions != partitions {
            state.partitions = partitions;
            self.publish(&state);
        }
    }

    /// The consumer starts following `partition`: the tail serves others
    /// once it has read up to `high_watermark` (None: nothing to catch up).
    fn following(&self, partition: i32, high_watermark: Option<i64>) {
        let mut state = self.lock();
        let tail = state.tails.entry(partition).or_default();
        if !tail.ready {
            tail.catch_up_to = high_watermark;
            if tail.caught_up(now_ms()) {
                self.publish(&state);
            }
        }
    }

    /// The consumer's position on `partition` (past control records and
    /// compacted offsets) and the partition's `high` watermark now: a tail
    /// may be caught up with no record to show.
    fn position(&self, partition: i32, next: i64, high: i64) {
        let mut state = self.lock();
        if let Some(tail) = state.tails.get_mut(&partition).filter(|t| !t.ready)
            && tail.at_position(next, high)
        {
            self.publish(&state);
        }
    }

    /// Whether the tail of `partition` has yet to catch up.
    fn catching_up(&self, partition: i32) -> bool {
        self.lock().tails.get(&partition).is_some_and(|t| !t.ready)
    }

    /// This node no longer follows `partition`: its tail goes.
    fn stop_following(&self, partition: i32) {
        let mut state = self.lock();
        if let Some(mut tail) = state.tails.remove(&partition) {
            self.budget.used.fetch_sub(std::mem::take(&mut tail.charged), Ordering::SeqCst);
            tracing::info!(table = %self.table.name(), partition, "tail served by its new holders; no longer followed here");
            self.publish(&state);
        }
    }

    pub fn table(&self) -> &Arc<SegmentTable> {
        &self.table
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ViewState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Stops the tail consumer (the table is no longer served).
    pub fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        let mut state = self.lock();
        for tail in state.tails.values_mut() {
            self.budget.used.fetch_sub(std::mem::take(&mut tail.charged), Ordering::SeqCst);
        }
        state.tails.clear();
    }

    /// The loaded segments changed: the tails keep only the rows above each
    /// partition's committed end, and both are published in one swap.
    pub fn set_committed(&self, segments: Vec<Arc<Segment>>) {
        self.set_committed_with(segments, Vec::new(), Vec::new());
    }

    /// [`TableView::set_committed`] in a cluster: `remote` are the committed
    /// segments other query nodes serve (their rows leave the tail as a
    /// loaded segment's do), `unserved` those no live node serves. An
    /// unserved segment at or below its partition's cut is missing from
    /// answers (the tail no longer holds its rows); one above it is pending
    /// (its rows are still tail rows) and left out.
    pub fn set_committed_with(
        &self,
        segments: Vec<Arc<Segment>>,
        remote: Vec<RemoteSegment>,
        unserved: Vec<UnservedSegment>,
    ) {
        let mut state = self.lock();
        let mut ends: HashMap<i32, i64> = HashMap::new();
        let served = segments
            .iter()
            .map(|s| (s.meta().partition, s.meta().end_offset))
            .chain(remote.iter().map(|r| (r.partition, r.end_offset)));
        for (partition, end_offset) in served {
            let end = ends.entry(partition).or_insert(end_offset);
            *end = (*end).max(end_offset);
        }
        // The cut never moves back: rows at or below it were committed, and
        // a segment served no more (its node died) is missing, not tail.
        for (partition, end) in &state.ends {
            let at = ends.entry(*partition).or_insert(*end);
            *at = (*at).max(*end);
        }
        let missing: Vec<String> = unserved
            .into_iter()
            .filter(|u| ends.get(&u.partition).is_some_and(|&cut| u.start_offset <= cut))
            .map(|u| u.name)
            .collect();
        if !missing.is_empty() {
            tracing::warn!(table = %self.table.name(), missing = missing.len(), "committed segments no live query node serves");
        }
        metrics::gauge!("sluice_query_segments_unavailable", "table" => self.table.name().to_string())
            .set(missing.len() as f64);
        state.committed = segments;
        state.elsewhere = Elsewhere { remote, missing, ..Elsewhere::default() };
        let decoding = state.decoding.clone();
        for (&partition, &end) in &ends {
            if state.ends.get(&partition).is_some_and(|e| *e >= end) {
                continue;
            }
            if let (Some(decoding), Some(tail)) = (&decoding, state.tails.get_mut(&partition)) {
                self.trim(tail, partition, end, decoding);
            }
        }
        state.ends = ends;
        self.publish(&state);
    }

    /// Keeps the tail's rows above `end`: chunks below it go, the one it
    /// cuts through is resealed from `end + 1`.
    fn trim(&self, tail: &mut PartitionTail, partition: i32, end: i64, decoding: &Decoding) {
        tail.base = Some(end + 1);
        if tail.over_limit {
            // Dropped when it outgrew the budget: read again from the end.
            tail.over_limit = false;
            forget(tail, end);
            self.recharge(tail);
            return;
        }
        // The rows since the last publish become a chunk first, so the cut
        // below sees every row the tail holds; the next row the tail takes
        // is above the committed end.
        self.seal_tail(tail, partition, decoding);
        if tail.builder.as_ref().is_none_or(|b| b.next_offset() <= end) {
            tail.builder = Some(ConsumingSegment::new(decoding.schema.clone(), partition, end + 1));
        }
        tail.chunks.retain(|c| c.meta().end_offset > end);
        if let Some(first) = tail.chunks.first().filter(|c| c.meta().start_offset <= end).cloned() {
            let name = self.chunk_name(partition);
            match reseal(&[first.as_ref()], end + 1, &name, first.meta().created_at_ms) {
                Ok(Some(image)) => match image.open() {
                    Ok(cut) => tail.chunks[0] = Arc::new(cut),
                    Err(e) => self.drop_tail(tail, partition, end, &e),
                },
                Ok(None) => {
                    tail.chunks.remove(0);
                }
                Err(e) => self.drop_tail(tail, partition, end, &e),
            }
        }
        self.recharge(tail);
    }

    /// A tail that could not be cut is read again from the committed end:
    /// exactly-once over a faster answer.
    fn drop_tail(&self, tail: &mut PartitionTail, partition: i32, end: i64, error: &dyn std::fmt::Display) {
        tracing::warn!(table = %self.table.name(), partition, %error, "cutting the tail failed; reading it again");
        forget(tail, end);
    }

    fn chunk_name(&self, partition: i32) -> String {
        format!("{}__{partition}{CONSUMING_SUFFIX}", self.table.name())
    }

    /// Seals the rows since the last publish into a new chunk.
    fn seal_tail(&self, tail: &mut PartitionTail, partition: i32, decoding: &Decoding) {
        tail.dirty = false;
        let Some(builder) = tail.builder.take() else { return };
        let Some(last) = builder.last_offset() else {
            tail.builder = Some(builder);
            return;
        };
        tail.builder = Some(ConsumingSegment::new(decoding.schema.clone(), partition, last + 1));
        if !builder.is_empty()
            && let Some(chunk) = self.seal_chunk(&builder, partition, tail.newest_ms)
        {
            tail.chunks.push(chunk);
        }
    }

    /// The newest chunks to merge, while one is smaller than
    /// [`MERGE_RATIO`] times the rows after it.
    fn plan_merge(tail: &mut PartitionTail, partition: i32) -> Option<MergeJob> {
        if tail.merging || tail.chunks.len() < 2 {
            return None;
        }
        let mut from = tail.chunks.len() - 1;
        let mut after = tail.chunks[from].num_rows();
        let same_columns = |a: &Segment, b: &Segment| a.meta().schema == b.meta().schema;
        while from > 0
            && tail.chunks[from - 1].num_rows() < MERGE_RATIO.saturating_mul(after)
            && same_columns(&tail.chunks[from - 1], &tail.chunks[from])
        {
            from -= 1;
            after = after.saturating_add(tail.chunks[from].num_rows());
        }
        (tail.chunks.len() - from >= 2).then(|| {
            tail.merging = true;
            MergeJob { partition, inputs: tail.chunks[from..].to_vec() }
        })
    }

    /// Merges off the caller's thread; the result replaces its inputs when
    /// they are all still there.
    fn spawn_merge(self: &Arc<Self>, job: MergeJob) {
        let view = self.clone();
        let task = tokio::task::spawn_blocking(move || {
            let _lane = view.budget.merge_lane.lock().unwrap_or_else(|e| e.into_inner());
            let parts: Vec<&Segment> = job.inputs.iter().map(Arc::as_ref).collect();
            let newest = parts.last().map_or(0, |p| p.meta().created_at_ms);
            let merged = match reseal(&parts, i64::MIN, &view.chunk_name(job.partition), newest)
                .and_then(|image| image.map(|i| i.open()).transpose())
            {
                Ok(merged) => merged.map(Arc::new),
                Err(e) => {
                    tracing::warn!(table = %view.table.name(), partition = job.partition, error = %e, "merging tail chunks failed");
                    None
                }
            };
            view.finish_merge(job, merged);
        });
        drop(task);
    }

    fn finish_merge(self: &Arc<Self>, job: MergeJob, merged: Option<Arc<Segment>>) {
        let mut state = self.lock();
        let Some(tail) = state.tails.get_mut(&job.partition) else { return };
        tail.merging = false;
        let Some(merged) = merged else { return };
        let n = job.inputs.len();
        let at = tail.chunks.iter().position(|c| Arc::ptr_eq(c, &job.inputs[0]));
        let Some(at) = at.filter(|&at| {
            tail.chunks.len() >= at + n
                && tail.chunks[at..at + n].iter().zip(&job.inputs).all(|(a, b)| Arc::ptr_eq(a, b))
        }) else {
            return; // trimmed meanwhile: the merge is stale
        };
        tail.chunks.splice(at..at + n, [merged]);
        self.recharge(tail);
        let next = Self::plan_merge(tail, job.partition);
        self.publish(&state);
        drop(state);
        if let Some(next) = next {
            self.spawn_merge(next);
        }
    }

    fn seal_chunk(&self, builder: &ConsumingSegment, partition: i32, newest_ms: i64) -> Option<Arc<Segment>> {
        match seal(builder, &self.chunk_name(partition), newest_ms).and_then(|image| image.open()) {
            Ok(segment) => Some(Arc::new(segment)),
            Err(e) => {
                tracing::warn!(table = %self.table.name(), partition, error = %e, "sealing the tail failed");
                None
            }
        }
    }

    fn recharge(&self, tail: &mut PartitionTail) {
        let bytes = tail.builder.as_ref().map_or(0, ConsumingSegment::memory_bytes) as u64
            + tail.chunks.iter().map(|s| s.size_bytes() as u64).sum::<u64>();
        self.budget.used.fetch_sub(tail.charged, Ordering::SeqCst);
        self.budget.used.fetch_add(bytes, Ordering::SeqCst);
        tail.charged = bytes;
    }

    /// Where the consumer starts reading `partition`: after what the tail
    /// already holds (a restarted consumer), else after the committed end,
    /// else `fallback`.
    fn start_of(&self, partition: i32, fallback: Offset) -> Offset {
        let mut state = self.lock();
        let end = state.ends.get(&partition).copied();
        let tail = state.tails.entry(partition).or_default();
        if let Some(end) = end {
            tail.base = Some(tail.base.unwrap_or(end + 1).max(end + 1));
        }
        match tail.next_offset() {
            Some(next) => Offset::Offset(next),
            None => {
                if let Offset::Offset(o) = fallback {
                    tail.base = Some(o);
                }
                fallback
            }
        }
    }

    /// Decodes records with `config`'s schema and decoder from now on (the
    /// consumer sets it each time it starts).
    pub fn set_decoding(&self, config: &PipelineConfig) {
        let next = Arc::new(Decoding {
            schema: Arc::new(SegmentSchema::from_pipeline(config)),
            decoder: Decoder::new(config),
        });
        let mut state = self.lock();
        if state.decoding.as_ref().is_some_and(|d| d.schema != next.schema) {
            // The columns changed (`pipeline apply`): each open builder is
            // sealed with the columns it holds, and the next starts with
            // the new ones. A chunk is of one schema, and so is a merge.
            let partitions: Vec<i32> = state.tails.keys().copied().collect();
            for partition in partitions {
                let tail = state.tails.get_mut(&partition).expect("listed");
                if tail.over_limit {
                    continue;
                }
                self.seal_tail(tail, partition, &next);
                if let Some(empty) = tail.builder.as_ref().filter(|b| b.is_empty() && b.schema() != &next.schema) {
                    tail.builder = Some(ConsumingSegment::new(next.schema.clone(), partition, empty.next_offset()));
                }
                self.recharge(tail);
            }
            self.publish(&state);
        }
        state.decoding = Some(next);
    }

    /// Fetches the writer schema `payload` names (Avro in Confluent's wire
    /// format) when it is not known yet, retrying with backoff, the error
    /// in the consumer's status, until the registry answers: the tail never
    /// skips a record its worker will commit. False when shut down first.
    pub async fn fetch_schema(&self, payload: &[u8], shutdown: &watch::Receiver<bool>) -> bool {
        let Some(decoding) = self.lock().decoding.clone() else { return true };
        let Some(id) = decoding.decoder.unfetched(payload) else { return true };
        let mut wait = Duration::from_millis(200);
        loop {
            match decoding.decoder.fetch(id).await {
                Ok(()) => {
                    self.set_consumer(|s| {
                        if s.state == "waiting for schema" {
                            s.state = "running".into();
                            s.error = None;
                        }
                    });
                    return true;
                }
                Err(e) => {
                    tracing::warn!(table = %self.table.name(), error = %e, "tail: schema registry; retrying");
                    self.set_consumer(|s| {
                        s.state = "waiting for schema".into();
                        s.error = Some(e.to_string());
                    });
                    if *shutdown.borrow() {
                        return false;
                    }
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    /// One record of `partition` read from Kafka (or any other source of
    /// the topic's records, as tests are); served from the next publish.
    pub fn append(&self, partition: i32, offset: i64, timestamp_ms: i64, payload: &[u8]) {
        let in_cluster = self.membership().is_some();
        let mut state = self.lock();
        let Some(decoding) = state.decoding.clone() else { return };
        // In a cluster a tail exists from the moment the consumer is
        // assigned its partition until it is handed over: a record still in
        // flight for a partition handed over must not start a tail of its
        // own (one that would claim the partition from its beginning).
        if in_cluster && !state.tails.contains_key(&partition) {
            return;
        }
        let tail = state.tails.entry(partition).or_default();
        if tail.over_limit || tail.base.is_some_and(|b| offset < b) {
            return;
        }
        let base = tail.base;
        let builder = tail
            .builder
            .get_or_insert_with(|| ConsumingSegment::new(decoding.schema.clone(), partition, base.unwrap_or(offset)));
        if offset < builder.next_offset() {
            return; // a redelivery
        }
        append(builder, &decoding.decoder, offset, payload);
        tail.newest_ms = tail.newest_ms.max(timestamp_ms);
        tail.dirty = true;
        if !tail.ready {
            tail.caught_up(now_ms());
        }
        // An estimate until the next publish counts the builder exactly.
        let estimate = payload.len() as u64 + 24;
        tail.charged += estimate;
        self.budget.used.fetch_add(estimate, Ordering::SeqCst);
        if self.budget.used.load(Ordering::SeqCst) > self.budget.limit {
            tracing::warn!(
                table = %self.table.name(), partition, limit = self.budget.limit,
                "the tail exceeds limits.tail_memory: this partition is answered from committed data until its next segment loads"
            );
            metrics::counter!("sluice_query_tails_over_limit_total", "table" => self.table.name().to_string())
                .increment(1);
            tail.over_limit = true;
            tail.builder = None;
            tail.chunks = Vec::new();
            tail.dirty = true;
            self.budget.used.fetch_sub(std::mem::take(&mut tail.charged), Ordering::SeqCst);
        }
    }

    /// Seals and publishes the tails that changed since the last call, and
    /// starts the merges that became due.
    pub fn publish_dirty(self: &Arc<Self>) {
        let mut state = self.lock();
        let Some(decoding) = state.decoding.clone() else { return };
        let mut changed = false;
        let mut merges = Vec::new();
        let table = self.table.name().to_string();
        let now_ms = now_ms();
        let partitions: Vec<i32> = state.tails.iter().filter(|(_, t)| t.dirty).map(|(p, _)| *p).collect();
        for partition in partitions {
            let tail = state.tails.get_mut(&partition).expect("listed");
            if !tail.over_limit {
                self.seal_tail(tail, partition, &decoding);
                self.recharge(tail);
                merges.extend(Self::plan_merge(tail, partition));
            }
            tail.dirty = false;
            changed = true;
            if tail.newest_ms > 0 {
                metrics::gauge!("sluice_query_freshness_seconds", "table" => table.clone(), "partition" => partition.to_string())
                    .set((now_ms - tail.newest_ms).max(0) as f64 / 1000.0);
            }
        }
        if changed {
            self.publish(&state);
        }
        drop(state);
        for job in merges {
            self.spawn_merge(job);
        }
    }

    fn publish(&self, state: &ViewState) {
        let mut segments = state.committed.clone();
        let mut elsewhere = state.elsewhere.clone();
        let mut excluded = 0;
        let mut rows = 0u64;
        let membership = self.membership();
        for (partition, tail) in &state.tails {
            rows += tail.chunks.iter().map(|c| u64::from(c.num_rows())).sum::<u64>();
            if membership.is_some() {
                // In a cluster, a tail not caught up or over the limit is
                // read on a node that serves it (or reported unavailable).
                if tail.serves() {
                    segments.extend(tail.chunks.iter().cloned());
                    let start = TailStart {
                        from: tail.base.unwrap_or(i64::MIN),
                        committed_end: state.ends.get(partition).copied(),
                    };
                    elsewhere.tails_from.insert(*partition, start);
                }
            } else if tail.over_limit {
                excluded += 1;
            } else {
                segments.extend(tail.chunks.iter().cloned());
            }
        }
        if let Some(membership) = &membership {
            let partitions = self.partition_count(state, membership);
            elsewhere.remote_tails = (0..partitions)
                .filter(|p| !elsewhere.tails_from.contains_key(p))
                .map(|partition| RemoteTail { partition, after: state.ends.get(&partition).copied() })
                .collect();
            let serving: Vec<i32> = elsewhere.tails_from.keys().copied().collect();
            let table = self.table.name();
            membership.registration.send_if_modified(|info| {
                let changed = info.tails.get(table).map_or(!serving.is_empty(), |listed| *listed != serving);
                if serving.is_empty() {
                    info.tails.remove(table);
                } else {
                    info.tails.insert(table.to_string(), serving.clone());
                }
                changed
            });
        }
        self.table.set_tails_excluded(excluded);
        self.table.replace_with(segments, elsewhere);
        metrics::gauge!("sluice_query_tail_rows", "table" => self.table.name().to_string()).set(rows as f64);
    }

    /// Each partition's tail, as `/health` and `sluice status` show it.
    pub fn status(&self) -> Vec<TailStatus> {
        let state = self.lock();
        let now = now_ms();
        state
            .tails
            .iter()
            .map(|(partition, t)| TailStatus {
                table: self.table.name().to_string(),
                partition: *partition,
                rows: t.chunks.iter().map(|c| u64::from(c.num_rows())).sum(),
                from_offset: t.base,
                freshness_ms: (t.newest_ms > 0).then(|| (now - t.newest_ms).max(0)),
                over_limit: t.over_limit,
            })
            .collect()
    }

    /// The tail consumer's state, once it was started.
    pub fn consumer_status(&self) -> Option<ConsumerStatus> {
        let status = self.consumer.lock().unwrap_or_else(|e| e.into_inner());
        (!status.state.is_empty()).then(|| status.clone())
    }

    fn set_consumer(&self, update: impl FnOnce(&mut ConsumerStatus)) {
        let mut status = self.consumer.lock().unwrap_or_else(|e| e.into_inner());
        status.table = self.table.name().to_string();
        update(&mut status);
    }

    /// Waits until no merge of tail chunks runs (tests and benchmarks).
    pub async fn settle(&self) {
        while self.lock().tails.values().any(|t| t.merging) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    fn take_reseeks(&self) -> Vec<(i32, i64)> {
        let mut state = self.lock();
        state.tails.iter_mut().filter_map(|(p, t)| t.reseek.take().map(|o| (*p, o))).collect()
    }
}

/// Empties a tail and has the consumer read it again from after `end`; it
/// serves others again once the consumer's position reaches the partition's
/// high watermark.
fn forget(tail: &mut PartitionTail, end: i64) {
    tail.chunks.clear();
    tail.builder = None;
    tail.reseek = Some(end + 1);
    tail.ready = false;
    tail.catch_up_to = Some(i64::MAX);
}

fn append(builder: &mut ConsumingSegment, decoder: &Decoder, offset: i64, payload: &[u8]) {
    // Bad records are the workers' to count and dead-letter; here they are
    // skipped, classified the same way.
    let appended = match decoder.decode(payload) {
        Ok(row) => builder.append(offset, &row.datums()).is_ok(),
        Err(_) => false,
    };
    if !appended {
        let _ = builder.skip(offset);
    }
}

/// Runs a librdkafka call that waits for its main thread (assigning,
/// unassigning) on a blocking thread: the node's async threads never wait
/// on it, as a worker's partitions do not.
async fn off_runtime<T: Send + 'static>(
    consumer: &Arc<sluice_decode::SourceConsumer>,
    call: impl FnOnce(&sluice_decode::SourceConsumer) -> rdkafka::error::KafkaResult<T> + Send + 'static,
) -> rdkafka::error::KafkaResult<T> {
    let consumer = consumer.clone();
    tokio::task::spawn_blocking(move || call(&consumer)).await.unwrap_or(Err(rdkafka::error::KafkaError::Canceled))
}

/// The first offset of `partition` and the one after its last record
/// (None: unreadable now).
async fn watermarks(consumer: &Arc<sluice_decode::SourceConsumer>, topic: &str, partition: i32) -> Option<(i64, i64)> {
    let (consumer, topic) = (consumer.clone(), topic.to_string());
    tokio::task::spawn_blocking(move || consumer.fetch_watermarks(&topic, partition, Duration::from_secs(5)).ok())
        .await
        .ok()
        .flatten()
}

/// What a tail starting at `start` must read before it serves: up to the
/// high watermark, unless there is nothing between (an empty partition, a
/// start at its end). Unknown watermarks: not before the consumer's
/// position says so.
fn catch_up_target(start: Offset, watermarks: Option<(i64, i64)>) -> Option<i64> {
    match (start, watermarks) {
        (Offset::End, _) => None,
        (_, None) => Some(i64::MAX),
        (_, Some((low, high))) if high <= low => None,
        (Offset::Offset(o), Some((_, high))) if o >= high => None,
        (_, Some((_, high))) => Some(high),
    }
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// Where a partition without loaded segments starts, as its worker does:
/// the checkpoint, a reset position, or the pipeline's start position.
async fn fallback_start(coordinator: &dyn Coordinator, config: &PipelineConfig, partition: i32) -> Offset {
    let checkpoint = coordinator.checkpoint(&config.table, partition).await.ok().flatten();
    match Checkpoint::start(checkpoint.as_ref(), config.source.start_position) {
        Position::Offset(o) => Offset::Offset(o),
        Position::Earliest => Offset::Beginning,
        Position::Latest => Offset::End,
    }
}

/// Follows the table's topic into its tails until the view is closed or
/// `shutdown` turns true. The consumer is started once per view; a later
/// call with a changed config restarts it with that config, keeping the
/// tail (a change of schema takes effect when the node restarts).
pub fn follow(
    view: Arc<TableView>,
    config: Arc<PipelineConfig>,
    coordinator: Arc<dyn Coordinator>,
    shutdown: watch::Receiver<bool>,
) {
    if !view.budget.enabled() {
        return;
    }
    {
        let mut current = view.config.lock().unwrap_or_else(|e| e.into_inner());
        if current.as_ref().is_some_and(|c| c.as_ref() != config.as_ref()) {
            tracing::info!(table = %config.table, "the applied config changed: restarting the tail consumer");
            view.config_changed.store(true, Ordering::SeqCst);
            view.config_notify.notify_one();
        }
        *current = Some(config.clone());
    }
    if view.following.swap(true, Ordering::SeqCst) {
        return;
    }
    view.set_decoding(&config);
    tokio::spawn(supervise(view, coordinator, shutdown));
}

/// Runs the consumer until the view closes or the node shuts down,
/// restarting it with backoff after every failure or panic.
async fn supervise(view: Arc<TableView>, coordinator: Arc<dyn Coordinator>, mut shutdown: watch::Receiver<bool>) {
    let mut attempts = 0u32;
    let stopped =
        |view: &TableView, shutdown: &watch::Receiver<bool>| view.closed.load(Ordering::SeqCst) || *shutdown.borrow();
    while !stopped(&view, &shutdown) {
        let Some(config) = view.config.lock().unwrap_or_else(|e| e.into_inner()).clone() else { break };
        view.config_changed.store(false, Ordering::SeqCst);
        view.set_consumer(|s| {
            s.state = "running".into();
            s.error = None;
            s.retry_in_s = None;
        });
        let started = Instant::now();
        let outcome = std::panic::AssertUnwindSafe(run(&view, &config, coordinator.as_ref(), shutdown.clone()))
            .catch_unwind()
            .await;
        let error = match outcome {
            Ok(Ok(())) if stopped(&view, &shutdown) || view.config_changed.load(Ordering::SeqCst) => continue,
            Ok(Ok(())) => "the Kafka stream ended".to_string(),
            Ok(Err(e)) => e.to_string(),
            Err(panic) => format!("panicked: {}", panic_message(panic.as_ref())),
        };
        if started.elapsed() > RETRY_MAX * 2 {
            attempts = 0; // it ran fine for a while: start the backoff over
        }
        let backoff = crate::retry::backoff(RETRY_MIN, RETRY_MAX, attempts);
        attempts += 1;
        tracing::error!(table = %config.table, %error, retry_in = ?backoff, "the tail consumer failed; retrying");
        metrics::counter!("sluice_query_tail_failures_total", "table" => config.table.clone()).increment(1);
        view.set_consumer(|s| {
            s.state = "retrying".into();
            s.failures += 1;
            s.error = Some(error);
            s.retry_in_s = Some(backoff.as_secs());
        });
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = view.config_notify.notified() => attempts = 0,
            _ = shutdown.changed() => {}
        }
    }
    view.following.store(false, Ordering::SeqCst);
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "without a message".into())
}

async fn run(
    view: &Arc<TableView>,
    config: &PipelineConfig,
    coordinator: &dyn Coordinator,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), rdkafka::error::KafkaError> {
    let topic = config.source.topic.clone();
    // Only Confluent-framed Avro names schemas to fetch: other formats
    // skip the check (and its lock) per record.
    let registry = config.source.schema_registry.is_some();
    let consumer: Arc<sluice_decode::SourceConsumer> = Arc::new(
        sluice_decode::consumer_config(config)
            .set("group.id", format!("sluice-query-{}", config.table))
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("enable.partition.eof", "false")
            .set("auto.offset.reset", "earliest")
            .create_with_context(sluice_decode::SourceContext::new(&config.table))?,
    );
    view.set_decoding(config);
    tracing::info!(table = %config.table, "following the tail");
    let mut assigned: BTreeMap<i32, ()> = BTreeMap::new();
    let mut next_metadata = Instant::now();
    let mut next_position = Instant::now();
    let mut next_publish = Instant::now() + PUBLISH_EVERY;
    let mut stream = consumer.stream();
    let mut failing_since: Option<Instant> = None;
    while !view.closed.load(Ordering::SeqCst) && !*shutdown.borrow() && !view.config_changed.load(Ordering::SeqCst) {
        if next_metadata <= Instant::now() {
            next_metadata = Instant::now() + Duration::from_secs(5);
            let (c, t) = (consumer.clone(), topic.clone());
            let count = tokio::task::spawn_blocking(move || {
                let md = c.fetch_metadata(Some(&t), Duration::from_secs(5)).ok()?;
                md.topics().first().filter(|t| t.error().is_none()).map(|t| t.partitions().len() as i32)
            })
            .await
            .ok()
            .flatten();
            // The source unreadable (a wrong password, an untrusted
            // certificate) shows as the consumer erroring, with librdkafka's
            // reason; readable again, it is running.
            match (count, consumer.context().failure()) {
                (Some(_), _) => {
                    consumer.context().recovered();
                    if failing_since.take().is_some() {
                        view.set_consumer(|s| {
                            s.state = "running".into();
                            s.error = None;
                        });
                    }
                }
                (None, Some(failure)) => {
                    let since = *failing_since.get_or_insert_with(Instant::now);
                    if since.elapsed() > ERRORS_SHOWN_AFTER {
                        view.set_consumer(|s| {
                            s.state = "erroring".into();
                            s.error = Some(failure);
                        });
                    }
                }
                (None, None) => {}
            }
            let count = count.unwrap_or(0);
            if count > 0 {
                view.set_partitions(count);
            }
            let mine = view.assigned(count);
            let in_cluster = view.membership().is_some();
            let new: Vec<i32> = mine.iter().copied().filter(|p| !assigned.contains_key(p)).collect();
            for partition in new {
                let fallback = fallback_start(coordinator, config, partition).await;
                let start = view.start_of(partition, fallback);
                // In a cluster the tail serves once it has read what the
                // partition held when following began (alone, it serves
                // whatever it has: nothing to fetch).
                if in_cluster {
                    let target = catch_up_target(start, watermarks(&consumer, &topic, partition).await);
                    view.following(partition, target);
                }
                let mut tpl = TopicPartitionList::new();
                tpl.add_partition_offset(&topic, partition, start)?;
                off_runtime(&consumer, move |c| c.incremental_assign(&tpl)).await?;
                assigned.insert(partition, ());
            }
            if in_cluster {
                let handed: Vec<i32> =
                    assigned.keys().copied().filter(|p| !mine.contains(p) && view.handed_over(*p, count)).collect();
                for partition in handed {
                    let mut tpl = TopicPartitionList::new();
                    tpl.add_partition(&topic, partition);
                    off_runtime(&consumer, move |c| c.incremental_unassign(&tpl)).await?;
                    assigned.remove(&partition);
                    view.stop_following(partition);
                }
            }
        }
        if view.membership().is_some() && next_position <= Instant::now() {
            next_position = Instant::now() + POSITION_EVERY;
            // Caught up with nothing to read (the last offsets were
            // transaction markers, or nothing arrived since): the
            // consumer's position says so.
            let positions: Vec<(i32, i64)> = consumer
                .position()?
                .elements_for_topic(&topic)
                .iter()
                .filter_map(|e| match e.offset() {
                    Offset::Offset(next) if view.catching_up(e.partition()) => Some((e.partition(), next)),
                    _ => None,
                })
                .collect();
            for (partition, next) in positions {
                if let Some((_, high)) = watermarks(&consumer, &topic, partition).await {
                    view.position(partition, next, high);
                }
            }
        }
        for (partition, offset) in view.take_reseeks() {
            let mut gone = TopicPartitionList::new();
            gone.add_partition(&topic, partition);
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition_offset(&topic, partition, Offset::Offset(offset))?;
            off_runtime(&consumer, move |c| c.incremental_unassign(&gone).and_then(|()| c.incremental_assign(&tpl)))
                .await?;
        }
        let wait = next_publish.saturating_duration_since(Instant::now()).max(Duration::from_millis(1));
        tokio::select! {
            received = tokio::time::timeout(wait, stream.next()) => {
                let mut next = match received {
                    Ok(Some(Ok(message))) => {
                        if failing_since.take().is_some() {
                            view.set_consumer(|s| { s.state = "running".into(); s.error = None; });
                        }
                        Some(message)
                    }
                    Ok(Some(Err(e))) => {
                        // librdkafka retries by itself; errors that last are
                        // shown in /health, as a stalled partition would be.
                        tracing::warn!(table = %config.table, error = %e, "tail: Kafka; retrying");
                        let since = *failing_since.get_or_insert_with(Instant::now);
                        if since.elapsed() > ERRORS_SHOWN_AFTER {
                            let error = consumer.context().failure().unwrap_or_else(|| e.to_string());
                            view.set_consumer(|s| { s.state = "erroring".into(); s.error = Some(error); });
                        }
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        None
                    }
                    Ok(None) => return Ok(()),
                    Err(_) => None,
                };
                let mut taken = 0;
                while let Some(message) = next.take() {
                    let timestamp = message.timestamp().to_millis().unwrap_or_else(now_ms);
                    let payload = message.payload().unwrap_or_default();
                    if registry && !view.fetch_schema(payload, &shutdown).await {
                        return Ok(());
                    }
                    view.append(message.partition(), message.offset(), timestamp, payload);
                    taken += 1;
                    if taken < 1024 && let Some(Some(Ok(m))) = stream.next().now_or_never() {
                        next = Some(m);
                    }
                }
            }
            _ = shutdown.changed() => {}
        }
        if next_publish <= Instant::now() {
            // A publish seals the rows read since the last one (merges run
            // elsewhere); should that ever take long, the next publish
            // waits four times as long as this one took, so publishing stays
            // under a fifth of the consumer's time (freshness degrades
            // before ingestion of the tail does).
            let publishing = Instant::now();
            view.publish_dirty();
            next_publish = Instant::now() + PUBLISH_EVERY.max(publishing.elapsed() * 4);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::QueryEngine;
    use sluice_config::QueryLimits;

    const PIPELINE: &str = r#"
table = "events"
[source]
bootstrap_servers = "localhost:9092"
topic = "events"
[schema]
time_column = "ts"
[[schema.columns]]
name = "ts"
type = "timestamp"
nullable = false
[[schema.columns]]
name = "id"
type = "int64"
nullable = false
[[schema.columns]]
name = "status"
type = "int32"
[indexes]
inverted = ["status"]
"#;

    fn record(id: i64) -> Vec<u8> {
        format!("{{\"ts\": {id}, \"id\": {id}, \"status\": {}}}", if id % 10 == 0 { 404 } else { 200 }).into_bytes()
    }

    struct Fixture {
        engine: Arc<QueryEngine>,
        view: Arc<TableView>,
        decoding: Arc<Decoding>,
    }

    fn fixture(budget: u64) -> Fixture {
        let config =
            sluice_config::parse_pipeline(PIPELINE, std::path::Path::new("events.toml"), &|_: &str| None).unwrap();
        let decoding = Arc::new(Decoding {
            schema: Arc::new(SegmentSchema::from_pipeline(&config)),
            decoder: Decoder::new(&config),
        });
        let table = Arc::new(SegmentTable::new("events", decoding.schema.arrow_schema().as_ref()));
        let view = TableView::new(table.clone(), TailBudget::new(budget));
        view.lock().decoding = Some(decoding.clone());
        let engine = Arc::new(QueryEngine::new(QueryLimits::default()).unwrap());
        engine.register(table);
        Fixture { engine, view, decoding }
    }

    /// A committed segment of `partition` holding `ids` at offsets = ids.
    fn committed(f: &Fixture, partition: i32, ids: std::ops::Range<i64>) -> Arc<Segment> {
        let mut builder = ConsumingSegment::new(f.decoding.schema.clone(), partition, ids.start);
        for id in ids.clone() {
            append(&mut builder, &f.decoding.decoder, id, &record(id));
        }
        let name = format!("events__{partition}__{}__20261201T0000Z", ids.start);
        Arc::new(seal(&builder, &name, 0).unwrap().open().unwrap())
    }

    async fn answer(f: &Fixture, sql: &str) -> Vec<String> {
        let (_, batches) = f.engine.execute(sql).await.unwrap();
        let text = arrow::util::pretty::pretty_format_batches(&batches).unwrap().to_string();
        text.lines().map(str::to_string).collect()
    }

    /// What plain DataFusion answers over exactly the rows with `ids`.
    async fn expected(sql: &str, ids: impl Iterator<Item = i64>) -> Vec<String> {
        let ctx = datafusion::prelude::SessionContext::new();
        let ids: Vec<i64> = ids.collect();
        let status: Vec<i32> = ids.iter().map(|id| if id % 10 == 0 { 404 } else { 200 }).collect();
        let batch = arrow::record_batch::RecordBatch::try_from_iter([
            ("id", Arc::new(arrow::array::Int64Array::from(ids)) as arrow::array::ArrayRef),
            ("status", Arc::new(arrow::array::Int32Array::from(status)) as arrow::array::ArrayRef),
        ])
        .unwrap();
        ctx.register_batch("events", batch).unwrap();
        let batches = ctx.sql(sql).await.unwrap().collect().await.unwrap();
        let text = arrow::util::pretty::pretty_format_batches(&batches).unwrap().to_string();
        text.lines().map(str::to_string).collect()
    }

    const QUERIES: [&str; 5] = [
        "SELECT COUNT(*) AS n, COUNT(DISTINCT id) AS d, SUM(id) AS s FROM events",
        "SELECT COUNT(*) AS n FROM events WHERE status = 404",
        "SELECT status, COUNT(*) AS n, MIN(id) AS lo, MAX(id) AS hi FROM events GROUP BY status ORDER BY status",
        "SELECT id FROM events WHERE status = 404 AND id > 150 ORDER BY id",
        "SELECT id FROM events WHERE id BETWEEN 55 AND 65 ORDER BY id",
    ];

    async fn assert_rows(f: &Fixture, ids: std::ops::Range<i64>) {
        for sql in QUERIES {
            assert_eq!(answer(f, sql).await, expected(sql, ids.clone()).await, "{sql}");
        }
    }

    /// Tail + committed segments answer as DataFusion does over the same
    /// rows, at every step: tail only, a segment loaded below the tail's
    /// end (trimmed in the same swap), a segment loaded beyond it (the tail
    /// starts over after it), and the tail growing again.
    #[tokio::test]
    async fn tail_and_segments_answer_as_datafusion_over_the_same_rows() {
        let f = fixture(1 << 30);
        for id in 0..100 {
            f.view.append(0, id, 1_000 + id, &record(id));
        }
        f.view.append(0, 100, 1_100, b"not json"); // skipped, as a worker classifies it
        f.view.publish_dirty();
        assert_rows(&f, 0..100).await;
        let plan = f.engine.explain("SELECT id FROM events WHERE status = 404").await.unwrap();
        assert!(plan.contains("segments=1 (consuming=1)") && plan.contains("predicate="), "{plan}");

        // A worker commits offsets 0..=59: the tail keeps 60..=100.
        f.view.set_committed(vec![committed(&f, 0, 0..60)]);
        assert_rows(&f, 0..100).await;
        assert_eq!(f.engine.table("events").unwrap().snapshot().len(), 2);

        // A segment beyond what the tail read: the tail holds nothing below
        // its end, and records it reads later below the end are ignored.
        f.view.set_committed(vec![committed(&f, 0, 0..60), committed(&f, 0, 60..150)]);
        assert_rows(&f, 0..150).await;
        for id in 100..200 {
            f.view.append(0, id, 1_000 + id, &record(id));
        }
        f.view.publish_dirty();
        assert_rows(&f, 0..200).await;

        // Publishes seal only the new rows; chunks merge as they pile up.
        for batch in 0..20 {
            for id in 200 + batch * 10..210 + batch * 10 {
                f.view.append(0, id, 1_000 + id, &record(id));
            }
            f.view.publish_dirty();
            assert_rows(&f, 0..210 + batch * 10).await;
        }
        f.view.settle().await;
        let chunks = f.engine.table("events").unwrap().snapshot().len() - 2;
        assert!((1..=5).contains(&chunks), "{chunks} chunks for 20 publishes");
        let response = f.engine.query("SELECT COUNT(*) FROM events").await.unwrap();
        assert_eq!(response.num_consuming_segments_queried, 1, "one consuming segment per partition");
    }

    #[test]
    fn a_tail_has_nothing_to_catch_up_on_an_empty_partition_or_at_its_end() {
        assert_eq!(catch_up_target(Offset::Beginning, Some((0, 0))), None, "empty");
        assert_eq!(catch_up_target(Offset::Beginning, Some((40, 40))), None, "emptied by retention");
        assert_eq!(catch_up_target(Offset::Offset(90), Some((0, 90))), None, "starting at the end");
        assert_eq!(catch_up_target(Offset::End, Some((0, 90))), None);
        assert_eq!(catch_up_target(Offset::Offset(10), Some((0, 90))), Some(90));
        assert_eq!(catch_up_target(Offset::Beginning, Some((0, 90))), Some(90));
        assert_eq!(catch_up_target(Offset::Beginning, None), Some(i64::MAX), "unknown: the position decides");
    }

    /// In a cluster a node serves the tails it follows to others, above
    /// the planner's committed end; a tail cut past that end, or one it
    /// does not follow, is refused rather than answered short.
    #[tokio::test]
    async fn a_tail_is_served_to_other_nodes_above_their_cut_only() {
        use crate::scan::spread::tail_rows;
        let f = fixture(1 << 30);
        let cluster =
            crate::membership::Cluster::new("q1".into(), url::Url::parse("http://127.0.0.1:1").unwrap(), None);
        let (registration, published) = watch::channel(NodeInfo::default());
        f.view.join_cluster(cluster, Arc::new(registration));
        // Partition 0 reaches its watermark with records a minute old: not
        // caught up until the consumer's position is at the current one.
        f.view.following(0, Some(100));
        for id in 0..100 {
            f.view.append(0, id, now_ms() - 60_000, &record(id));
        }
        f.view.publish_dirty();
        assert_eq!(published.borrow().tails.get("events"), None, "at the watermark, but a minute behind");
        f.view.position(0, 100, 100);
        assert_eq!(published.borrow().tails.get("events"), Some(&vec![0]), "at the current watermark: published");
        // Partition 1 reaches its watermark with fresh records: caught up.
        f.view.following(1, Some(10));
        for offset in 0..10 {
            f.view.append(1, offset, now_ms(), &record(1_000 + offset));
        }
        f.view.publish_dirty();
        assert_eq!(published.borrow().tails.get("events"), Some(&vec![0, 1]), "fresh at the watermark");
        f.view.set_committed(vec![committed(&f, 0, 0..60)]);
        let (snapshot, elsewhere) = f.engine.table("events").unwrap().cluster_snapshot();
        let rows = |after: Option<i64>, partition: i32| {
            tail_rows("events", &snapshot, &elsewhere, RemoteTail { partition, after })
                .map(|segments| segments.iter().map(|s| s.num_rows()).sum::<u32>())
                .map_err(|e| e.to_string())
        };
        assert_eq!(rows(Some(59), 0), Ok(40), "the planner's cut is this node's");
        assert_eq!(rows(Some(79), 0), Ok(20), "a planner that saw a later commit: the chunk is cut");
        assert_eq!(rows(Some(i64::MAX), 0), Ok(0), "a cut past every offset (from the network): nothing, no overflow");
        let refused = [rows(Some(49), 0), rows(None, 0), rows(Some(59), 2)];
        for refusal in refused {
            assert!(refusal.as_ref().is_err_and(|e| e.contains(crate::scan::spread::NOT_SERVED)), "{refusal:?}");
        }

        // Handed over: the tail goes, and a record still in flight for the
        // partition does not start a new one (it would claim the partition
        // from its beginning, and overlap the committed rows).
        f.view.stop_following(0);
        f.view.append(0, 100, 1_100, &record(100));
        f.view.publish_dirty();
        assert_eq!(published.borrow().tails.get("events"), Some(&vec![1]), "partition 0 no longer served");
        let (snapshot, elsewhere) = f.engine.table("events").unwrap().cluster_snapshot();
        assert!(snapshot.iter().all(|s| s.meta().partition != 0 || !s.meta().name.ends_with(CONSUMING_SUFFIX)));
        assert_eq!(elsewhere.tails_from.keys().collect::<Vec<_>>(), [&1]);
    }

    /// Over the tail memory the partition is answered from committed data
    /// only, the answer says so, and the next segment restarts the tail
    /// from its end.
    #[tokio::test]
    async fn an_over_budget_tail_is_left_out_and_reported() {
        let f = fixture(4 * 1024);
        for id in 0..1_000 {
            f.view.append(0, id, 1_000 + id, &record(id));
        }
        f.view.publish_dirty();
        let table = f.engine.table("events").unwrap();
        assert_eq!(table.tails_excluded(), 1);
        let response = f.engine.query("SELECT COUNT(*) FROM events").await.unwrap();
        assert!(response.exceptions[0].message.contains("limits.tail_memory"), "{:?}", response.exceptions);
        f.view.set_committed(vec![committed(&f, 0, 0..10)]);
        assert_eq!(table.tails_excluded(), 0);
        assert_eq!(f.view.take_reseeks(), vec![(0, 10)], "the consumer reads the partition again after the segment");
        assert_eq!(f.view.budget.used.load(Ordering::SeqCst), 0, "the dropped tail gave its memory back");
    }
}
