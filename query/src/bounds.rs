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
//! So every operator whose output can outgrow its input — joins, unnest,
//! windows, recursive queries — spends the budget per batch it emits
//! (`CooperativeExec` above it): its task yields after at most 128 of its
//! batches, and a cancelled query stops within a bounded time.
//!
//! A recursive CTE's recursive term runs once per iteration, as long as it
//! returns rows: [`RecursionCap`] counts the iterations and refuses the
//! query beyond `limits.max_recursive_iterations` (413). Its working rows
//! are reserved in the memory pool by DataFusion; what one iteration's
//! expressions build is bounded by `crate::functions`.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::{DataFusionError, Result};
use datafusion::config::ConfigOptions;
use datafusion::execution::TaskContext;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::coop::CooperativeExec;
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

/// The prefix of the error a recursive query over its cap raises; the
/// engine answers it 413.
pub(crate) const RECURSION_REFUSED: &str = "recursion limit";

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
            if let Some(outer) = node.downcast_ref::<CooperativeExec>()
                && outer.input().is::<CooperativeExec>()
            {
                return Ok(Transformed::yes(outer.input().clone()));
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
                return Ok(Transformed::yes(Arc::new(CooperativeExec::new(node)) as Arc<dyn ExecutionPlan>));
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
    fn new(input: Arc<dyn ExecutionPlan>, max: u32) -> Self {
        RecursionCap { input, max, iterations: Arc::default() }
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

    #[tokio::test]
    async fn operators_that_amplify_yield_per_batch() {
        let ctx = context(100);
        let sql = "SELECT count(*) FROM (VALUES (1), (1)) a(x) JOIN (VALUES (1), (1)) b(y) ON a.x = b.y";
        let plan = ctx.sql(sql).await.unwrap().create_physical_plan().await.unwrap();
        let shown = datafusion::physical_plan::displayable(plan.as_ref()).indent(false).to_string();
        let join = shown.lines().position(|l| l.contains("HashJoinExec")).expect(&shown);
        assert!(shown.lines().nth(join - 1).unwrap().contains("CooperativeExec"), "{shown}");
    }
}
