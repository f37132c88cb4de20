//! Guarded copies of the operators DataFusion runs in one step: what the
//! `crate::bounds::YieldExec` above a window or a cross join executes in
//! its place ([`guarded`]), built when the query executes (the plan that
//! is shown, optimized and sent to other nodes stays DataFusion's own).
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
//! **Cross joins.** A cross join copies each row of its build side into
//! every row of a probe batch the same way: one 1 MB value against a batch
//! of 8,192 rows is 8 GB. The guarded copy measures the widest row of its
//! build side as it loads, and cuts its probe batches so that a slice's
//! rows times that width stay under [`REPEATED_BATCH_BYTES`] (one row at
//! least): the same rows in smaller batches, each of which yields.
//!
//! Not bounded here: a hash or nested-loop join gathers its output into
//! batches of 8,192 rows itself (cutting its probe side changes nothing),
//! and a window over a running frame (`max(s) OVER (ORDER BY ts)`, which
//! DataFusion streams) fills a batch with one value; each repeats at most
//! one batch of copies at a time, which the pool's margin holds for values
//! of kilobytes but not of megabytes.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use std::ops::Range;

use arrow::array::ArrayRef;
use arrow::record_batch::RecordBatch;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::utils::evaluate_partition_ranges;
use datafusion::common::{DataFusionError, Result};
use datafusion::execution::TaskContext;
use datafusion::execution::memory_pool::{MemoryConsumer, MemoryReservation};
use datafusion::logical_expr::{WindowFrame, WindowFrameBound, WindowFrameUnits};
use datafusion::physical_expr::window::{PlainAggregateWindowExpr, StandardWindowExpr, WindowExpr};
use datafusion::physical_expr::{PhysicalExpr, PhysicalSortExpr};
use datafusion::physical_expr_common::utils::evaluate_expressions_to_arrays;
use datafusion::physical_plan::joins::CrossJoinExec;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::windows::{WindowAggExec, WindowUDFExpr};
use datafusion::physical_plan::{ChildrenPropertiesMode, ReplaceChildrenOptions};
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, PlanProperties, SendableRecordBatchStream,
};
use futures::StreamExt;

use crate::functions::REFUSED;
use crate::sizes::{array_bytes, variable_width, widest_value};

/// The most bytes of repeated build-side values one slice of a join's
/// probe side may draw: large enough that ordinary joins keep their batches whole
/// (8,192 rows of a 2 KB row), small enough that a batch is a moment's
/// copy.
pub(crate) const REPEATED_BATCH_BYTES: usize = 16 << 20;

/// The node's `limits.max_function_output`, carried in the session config
/// of its queries and of the tasks it runs for other nodes.
#[derive(Debug)]
pub(crate) struct OutputLimit(pub u64);

/// What the node runs in place of `plan` (see the module's doc): a guarded
/// copy of a window or cross join, or `plan` itself.
pub(crate) fn guarded(plan: &Arc<dyn ExecutionPlan>, context: &TaskContext) -> Result<Arc<dyn ExecutionPlan>> {
    if plan.is::<WindowAggExec>() {
        let limit = context.session_config().get_extension::<OutputLimit>().map_or(DEFAULT_LIMIT, |l| l.0);
        return Ok(Arc::new(WindowRun::new(plan.clone(), limit)?));
    }
    // A cross join builds its left side and probes it with its right.
    if plan.is::<CrossJoinExec>() {
        let [build, probe] = <[_; 2]>::try_from(plan.children())
            .map_err(|_| DataFusionError::Internal(format!("{} takes two inputs", plan.name())))?;
        let (build, probe) = probe_cut_to_build(build.clone(), probe.clone());
        let options = ReplaceChildrenOptions::new(ChildrenPropertiesMode::Keep);
        return plan.clone().replace_children(vec![build, probe], options);
    }
    Ok(plan.clone())
}

/// `limits.max_function_output`'s default, for a session that lacks the
/// node's setting.
const DEFAULT_LIMIT: u64 = 64 << 20;

/// A join's inputs, its build side measured as it loads and its probe
/// side cut to the widest build row.
fn probe_cut_to_build(
    build: Arc<dyn ExecutionPlan>,
    probe: Arc<dyn ExecutionPlan>,
) -> (Arc<dyn ExecutionPlan>, Arc<dyn ExecutionPlan>) {
    let widest = Arc::new(AtomicUsize::new(0));
    let measuring = widest.clone();
    let build = BatchMap::new(build, "WidestRow", move || {
        let measuring = measuring.clone();
        Box::new(move |batch| {
            let row: u128 = batch.columns().iter().map(|c| widest_value(c.as_ref())).sum();
            measuring.fetch_max(row.min(usize::MAX as u128) as usize, Ordering::Relaxed);
            Ok(vec![batch])
        })
    });
    // The join loads its build side before it reads a probe batch, so the
    // width is known by then.
    let probe = BatchMap::new(probe, "SlicedProbe", move || {
        let widest = widest.clone();
        Box::new(move |batch| {
            let rows = (REPEATED_BATCH_BYTES / widest.load(Ordering::Relaxed).max(1)).max(1);
            Ok(slices(batch, rows))
        })
    });
    (Arc::new(build), Arc::new(probe))
}

/// `batch` in batches of at most `rows` rows (views of it, no copy).
fn slices(batch: RecordBatch, rows: usize) -> Vec<RecordBatch> {
    if batch.num_rows() <= rows {
        return vec![batch];
    }
    (0..batch.num_rows()).step_by(rows).map(|at| batch.slice(at, rows.min(batch.num_rows() - at))).collect()
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
pub(crate) const WINDOW_BATCH_ROWS: usize = 8192;

/// A `WindowAggExec` run in batches of whole partitions, its gathered
/// input reserved in the pool, its repeated values bounded (see the
/// module's doc). The same rows in the same order as DataFusion's.
#[derive(Debug)]
struct WindowRun {
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
    fn new(planned: Arc<dyn ExecutionPlan>, limit: u64) -> Result<Self> {
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

/// What a stream does to each batch it reads.
type Map = Box<dyn FnMut(RecordBatch) -> Result<Vec<RecordBatch>> + Send>;

/// Its input's batches, each passed through a function (counted, measured,
/// cut) made for each of its streams: the same rows, the same properties.
struct BatchMap {
    input: Arc<dyn ExecutionPlan>,
    name: &'static str,
    map: Arc<dyn Fn() -> Map + Send + Sync>,
}

impl BatchMap {
    fn new(input: Arc<dyn ExecutionPlan>, name: &'static str, map: impl Fn() -> Map + Send + Sync + 'static) -> Self {
        BatchMap { input, name, map: Arc::new(map) }
    }
}

impl fmt::Debug for BatchMap {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.debug_struct("BatchMap").field("name", &self.name).finish()
    }
}

impl DisplayAs for BatchMap {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "{}", self.name)
    }
}

impl ExecutionPlan for BatchMap {
    fn name(&self) -> &str {
        self.name
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        self.input.properties()
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn maintains_input_order(&self) -> Vec<bool> {
        vec![true]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(self: Arc<Self>, children: Vec<Arc<dyn ExecutionPlan>>) -> Result<Arc<dyn ExecutionPlan>> {
        let [input] = <[_; 1]>::try_from(children)
            .map_err(|_| DataFusionError::Internal(format!("{} takes one input", self.name)))?;
        Ok(Arc::new(BatchMap { input, name: self.name, map: self.map.clone() }))
    }

    fn execute(&self, partition: usize, context: Arc<TaskContext>) -> Result<SendableRecordBatchStream> {
        let inner = self.input.execute(partition, context)?;
        let schema = inner.schema();
        let mut map = (self.map)();
        let batches = inner.flat_map(move |batch| {
            let out: Vec<Result<RecordBatch>> = match batch.and_then(&mut map) {
                Ok(batches) => batches.into_iter().map(Ok).collect(),
                Err(e) => vec![Err(e)],
            };
            futures::stream::iter(out)
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, batches)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{AsArray, Int64Array};
    use arrow::datatypes::{DataType, Field, Int64Type, Schema};
    use datafusion::execution::SessionStateBuilder;
    use datafusion::prelude::{SessionConfig, SessionContext};

    /// A session whose windows and joins are contained, with `limit` bytes
    /// of function output.
    fn context(limit: u64) -> SessionContext {
        let config = SessionConfig::new().with_target_partitions(2).with_extension(Arc::new(OutputLimit(limit)));
        let state = SessionStateBuilder::new()
            .with_default_features()
            .with_config(config)
            .with_physical_optimizer_rule(Arc::new(crate::bounds::ContainWork { max_recursive_iterations: 10 }))
            .build();
        SessionContext::new_with_state(state)
    }

    async fn longs(ctx: &SessionContext, sql: &str) -> Result<Vec<i64>> {
        let batches = ctx.sql(sql).await?.collect().await?;
        let column = |b: &RecordBatch| arrow::compute::cast(b.column(0), &DataType::Int64);
        let columns = batches.iter().map(column).collect::<std::result::Result<Vec<_>, _>>()?;
        Ok(columns.iter().flat_map(|c| c.as_primitive::<Int64Type>().values().to_vec()).collect())
    }

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
    async fn a_cross_join_cuts_its_probe_side_to_its_widest_build_row() {
        let ctx = context(64 << 20);
        // A 1 MB build row against 500 probe rows: one batch of 500 MB in
        // DataFusion; here 16 rows per batch, all of them.
        let sql = "SELECT length(a.w), b.n FROM (SELECT repeat('x', 1048576) AS w) a \
                   CROSS JOIN (SELECT n FROM generate_series(1, 500) t(n)) b";
        let plan = ctx.sql(sql).await.unwrap().create_physical_plan().await.unwrap();
        let mut stream = datafusion::physical_plan::execute_stream(plan, ctx.task_ctx()).unwrap();
        let (mut rows, mut largest) = (0, 0);
        while let Some(batch) = futures::StreamExt::next(&mut stream).await {
            let batch = batch.unwrap();
            rows += batch.num_rows();
            largest = largest.max(batch.num_rows());
            assert!(
                batch.column(0).as_primitive::<arrow::datatypes::Int32Type>().values().iter().all(|l| *l == 1048576)
            );
        }
        assert_eq!(rows, 500);
        assert!(largest <= REPEATED_BATCH_BYTES / 1048576, "{largest} rows in a batch");
        // Narrow build rows keep whole batches.
        let narrow =
            "SELECT count(*) FROM (SELECT 'x' AS w) a CROSS JOIN (SELECT n FROM generate_series(1, 2000) t(n)) b";
        assert_eq!(longs(&ctx, narrow).await.unwrap(), vec![2000]);
    }

    fn batch(rows: usize) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![Field::new("n", DataType::Int64, false)]));
        RecordBatch::try_new(schema, vec![Arc::new(Int64Array::from_iter_values(0..rows as i64))]).unwrap()
    }

    #[test]
    fn slices_keep_every_row_in_order() {
        let cut = slices(batch(10), 3);
        assert_eq!(cut.iter().map(|b| b.num_rows()).collect::<Vec<_>>(), vec![3, 3, 3, 1]);
        let joined = arrow::compute::concat_batches(&cut[0].schema(), &cut).unwrap();
        assert_eq!(joined, batch(10));
        assert_eq!(slices(batch(3), 3).len(), 1);
    }
}
