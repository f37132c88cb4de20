//! The partition's loop: assigned at its checkpoint, records drained in
//! batches into the consuming segment, flushed at a threshold while it
//! keeps consuming.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::Consumer;
use rdkafka::{Offset, TopicPartitionList};
use sluice_coordinator::{Checkpoint, Lease, Position};
use sluice_segments::ConsumingSegment;
use tokio::sync::watch;

use super::commit::{InFlight, begin_flush, settle};
use super::context::PipelineContext;
use super::exit::{Exit, FailReason};
use super::state::{Consuming, DRAIN_BATCH, LogLimiter};
use crate::budget::Pressure;
use crate::metrics as m;
use sluice_decode::{PartitionQueue, SourceConsumer};

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

pub(super) async fn consume_partition(
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
