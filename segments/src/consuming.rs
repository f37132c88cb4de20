//! The consuming segment: rows of one partition being appended, with live
//! statistics (and, when queried in place, live indexes), until the segment
//! is sealed.

use std::ops::Bound;
use std::sync::Arc;

use arrow::array::{ArrayRef, Int64Array, RecordBatch};
use roaring::RoaringBitmap;
use sluice_config::ColumnType;

use crate::builder::ColumnBuilder;
use crate::error::{RowError, SegmentError};
use crate::live_index::LiveIndex;
use crate::predicate::{self, Columns, Predicate, StatsSource};
use crate::schema::SegmentSchema;
use crate::stats::{ColumnStats, LiveStats};
use crate::types::{Datum, Key, KeyRef};

/// Rows between two exact recomputations of the live indexes' memory.
const INDEX_MEMORY_RECOUNT_ROWS: u64 = 65_536;
/// Estimated index growth per indexed row between recounts (a u16 in a
/// roaring array container).
const INDEX_BYTES_PER_ROW: usize = 2;

/// How large a consuming segment grew: rows, and string bytes per column.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SegmentSize {
    pub rows: usize,
    pub bytes: Vec<usize>,
}

pub struct ConsumingSegment {
    schema: Arc<SegmentSchema>,
    partition: i32,
    start_offset: i64,
    /// Last offset consumed into this segment, as a row or skipped.
    last_offset: Option<i64>,
    columns: Vec<ColumnBuilder>,
    offsets: Vec<i64>,
    live: Vec<Option<LiveIndex>>,
    /// Min/max per column as rows arrive, kept only with live indexes (for
    /// pruning in place); otherwise computed from the buffers when asked.
    stats: Option<Vec<LiveStats>>,
    index_bytes_counted: usize,
    rows_since_recount: u64,
    /// Offset ranges (inclusive) Kafka never delivered between consumed
    /// records: compacted away, transaction markers, or skipped.
    gaps: Vec<(i64, i64)>,
}

impl ConsumingSegment {
    /// An empty segment of `partition` whose first record is at `start_offset`
    /// (the partition checkpoint's next offset), without live indexes.
    ///
    /// Both of sluice's consuming segments are such: a worker's rows are queried once
    /// committed, a query node's tail once published as a sealed chunk, and
    /// sealing builds every index from the columns. Live indexes there cost
    /// a tenth of a worker's CPU per row and served no query.
    pub fn new(schema: Arc<SegmentSchema>, partition: i32, start_offset: i64) -> Self {
        Self::build(schema, partition, start_offset, false)
    }

    /// An empty segment with live indexes on the schema's indexed columns,
    /// for a consuming segment queried in place ([`ConsumingSegment::evaluate`]
    /// answers indexed predicates from them instead of scanning).
    pub fn with_live_indexes(schema: Arc<SegmentSchema>, partition: i32, start_offset: i64) -> Self {
        Self::build(schema, partition, start_offset, true)
    }

    fn build(schema: Arc<SegmentSchema>, partition: i32, start_offset: i64, indexed: bool) -> Self {
        let columns = schema.columns.iter().map(|c| ColumnBuilder::new(c.data_type, c.arrow_type())).collect();
        let live = (0..schema.columns.len())
            .map(|i| (indexed && schema.live_indexed(i)).then(|| LiveIndex::new(schema.columns[i].data_type)))
            .collect();
        let stats = indexed.then(|| vec![LiveStats::default(); schema.columns.len()]);
        Self {
            schema,
            partition,
            start_offset,
            last_offset: None,
            columns,
            offsets: Vec::new(),
            live,
            stats,
            index_bytes_counted: 0,
            rows_since_recount: 0,
            gaps: Vec::new(),
        }
    }

    /// Rows and string bytes per column this segment holds, to size the
    /// next one of the partition ([`ConsumingSegment::sized`]).
    pub fn size(&self) -> SegmentSize {
        SegmentSize { rows: self.offsets.len(), bytes: self.columns.iter().map(ColumnBuilder::data_bytes).collect() }
    }

    /// Sizes this (empty) segment's buffers for `size`, when it is at most
    /// `max_rows` rows: consecutive segments of a partition are alike, so
    /// the next one fills without regrowing its buffers, each growth a copy
    /// of everything so far.
    pub fn sized(mut self, size: &SegmentSize, max_rows: usize) -> Self {
        if size.rows <= max_rows && size.bytes.len() == self.columns.len() {
            for (column, bytes) in self.columns.iter_mut().zip(&size.bytes) {
                column.reserve(size.rows, *bytes);
            }
            self.offsets.reserve_exact(size.rows);
        }
        self
    }

    pub fn schema(&self) -> &Arc<SegmentSchema> {
        &self.schema
    }

    pub fn partition(&self) -> i32 {
        self.partition
    }

    pub fn start_offset(&self) -> i64 {
        self.start_offset
    }

    /// Last offset consumed (appended or skipped), if any.
    pub fn last_offset(&self) -> Option<i64> {
        self.last_offset
    }

    /// The offset the partition's checkpoint moves to once this segment is
    /// committed.
    pub fn next_offset(&self) -> i64 {
        self.last_offset.map_or(self.start_offset, |o| o + 1)
    }

    /// Offset ranges (inclusive) this segment covers without records: the
    /// partition jumped over them. Recorded in the sealed segment's metadata.
    pub fn gaps(&self) -> &[(i64, i64)] {
        &self.gaps
    }

    fn note_gap(&mut self, offset: i64) {
        let expected = self.next_offset();
        if offset > expected {
            self.gaps.push((expected, offset - 1));
        }
    }

    /// Offset of the first row appended, if any.
    pub fn first_row_offset(&self) -> Option<i64> {
        self.offsets.first().copied()
    }

    pub fn row_count(&self) -> u32 {
        self.offsets.len() as u32
    }

    pub fn is_empty(&self) -> bool {
        self.offsets.is_empty()
    }

    fn check_offset(&self, offset: i64) -> Result<(), RowError> {
        let last = self.last_offset.unwrap_or(self.start_offset - 1);
        if offset <= last {
            return Err(RowError::OffsetNotIncreasing { offset, last });
        }
        Ok(())
    }

    /// Appends the record at `offset` as a row. On error nothing changes and
    /// the segment keeps accepting rows; the caller decides what a bad
    /// record means (skip it with [`ConsumingSegment::skip`], dead-letter it, fail).
    pub fn append(&mut self, offset: i64, row: &[Datum<'_>]) -> Result<(), RowError> {
        self.check_offset(offset)?;
        if row.len() != self.columns.len() {
            return Err(RowError::Arity { expected: self.columns.len(), found: row.len() });
        }
        if self.offsets.len() >= u32::MAX as usize {
            return Err(RowError::SegmentFull { max: u32::MAX });
        }
        for ((datum, builder), spec) in row.iter().zip(&self.columns).zip(&self.schema.columns) {
            if matches!(datum, Datum::Null) && !spec.nullable {
                return Err(RowError::NullInRequired { column: spec.name.clone() });
            }
            builder.accepts(datum).map_err(|found| match found {
                "full" => RowError::ColumnFull { column: spec.name.clone() },
                found => RowError::TypeMismatch { column: spec.name.clone(), expected: spec.data_type, found },
            })?;
        }
        self.note_gap(offset);
        let row_id = self.offsets.len() as u32;
        for (i, datum) in row.iter().enumerate() {
            self.columns[i].push(datum);
        }
        if let Some(stats) = &mut self.stats {
            for (i, datum) in row.iter().enumerate() {
                // Borrowed keys: a key is allocated only when it is new to
                // the index or a new minimum or maximum.
                if let Some(key) = KeyRef::of(datum) {
                    if let Some(index) = &mut self.live[i]
                        && let Some(bytes) = index.add(key, row_id)
                    {
                        self.index_bytes_counted += bytes;
                    }
                    stats[i].observe(key);
                }
            }
        }
        self.offsets.push(offset);
        self.last_offset = Some(offset);
        self.rows_since_recount += 1;
        if self.rows_since_recount >= INDEX_MEMORY_RECOUNT_ROWS {
            self.recount_index_memory();
        }
        Ok(())
    }

    /// Records that `offset` was consumed without producing a row (a bad
    /// record), so the checkpoint moves past it when this segment commits.
    pub fn skip(&mut self, offset: i64) -> Result<(), RowError> {
        self.check_offset(offset)?;
        self.note_gap(offset);
        self.last_offset = Some(offset);
        Ok(())
    }

    fn recount_index_memory(&mut self) {
        self.index_bytes_counted = self.live.iter().flatten().map(LiveIndex::memory_bytes).sum();
        self.rows_since_recount = 0;
    }

    fn indexed_columns(&self) -> usize {
        self.live.iter().filter(|l| l.is_some()).count()
    }

    /// Bytes of memory this segment holds: column buffers as allocated, row
    /// offsets, and the live indexes.
    pub fn memory_bytes(&self) -> usize {
        let columns: usize = self.columns.iter().map(ColumnBuilder::allocated_bytes).sum();
        let estimate = self.rows_since_recount as usize * INDEX_BYTES_PER_ROW * self.indexed_columns();
        columns + self.offsets.capacity() * 8 + self.index_bytes_counted + estimate
    }

    /// Exact bytes of the live indexes now (walks every bitmap).
    pub fn index_memory_bytes(&mut self) -> usize {
        self.recount_index_memory();
        self.index_bytes_counted
    }

    /// Statistics of column `column` so far (no distinct count).
    pub fn column_stats(&self, column: usize) -> ColumnStats {
        let spec = &self.schema.columns[column];
        let nulls = self.columns[column].null_count() as u64;
        match &self.stats {
            Some(stats) => stats[column].to_stats(spec.data_type, nulls),
            None => {
                let (min, max) = self.columns[column].min_max().unzip();
                LiveStats { min, max }.to_stats(spec.data_type, nulls)
            }
        }
    }

    /// The rows so far as Arrow arrays (copies), with the offset column last.
    pub fn arrays(&self) -> Vec<ArrayRef> {
        let mut arrays: Vec<ArrayRef> = self.columns.iter().map(ColumnBuilder::to_array).collect();
        arrays.push(Arc::new(Int64Array::from(self.offsets.clone())));
        arrays
    }

    /// All rows so far, in append order.
    pub fn to_record_batch(&self) -> Result<RecordBatch, SegmentError> {
        Ok(RecordBatch::try_new(self.schema.arrow_schema(), self.arrays())?)
    }

    /// Rows of the segment for which `predicate` is TRUE.
    pub fn evaluate(&self, predicate: &Predicate) -> Result<RoaringBitmap, SegmentError> {
        predicate::evaluate(self, predicate)
    }

    /// False when no row can satisfy `predicate`, judged from statistics only.
    pub fn can_match(&self, predicate: &Predicate) -> bool {
        let stats: Vec<ColumnStats> = (0..self.columns.len()).map(|i| self.column_stats(i)).collect();
        predicate::can_match(&LiveStatsSource { segment: self, stats }, predicate)
    }

    /// The selected rows of the projected columns (by name; the offset column
    /// is `__offset`).
    pub fn materialize(&self, rows: &RoaringBitmap, projection: &[&str]) -> Result<RecordBatch, SegmentError> {
        crate::sealed::take_rows(&self.schema.arrow_schema(), &self.arrays(), rows, projection)
    }
}

impl Columns for ConsumingSegment {
    fn num_rows(&self) -> u32 {
        self.row_count()
    }

    fn resolve(&self, column: &str) -> Option<(usize, ColumnType)> {
        let i = self.schema.column_index(column)?;
        Some((i, self.schema.columns[i].data_type))
    }

    fn array(&self, column: usize) -> Result<ArrayRef, SegmentError> {
        Ok(self.columns[column].to_array())
    }

    fn lookup_eq(&self, column: usize, key: &Key) -> Result<Option<RoaringBitmap>, SegmentError> {
        Ok(self.live[column].as_ref().map(|index| index.get(key).cloned().unwrap_or_default()))
    }

    fn lookup_range(
        &self,
        column: usize,
        low: Bound<&Key>,
        high: Bound<&Key>,
    ) -> Result<Option<RoaringBitmap>, SegmentError> {
        let Some(index) = &self.live[column] else { return Ok(None) };
        if let (Bound::Included(l) | Bound::Excluded(l), Bound::Included(h) | Bound::Excluded(h)) = (low, high)
            && (l > h || (l == h && !(matches!(low, Bound::Included(_)) && matches!(high, Bound::Included(_)))))
        {
            return Ok(Some(RoaringBitmap::new()));
        }
        Ok(Some(index.range(low, high)))
    }

    fn nulls(&self, column: usize) -> Result<RoaringBitmap, SegmentError> {
        let builder = &self.columns[column];
        if builder.null_count() == 0 {
            return Ok(RoaringBitmap::new());
        }
        Ok((0..builder.len()).filter(|&r| !builder.is_valid(r)).map(|r| r as u32).collect())
    }
}

struct LiveStatsSource<'a> {
    segment: &'a ConsumingSegment,
    stats: Vec<ColumnStats>,
}

impl StatsSource for LiveStatsSource<'_> {
    fn row_count(&self) -> u64 {
        u64::from(self.segment.row_count())
    }

    fn column_stats(&self, column: &str) -> Option<(ColumnType, &ColumnStats)> {
        let i = self.segment.schema.column_index(column)?;
        Some((self.segment.schema.columns[i].data_type, &self.stats[i]))
    }

    fn may_contain(&self, _column: &str, _key: &Key) -> bool {
        true
    }
}
