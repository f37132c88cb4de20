//! Seal, upload and commit: a flushed segment is sealed off the
//! consumer's path, uploaded to the deep store, and committed with the
//! next offset in one fenced `multi`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::FutureExt;
use sluice_coordinator::{CommitOutcome, Lease, SegmentRecord};
use sluice_segments::{ConsumingSegment, seal};
use sluice_storage::DeepStore;
use tokio::sync::watch;

use super::context::{PipelineContext, mirror_offset, now_ms};
use super::exit::{Exit, FailReason};
use super::state::Consuming;
use crate::metrics as m;

/// Settles the segment in flight, if any: waits for its commit task and
/// takes the lease back.
pub(super) async fn settle(in_flight: &mut Option<InFlight>, held: &mut Option<Lease>) -> Result<(), Exit> {
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

/// What a commit task hands back: the lease (always, so it can be released)
/// and how the commit ended.
type Flushed = (Lease, Result<(), Exit>);

/// A sealed segment on its way to the deep store and the catalog.
pub(super) struct InFlight {
    pub(super) task: tokio::task::JoinHandle<Flushed>,
    /// The segment's memory, still held until its commit lands.
    pub(super) memory: usize,
}

/// Starts sealing, uploading and committing the consuming segment, if it
/// consumed anything, and returns at once: consumption goes on into the next
/// segment, which starts right after this one's last offset (pauseless, as
/// Pinot's #10147). At most one segment is in flight: a previous one is
/// settled first, so commits stay in order and the lease is back in hand.
/// (The consuming loop starts a flush only when nothing is in flight, so
/// the wait happens on a stop or under memory pressure only.)
pub(super) async fn begin_flush(
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
