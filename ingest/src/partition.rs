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

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::FutureExt;
use rdkafka::consumer::Consumer;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Message, Offset, TopicPartitionList};
use sluice_config::{BadRecordPolicy, PipelineConfig};
use sluice_coordinator::{Checkpoint, CommitOutcome, Coordinator, Lease, Position, SegmentRecord};
use sluice_segments::{ConsumingSegment, SegmentSchema, SegmentSize, seal};
use sluice_storage::DeepStore;
use tokio::sync::watch;

use crate::budget::{MemoryBudget, Pressure};
use crate::metrics as m;
use sluice_decode::{BadRecord, Decoder, PartitionQueue, SourceConsumer, SourceContext};

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
    fn failed(reason: FailReason, detail: impl Into<String>) -> Exit {
        Exit::Failed { reason, detail: detail.into() }
    }
}

/// Everything a partition's ingestion shares with its pipeline.
pub struct PipelineContext {
    pub config: Arc<PipelineConfig>,
    pub schema: Arc<SegmentSchema>,
    pub decoder: Arc<Decoder>,
    pub coordinator: Arc<dyn Coordinator>,
    pub store: DeepStore,
    /// Producer for the dead-letter topic (policy `dead_letter`).
    pub dead_letters: Option<FutureProducer>,
    /// The worker's memory budget, shared by all its partitions.
    pub budget: Arc<MemoryBudget>,
    /// One Kafka consumer for all the pipeline's partitions on this worker,
    /// each partition read through its own queue (see [`ingest_partition`]).
    /// One client makes one fetch request per broker for every partition;
    /// a client per partition multiplies fetch requests, threads and wakeups
    /// by the partition count (on the bench: 292k rows/s delivered by 48
    /// one-partition consumers against 572k by one consumer, at 2.6× the CPU).
    /// Its context holds the source's last connection failure.
    pub(crate) consumer: Arc<SourceConsumer>,
    /// Serves the consumer's own queue: errors and events. Messages never
    /// arrive there, because every partition's queue is split off before it
    /// is assigned.
    events: tokio::task::JoinHandle<()>,
    /// Set once the consumer holds the topic's metadata (see
    /// [`ingest_partition`]); the worker's supervisor sets it when it reads
    /// the partition count through this consumer.
    pub(crate) metadata: tokio::sync::OnceCell<()>,
    /// Where partitions report progress (the worker's, or a private one).
    pub health: Arc<crate::health::PartitionHealth>,
}

impl Drop for PipelineContext {
    fn drop(&mut self) {
        self.events.abort();
    }
}

/// Why a pipeline's Kafka clients could not be made: librdkafka refused
/// its `source.properties` (an unknown property, a value out of range, a
/// certificate file it cannot read).
#[derive(Debug, thiserror::Error)]
pub enum PipelineStartError {
    #[error("pipeline `{table}`: cannot create its dead-letter producer: {source}")]
    DeadLetterProducer { table: String, source: rdkafka::error::KafkaError },
    #[error("pipeline `{table}`: cannot create its Kafka consumer: {source}")]
    Consumer { table: String, source: rdkafka::error::KafkaError },
}

impl PipelineContext {
    pub fn new(
        config: Arc<PipelineConfig>,
        coordinator: Arc<dyn Coordinator>,
        store: DeepStore,
        budget: Arc<MemoryBudget>,
    ) -> Result<Self, PipelineStartError> {
        let table = || config.table.clone();
        let dead_letters = match config.bad_records.policy {
            BadRecordPolicy::DeadLetter => Some(
                kafka_config(&config)
                    .set("enable.idempotence", "true")
                    .set("acks", "all")
                    .create::<FutureProducer>()
                    .map_err(|source| PipelineStartError::DeadLetterProducer { table: table(), source })?,
            ),
            _ => None,
        };
        let consumer: Arc<SourceConsumer> = Arc::new(
            sluice_decode::consumer_config(&config)
                .set("group.id", format!("sluice-{}", config.table))
                .set("enable.auto.commit", "false")
                .set("enable.auto.offset.store", "false")
                .set("enable.partition.eof", "false")
                .set("auto.offset.reset", "earliest")
                .create_with_context(SourceContext::new(&config.table))
                .map_err(|source| PipelineStartError::Consumer { table: table(), source })?,
        );
        let events = tokio::spawn(serve_events(consumer.clone(), config.table.clone()));
        Ok(Self {
            schema: Arc::new(SegmentSchema::from_pipeline(&config)),
            decoder: Arc::new(Decoder::new(&config)),
            config,
            coordinator,
            store,
            dead_letters,
            budget,
            consumer,
            events,
            metadata: tokio::sync::OnceCell::new(),
            health: Arc::default(),
        })
    }

    /// Reports progress to `health` (the worker's) instead of a private one.
    pub fn with_health(mut self, health: Arc<crate::health::PartitionHealth>) -> Self {
        self.health = health;
        self
    }
}

/// Mirrors a committed checkpoint to the Kafka consumer group
/// `sluice-<table>` (Kafka's convention: the next offset to read), so the
/// usual lag tools — `kafka-consumer-groups`, Burrow, kcat — show sluice's
/// progress. Advisory only: ZooKeeper is the truth and nothing reads this
/// back; a failure is counted and logged, never retried or waited for.
fn mirror_offset(ctx: &PipelineContext, partition: i32, next_offset: i64) {
    let mut offsets = rdkafka::TopicPartitionList::new();
    let added = offsets.add_partition_offset(&ctx.config.source.topic, partition, rdkafka::Offset::Offset(next_offset));
    let committed = added.and_then(|()| ctx.consumer.commit(&offsets, rdkafka::consumer::CommitMode::Async));
    if let Err(e) = committed {
        metrics::counter!(m::OFFSET_MIRROR_FAILURES, "table" => ctx.config.table.clone()).increment(1);
        tracing::debug!(table = %ctx.config.table, partition, error = %e, "mirroring the offset to the consumer group failed");
    }
}

/// Polls the pipeline consumer's own queue, which librdkafka needs polled to
/// deliver errors and events. A message arriving here would be a partition
/// whose queue was not split off: that cannot happen (the split comes before
/// the assignment and librdkafka never forwards a queue the application
/// split), and it is reported loudly if it ever does.
async fn serve_events(consumer: Arc<SourceConsumer>, table: String) {
    loop {
        match consumer.recv().await {
            Ok(message) => tracing::error!(
                %table,
                partition = message.partition(),
                offset = message.offset(),
                "a record arrived on the pipeline's shared queue instead of its partition's; it is not ingested from there"
            ),
            Err(e) => {
                // The code alone; the consumer's context logs the reason
                // and keeps it for health (see `SourceContext`).
                tracing::debug!(%table, error = %e, "Kafka");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

/// Client properties for a pipeline's Kafka connection.
pub use sluice_decode::kafka_config;

pub(crate) fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// Ingests one partition under `lease` until `stop` turns true (then commits
/// what was consumed), the lease is fenced or ingestion fails. The lease is
/// released in every case.
pub async fn ingest_partition(ctx: Arc<PipelineContext>, lease: Lease, stop: watch::Receiver<bool>) -> Exit {
    let coordinator = ctx.coordinator.clone();
    let (table, partition) = (ctx.config.table.clone(), lease.partition);
    let mut held = Some(lease);
    // A panic (a bug) fails the partition like any failure: the lease is
    // still released and the worker retries.
    let exit = match std::panic::AssertUnwindSafe(consume_partition(ctx, &mut held, stop)).catch_unwind().await {
        Ok(exit) => exit,
        Err(panic) => {
            let detail = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".to_string());
            Exit::failed(FailReason::Panic, detail)
        }
    };
    // Released on every exit, not only on a stop: a partition whose task
    // ended with its lock still held could not be acquired again until the
    // session ended (in-process: never).
    if let Some(lease) = held.take()
        && let Err(e) = coordinator.release(lease).await
    {
        tracing::warn!(%table, partition, error = %e, "releasing the lease failed; it ends with the session");
    }
    exit
}

/// How long librdkafka may take to take a partition over before the
/// partition fails (and is retried with backoff, visibly).
const ASSIGN_TIMEOUT: Duration = Duration::from_secs(30);

/// Splits the partition's queue off the consumer, then assigns the
/// partition at `assignment`'s offset: on a blocking thread, within
/// [`ASSIGN_TIMEOUT`]. librdkafka's assignment waits for its own main
/// thread; on the worker's two runtime threads, two partitions starting
/// at once could otherwise block every task of the worker, the stall
/// detector's included (seen under CPU contention: a restarted worker
/// logged nothing for 90 s). A partition an earlier, abandoned attempt
/// assigned late is unassigned first, so a retry is never refused as a
/// duplicate.
async fn assign(
    consumer: &Arc<SourceConsumer>,
    topic: &str,
    partition: i32,
    assignment: &TopicPartitionList,
) -> Result<PartitionQueue, String> {
    let (consumer, topic, assignment) = (consumer.clone(), topic.to_string(), assignment.clone());
    let assigning = tokio::task::spawn_blocking(move || {
        let already = consumer.assignment().is_ok_and(|current| current.find_partition(&topic, partition).is_some());
        if already {
            let mut stale = TopicPartitionList::new();
            stale.add_partition(&topic, partition);
            consumer.incremental_unassign(&stale).map_err(|e| format!("unassign a stale assignment: {e}"))?;
        }
        let queue = PartitionQueue::split(&consumer, &topic, partition)
            .ok_or_else(|| format!("no queue for partition {partition} of {topic}"))?;
        consumer.incremental_assign(&assignment).map_err(|e| format!("assign: {e}"))?;
        Ok(queue)
    });
    match tokio::time::timeout(ASSIGN_TIMEOUT, assigning).await {
        Ok(Ok(assigned)) => assigned,
        Ok(Err(e)) => Err(format!("assign: {e}")),
        Err(_) => Err(format!("the Kafka consumer did not take the partition within {ASSIGN_TIMEOUT:?}")),
    }
}

async fn consume_partition(
    ctx: Arc<PipelineContext>,
    held: &mut Option<Lease>,
    mut stop: watch::Receiver<bool>,
) -> Exit {
    let lease = held.as_ref().expect("a lease is held while consuming");
    let config = &ctx.config;
    let partition = lease.partition;
    let consumer = &ctx.consumer;
    let start = match Checkpoint::start(Some(&lease.checkpoint), config.source.start_position) {
        Position::Offset(o) => Offset::Offset(o),
        Position::Earliest => Offset::Beginning,
        Position::Latest => Offset::End,
    };
    let mut assignment = TopicPartitionList::new();
    if let Err(e) = assignment.add_partition_offset(&config.source.topic, partition, start) {
        return Exit::failed(FailReason::Assign, format!("assign: {e}"));
    }
    // The topic's partition leaders, once per consumer, before the first
    // assignment: assigned without them, a partition waits for librdkafka's
    // metadata refresh and offset-query retry timers, up to half a second
    // before the first fetch. A failure here only costs that wait.
    ctx.metadata
        .get_or_init(|| async {
            let (consumer, topic) = (consumer.clone(), config.source.topic.clone());
            let fetched =
                tokio::task::spawn_blocking(move || consumer.fetch_metadata(Some(&topic), Duration::from_secs(5)))
                    .await;
            if let Ok(Err(e)) = fetched {
                tracing::warn!(table = %config.table, error = %e, "topic metadata");
            }
        })
        .await;
    // Split before assigning: librdkafka forwards a newly assigned
    // partition's fetch queue to the consumer's queue unless the application
    // already took it over, and never once it has.
    let queue = match assign(consumer, &config.source.topic, partition, &assignment).await {
        Ok(queue) => queue,
        Err(detail) => return Exit::failed(FailReason::Assign, detail),
    };
    tracing::info!(table = %config.table, partition, ?start, epoch = lease.epoch(), "consuming");

    let labels = [("table", config.table.clone()), ("partition", partition.to_string())];
    let mut state = Consuming {
        partition,
        segment: None,
        ready: Default::default(),
        next_start: lease.checkpoint.next_offset,
        started: None,
        last_size: None,
        records: metrics::counter!(m::RECORDS_CONSUMED, &labels),
        bytes: metrics::counter!(m::BYTES_CONSUMED, &labels),
        uncounted: (0, 0),
        labels: labels.clone(),
        log: LogLimiter::default(),
    };
    let consuming_bytes = metrics::gauge!(m::CONSUMING_BYTES, &labels);
    let mut next_lag_check = Instant::now();
    let mut in_flight: Option<InFlight> = None;
    let exit = 'consume: loop {
        // A commit that ended is settled at once: a fenced or failed one
        // ends the partition without consuming further.
        if in_flight.as_ref().is_some_and(|f| f.task.is_finished())
            && let Err(exit) = settle(&mut in_flight, held).await
        {
            break exit;
        }
        // A segment cut while the previous one was in flight goes next.
        if in_flight.is_none()
            && !state.ready.is_empty()
            && let Err(exit) = begin_flush(&ctx, held, &mut state, &mut in_flight, &stop).await
        {
            break exit;
        }
        // Over the memory budget: the largest segment seals early, the rest
        // wait. A segment in flight still holds its memory.
        let memory = state.segment.as_ref().map_or(0, ConsumingSegment::memory_bytes)
            + state.ready.iter().map(ConsumingSegment::memory_bytes).sum::<usize>()
            + in_flight.as_ref().map_or(0, |f| f.memory);
        match ctx.budget.report(&config.table, partition, memory) {
            Pressure::None => {}
            Pressure::SealNow => {
                tracing::info!(table = %config.table, partition, memory, "memory budget exceeded: sealing early");
                let flushed = match begin_flush(&ctx, held, &mut state, &mut in_flight, &stop).await {
                    // Under pressure, wait for the memory to be released.
                    Ok(()) => settle(&mut in_flight, held).await,
                    Err(exit) => Err(exit),
                };
                if let Err(exit) = flushed {
                    break exit;
                }
                continue;
            }
            Pressure::Pause => {
                tokio::time::sleep(Duration::from_millis(20)).await;
                if !*stop.borrow() {
                    continue;
                }
            }
        }
        let ready = tokio::select! {
            changed = stop.changed() => {
                if changed.is_err() || *stop.borrow() {
                    // The segments cut and waiting, then the consuming one.
                    let mut flushed = Ok(());
                    while flushed.is_ok() && (!state.ready.is_empty() || state.segment.is_some()) {
                        let before = (state.ready.len(), state.segment.is_some());
                        flushed = match begin_flush(&ctx, held, &mut state, &mut in_flight, &stop).await {
                            Ok(()) => settle(&mut in_flight, held).await,
                            Err(exit) => Err(exit),
                        };
                        if before == (state.ready.len(), state.segment.is_some()) {
                            break; // nothing consumed in it: nothing to commit
                        }
                    }
                    break match flushed {
                        Ok(()) => Exit::Stopped,
                        Err(exit) => exit,
                    };
                }
                continue;
            }
            ready = tokio::time::timeout(Duration::from_millis(200), queue.readable()) => ready.is_ok(),
        };
        // Otherwise a poll timeout: on to the time-based flush.
        if ready {
            // What librdkafka holds, taken in one call, then consumed without
            // a timer, a select or a budget check per record. A batch holds
            // at most the records the segment has rows left for, so segments
            // hold exactly `flush.rows` rows; the byte threshold and the
            // budget are checked between batches.
            let rows = state.segment.as_ref().map_or(0, |s| i64::from(s.row_count()));
            let room = usize::try_from(config.flush.rows - rows).unwrap_or(0).clamp(1, DRAIN_BATCH);
            let mut failed = None;
            match queue.take(room) {
                Ok(batch) => {
                    for record in batch.records() {
                        match record {
                            Ok((offset, payload)) => {
                                if let Err(exit) = state.consume(&ctx, offset, payload).await {
                                    state.count();
                                    break 'consume exit;
                                }
                            }
                            Err(e) => {
                                failed = Some(e);
                                break;
                            }
                        }
                    }
                }
                Err(e) => failed = Some(e),
            }
            state.count();
            if let Some(e) = failed {
                tracing::warn!(table = %config.table, partition, error = %e, "Kafka; retrying");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        if let Some(offset) = state.segment.as_ref().and_then(ConsumingSegment::last_offset) {
            ctx.health.consumed(&config.table, partition, offset);
        }
        // Consumption never waits for a seal, an upload or a commit: with a
        // segment in flight a full one is cut at its threshold and waits its
        // turn (the memory budget bounds how many wait).
        if state.should_flush(config) {
            if in_flight.is_none() && state.ready.is_empty() {
                if let Err(exit) = begin_flush(&ctx, held, &mut state, &mut in_flight, &stop).await {
                    break exit;
                }
            } else {
                state.cut();
            }
        }
        let memory = state.segment.as_ref().map_or(0, ConsumingSegment::memory_bytes);
        consuming_bytes.set(memory as f64);
        if next_lag_check <= Instant::now() {
            next_lag_check = Instant::now() + Duration::from_secs(5);
            let next = state.segment.as_ref().map(ConsumingSegment::next_offset).or(state.next_start);
            // A metadata round trip; bounded, and only every few seconds.
            let (lag_consumer, topic) = (consumer.clone(), config.source.topic.clone());
            let high = tokio::task::spawn_blocking(move || {
                lag_consumer.fetch_watermarks(&topic, partition, Duration::from_secs(1)).ok().map(|(_, h)| h)
            })
            .await
            .ok()
            .flatten();
            if let (Some(high), Some(next)) = (high, next) {
                let lag = (high - next).max(0);
                metrics::gauge!(m::LAG, &labels).set(lag as f64);
                ctx.health.lag(&config.table, partition, lag);
            }
        }
    };
    // A segment still in flight is a complete, contiguous segment: its commit
    // is let finish (or fail) whatever ended consumption, and hands the lease
    // back so that it can be released.
    let exit = match settle(&mut in_flight, held).await {
        Err(flight) if exit == Exit::Stopped => flight,
        _ => exit,
    };
    // Whatever librdkafka fetched beyond what was consumed is dropped with
    // the assignment; the next owner reads it again from the checkpoint.
    if let Err(e) = consumer.incremental_unassign(&assignment) {
        tracing::warn!(table = %config.table, partition, error = %e, "unassign");
    }
    drop(queue);
    ctx.budget.remove(&config.table, partition);
    exit
}

/// At most this many records are consumed between two looks at the stop
/// signal, the memory budget and the byte threshold.
const DRAIN_BATCH: usize = 512;

struct Consuming {
    partition: i32,
    segment: Option<ConsumingSegment>,
    /// Segments that reached their threshold while another was in flight:
    /// cut at the threshold, flushed in order as commits land (the memory
    /// budget, which counts them, bounds how many wait).
    ready: std::collections::VecDeque<ConsumingSegment>,
    /// Where the next segment starts: the checkpoint's next offset, then
    /// one past the last segment cut or sent to commit. None: at the first
    /// record.
    next_start: Option<i64>,
    started: Option<Instant>,
    /// The size of the last segment cut, which the next one is sized for.
    last_size: Option<SegmentSize>,
    /// Handles resolved once, added to once per batch of records (from
    /// `uncounted`: records, bytes), not per record.
    records: metrics::Counter,
    bytes: metrics::Counter,
    uncounted: (u64, u64),
    labels: [(&'static str, String); 2],
    log: LogLimiter,
}

/// At most [`LogLimiter::PER_WINDOW`] bad-record log lines per partition
/// every ten seconds; the rest are counted (and always counted in metrics).
#[derive(Default)]
struct LogLimiter {
    window: Option<Instant>,
    logged: u32,
    suppressed: u64,
}

impl LogLimiter {
    const PER_WINDOW: u32 = 10;

    /// Whether to log now, and how many lines were suppressed before it.
    fn admit(&mut self) -> Option<u64> {
        let now = Instant::now();
        if self.window.is_none_or(|w| now.duration_since(w) >= Duration::from_secs(10)) {
            self.window = Some(now);
            self.logged = 0;
        }
        if self.logged < Self::PER_WINDOW {
            self.logged += 1;
            Some(std::mem::take(&mut self.suppressed))
        } else {
            self.suppressed += 1;
            None
        }
    }
}

impl Consuming {
    async fn consume(&mut self, ctx: &PipelineContext, offset: i64, payload: &[u8]) -> Result<(), Exit> {
        let partition = self.partition;
        let segment = self.segment.get_or_insert_with(|| {
            // Continue exactly where the checkpoint (or the segment in
            // flight) ends; a first segment starts at the first record read.
            let start = self.next_start.unwrap_or(offset);
            let segment = ConsumingSegment::new(ctx.schema.clone(), partition, start);
            let max_rows = usize::try_from(ctx.config.flush.rows).unwrap_or(usize::MAX);
            match &self.last_size {
                Some(size) => segment.sized(size, max_rows),
                None => segment,
            }
        });
        let expected = segment.next_offset();
        if offset < expected {
            return Ok(()); // already covered: a redelivery after a seek
        }
        if offset > expected {
            // Kafka skipped offsets: legitimate in compacted and transactional
            // topics (markers), a lost range otherwise. Never silent: logged,
            // counted, and recorded in the segment's metadata and catalog entry.
            let missing = (offset - expected) as u64;
            metrics::counter!(m::OFFSET_GAPS, &self.labels).increment(1);
            metrics::counter!(m::OFFSET_GAP_RECORDS, &self.labels).increment(missing);
            if let Some(suppressed) = self.log.admit() {
                tracing::warn!(
                    table = %ctx.config.table, partition, from = expected, to = offset - 1, missing,
                    suppressed, "offset gap: Kafka delivered offset {offset} next; the gap is recorded in the segment"
                );
            }
        }
        self.started.get_or_insert_with(Instant::now);
        self.uncounted.0 += 1;
        self.uncounted.1 += payload.len() as u64;
        if let Some(id) = ctx.decoder.unfetched(payload) {
            fetch_schema(ctx, partition, offset, id).await?;
        }
        let bad = match ctx.decoder.decode(payload) {
            Ok(row) => match segment.append(offset, &row.datums()) {
                Ok(()) => return Ok(()),
                Err(e) => {
                    BadRecord { kind: sluice_decode::BadRecordKind::WrongType, column: None, detail: e.to_string() }
                }
            },
            Err(bad) => bad,
        };
        let reason = [
            ("table", self.labels[0].1.clone()),
            ("partition", self.labels[1].1.clone()),
            ("reason", bad.kind.as_str().to_string()),
        ];
        metrics::counter!(m::BAD_RECORDS, &reason).increment(1);
        if let Some(suppressed) = self.log.admit() {
            tracing::warn!(table = %ctx.config.table, partition, offset, reason = bad.kind.as_str(), detail = %bad, suppressed, "bad record");
        }
        handle_bad_record(ctx, partition, offset, payload, &bad).await?;
        segment.skip(offset).map_err(|e| Exit::failed(FailReason::Segment, e.to_string()))
    }

    /// Adds the records consumed since the last call to the metrics.
    fn count(&mut self) {
        let (records, bytes) = std::mem::take(&mut self.uncounted);
        self.records.increment(records);
        self.bytes.increment(bytes);
    }

    /// Cuts the consuming segment: it waits, whole, for the segment in
    /// flight; the next starts one past its last offset.
    fn cut(&mut self) {
        if let Some(segment) = self.segment.take() {
            self.next_start = segment.last_offset().map(|o| o + 1).or(self.next_start);
            self.started = None;
            self.last_size = Some(segment.size());
            self.ready.push_back(segment);
        }
    }

    fn should_flush(&self, config: &PipelineConfig) -> bool {
        let Some(segment) = &self.segment else { return false };
        if segment.last_offset().is_none() {
            return false;
        }
        i64::from(segment.row_count()) >= config.flush.rows
            || segment.memory_bytes() as u64 >= config.flush.bytes.as_u64()
            || self.started.is_some_and(|t| t.elapsed() >= config.flush.time)
    }
}

/// Fetches the writer schema record `offset` names, retrying a registry
/// that does not answer a few times before the partition fails (and is
/// restarted with backoff by its supervisor, the failure in `/health`): the
/// record waits for its schema, it is never skipped.
async fn fetch_schema(
    ctx: &PipelineContext,
    partition: i32,
    offset: i64,
    id: sluice_decode::SchemaId,
) -> Result<(), Exit> {
    const WAITS: [Duration; 3] = [Duration::from_millis(200), Duration::from_secs(1), Duration::ZERO];
    let mut last = None;
    for wait in WAITS {
        match ctx.decoder.fetch(id).await {
            Ok(()) => return Ok(()),
            Err(e) => {
                metrics::counter!(m::SCHEMA_REGISTRY_ERRORS, "table" => ctx.config.table.clone()).increment(1);
                tracing::warn!(table = %ctx.config.table, partition, offset, error = %e, "schema registry");
                last = Some(e);
                tokio::time::sleep(wait).await;
            }
        }
    }
    let detail = format!("record at offset {offset} waits for its schema: {}", last.expect("an attempt failed"));
    Err(Exit::failed(FailReason::SchemaRegistry, detail))
}

async fn handle_bad_record(
    ctx: &PipelineContext,
    partition: i32,
    offset: i64,
    payload: &[u8],
    bad: &BadRecord,
) -> Result<(), Exit> {
    let table = &ctx.config.table;
    match ctx.config.bad_records.policy {
        BadRecordPolicy::Skip => Ok(()),
        BadRecordPolicy::Fail => Err(Exit::failed(
            FailReason::BadRecord,
            format!(
                "bad record at partition {partition} offset {offset}: {bad} (policy `fail`; reset the offset past it to go on)"
            ),
        )),
        BadRecordPolicy::DeadLetter => {
            let (Some(producer), Some(topic)) = (&ctx.dead_letters, &ctx.config.bad_records.topic) else {
                return Err(Exit::failed(FailReason::BadRecord, "dead_letter policy without a producer"));
            };
            let headers = OwnedHeaders::new()
                .insert(Header { key: "sluice.reason", value: Some(bad.kind.as_str()) })
                .insert(Header { key: "sluice.detail", value: Some(&bad.detail) })
                .insert(Header {
                    key: "sluice.source",
                    value: Some(&format!("{}/{partition}/{offset}", ctx.config.source.topic)),
                });
            // The offset moves past the record only once the dead letter is
            // durably written: a crash before that re-reads the record.
            loop {
                let record = FutureRecord::<[u8], [u8]>::to(topic).payload(payload).headers(headers.clone());
                match producer.send(record, Duration::from_secs(30)).await {
                    Ok(_) => return Ok(()),
                    Err((e, _)) => {
                        tracing::warn!(%table, partition, offset, error = %e, "dead-letter write failed; retrying");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                }
            }
        }
    }
}

/// What a commit task hands back: the lease (always, so it can be released)
/// and how the commit ended.
type Flushed = (Lease, Result<(), Exit>);

/// Settles the segment in flight, if any: waits for its commit task and
/// takes the lease back.
async fn settle(in_flight: &mut Option<InFlight>, held: &mut Option<Lease>) -> Result<(), Exit> {
    let Some(flight) = in_flight.take() else { return Ok(()) };
    match flight.task.await {
        Ok((lease, outcome)) => {
            *held = Some(lease);
            outcome
        }
        // Never: the task catches panics to hand the lease back.
        Err(e) => Err(Exit::failed(FailReason::Panic, format!("commit task: {e}"))),
    }
}

/// A sealed segment on its way to the deep store and the catalog.
struct InFlight {
    task: tokio::task::JoinHandle<Flushed>,
    /// The segment's memory, still held until its commit lands.
    memory: usize,
}

/// Starts sealing, uploading and committing the consuming segment, if it
/// consumed anything, and returns at once: consumption goes on into the next
/// segment, which starts right after this one's last offset (pauseless, as
/// Pinot's #10147). At most one segment is in flight: a previous one is
/// settled first, so commits stay in order and the lease is back in hand.
/// (The consuming loop starts a flush only when nothing is in flight, so
/// the wait happens on a stop or under memory pressure only.)
async fn begin_flush(
    ctx: &Arc<PipelineContext>,
    held: &mut Option<Lease>,
    state: &mut Consuming,
    in_flight: &mut Option<InFlight>,
    stop: &watch::Receiver<bool>,
) -> Result<(), Exit> {
    settle(in_flight, held).await?;
    // The segment cut earlier goes first: commits stay in offset order.
    let segment = match state.ready.pop_front() {
        Some(ready) => ready,
        None => {
            let Some(segment) = state.segment.take() else { return Ok(()) };
            if segment.last_offset().is_none() {
                state.segment = Some(segment);
                return Ok(());
            }
            state.next_start = segment.last_offset().map(|o| o + 1);
            state.started = None;
            state.last_size = Some(segment.size());
            segment
        }
    };
    let end_offset = segment.last_offset().expect("a cut or flushed segment consumed something");
    let lease = held.take().expect("the lease is in hand once settled");
    let memory = segment.memory_bytes();
    let (ctx, labels, stop) = (ctx.clone(), state.labels.clone(), stop.clone());
    let task = tokio::spawn(async move {
        let mut lease = lease;
        let committed =
            std::panic::AssertUnwindSafe(commit_segment(&ctx, &mut lease, segment, end_offset, &labels, &stop))
                .catch_unwind()
                .await
                .unwrap_or_else(|_| Err(Exit::failed(FailReason::Panic, "the commit task panicked")));
        (lease, committed)
    });
    *in_flight = Some(InFlight { task, memory });
    Ok(())
}

/// Seals, uploads and commits `segment` under `lease`. Transient failures
/// are retried with backoff, never skipped.
async fn commit_segment(
    ctx: &PipelineContext,
    lease: &mut Lease,
    segment: ConsumingSegment,
    end_offset: i64,
    labels: &[(&'static str, String); 2],
    stop: &watch::Receiver<bool>,
) -> Result<(), Exit> {
    let config = &ctx.config;
    let created_at_ms = now_ms();
    let name = SegmentRecord::segment_name(&config.table, lease.partition, lease.checkpoint.next_seq, created_at_ms);
    let start_offset = segment.start_offset();
    let offset_gaps: u64 = segment.gaps().iter().map(|(from, to)| (to - from + 1) as u64).sum();
    // Sealing and checksumming are CPU work: off the runtime's threads, so
    // that other partitions' commits and the ZooKeeper session are not held
    // up behind them.
    let sealed = {
        let (name, labels) = (name.clone(), labels.clone());
        tokio::task::spawn_blocking(move || {
            let sealing = Instant::now();
            seal(&segment, &name, created_at_ms).map_err(|e| format!("seal {name}: {e}")).map(|image| {
                metrics::histogram!(m::SEAL_SECONDS, &labels).record(sealing.elapsed().as_secs_f64());
                metrics::counter!(m::SEGMENTS_SEALED, &labels).increment(1);
                let crc = crc32c::crc32c(&image.bytes);
                (image.meta.row_count, image.meta.time_range, crc, image.bytes)
            })
        })
        .await
        .map_err(|e| Exit::failed(FailReason::Upload, format!("seal task: {e}")))?
    };
    let (row_count, time_range, crc32c, bytes) = sealed.map_err(|e| Exit::failed(FailReason::Upload, e))?;
    let size_bytes = bytes.len() as u64;
    // The object is named by the lease epoch: a zombie's late upload lands
    // beside the committed file, never over it.
    let object = DeepStore::segment_name(&name, lease.epoch());
    let uploading = Instant::now();
    let uri = ctx
        .store
        .put(&config.table, &object, bytes::Bytes::from(bytes))
        .await
        .map_err(|e| Exit::failed(FailReason::Upload, format!("upload {name}: {e}")))?;
    metrics::histogram!(m::UPLOAD_SECONDS, labels).record(uploading.elapsed().as_secs_f64());
    let record = SegmentRecord {
        name: name.clone(),
        partition: lease.partition,
        seq: lease.checkpoint.next_seq,
        start_offset,
        end_offset,
        row_count,
        uri,
        size_bytes,
        crc32c,
        time_range,
        created_at_ms,
        offset_gaps,
    };
    let mut backoff = Duration::from_millis(100);
    let committing = Instant::now();
    loop {
        match ctx.coordinator.commit(lease, &record).await {
            Ok(CommitOutcome::Committed) => {
                metrics::histogram!(m::COMMIT_SECONDS, labels).record(committing.elapsed().as_secs_f64());
                metrics::counter!(m::SEGMENTS_COMMITTED, labels).increment(1);
                metrics::counter!(m::ROWS_COMMITTED, labels).increment(record.row_count);
                tracing::info!(table = %config.table, segment = %name, rows = record.row_count, end_offset, "committed");
                ctx.health.committed(&config.table, lease.partition);
                mirror_offset(ctx, lease.partition, end_offset + 1);
                return Ok(());
            }
            Ok(CommitOutcome::Fenced) => {
                metrics::counter!(m::FENCED, labels).increment(1);
                tracing::warn!(table = %config.table, partition = lease.partition, "fenced: another worker owns the partition");
                // Our upload is nobody's: remove it now (orphan collection
                // would, later).
                if let Err(e) = ctx.store.delete(&config.table, &object).await {
                    tracing::warn!(uri = %record.uri, error = %e, "fenced: upload left for orphan collection");
                }
                return Err(Exit::Fenced);
            }
            Ok(CommitOutcome::Discontinuous { expected, found }) => {
                return Err(Exit::failed(
                    FailReason::Discontinuous,
                    format!("segment starts at {found}, the checkpoint is at {expected}"),
                ));
            }
            Ok(CommitOutcome::Transient(reason)) => tracing::warn!(%reason, "commit outcome unknown; retrying"),
            Err(e) => tracing::warn!(error = %e, "commit failed; retrying"),
        }
        metrics::counter!(m::COMMIT_RETRIES, labels).increment(1);
        if stop.has_changed().is_err() {
            // The worker is going away without a coordinator to retry against.
            return Err(Exit::failed(FailReason::Commit, "stopped while the commit was still uncertain"));
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}
