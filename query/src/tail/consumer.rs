//! A table's consumer: reads every partition the view follows from Kafka,
//! appends each record to its tail, publishes every 200 ms, and is
//! supervised: a failure or a panic is counted, shown and retried with
//! backoff, the tail kept.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use futures::{FutureExt, StreamExt};
use rdkafka::consumer::Consumer;
use rdkafka::{Message, Offset, TopicPartitionList};
use sluice_config::PipelineConfig;
use sluice_coordinator::{Checkpoint, Coordinator, Position};
use tokio::sync::watch;

use super::view::{TableView, now_ms};

/// How often changed tails are sealed and published.
const PUBLISH_EVERY: Duration = Duration::from_millis(200);

/// Backoff of a failing tail consumer.
const RETRY_MIN: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(30);

/// How often, in a cluster, the consumer's position is compared with the
/// high watermark of the tails still catching up.
const POSITION_EVERY: Duration = Duration::from_millis(500);

/// Kafka errors that last longer than this without a record in between
/// mark the consumer `erroring` in `/health`.
const ERRORS_SHOWN_AFTER: Duration = Duration::from_secs(10);

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
pub(super) fn catch_up_target(start: Offset, watermarks: Option<(i64, i64)>) -> Option<i64> {
    match (start, watermarks) {
        (Offset::End, _) => None,
        (_, None) => Some(i64::MAX),
        (_, Some((low, high))) if high <= low => None,
        (Offset::Offset(o), Some((_, high))) if o >= high => None,
        (_, Some((_, high))) => Some(high),
    }
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
