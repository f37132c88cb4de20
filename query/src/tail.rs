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
//! - The tail never commits anything and never counts or dead-letters bad
//!   records: it classifies them with the workers' decoder and skips them.
//! - Tail memory is bounded by `limits.tail_memory` for the whole node; a
//!   partition whose tail would exceed it is answered from committed data
//!   only — the response says so — until its next segment loads.
//!
//! How: a consumer per table (`follow`) appends each record to the
//! partition's consuming segment (the workers' `ConsumingSegment`: live
//! indexes, min/max) and keeps its bytes; every 200 ms the changed tails are
//! sealed in memory into a regular `Segment` named `<table>__<p>__CONSUMING`,
//! so indexes, pruning and the fast path serve the tail exactly as they
//! serve committed segments. Trimming re-decodes the kept records above the
//! new end.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::{FutureExt, StreamExt};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::{Message, Offset, TopicPartitionList};
use sluice_config::PipelineConfig;
use sluice_coordinator::{Checkpoint, Coordinator, Position};
use sluice_decode::Decoder;
use sluice_segments::{ConsumingSegment, Segment, SegmentSchema, seal};
use tokio::sync::watch;

use crate::table::SegmentTable;

/// The suffix of a tail segment's name; scans count these as consuming.
pub const CONSUMING_SUFFIX: &str = "__CONSUMING";

/// How often changed tails are sealed and published.
const PUBLISH_EVERY: Duration = Duration::from_millis(200);

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

/// The node's tail memory, shared by every table.
#[derive(Debug)]
pub struct TailBudget {
    used: AtomicU64,
    limit: u64,
}

impl TailBudget {
    pub fn new(limit: u64) -> Arc<Self> {
        Arc::new(TailBudget { used: AtomicU64::new(0), limit })
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
    /// Each record's offset, Kafka timestamp and bytes, to rebuild the
    /// builder from the records above a new committed end.
    records: Vec<(i64, i64, Vec<u8>)>,
    /// Sealed chunks in offset order, each larger than four times the next
    /// (log-structured: a publish seals only the new rows, and a row is
    /// resealed O(log n) times as chunks merge).
    chunks: Vec<Arc<Segment>>,
    dirty: bool,
    newest_ms: i64,
    /// Bytes counted in the budget.
    charged: u64,
    over_limit: bool,
    /// Where the consumer must read from again (after an over-limit reset).
    reseek: Option<i64>,
}

#[derive(Default)]
struct ViewState {
    committed: Vec<Arc<Segment>>,
    /// The largest end offset among the loaded segments, per partition.
    ends: HashMap<i32, i64>,
    tails: BTreeMap<i32, PartitionTail>,
    decoding: Option<Arc<Decoding>>,
}

/// A served table: its committed segments and, when followed, its tail.
pub struct TableView {
    table: Arc<SegmentTable>,
    state: Mutex<ViewState>,
    budget: Arc<TailBudget>,
    following: AtomicBool,
    closed: AtomicBool,
}

impl TableView {
    pub fn new(table: Arc<SegmentTable>, budget: Arc<TailBudget>) -> Arc<Self> {
        Arc::new(TableView {
            table,
            state: Mutex::default(),
            budget,
            following: AtomicBool::new(false),
            closed: AtomicBool::new(false),
        })
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
        let mut state = self.lock();
        let mut ends: HashMap<i32, i64> = HashMap::new();
        for s in &segments {
            let meta = s.meta();
            let end = ends.entry(meta.partition).or_insert(meta.end_offset);
            *end = (*end).max(meta.end_offset);
        }
        state.committed = segments;
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

    /// Keeps the tail's records above `end` and rebuilds it from them.
    fn trim(&self, tail: &mut PartitionTail, partition: i32, end: i64, decoding: &Decoding) {
        tail.base = Some(end + 1);
        if tail.over_limit {
            // Dropped when it outgrew the budget: read again from the end.
            tail.over_limit = false;
            tail.records.clear();
            tail.reseek = Some(end + 1);
        }
        tail.records.retain(|(offset, _, _)| *offset > end);
        let mut builder = ConsumingSegment::new(decoding.schema.clone(), partition, end + 1);
        for (offset, _, payload) in &tail.records {
            append(&mut builder, &decoding.decoder, *offset, payload);
        }
        tail.builder = Some(builder);
        tail.chunks.clear();
        self.seal_tail(tail, partition, decoding);
        self.recharge(tail);
    }

    /// Seals the rows since the last publish into a new chunk, then merges
    /// the newest chunks while one is not four times the size of the next.
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
        while let [.., older, newer] = tail.chunks.as_slice()
            && older.num_rows() < 4 * newer.num_rows()
        {
            let (from, to) = (older.meta().start_offset, newer.meta().end_offset);
            let mut merged = ConsumingSegment::new(decoding.schema.clone(), partition, from);
            let first = tail.records.partition_point(|(o, _, _)| *o < from);
            for (offset, _, payload) in tail.records[first..].iter().take_while(|(o, _, _)| *o <= to) {
                append(&mut merged, &decoding.decoder, *offset, payload);
            }
            let newest = newer.meta().created_at_ms;
            match self.seal_chunk(&merged, partition, newest) {
                Some(chunk) => {
                    tail.chunks.truncate(tail.chunks.len() - 2);
                    tail.chunks.push(chunk);
                }
                None => break,
            }
        }
    }

    fn seal_chunk(&self, builder: &ConsumingSegment, partition: i32, newest_ms: i64) -> Option<Arc<Segment>> {
        let name = format!("{}__{partition}{CONSUMING_SUFFIX}", self.table.name());
        match seal(builder, &name, newest_ms).and_then(|image| image.open()) {
            Ok(segment) => Some(Arc::new(segment)),
            Err(e) => {
                tracing::warn!(table = %self.table.name(), partition, error = %e, "sealing the tail failed");
                None
            }
        }
    }

    fn recharge(&self, tail: &mut PartitionTail) {
        let bytes = tail.builder.as_ref().map_or(0, ConsumingSegment::memory_bytes) as u64
            + tail.records.iter().map(|(_, _, p)| p.len() as u64 + 24).sum::<u64>()
            + tail.chunks.iter().map(|s| s.size_bytes() as u64).sum::<u64>();
        self.budget.used.fetch_sub(tail.charged, Ordering::SeqCst);
        self.budget.used.fetch_add(bytes, Ordering::SeqCst);
        tail.charged = bytes;
    }

    /// Where the consumer starts reading `partition`, and the base it sets.
    fn start_of(&self, partition: i32, fallback: Offset) -> Offset {
        let mut state = self.lock();
        let end = state.ends.get(&partition).copied();
        let tail = state.tails.entry(partition).or_default();
        match end {
            Some(end) => {
                tail.base = Some(end + 1);
                Offset::Offset(end + 1)
            }
            None => {
                if let Offset::Offset(o) = fallback {
                    tail.base = Some(o);
                }
                fallback
            }
        }
    }

    /// One record of `partition` read from Kafka.
    fn append(&self, partition: i32, offset: i64, timestamp_ms: i64, payload: &[u8]) {
        let mut state = self.lock();
        let Some(decoding) = state.decoding.clone() else { return };
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
        tail.records.push((offset, timestamp_ms, payload.to_vec()));
        tail.newest_ms = tail.newest_ms.max(timestamp_ms);
        tail.dirty = true;
        tail.charged += payload.len() as u64 + 24;
        self.budget.used.fetch_add(payload.len() as u64 + 24, Ordering::SeqCst);
        if self.budget.used.load(Ordering::SeqCst) > self.budget.limit {
            tracing::warn!(
                table = %self.table.name(), partition, limit = self.budget.limit,
                "the tail exceeds limits.tail_memory: this partition is answered from committed data until its next segment loads"
            );
            metrics::counter!("sluice_query_tails_over_limit_total", "table" => self.table.name().to_string())
                .increment(1);
            tail.over_limit = true;
            tail.builder = None;
            tail.records = Vec::new();
            tail.chunks = Vec::new();
            tail.dirty = true;
            self.budget.used.fetch_sub(std::mem::take(&mut tail.charged), Ordering::SeqCst);
        }
    }

    /// Seals and publishes the tails that changed since the last call.
    fn publish_dirty(&self) {
        let mut state = self.lock();
        let Some(decoding) = state.decoding.clone() else { return };
        let mut changed = false;
        let table = self.table.name().to_string();
        let now_ms = now_ms();
        let partitions: Vec<i32> = state.tails.iter().filter(|(_, t)| t.dirty).map(|(p, _)| *p).collect();
        for partition in partitions {
            let tail = state.tails.get_mut(&partition).expect("listed");
            if !tail.over_limit {
                self.seal_tail(tail, partition, &decoding);
                self.recharge(tail);
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
    }

    fn publish(&self, state: &ViewState) {
        let mut segments = state.committed.clone();
        let mut excluded = 0;
        let mut rows = 0u64;
        for tail in state.tails.values() {
            if tail.over_limit {
                excluded += 1;
            } else {
                rows += tail.chunks.iter().map(|c| u64::from(c.num_rows())).sum::<u64>();
                segments.extend(tail.chunks.iter().cloned());
            }
        }
        self.table.set_tails_excluded(excluded);
        self.table.replace(segments);
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

    fn take_reseeks(&self) -> Vec<(i32, i64)> {
        let mut state = self.lock();
        state.tails.iter_mut().filter_map(|(p, t)| t.reseek.take().map(|o| (*p, o))).collect()
    }
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
/// `shutdown` turns true. Started once per view.
pub fn follow(
    view: Arc<TableView>,
    config: Arc<PipelineConfig>,
    coordinator: Arc<dyn Coordinator>,
    shutdown: watch::Receiver<bool>,
) {
    if !view.budget.enabled() || view.following.swap(true, Ordering::SeqCst) {
        return;
    }
    view.lock().decoding = Some(Arc::new(Decoding {
        schema: Arc::new(SegmentSchema::from_pipeline(&config)),
        decoder: Decoder::new(&config),
    }));
    tokio::spawn(async move {
        if let Err(e) = run(&view, &config, coordinator.as_ref(), shutdown).await {
            tracing::error!(table = %config.table, error = %e, "the tail consumer stopped");
        }
        view.following.store(false, Ordering::SeqCst);
    });
}

async fn run(
    view: &Arc<TableView>,
    config: &PipelineConfig,
    coordinator: &dyn Coordinator,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), rdkafka::error::KafkaError> {
    let topic = config.source.topic.clone();
    let consumer: Arc<StreamConsumer> = Arc::new(
        sluice_decode::kafka_config(config)
            .set("group.id", format!("sluice-query-{}", config.table))
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("enable.partition.eof", "false")
            .set("auto.offset.reset", "earliest")
            .create()?,
    );
    tracing::info!(table = %config.table, "following the tail");
    let mut assigned: BTreeMap<i32, ()> = BTreeMap::new();
    let mut next_metadata = Instant::now();
    let mut next_publish = Instant::now() + PUBLISH_EVERY;
    let mut stream = consumer.stream();
    while !view.closed.load(Ordering::SeqCst) && !*shutdown.borrow() {
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
            let new: Vec<i32> = (0..count.unwrap_or(0)).filter(|p| !assigned.contains_key(p)).collect();
            for partition in new {
                let fallback = fallback_start(coordinator, config, partition).await;
                let start = view.start_of(partition, fallback);
                let mut tpl = TopicPartitionList::new();
                tpl.add_partition_offset(&topic, partition, start)?;
                consumer.incremental_assign(&tpl)?;
                assigned.insert(partition, ());
            }
        }
        for (partition, offset) in view.take_reseeks() {
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition(&topic, partition);
            consumer.incremental_unassign(&tpl)?;
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition_offset(&topic, partition, Offset::Offset(offset))?;
            consumer.incremental_assign(&tpl)?;
        }
        let wait = next_publish.saturating_duration_since(Instant::now()).max(Duration::from_millis(1));
        tokio::select! {
            received = tokio::time::timeout(wait, stream.next()) => {
                let mut next = match received {
                    Ok(Some(Ok(message))) => Some(message),
                    Ok(Some(Err(e))) => {
                        tracing::warn!(table = %config.table, error = %e, "tail: Kafka; retrying");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        None
                    }
                    Ok(None) => return Ok(()),
                    Err(_) => None,
                };
                let mut taken = 0;
                while let Some(message) = next.take() {
                    let timestamp = message.timestamp().to_millis().unwrap_or_else(now_ms);
                    view.append(message.partition(), message.offset(), timestamp, message.payload().unwrap_or_default());
                    taken += 1;
                    if taken < 1024 && let Some(Some(Ok(m))) = stream.next().now_or_never() {
                        next = Some(m);
                    }
                }
            }
            _ = shutdown.changed() => {}
        }
        if next_publish <= Instant::now() {
            // Sealing a tail costs time in proportion to its rows: the next
            // publish waits at least four times as long as this one took, so
            // publishing stays under a fifth of a core however large the
            // tail grows (freshness degrades before the node does).
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
    use crate::QueryEngine;
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
        let chunks = f.engine.table("events").unwrap().snapshot().len() - 2;
        assert!((1..=5).contains(&chunks), "{chunks} chunks for 20 publishes");
        let response = f.engine.query("SELECT COUNT(*) FROM events").await.unwrap();
        assert_eq!(response.num_consuming_segments_queried, 1, "one consuming segment per partition");
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
