//! The deadline inside planning: DataFusion's optimizers run their rules
//! one after another without yielding, so a statement that plans for
//! seconds (a join of many relations) ran on after its 504 until it was
//! planned, holding its thread and its slot. Between every two rules, a
//! check ([`interleave_logical`], [`interleave_physical`]) fails the
//! planning once the query's deadline ([`DEADLINE`], set by the engine
//! for each query's task) has passed: planning stops within one rule.

use std::sync::Arc;

use datafusion::common::tree_node::Transformed;
use datafusion::common::{DataFusionError, Result};
use datafusion::config::ConfigOptions;
use datafusion::logical_expr::LogicalPlan;
use datafusion::optimizer::{OptimizerConfig, OptimizerRule};
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::ExecutionPlan;
use tokio::time::Instant;

tokio::task_local! {
    /// When the query running in this task is given up.
    pub(crate) static DEADLINE: Instant;
}

/// The error planning fails with past the deadline (the client has its
/// 504 already).
fn check() -> Result<()> {
    match DEADLINE.try_with(|deadline| Instant::now() >= *deadline) {
        Ok(true) => Err(DataFusionError::ResourcesExhausted("the query's deadline passed while it was planned".into())),
        _ => Ok(()),
    }
}

/// A check of the deadline between logical optimizer rules.
#[derive(Debug)]
struct LogicalDeadline;

impl OptimizerRule for LogicalDeadline {
    fn name(&self) -> &str {
        "deadline"
    }

    fn supports_rewrite(&self) -> bool {
        true
    }

    fn rewrite(&self, plan: LogicalPlan, _config: &dyn OptimizerConfig) -> Result<Transformed<LogicalPlan>> {
        check()?;
        Ok(Transformed::no(plan))
    }
}

/// A check of the deadline between physical optimizer rules.
#[derive(Debug)]
struct PhysicalDeadline;

impl PhysicalOptimizerRule for PhysicalDeadline {
    fn optimize(&self, plan: Arc<dyn ExecutionPlan>, _config: &ConfigOptions) -> Result<Arc<dyn ExecutionPlan>> {
        check()?;
        Ok(plan)
    }

    fn name(&self) -> &str {
        "deadline"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

/// `rules` with a deadline check before each.
pub(crate) fn interleave_logical(
    rules: Vec<Arc<dyn OptimizerRule + Send + Sync>>,
) -> Vec<Arc<dyn OptimizerRule + Send + Sync>> {
    let check: Arc<dyn OptimizerRule + Send + Sync> = Arc::new(LogicalDeadline);
    rules.into_iter().flat_map(|rule| [check.clone(), rule]).collect()
}

/// `rules` with a deadline check before each.
pub(crate) fn interleave_physical(
    rules: Vec<Arc<dyn PhysicalOptimizerRule + Send + Sync>>,
) -> Vec<Arc<dyn PhysicalOptimizerRule + Send + Sync>> {
    let check: Arc<dyn PhysicalOptimizerRule + Send + Sync> = Arc::new(PhysicalDeadline);
    rules.into_iter().flat_map(|rule| [check.clone(), rule]).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::execution::SessionStateBuilder;

    /// Planning fails between two rules once the deadline has passed, and
    /// plans as before otherwise.
    #[tokio::test]
    async fn planning_stops_at_the_deadline() {
        let state = SessionStateBuilder::new().with_default_features().build();
        let logical = interleave_logical(state.optimizer().rules.clone());
        let physical = interleave_physical(state.physical_optimizers().to_vec());
        let state = SessionStateBuilder::new_from_existing(state)
            .with_optimizer_rules(logical)
            .with_physical_optimizer_rules(physical)
            .build();
        let sql = "SELECT a, count(*) FROM (VALUES (1), (2)) t(a) GROUP BY a";
        let plan = state.create_logical_plan(sql).await.unwrap();
        let later = Instant::now() + std::time::Duration::from_secs(60);
        DEADLINE.scope(later, async { state.create_physical_plan(&plan).await.unwrap() }).await;
        let passed = Instant::now();
        let e = DEADLINE.scope(passed, async { state.create_physical_plan(&plan).await.unwrap_err() }).await;
        assert!(e.to_string().contains("deadline passed"), "{e}");
        // Outside a query's task there is no deadline.
        state.create_physical_plan(&plan).await.unwrap();
    }
}
