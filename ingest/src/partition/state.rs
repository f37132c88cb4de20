//! What a partition holds while it consumes: the segment being built,
//! the ones cut and waiting to be committed, and where the next begins.

use std::time::{Duration, Instant};

use sluice_config::PipelineConfig;
use sluice_segments::{ConsumingSegment, SegmentSize};

use super::context::PipelineContext;
use super::dead_letters::handle_bad_record;
use super::exit::{Exit, FailReason};
use crate::metrics as m;
use sluice_decode::BadRecord;

/// At most this many records are consumed between two looks at the stop
/// signal, the memory budget and the byte threshold.
pub(super) const DRAIN_BATCH: usize = 512;

pub(super) struct Consuming {
    pub(super) partition: i32,
    pub(super) segment: Option<ConsumingSegment>,
    /// Segments that reached their threshold while another was in flight:
    /// cut at the threshold, flushed in order as commits land (the memory
    /// budget, which counts them, bounds how many wait).
    pub(super) ready: std::collections::VecDeque<ConsumingSegment>,
    /// Where the next segment starts: the checkpoint's next offset, then
    /// one past the last segment cut or sent to commit. None: at the first
    /// record.
    pub(super) next_start: Option<i64>,
    pub(super) started: Option<Instant>,
    /// The size of the last segment cut, which the next one is sized for.
    pub(super) last_size: Option<SegmentSize>,
    /// Handles resolved once, added to once per batch of records (from
    /// `uncounted`: records, bytes), not per record.
    pub(super) records: metrics::Counter,
    pub(super) bytes: metrics::Counter,
    pub(super) uncounted: (u64, u64),
    pub(super) labels: [(&'static str, String); 2],
    pub(super) log: LogLimiter,
}

/// At most [`LogLimiter::PER_WINDOW`] bad-record log lines per partition
/// every ten seconds; the rest are counted (and always counted in metrics).
#[derive(Default)]
pub(super) struct LogLimiter {
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
    pub(super) async fn consume(&mut self, ctx: &PipelineContext, offset: i64, payload: &[u8]) -> Result<(), Exit> {
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
    pub(super) fn count(&mut self) {
        let (records, bytes) = std::mem::take(&mut self.uncounted);
        self.records.increment(records);
        self.bytes.increment(bytes);
    }

    /// Cuts the consuming segment: it waits, whole, for the segment in
    /// flight; the next starts one past its last offset.
    pub(super) fn cut(&mut self) {
        if let Some(segment) = self.segment.take() {
            self.next_start = segment.last_offset().map(|o| o + 1).or(self.next_start);
            self.started = None;
            self.last_size = Some(segment.size());
            self.ready.push_back(segment);
        }
    }

    pub(super) fn should_flush(&self, config: &PipelineConfig) -> bool {
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
