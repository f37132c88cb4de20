//! Guarded windows.
//!
//! **Windows over partitions.** DataFusion's `WindowAggExec` gathers its
//! whole input outside the memory pool, then evaluates every partition and
//! builds one output batch in a single poll: `array_agg(url) OVER
//! (PARTITION BY session_id)` over 110,000 rows held the thread 7 s in a
//! debug build, and `SELECT 1` waited behind it. And a window whose frame
//! is the whole partition (`string_agg(url, ',') OVER ()`) is evaluated
//! once and its value copied into every row of the partition in one
//! allocation: a 340 KB aggregate over 45,000 rows is 15 GB. The guarded
//! copy ([`WindowRun`]) reserves the input it gathers in the pool, emits
//! the partitions in batches of about [`WINDOW_BATCH_ROWS`] rows (so the
//! task yields between them), and before a window repeats a value over a
//! partition it bounds it: the partition's rows times the largest value
//! the window can repeat (all it reads for an aggregate that collects its
//! rows, `string_agg` and `array_agg`; the widest value for `max` or
//! `first_value`). Past `limits.max_function_output` the query is refused
//! as a function's output is (413), naming the window.
//!
//!
//! **Streamed windows.** A `BoundedWindowAggExec` (running and sliding
//! frames) gives each row of an input batch its own copy of the running
//! value. The copy cuts its input to the widest value the window can give
//! a row ([`input_cut_to_window`]) and stores a view column's repeated
//! values once ([`share_repeats`]), so an operator above that gathers
//! 8,192 rows holds views of one copy.
//!

use std::fmt;
use std::ops::Range;
use std::sync::Arc;

use arrow::array::ArrayRef;
use arrow::record_batch::RecordBatch;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::utils::evaluate_partition_ranges;
use datafusion::common::{DataFusionError, Result};
use datafusion::execution::TaskContext;
use datafusion::execution::memory_pool::{MemoryConsumer, MemoryReservation};
use datafusion::logical_expr::{WindowFrame, WindowFrameBound, WindowFrameUnits};
use datafusion::physical_expr::window::{
    PlainAggregateWindowExpr, SlidingAggregateWindowExpr, StandardWindowExpr, WindowExpr,
};
use datafusion::physical_expr::{PhysicalExpr, PhysicalSortExpr};
use datafusion::physical_expr_common::utils::evaluate_expressions_to_arrays;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::windows::{BoundedWindowAggExec, WindowAggExec, WindowUDFExpr};
use datafusion::physical_plan::{ChildrenPropertiesMode, ReplaceChildrenOptions};
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, PlanProperties, SendableRecordBatchStream,
};
use futures::StreamExt;

use super::batches::{BatchMap, REPEATED_BATCH_BYTES, slices};
use crate::error::REFUSED;
use crate::limits::sizes::{array_bytes, variable_width, widest_value};

/// The guarded copy of a streamed window: its input cut to the widest
/// value it can give a row, its repeated values stored once; `plan`
/// itself when it gives no variable-width value.
pub(super) fn streamed(plan: &Arc<dyn ExecutionPlan>, window: &BoundedWindowAggExec) -> Result<Arc<dyn ExecutionPlan>> {
    let streamed: Vec<Streamed> = window.window_expr().iter().filter_map(Streamed::of).collect();
    if streamed.is_empty() {
        return Ok(plan.clone());
    }
    let input = input_cut_to_window(window.input().clone(), Arc::new(streamed));
    let options = ReplaceChildrenOptions::new(ChildrenPropertiesMode::Keep);
    let window_columns = window.window_expr().len();
    let cut = plan.clone().replace_children(vec![input], options)?;
    Ok(Arc::new(BatchMap::new(cut, "SharedRepeats", move || {
        Box::new(move |batch| share_repeats(batch, window_columns).map(|batch| vec![batch]))
    })))
}

/// A streamed window expression with a variable-width value, and what one
/// row's value can hold.
struct Streamed {
    args: Vec<Arc<dyn PhysicalExpr>>,
    /// Whether a row's value can hold every row read before it (an
    /// aggregate that collects them, or one this module does not know),
    /// rather than one of them.
    collects: bool,
}

impl Streamed {
    fn of(expr: &Arc<dyn WindowExpr>) -> Option<Streamed> {
        if !variable_width(expr.field().ok()?.data_type()) {
            return None;
        }
        let any = expr.as_any();
        let aggregate = any
            .downcast_ref::<PlainAggregateWindowExpr>()
            .map(|a| a.get_aggregate_expr().fun().name())
            .or_else(|| any.downcast_ref::<SlidingAggregateWindowExpr>().map(|a| a.get_aggregate_expr().fun().name()));
        // Window functions (lag, first_value, …) give one row's value.
        let collects = match aggregate {
            Some(name) => !ONE_VALUE_AGGREGATES.contains(&name),
            None => !any.is::<StandardWindowExpr>(),
        };
        Some(Streamed { args: expr.expressions(), collects })
    }
}

/// `batch` with its last `columns` columns' repeated values stored once:
/// a running window gives every row its own copy of the value it repeats,
/// and an operator above that gathers rows into batches of DataFusion's
/// size (a repartition, a filter) would hold thousands of copies. A view
/// column whose values take more than [`SHARED_ABOVE`] is rebuilt with each
/// distinct value stored once; the rows and their values are the same.
fn share_repeats(batch: RecordBatch, columns: usize) -> Result<RecordBatch> {
    use arrow::array::{Array, AsArray, BinaryViewBuilder, StringViewBuilder};
    use arrow::datatypes::DataType;
    let first = batch.num_columns().saturating_sub(columns);
    let mut arrays = batch.columns().to_vec();
    for array in &mut arrays[first..] {
        let shared: ArrayRef = match array.data_type() {
            DataType::Utf8View if array.as_string_view().total_buffer_bytes_used() > SHARED_ABOVE => {
                let mut builder = StringViewBuilder::with_capacity(array.len()).with_deduplicate_strings();
                array.as_string_view().iter().for_each(|v| builder.append_option(v));
                Arc::new(builder.finish())
            }
            DataType::BinaryView if array.as_binary_view().total_buffer_bytes_used() > SHARED_ABOVE => {
                let mut builder = BinaryViewBuilder::with_capacity(array.len()).with_deduplicate_strings();
                array.as_binary_view().iter().for_each(|v| builder.append_option(v));
                Arc::new(builder.finish())
            }
            _ => continue,
        };
        *array = shared;
    }
    Ok(RecordBatch::try_new(batch.schema(), arrays)?)
}

/// The bytes of a window column's values past which its repeats are
/// stored once ([`share_repeats`]).
const SHARED_ABOVE: usize = 1 << 20;

/// A streamed window's input, cut so that a batch's rows times the widest
/// value the window can give a row stay under [`REPEATED_BATCH_BYTES`]: a
/// running `max(s) OVER (ORDER BY ts)` copies its value into every row of
/// the batch it reads. The widest value is the widest argument read so
/// far, or, for an aggregate that collects its rows, all it has read.
fn input_cut_to_window(input: Arc<dyn ExecutionPlan>, streamed: Arc<Vec<Streamed>>) -> Arc<dyn ExecutionPlan> {
    Arc::new(BatchMap::new(input, "WindowSlices", move || {
        let streamed = streamed.clone();
        let (mut widest, mut read) = (0u128, 0u128);
        Box::new(move |batch| {
            for expr in streamed.iter() {
                let args = evaluate_expressions_to_arrays(&expr.args, &batch)?;
                if expr.collects {
                    read += args.iter().map(|a| array_bytes(a.as_ref())).sum::<u128>();
                } else {
                    widest = widest.max(args.iter().map(|a| widest_value(a.as_ref())).sum());
                }
            }
            let value = widest.max(read).min(usize::MAX as u128) as usize;
            Ok(slices(batch, (REPEATED_BATCH_BYTES / value.max(1)).max(1)))
        })
    }))
}

/// A window expression that repeats one value over a partition, and what
/// it can repeat.
#[derive(Debug)]
struct Repeated {
    /// Its arguments.
    args: Vec<Arc<dyn PhysicalExpr>>,
    name: String,
    /// Whether the repeated value can hold every row it reads (an
    /// aggregate that collects them, or one this module does not know),
    /// rather than one of them.
    collects: bool,
}

/// Window functions whose value in a frame is one of the frame's values.
const ONE_OF_THE_ROWS: [&str; 3] = ["first_value", "last_value", "nth_value"];

/// Aggregates whose value is one of their input values, or fixed width.
const ONE_VALUE_AGGREGATES: [&str; 6] = ["min", "max", "first_value", "last_value", "any_value", "nth_value"];

impl Repeated {
    /// `expr`'s repeated value, when it repeats a variable-width value over
    /// whole partitions.
    fn of(expr: &Arc<dyn WindowExpr>) -> Option<Repeated> {
        if !variable_width(expr.field().ok()?.data_type()) {
            return None;
        }
        let collects = if let Some(aggregate) = expr.as_any().downcast_ref::<PlainAggregateWindowExpr>() {
            if !whole_partition(expr.order_by(), expr.get_window_frame()) {
                return None;
            }
            !ONE_VALUE_AGGREGATES.contains(&aggregate.get_aggregate_expr().fun().name())
        } else {
            // first_value and its kind repeat one row of the frame into
            // every row, whatever the frame.
            let standard = expr.as_any().downcast_ref::<StandardWindowExpr>()?;
            let function = standard.get_standard_func_expr().as_any().downcast_ref::<WindowUDFExpr>()?;
            if !ONE_OF_THE_ROWS.contains(&function.fun().name()) {
                return None;
            }
            false
        };
        Some(Repeated { args: expr.expressions(), name: expr.name().to_string(), collects })
    }

    /// Refuses a partition the window would repeat a value over past
    /// `limit` bytes.
    fn check(&self, partition: &RecordBatch, limit: u64) -> Result<()> {
        let args = evaluate_expressions_to_arrays(&self.args, partition)?;
        let value: u128 = if self.collects {
            args.iter().map(|a| array_bytes(a.as_ref())).sum()
        } else {
            args.iter().map(|a| widest_value(a.as_ref())).sum()
        };
        let bytes = value.saturating_mul(partition.num_rows() as u128);
        if bytes > limit as u128 {
            return Err(DataFusionError::ResourcesExhausted(format!(
                "{REFUSED}: the window {} would repeat up to {value} bytes into each of {} rows, past the node's \
                 limits.max_function_output of {limit} (partition the window more finely, or aggregate without \
                 OVER)",
                self.name,
                partition.num_rows(),
            )));
        }
        Ok(())
    }
}

/// Whether every row of a partition has the same frame: DataFusion then
/// evaluates the window once and repeats it (as its
/// `is_window_constant_in_partition`).
fn whole_partition(order_by: &[PhysicalSortExpr], frame: &WindowFrame) -> bool {
    let unbounded = |bound: &WindowFrameBound| match bound {
        WindowFrameBound::CurrentRow => frame.units == WindowFrameUnits::Range && order_by.is_empty(),
        _ => bound.is_unbounded(),
    };
    unbounded(&frame.start_bound) && unbounded(&frame.end_bound)
}

/// Rows of whole partitions a window emits per batch, at least.
const WINDOW_BATCH_ROWS: usize = 8192;

/// A `WindowAggExec` run in batches of whole partitions, its gathered
/// input reserved in the pool, its repeated values bounded (see the
/// module's doc). The same rows in the same order as DataFusion's.
#[derive(Debug)]
pub(super) struct WindowRun {
    /// The planned window: its properties are this node's.
    window: Arc<dyn ExecutionPlan>,
    input: Arc<dyn ExecutionPlan>,
    exprs: Vec<Arc<dyn WindowExpr>>,
    repeated: Arc<Vec<Option<Repeated>>>,
    /// The partition keys, in the input's order.
    keys: Vec<PhysicalSortExpr>,
    limit: u64,
}

impl WindowRun {
    /// The run of `planned`, a `WindowAggExec`.
    pub(super) fn new(planned: Arc<dyn ExecutionPlan>, limit: u64) -> Result<Self> {
        let window = planned
            .downcast_ref::<WindowAggExec>()
            .ok_or_else(|| DataFusionError::Internal(format!("WindowRun cannot run {}", planned.name())))?;
        Ok(WindowRun {
            input: window.input().clone(),
            exprs: window.window_expr().to_vec(),
            repeated: Arc::new(window.window_expr().iter().map(Repeated::of).collect()),
            keys: window.partition_by_sort_keys()?,
            limit,
            window: planned,
        })
    }
}

impl DisplayAs for WindowRun {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "WindowRun: rows={WINDOW_BATCH_ROWS}")
    }
}

impl ExecutionPlan for WindowRun {
    fn name(&self) -> &str {
        "WindowRun"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        self.window.properties()
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(self: Arc<Self>, children: Vec<Arc<dyn ExecutionPlan>>) -> Result<Arc<dyn ExecutionPlan>> {
        let [input] =
            <[_; 1]>::try_from(children).map_err(|_| DataFusionError::Internal("WindowRun takes one input".into()))?;
        let can_repartition =
            self.window.downcast_ref::<WindowAggExec>().is_some_and(|w| !w.partition_keys().is_empty());
        let window = WindowAggExec::try_new(self.exprs.clone(), input, can_repartition)?;
        Ok(Arc::new(WindowRun::new(Arc::new(window), self.limit)?))
    }

    fn execute(&self, partition: usize, context: Arc<TaskContext>) -> Result<SendableRecordBatchStream> {
        let input = self.input.execute(partition, context.clone())?;
        let reservation = MemoryConsumer::new(format!("WindowRun[{partition}]")).register(context.memory_pool());
        let run = Partitions {
            schema: self.window.schema(),
            exprs: self.exprs.clone(),
            repeated: self.repeated.clone(),
            limit: self.limit,
            batch: RecordBatch::new_empty(self.input.schema()),
            ranges: Vec::new().into_iter(),
            failed: false,
            reservation,
        };
        let keys = self.keys.clone();
        let batches = futures::stream::once(run.gather(input, keys)).flat_map(|run| match run {
            Ok(run) => futures::stream::iter(run).left_stream(),
            Err(e) => futures::stream::iter(vec![Err(e)]).right_stream(),
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(self.window.schema(), batches)))
    }
}

/// A window's gathered input, emitted a batch of whole partitions at a
/// time.
struct Partitions {
    schema: arrow::datatypes::SchemaRef,
    exprs: Vec<Arc<dyn WindowExpr>>,
    repeated: Arc<Vec<Option<Repeated>>>,
    limit: u64,
    batch: RecordBatch,
    ranges: std::vec::IntoIter<Range<usize>>,
    failed: bool,
    /// The gathered input's bytes, held until the last batch is emitted.
    reservation: MemoryReservation,
}

impl Partitions {
    /// Reads the whole input into the pool and finds its partitions.
    async fn gather(mut self, mut input: SendableRecordBatchStream, keys: Vec<PhysicalSortExpr>) -> Result<Self> {
        let mut batches = Vec::new();
        while let Some(batch) = input.next().await {
            let batch = batch?;
            self.reservation.try_grow(batch.get_array_memory_size())?;
            batches.push(batch);
        }
        self.batch = arrow::compute::concat_batches(&input.schema(), &batches)?;
        drop(batches);
        self.reservation.try_resize(self.batch.get_array_memory_size())?;
        let keys = keys.iter().map(|k| k.evaluate_to_sort_column(&self.batch)).collect::<Result<Vec<_>>>()?;
        self.ranges = evaluate_partition_ranges(self.batch.num_rows(), &keys)?.into_iter();
        Ok(self)
    }

    /// The window's columns over `ranges`, appended to their rows.
    fn evaluate(&self, ranges: &[Range<usize>]) -> Result<RecordBatch> {
        let mut columns: Vec<Vec<ArrayRef>> = vec![Vec::with_capacity(ranges.len()); self.exprs.len()];
        for range in ranges {
            let partition = self.batch.slice(range.start, range.len());
            for ((expr, repeated), column) in self.exprs.iter().zip(self.repeated.iter()).zip(columns.iter_mut()) {
                if let Some(repeated) = repeated {
                    repeated.check(&partition, self.limit)?;
                }
                column.push(expr.evaluate(&partition)?);
            }
        }
        let (start, end) = (ranges[0].start, ranges[ranges.len() - 1].end);
        let mut out = self.batch.slice(start, end - start).columns().to_vec();
        for parts in columns {
            out.push(arrow::compute::concat(&parts.iter().map(|a| a.as_ref()).collect::<Vec<_>>())?);
        }
        Ok(RecordBatch::try_new(self.schema.clone(), out)?)
    }
}

impl Iterator for Partitions {
    type Item = Result<RecordBatch>;

    fn next(&mut self) -> Option<Result<RecordBatch>> {
        if self.failed {
            return None;
        }
        let mut ranges = vec![self.ranges.next()?];
        let mut rows = ranges[0].len();
        while rows < WINDOW_BATCH_ROWS
            && let Some(range) = self.ranges.next()
        {
            rows += range.len();
            ranges.push(range);
        }
        let batch = self.evaluate(&ranges);
        self.failed = batch.is_err();
        if self.ranges.len() == 0 {
            self.reservation.free();
        }
        Some(batch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::guarded::batches::testing::{context, longs};
    use arrow::array::AsArray;
    use arrow::datatypes::Int64Type;

    /// 2,000 rows, 10 keys; `s` is 100 bytes.
    const ROWS: &str = "(SELECT n % 10 AS k, repeat('x', 100) AS s FROM generate_series(1, 2000) t(n))";

    #[tokio::test]
    async fn windows_repeating_a_value_over_their_partitions_are_counted() {
        let ctx = context(1 << 20);
        // One partition: 2,000 rows of a 200 KB aggregate, 400 MB.
        let whole = format!("SELECT max(length(w)) FROM (SELECT string_agg(s, '') OVER () AS w FROM {ROWS})");
        let e = longs(&ctx, &whole).await.unwrap_err();
        assert!(e.to_string().contains(REFUSED) && e.to_string().contains("string_agg"), "{e}");
        let partitioned = format!(
            "SELECT count(*) FROM (SELECT string_agg(s, '') OVER (PARTITION BY k) AS w FROM {ROWS}) WHERE w IS NOT NULL"
        );
        // Ten partitions of 200 rows of a 20 KB aggregate: 4 MB each.
        assert!(longs(&ctx, &partitioned).await.unwrap_err().to_string().contains(REFUSED));
        let roomy = context(8 << 20);
        assert_eq!(longs(&roomy, &partitioned).await.unwrap(), vec![2000]);
        assert!(longs(&roomy, &whole).await.unwrap_err().to_string().contains(REFUSED));
        assert_eq!(longs(&context(1 << 30), &whole).await.unwrap(), vec![200_000]);
        // One value repeated: 2,000 rows of 100 bytes.
        let first = format!(
            "SELECT max(length(w)) FROM (SELECT first_value(s) OVER (ORDER BY k ROWS BETWEEN UNBOUNDED PRECEDING \
             AND UNBOUNDED FOLLOWING) AS w FROM {ROWS})"
        );
        assert_eq!(longs(&ctx, &first).await.unwrap(), vec![100]);
        assert!(longs(&context(100_000), &first).await.unwrap_err().to_string().contains(REFUSED));
        // Fixed-width windows are not counted.
        let counted = format!("SELECT max(c) FROM (SELECT count(*) OVER () AS c FROM {ROWS})");
        assert_eq!(longs(&context(1), &counted).await.unwrap(), vec![2000]);
    }
    /// A window over many partitions is emitted in batches of whole
    /// partitions, with DataFusion's answers.
    #[tokio::test]
    async fn a_window_emits_batches_of_whole_partitions() {
        let ctx = context(64 << 20);
        let sql = "SELECT n % 1000 AS k, n, count(*) OVER (PARTITION BY n % 1000) AS c, \
                   max(n) OVER (PARTITION BY n % 1000) AS m FROM generate_series(1, 40000) t(n)";
        let plan = ctx.sql(sql).await.unwrap().create_physical_plan().await.unwrap();
        let batches = datafusion::physical_plan::collect(plan, ctx.task_ctx()).await.unwrap();
        let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
        assert_eq!(rows, 40000);
        assert!(batches.len() > 2, "{} batches", batches.len());
        for batch in &batches {
            // Each batch holds whole partitions of 40 rows: about 8,192 rows.
            assert!(batch.num_rows() % 40 == 0 && batch.num_rows() <= WINDOW_BATCH_ROWS + 40, "{}", batch.num_rows());
            let (k, n) = (batch.column(0).as_primitive::<Int64Type>(), batch.column(1).as_primitive::<Int64Type>());
            let (c, m) = (batch.column(2).as_primitive::<Int64Type>(), batch.column(3).as_primitive::<Int64Type>());
            for row in 0..batch.num_rows() {
                assert_eq!(c.value(row), 40);
                assert_eq!(m.value(row) % 1000, k.value(row));
                assert!(m.value(row) >= n.value(row) && m.value(row) > 39000);
            }
        }
    }
    #[tokio::test]
    async fn a_running_window_reads_its_input_cut_and_stores_its_repeats_once() {
        let ctx = context(64 << 20);
        // A 100 KB value, the running maximum of every later row: 8,192
        // copies (800 MB) per batch in DataFusion.
        let sql = "SELECT w FROM (SELECT max(CASE WHEN n = 5 THEN repeat(arrow_cast('x', 'Utf8View'), 102400) END) \
                   OVER (ORDER BY n) AS w FROM generate_series(1, 20000) t(n))";
        for partitions in [1, 2] {
            // Two partitions put a repartition above the window, which
            // gathers its rows into batches of 8,192 again.
            ctx.sql(&format!("SET datafusion.execution.target_partitions = {partitions}")).await.unwrap();
            let plan = ctx.sql(sql).await.unwrap().create_physical_plan().await.unwrap();
            let mut stream = datafusion::physical_plan::execute_stream(plan, ctx.task_ctx()).unwrap();
            let (mut rows, mut largest, mut held) = (0, 0, 0);
            while let Some(batch) = futures::StreamExt::next(&mut stream).await {
                let batch = batch.unwrap();
                let values = batch.column(0).as_string_view();
                assert!(values.iter().all(|v| v.is_none_or(|v| v.len() == 102400)));
                rows += batch.num_rows();
                largest = largest.max(batch.num_rows());
                held += batch.get_array_memory_size();
            }
            assert_eq!(rows, 20000);
            if partitions == 1 {
                assert!(largest <= REPEATED_BATCH_BYTES / 102400 + 8, "{largest} rows in a batch");
            }
            assert!(held < 64 << 20, "{held} bytes for {partitions} partition(s)");
        }
    }
}
