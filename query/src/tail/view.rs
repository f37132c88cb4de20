//! A table's view: the committed segments this node loaded and each
//! partition's tail, cut consistently (the tail above the largest committed
//! end) and published as one swap; the tails' chunks, sealed and merged off
//! the consumer's path; and which partitions' tails this node serves in a
//! cluster.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rdkafka::Offset;
use sluice_config::PipelineConfig;
use sluice_coordinator::NodeInfo;
use sluice_decode::Decoder;
use sluice_segments::{ConsumingSegment, Segment, SegmentSchema, reseal, seal};
use tokio::sync::watch;

use super::status::{ConsumerStatus, TailBudget, TailStatus};
use crate::scan::table::SegmentTable;
use crate::topology::{CONSUMING_SUFFIX, Elsewhere, RemoteSegment, RemoteTail, TailStart, UnservedSegment};

/// A merged chunk is at least this many times the size of the next one.
const MERGE_RATIO: u32 = 4;

/// How old a catching-up tail's newest record may be for the tail to
/// serve (see [`PartitionTail::caught_up`]).
const CAUGHT_UP_LAG: Duration = Duration::from_secs(1);

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
pub(super) struct Membership {
    cluster: Arc<crate::membership::Cluster>,
    registration: Arc<watch::Sender<NodeInfo>>,
}

/// A served table: its committed segments and, when followed, its tail.
pub struct TableView {
    table: Arc<SegmentTable>,
    state: Mutex<ViewState>,
    pub(super) budget: Arc<TailBudget>,
    pub(super) following: AtomicBool,
    pub(super) closed: AtomicBool,
    /// The applied config the consumer should run with; a change restarts it.
    pub(super) config: Mutex<Option<Arc<PipelineConfig>>>,
    pub(super) config_changed: AtomicBool,
    /// Wakes a consumer waiting out its backoff when the config changes.
    pub(super) config_notify: tokio::sync::Notify,
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

    pub(super) fn membership(&self) -> Option<Arc<Membership>> {
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
    pub(super) fn assigned(&self, partitions: i32) -> BTreeSet<i32> {
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
    pub(super) fn handed_over(&self, partition: i32, partitions: i32) -> bool {
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
    pub(super) fn set_partitions(&self, partitions: i32) {
        let mut state = self.lock();
        if state.partitions != partitions {
            state.partitions = partitions;
            self.publish(&state);
        }
    }

    /// The consumer starts following `partition`: the tail serves others
    /// once it has read up to `high_watermark` (None: nothing to catch up).
    pub(super) fn following(&self, partition: i32, high_watermark: Option<i64>) {
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
    pub(super) fn position(&self, partition: i32, next: i64, high: i64) {
        let mut state = self.lock();
        if let Some(tail) = state.tails.get_mut(&partition).filter(|t| !t.ready)
            && tail.at_position(next, high)
        {
            self.publish(&state);
        }
    }

    /// Whether the tail of `partition` has yet to catch up.
    pub(super) fn catching_up(&self, partition: i32) -> bool {
        self.lock().tails.get(&partition).is_some_and(|t| !t.ready)
    }

    /// This node no longer follows `partition`: its tail goes.
    pub(super) fn stop_following(&self, partition: i32) {
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
    pub(super) fn start_of(&self, partition: i32, fallback: Offset) -> Offset {
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

    pub(super) fn set_consumer(&self, update: impl FnOnce(&mut ConsumerStatus)) {
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

    pub(super) fn take_reseeks(&self) -> Vec<(i32, i64)> {
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

/// Now, in milliseconds since the epoch (a record's Kafka timestamp's unit).
pub(super) fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

#[cfg(test)]
mod tests;
