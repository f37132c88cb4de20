//! How the rows a scan selected are read: the [`Reader`] of a scan's
//! columns and residual filter, the [`SegmentScanExec`] that reads this
//! node's segments in chunks, and what a scan tells the planner.

use std::fmt;
use std::sync::Arc;

use arrow::array::RecordBatchOptions;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use datafusion::catalog::Session;
use datafusion::common::stats::Precision;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{ColumnStatistics, DataFusionError, Result, ScalarValue, Statistics};
use datafusion::execution::TaskContext;
use datafusion::logical_expr::Expr;
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::statistics::StatisticsArgs;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties, SendableRecordBatchStream,
};
use roaring::RoaringBitmap;
use sluice_segments::{Predicate, Scalar, Segment};

use crate::scan::selection::{Part, Selection};

/// Which columns a scan materializes and how it turns them into output:
/// the projection plus the columns of residual filters, filtered, then
/// projected.
#[derive(Debug, Clone)]
pub(crate) struct Reader {
    pub(crate) read_schema: SchemaRef,
    pub(crate) residual: Option<Arc<dyn PhysicalExpr>>,
    /// Positions of the output columns in `read_schema`.
    pub(crate) output: Vec<usize>,
}

impl Reader {
    /// Reads exactly the `output` columns, with no filter of its own.
    pub(crate) fn plain(output: &Schema) -> Self {
        Reader { read_schema: Arc::new(output.clone()), residual: None, output: (0..output.fields().len()).collect() }
    }

    pub(crate) fn new(state: &dyn Session, table: &Schema, output: &Schema, residual: Vec<Expr>) -> Result<Self> {
        let Some(expr) = datafusion::logical_expr::utils::conjunction(residual) else {
            return Ok(Reader::plain(output));
        };
        let mut needed: Vec<String> = output.fields().iter().map(|f| f.name().clone()).collect();
        for column in expr.column_refs() {
            if !needed.contains(&column.name) {
                needed.push(column.name.clone());
            }
        }
        let fields: Vec<Field> =
            table.fields().iter().filter(|f| needed.contains(f.name())).map(|f| f.as_ref().clone()).collect();
        let read_schema = Arc::new(Schema::new(fields));
        let output = output.fields().iter().map(|f| read_schema.index_of(f.name())).collect::<Result<Vec<_>, _>>()?;
        let df_schema = datafusion::common::DFSchema::try_from(read_schema.as_ref().clone())?;
        let residual = state.create_physical_expr(expr, &df_schema)?;
        Ok(Reader { read_schema, residual: Some(residual), output })
    }

    /// Visits the residual filter, the one expression a scan holds.
    pub(crate) fn apply_residual(
        &self,
        f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        match &self.residual {
            Some(expr) => f(expr),
            None => Ok(TreeNodeRecursion::Continue),
        }
    }

    /// How a scan shows its filters: the pushed predicate, then the residual.
    pub(crate) fn fmt_filters(
        &self,
        f: &mut fmt::Formatter,
        predicate: Option<&Predicate>,
        exact: bool,
    ) -> fmt::Result {
        if let Some(p) = predicate {
            write!(f, ", predicate={p:?}, exact={exact}")?;
        }
        if let Some(residual) = &self.residual {
            write!(f, ", residual={residual}")?;
        }
        Ok(())
    }

    pub(crate) fn read(&self, segment: &Segment, rows: &RoaringBitmap, out_schema: &SchemaRef) -> Result<RecordBatch> {
        // Columns added to the table after the segment was written are
        // their default in every row.
        let has = |f: &Field| segment.meta().schema.column_index(f.name()).is_some();
        let (present, absent): (Vec<&Field>, Vec<&Field>) =
            self.read_schema.fields().iter().map(|f| f.as_ref()).partition(|f| has(f));
        let names: Vec<&str> = present.iter().map(|f| f.name().as_str()).collect();
        let types: Vec<DataType> = present.iter().map(|f| f.data_type().clone()).collect();
        let mut columns =
            segment.materialize_as(rows, &names, &types).map_err(|e| DataFusionError::External(Box::new(e)))?;
        if !absent.is_empty() {
            let mut read = columns.into_iter();
            columns = self
                .read_schema
                .fields()
                .iter()
                .map(|f| match has(f) {
                    true => read.next().ok_or_else(|| DataFusionError::Internal("a column was not read".into())),
                    false => crate::scan::evolution::absent_array(f, rows.len() as usize),
                })
                .collect::<Result<_>>()?;
        }
        let options = RecordBatchOptions::new().with_row_count(Some(rows.len() as usize));
        let mut batch = RecordBatch::try_new_with_options(self.read_schema.clone(), columns, &options)?;
        if let Some(residual) = &self.residual {
            let mask = residual.evaluate(&batch)?.into_array(batch.num_rows())?;
            let mask = mask
                .as_any()
                .downcast_ref::<arrow::array::BooleanArray>()
                .ok_or_else(|| DataFusionError::Internal("a filter did not evaluate to booleans".into()))?;
            batch = arrow::compute::filter_record_batch(&batch, mask)?;
        }
        let columns = self.output.iter().map(|&i| batch.column(i).clone()).collect();
        let options = RecordBatchOptions::new().with_row_count(Some(batch.num_rows()));
        Ok(RecordBatch::try_new_with_options(out_schema.clone(), columns, &options)?)
    }
}

/// Reads the selected rows of segments; one output partition per group of
/// segments of about equal row count.
pub struct SegmentScanExec {
    table: String,
    pub(crate) schema: SchemaRef,
    pub(crate) reader: Reader,
    selection: Selection,
    predicate: Option<Predicate>,
    exact: bool,
    properties: Arc<PlanProperties>,
}

impl fmt::Debug for SegmentScanExec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SegmentScanExec").field("table", &self.table).field("predicate", &self.predicate).finish()
    }
}

impl SegmentScanExec {
    pub(crate) fn new(
        table: String,
        schema: SchemaRef,
        reader: Reader,
        selection: Selection,
        predicate: Option<Predicate>,
        exact: bool,
    ) -> Self {
        let properties = Arc::new(PlanProperties::new(
            EquivalenceProperties::new(schema.clone()),
            Partitioning::UnknownPartitioning(selection.partition_count()),
            EmissionType::Incremental,
            Boundedness::Bounded,
        ));
        SegmentScanExec { table, schema, reader, selection, predicate, exact, properties }
    }

    /// The same scan over the segments `keep` keeps, spread over as many
    /// partitions at most.
    pub(crate) fn retain(&self, keep: impl Fn(&Segment) -> bool) -> Result<SegmentScanExec> {
        let (schema, reader, predicate) = (self.schema.clone(), self.reader.clone(), self.predicate.clone());
        Ok(SegmentScanExec::new(
            self.table.clone(),
            schema,
            reader,
            self.selection.retain(keep)?,
            predicate,
            self.exact,
        ))
    }

    /// Each partition's parts (evaluated now if they were deferred).
    pub(crate) fn partitions(&self) -> Result<&[Vec<Part>]> {
        self.selection.partitions()
    }

    /// Each partition's segments, without evaluating anything.
    pub(crate) fn segments(&self) -> Vec<Vec<Arc<Segment>>> {
        self.selection.segments()
    }

    /// Rows the scan produces, in total or for one partition.
    pub fn rows(&self, partition: Option<usize>) -> Result<u64> {
        let partitions = self.partitions()?;
        let parts: Box<dyn Iterator<Item = &Part>> = match partition {
            Some(i) => Box::new(partitions.get(i).into_iter().flatten()),
            None => Box::new(partitions.iter().flatten()),
        };
        Ok(parts.map(|p| p.rows.len()).sum())
    }

    /// Whether the scan's rows were selected (while planning, or since).
    pub(crate) fn is_selected(&self) -> bool {
        self.selection.is_selected()
    }

    /// Whether the scan's rows are exactly the rows of the filters it took.
    pub fn is_exact(&self) -> bool {
        self.exact
    }

    pub fn predicate(&self) -> Option<&Predicate> {
        self.predicate.as_ref()
    }
}

impl DisplayAs for SegmentScanExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        let segments: Vec<Arc<Segment>> = self.segments().into_iter().flatten().collect();
        let consuming = segments.iter().filter(|s| s.meta().name.ends_with(crate::topology::CONSUMING_SUFFIX)).count();
        write!(f, "SegmentScanExec: table={}, segments={} (consuming={consuming}), ", self.table, segments.len())?;
        // A deferred selection is not evaluated for display.
        match self.selection.is_selected().then(|| self.rows(None)) {
            Some(Ok(rows)) => write!(f, "rows={rows}")?,
            Some(Err(e)) => write!(f, "rows=({e})")?,
            None => write!(f, "rows=(selected on first read)")?,
        }
        self.reader.fmt_filters(f, self.predicate.as_ref(), self.exact)
    }
}

impl ExecutionPlan for SegmentScanExec {
    fn name(&self) -> &str {
        "SegmentScanExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![]
    }

    fn apply_expressions(
        &self,
        f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        self.reader.apply_residual(f)
    }

    fn with_new_children(self: Arc<Self>, _children: Vec<Arc<dyn ExecutionPlan>>) -> Result<Arc<dyn ExecutionPlan>> {
        Ok(self)
    }

    fn execute(&self, partition: usize, context: Arc<TaskContext>) -> Result<SendableRecordBatchStream> {
        let parts = self
            .partitions()?
            .get(partition)
            .cloned()
            .ok_or_else(|| DataFusionError::Internal(format!("SegmentScanExec has no partition {partition}")))?;
        let batch_size = context.session_config().batch_size().max(1) as u32;
        let batches = read_parts(parts, Arc::new(self.reader.clone()), self.schema.clone(), batch_size);
        // Time-sliced: what a query does with each batch (a projection
        // building megabytes per row) must not hold the thread for longer.
        let batches = crate::limits::yielding::TimeSliced::new(futures::stream::iter(batches));
        Ok(Box::pin(RecordBatchStreamAdapter::new(self.schema.clone(), batches)))
    }

    fn statistics_from_inputs(&self, _inputs: &[Arc<Statistics>], args: &StatisticsArgs) -> Result<Arc<Statistics>> {
        if !self.is_selected() {
            // Deferred: the candidates' rows bound the count. DataFusion
            // asks while it plans distribution, before a star-tree takes
            // the scan; evaluating here would undo the deferral.
            let segments = self.segments();
            let segments: Vec<&Arc<Segment>> = match args.partition() {
                Some(i) => segments.get(i).into_iter().flatten().collect(),
                None => segments.iter().flatten().collect(),
            };
            let bound: u64 = segments.iter().map(|s| u64::from(s.num_rows())).sum();
            return Ok(Arc::new(
                Statistics::new_unknown(&self.schema).with_num_rows(Precision::Inexact(bound as usize)),
            ));
        }
        let rows = self.rows(args.partition())? as usize;
        let rows = if self.exact { Precision::Exact(rows) } else { Precision::Inexact(rows) };
        let mut statistics = Statistics::new_unknown(&self.schema).with_num_rows(rows);
        let partitions = self.partitions()?;
        let parts: Vec<&Part> = match args.partition() {
            Some(i) => partitions.get(i).into_iter().flatten().collect(),
            None => partitions.iter().flatten().collect(),
        };
        // Every row of every segment read: the segments' min, max and NULL
        // counts are the scan's, exactly, and DataFusion answers MIN, MAX
        // and COUNT(column) from them without reading a row (Pinot's
        // metadata-based aggregation).
        if self.exact && parts.iter().all(|p| p.rows.len() == u64::from(p.segment.num_rows())) {
            statistics.column_statistics = self.schema.fields().iter().map(|f| column_statistics(f, &parts)).collect();
        }
        Ok(Arc::new(statistics))
    }
}

/// Exact statistics of column `field` over whole segments: NULL counts for
/// every column; min and max for integer, timestamp and string columns
/// (strings in byte order, which is both the segments' and DataFusion's, and
/// stored whole). Floats are left to a scan: NaN and -0.0 order differently.
fn column_statistics(field: &Field, parts: &[&Part]) -> ColumnStatistics {
    let mut out = ColumnStatistics::new_unknown();
    let mut nulls = 0u64;
    let (mut min, mut max): (Option<i64>, Option<i64>) = (None, None);
    let (mut min_str, mut max_str): (Option<&str>, Option<&str>) = (None, None);
    for part in parts {
        let Some(stats) = part.segment.meta().column_stats(field.name()) else { return out };
        nulls += stats.null_count;
        let as_i64 = |s: &Option<Scalar>| match s {
            Some(Scalar::Int32(v)) => Some(i64::from(*v)),
            Some(Scalar::Int64(v) | Scalar::Timestamp(v)) => Some(*v),
            _ => None,
        };
        if let (Some(lo), Some(hi)) = (as_i64(&stats.min), as_i64(&stats.max)) {
            min = Some(min.map_or(lo, |m| m.min(lo)));
            max = Some(max.map_or(hi, |m| m.max(hi)));
        }
        if let (Some(Scalar::Utf8(lo)), Some(Scalar::Utf8(hi))) = (&stats.min, &stats.max) {
            min_str = Some(min_str.map_or(lo.as_str(), |m| m.min(lo.as_str())));
            max_str = Some(max_str.map_or(hi.as_str(), |m| m.max(hi.as_str())));
        }
    }
    out.null_count = Precision::Exact(nulls as usize);
    let typed = |v: i64| match field.data_type() {
        DataType::Int32 => i32::try_from(v).ok().map(|v| ScalarValue::Int32(Some(v))),
        DataType::Int64 => Some(ScalarValue::Int64(Some(v))),
        t @ DataType::Timestamp(..) => ScalarValue::Int64(Some(v)).cast_to(t).ok(),
        _ => None,
    };
    let (lo, hi) = match field.data_type() {
        DataType::Utf8View => (
            min_str.map(|v| ScalarValue::Utf8View(Some(v.to_string()))),
            max_str.map(|v| ScalarValue::Utf8View(Some(v.to_string()))),
        ),
        _ => (min.and_then(typed), max.and_then(typed)),
    };
    if let (Some(lo), Some(hi)) = (lo, hi) {
        out.min_value = Precision::Exact(lo);
        out.max_value = Precision::Exact(hi);
    }
    out
}

/// The selected rows of `parts` as batches of at most `batch_size` rows,
/// read one at a time as the stream asks.
pub(crate) fn read_parts(
    parts: Vec<Part>,
    reader: Arc<Reader>,
    schema: SchemaRef,
    batch_size: u32,
) -> impl Iterator<Item = Result<RecordBatch>> + Send {
    parts.into_iter().flat_map(move |part| {
        let (reader, schema) = (reader.clone(), schema.clone());
        chunks(&part.rows, batch_size).into_iter().map(move |rows| reader.read(&part.segment, &rows, &schema))
    })
}

/// `rows` split into bitmaps of at most `size` rows, in order.
pub(crate) fn chunks(rows: &RoaringBitmap, size: u32) -> Vec<RoaringBitmap> {
    let total = rows.len();
    if total <= u64::from(size) {
        return vec![rows.clone()];
    }
    let mut out = Vec::with_capacity(total.div_ceil(u64::from(size)) as usize);
    let mut start = 0u64;
    while start < total {
        let lo = rows.select(start as u32).expect("start < len");
        let end = start + u64::from(size);
        let mut chunk = RoaringBitmap::new();
        match rows.select(end.min(u64::from(u32::MAX)) as u32).filter(|_| end < total) {
            Some(hi) => chunk.insert_range(lo..hi),
            None => chunk.insert_range(lo..=rows.max().expect("non-empty")),
        };
        chunk &= rows;
        out.push(chunk);
        start = end;
    }
    out
}

/// What a scan reads and how, as the table's `scan` decided it.
#[derive(Clone)]
pub(crate) struct ScanSpec {
    pub table: String,
    /// The scan's output.
    pub schema: SchemaRef,
    pub reader: Reader,
    pub predicate: Option<Predicate>,
    pub exact: bool,
    /// Rows each task may stop after (DataFusion's limit stays above).
    pub limit: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_cover_every_row_once_in_order() {
        let mut rows = RoaringBitmap::new();
        rows.insert_range(10..1000);
        rows.extend([5000, 70_000, 70_001, 200_000]);
        for size in [1, 7, 100, 993, 994, 10_000] {
            let parts = chunks(&rows, size);
            assert!(parts.iter().all(|c| c.len() <= u64::from(size) && !c.is_empty()));
            let joined: Vec<u32> = parts.iter().flat_map(|c| c.iter()).collect();
            assert_eq!(joined, rows.iter().collect::<Vec<_>>(), "size {size}");
        }
    }
}
