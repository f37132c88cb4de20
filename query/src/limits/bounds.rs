//! Keeps a query's work where its deadline and its limits reach it: the
//! last physical optimizer rule ([`ContainWork`]).
//!
//! A query past its deadline is stopped by aborting its tasks, and an
//! abort takes effect only when a task yields. DataFusion's streams yield
//! when a leaf waits for data or spends the task's cooperative budget
//! (`EnsureCooperative` wraps the leaves), but an operator that makes many
//! batches of one input batch never reaches its leaf: a hash join whose
//! build side holds 100,000 rows of one key answers each probe batch with
//! hundreds of millions of rows, and its thread ran on for over twenty
//! minutes after the query's 504 (and its reservation stayed in the pool).
//! Nor is tokio's budget of 128 batches per turn a bound in time: a chain
//! of joins over string-view columns took 30 ms per batch (each `take`
//! copied the growing list of buffers the views point into), so its task
//! ran four seconds between yields and half a minute past its 504. So
//! every operator whose output can outgrow its input — joins, unnest,
//! windows, recursive queries — is wrapped in [`YieldExec`], whose stream
//! yields the task once it has run a time slice without yielding
//! ([`crate::limits::yielding`], as the scans do): a cancelled
//! query stops within a slice plus one batch's work.
//!
//! A recursive CTE's recursive term runs once per iteration, as long as it
//! returns rows: [`RecursionCap`] counts the iterations and refuses the
//! query beyond `limits.max_recursive_iterations` (413). Its working rows
//! are reserved in the memory pool by DataFusion; what one iteration's
//! expressions build is bounded by `crate::limits::functions`.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use crate::limits::yielding::{SLICE, TimeSliced};
use arrow::record_batch::RecordBatch;
use datafusion::common::Statistics;
use datafusion::physical_plan::execution_plan::CardinalityEffect;
use datafusion::physical_plan::statistics::{ChildStats, StatisticsArgs};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use futures::StreamExt;

use crate::error::RECURSION_REFUSED;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::{DataFusionError, Result};
use datafusion::config::ConfigOptions;
use datafusion::execution::TaskContext;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::joins::{
    CrossJoinExec, HashJoinExec, NestedLoopJoinExec, PiecewiseMergeJoinExec, SortMergeJoinExec, SymmetricHashJoinExec,
};
use datafusion::physical_plan::recursive_query::RecursiveQueryExec;
use datafusion::physical_plan::unnest::UnnestExec;
use datafusion::physical_plan::windows::{BoundedWindowAggExec, WindowAggExec};
use datafusion::physical_plan::{ChildrenPropertiesMode, ReplaceChildrenOptions};
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, PlanProperties, SendableRecordBatchStream,
};

/// The physical optimizer rule of this module; registered last.
#[derive(Debug)]
pub struct ContainWork {
    pub max_recursive_iterations: u32,
}

impl PhysicalOptimizerRule for ContainWork {
    fn optimize(&self, plan: Arc<dyn ExecutionPlan>, _config: &ConfigOptions) -> Result<Arc<dyn ExecutionPlan>> {
        // Idempotent: a plan this rule has seen (a distributed stage planned
        // again) keeps one wrapper and one cap.
        plan.transform_up(|node| {
            if let Some(outer) = node.downcast_ref::<YieldExec>()
                && outer.input.is::<YieldExec>()
            {
                return Ok(Transformed::yes(outer.input.clone()));
            }
            let node = match node.downcast_ref::<RecursiveQueryExec>() {
                Some(recursive) if !recursive.recursive_term().is::<RecursionCap>() => {
                    let capped = RecursionCap::new(recursive.recursive_term().clone(), self.max_recursive_iterations);
                    let children = vec![recursive.static_term().clone(), Arc::new(capped) as Arc<dyn ExecutionPlan>];
                    node.clone()
                        .replace_children(children, ReplaceChildrenOptions::new(ChildrenPropertiesMode::Recompute))?
                }
                _ => node,
            };
            if amplifies(node.as_ref()) {
                return Ok(Transformed::yes(Arc::new(YieldExec::new(node)) as Arc<dyn ExecutionPlan>));
            }
            Ok(Transformed::no(node))
        })
        .map(|t| t.data)
    }

    fn name(&self) -> &str {
        "ContainWork"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

/// Whether an operator may emit many batches for one batch it reads.
fn amplifies(plan: &dyn ExecutionPlan) -> bool {
    plan.is::<HashJoinExec>()
        || plan.is::<NestedLoopJoinExec>()
        || plan.is::<CrossJoinExec>()
        || plan.is::<SortMergeJoinExec>()
        || plan.is::<SymmetricHashJoinExec>()
        || plan.is::<PiecewiseMergeJoinExec>()
        || plan.is::<UnnestExec>()
        || plan.is::<WindowAggExec>()
        || plan.is::<BoundedWindowAggExec>()
        || plan.is::<RecursiveQueryExec>()
}

/// The recursive term of a recursive CTE, run at most `max` times. Its
/// count is shared by the copies DataFusion makes of it for each iteration
/// (`reset_state` rebuilds the term through `with_new_children`).
#[derive(Debug)]
pub struct RecursionCap {
    input: Arc<dyn ExecutionPlan>,
    max: u32,
    iterations: Arc<AtomicU32>,
}

impl RecursionCap {
    pub(crate) fn new(input: Arc<dyn ExecutionPlan>, max: u32) -> Self {
        RecursionCap { input, max, iterations: Arc::default() }
    }

    /// The most iterations it allows.
    pub(crate) fn max(&self) -> u32 {
        self.max
    }
}

impl DisplayAs for RecursionCap {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "RecursionCap: iterations={}", self.max)
    }
}

impl ExecutionPlan for RecursionCap {
    fn name(&self) -> &str {
        "RecursionCap"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        self.input.properties()
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
        let [input] = <[_; 1]>::try_from(children)
            .map_err(|_| DataFusionError::Internal("RecursionCap takes one input".into()))?;
        Ok(Arc::new(RecursionCap { input, max: self.max, iterations: self.iterations.clone() }))
    }

    fn execute(&self, partition: usize, context: Arc<TaskContext>) -> Result<SendableRecordBatchStream> {
        let iteration = self.iterations.fetch_add(1, Ordering::Relaxed) + 1;
        if iteration > self.max {
            return Err(DataFusionError::ResourcesExhausted(format!(
                "{RECURSION_REFUSED}: the recursive query did not end within {} iterations (the node's \
                 limits.max_recursive_iterations)",
                self.max
            )));
        }
        self.input.execute(partition, context)
    }
}

/// An operator's output, yielding its task every [`SLICE`] (see the
/// module's doc). Placed by [`ContainWork`]; travels to other nodes in a
/// distributed plan (`crate::cluster::codec::ClusterCodec`).
#[derive(Debug)]
pub struct YieldExec {
    input: Arc<dyn ExecutionPlan>,
    /// What runs in the input's place: the input, or its guarded copy
    /// ([`crate::limits::guarded`]), made once for all partitions (a cross join's
    /// partitions share its build side).
    runs: std::sync::OnceLock<Arc<dyn ExecutionPlan>>,
}

impl YieldExec {
    pub(crate) fn new(input: Arc<dyn ExecutionPlan>) -> Self {
        YieldExec { input, runs: Default::default() }
    }
}

impl DisplayAs for YieldExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "YieldExec: every={SLICE:?}")
    }
}

impl ExecutionPlan for YieldExec {
    fn name(&self) -> &str {
        "YieldExec"
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
        let [input] =
            <[_; 1]>::try_from(children).map_err(|_| DataFusionError::Internal("YieldExec takes one input".into()))?;
        Ok(Arc::new(YieldExec::new(input)))
    }

    // Transparent to statistics and limits, as DataFusion's own
    // `CooperativeExec`.
    fn child_stats_requests(&self, partition: Option<usize>) -> Vec<ChildStats> {
        vec![ChildStats::At(partition)]
    }

    fn statistics_from_inputs(
        &self,
        input_stats: &[Arc<Statistics>],
        _args: &StatisticsArgs,
    ) -> Result<Arc<Statistics>> {
        input_stats.first().cloned().ok_or_else(|| DataFusionError::Internal("YieldExec takes one input".into()))
    }

    fn supports_limit_pushdown(&self) -> bool {
        true
    }

    fn cardinality_effect(&self) -> CardinalityEffect {
        CardinalityEffect::Equal
    }

    fn execute(&self, partition: usize, context: Arc<TaskContext>) -> Result<SendableRecordBatchStream> {
        let runs = match self.runs.get() {
            Some(runs) => runs.clone(),
            None => {
                let guarded = crate::limits::guarded::guarded(&self.input, &context)?;
                self.runs.get_or_init(|| guarded).clone()
            }
        };
        let inner = runs.execute(partition, context)?;
        let schema = inner.schema();
        let batches = TimeSliced::new(inner).map(|batch| batch.and_then(compact_views));
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, batches)))
    }
}

/// A batch whose string-view columns point into buffers more than twice
/// the size of their strings, with those strings copied into buffers of
/// their own. A join's output `take`s from its build side and keeps every
/// buffer the build side holds; through a chain of joins the buffers
/// multiply, and every later `take`, memory count and batch copy walks
/// them all: a hundred-way self-join spent seconds per batch doing so, in
/// a single poll no deadline can interrupt.
fn compact_views(batch: RecordBatch) -> Result<RecordBatch> {
    use arrow::array::{Array, ArrayRef, AsArray};
    use arrow::datatypes::DataType;
    let bloated = |array: &ArrayRef| match array.data_type() {
        DataType::Utf8View => {
            let views = array.as_string_view();
            let held: usize = views.data_buffers().iter().map(|b| b.len()).sum();
            views.data_buffers().len() > 1 && held > 2 * views.total_bytes_len()
        }
        DataType::BinaryView => {
            let views = array.as_binary_view();
            let held: usize = views.data_buffers().iter().map(|b| b.len()).sum();
            views.data_buffers().len() > 1 && held > 2 * views.total_bytes_len()
        }
        _ => false,
    };
    if !batch.columns().iter().any(bloated) {
        return Ok(batch);
    }
    let columns = batch
        .columns()
        .iter()
        .map(|array| match array.data_type() {
            DataType::Utf8View if bloated(array) => Arc::new(array.as_string_view().gc()) as ArrayRef,
            DataType::BinaryView if bloated(array) => Arc::new(array.as_binary_view().gc()) as ArrayRef,
            _ => array.clone(),
        })
        .collect();
    Ok(RecordBatch::try_new_with_options(
        batch.schema(),
        columns,
        &arrow::record_batch::RecordBatchOptions::new().with_row_count(Some(batch.num_rows())),
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::execution::SessionStateBuilder;
    use datafusion::prelude::SessionContext;

    fn context(max_recursive_iterations: u32) -> SessionContext {
        let state = SessionStateBuilder::new()
            .with_default_features()
            .with_physical_optimizer_rule(Arc::new(ContainWork { max_recursive_iterations }))
            .build();
        SessionContext::new_with_state(state)
    }

    #[tokio::test]
    async fn a_recursive_query_stops_at_its_cap() {
        let ctx = context(100);
        let ended =
            "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 50) SELECT count(*) FROM r";
        let batches = ctx.sql(ended).await.unwrap().collect().await.unwrap();
        assert_eq!(arrow::util::pretty::pretty_format_batches(&batches).unwrap().to_string().matches("50").count(), 1);
        let endless = "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r) SELECT count(*) FROM r";
        let e = ctx.sql(endless).await.unwrap().collect().await.unwrap_err();
        assert!(e.to_string().contains(RECURSION_REFUSED), "{e}");
    }

    /// Views into buffers far larger than their strings are copied out;
    /// compact ones are passed on as they are.
    #[test]
    fn bloated_string_views_are_compacted() {
        use arrow::array::{ArrayRef, AsArray, StringViewArray};
        let long = |c: char| c.to_string().repeat(100);
        let held = StringViewArray::from_iter_values((0..1000).map(|i| long(char::from(b'a' + (i % 26) as u8))));
        // One row of a thousand, its buffers all kept, as a join's `take`.
        let taken = arrow::compute::take(&held, &arrow::array::UInt32Array::from(vec![3]), None).unwrap();
        let many_buffers = arrow::compute::concat(&[taken.as_ref(), taken.as_ref()]).unwrap();
        assert!(many_buffers.as_string_view().data_buffers().len() > 1);
        let batch = RecordBatch::try_from_iter([("s", many_buffers.clone())]).unwrap();
        let compacted = compact_views(batch).unwrap();
        let column = compacted.column(0).as_string_view();
        assert_eq!(column.data_buffers().len(), 1);
        assert_eq!(column.value(1), long('d'));
        let compact: ArrayRef = Arc::new(StringViewArray::from_iter_values(["x".repeat(50), "y".repeat(50)]));
        let batch = RecordBatch::try_from_iter([("s", compact.clone())]).unwrap();
        assert!(Arc::ptr_eq(compact_views(batch).unwrap().column(0), &compact));
    }

    #[tokio::test]
    async fn operators_that_amplify_yield_per_batch() {
        let ctx = context(100);
        let sql = "SELECT count(*) FROM (VALUES (1), (1)) a(x) JOIN (VALUES (1), (1)) b(y) ON a.x = b.y";
        let plan = ctx.sql(sql).await.unwrap().create_physical_plan().await.unwrap();
        let shown = datafusion::physical_plan::displayable(plan.as_ref()).indent(false).to_string();
        let join = shown.lines().position(|l| l.contains("HashJoinExec")).expect(&shown);
        assert!(shown.lines().nth(join - 1).unwrap().contains("YieldExec"), "{shown}");
    }
}
