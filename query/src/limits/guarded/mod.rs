//! Guarded copies of the operators DataFusion runs in one step, or whose
//! batches can repeat one value thousands of times: what the
//! `crate::limits::bounds::YieldExec` above a window or a join executes in its
//! place ([`guarded`]), built when the query executes (the plan that is
//! shown, optimized and sent to other nodes stays DataFusion's own).
//! DataFusion sizes batches in rows (8,192), whatever a row holds; each
//! copy keeps a batch's repeated bytes near `batches::REPEATED_BATCH_BYTES` (16 MiB)
//! (`windows` for windows over partitions and streamed windows, `joins`
//! for cross and hash joins).
//!
//! Not bounded here: a wide probe row met by many build rows (the batch
//! size is chosen before the probe side is read), a nested-loop join, a
//! `RANGE` window's large peer group (emitted at once), and a plain
//! string column gathered by an operator above. Each repeats at most one
//! batch of copies of one value.

use std::sync::Arc;

use datafusion::common::Result;
use datafusion::execution::TaskContext;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::joins::{CrossJoinExec, HashJoinExec};
use datafusion::physical_plan::windows::{BoundedWindowAggExec, WindowAggExec};

mod batches;
mod joins;
mod windows;

pub(crate) use batches::OutputLimit;

/// What the node runs in place of `plan` (see the module's doc): a guarded
/// copy of a window or a join, or `plan` itself.
pub(crate) fn guarded(plan: &Arc<dyn ExecutionPlan>, context: &TaskContext) -> Result<Arc<dyn ExecutionPlan>> {
    if plan.is::<WindowAggExec>() {
        let limit = context.session_config().get_extension::<OutputLimit>().map_or(batches::DEFAULT_LIMIT, |l| l.0);
        return Ok(Arc::new(windows::WindowRun::new(plan.clone(), limit)?));
    }
    if let Some(window) = plan.downcast_ref::<BoundedWindowAggExec>() {
        return windows::streamed(plan, window);
    }
    if plan.is::<CrossJoinExec>() {
        return joins::cross(plan);
    }
    if plan.is::<HashJoinExec>() {
        return Ok(Arc::new(joins::JoinRun::new(plan.clone())?));
    }
    Ok(plan.clone())
}
