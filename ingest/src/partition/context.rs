//! What every partition of a pipeline shares: its consumer, decoder,
//! deep store, producer of dead letters and memory budget.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rdkafka::Message;
use rdkafka::consumer::Consumer;
use rdkafka::producer::FutureProducer;
use sluice_config::{BadRecordPolicy, PipelineConfig};
use sluice_coordinator::Coordinator;
use sluice_segments::SegmentSchema;
use sluice_storage::DeepStore;

use crate::budget::MemoryBudget;
use crate::metrics as m;
use sluice_decode::{Decoder, SourceConsumer, SourceContext};

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
pub(super) fn mirror_offset(ctx: &PipelineContext, partition: i32, next_offset: i64) {
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
