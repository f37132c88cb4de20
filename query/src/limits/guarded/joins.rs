//! Guarded joins.
//!
//! **Cross joins.** A cross join copies each row of its build side into
//! every row of a probe batch the same way: one 1 MB value against a batch
//! of 8,192 rows is 8 GB. The guarded copy measures the widest row of its
//! build side as it loads, and cuts its probe batches so that a slice's
//! rows times that width stay under [`REPEATED_BATCH_BYTES`] (one row at
//! least): the same rows in smaller batches, each of which yields.
//!
//!
//! **Hash joins.** A hash join gathers its output into batches of the
//! configured size itself: [`JoinRun`] loads the build side first and
//! runs DataFusion's join over it with the batch size cut to its widest
//! row.
//!

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{DataFusionError, Result};
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::execution::TaskContext;
use datafusion::execution::memory_pool::MemoryConsumer;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_plan::joins::{HashJoinExec, PartitionMode};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{ChildrenPropertiesMode, ReplaceChildrenOptions};
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, ExecutionPlanProperties, PlanProperties, SendableRecordBatchStream,
};
use futures::{StreamExt, TryStreamExt};

use super::batches::{BatchMap, REPEATED_BATCH_BYTES, slices};
use crate::limits::sizes::widest_value;

/// The guarded copy of a cross join: its build side (its left) measured
/// as it loads, its probe side cut to the widest build row.
pub(super) fn cross(plan: &Arc<dyn ExecutionPlan>) -> Result<Arc<dyn ExecutionPlan>> {
    let [build, probe] = <[_; 2]>::try_from(plan.children())
        .map_err(|_| DataFusionError::Internal(format!("{} takes two inputs", plan.name())))?;
    let (build, probe) = probe_cut_to_build(build.clone(), probe.clone());
    let options = ReplaceChildrenOptions::new(ChildrenPropertiesMode::Keep);
    plan.clone().replace_children(vec![build, probe], options)
}

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

/// A `HashJoinExec` that loads its build side first and then runs
/// DataFusion's join over it with output batches cut to its widest row:
/// at most [`REPEATED_BATCH_BYTES`] of build-side values per batch (one
/// row at least, DataFusion's batch size at most). A join emits batches of
/// the configured size whatever its probe batches are, so the cut must be
/// the join's own.
#[derive(Debug)]
pub(super) struct JoinRun {
    planned: Arc<dyn ExecutionPlan>,
    /// A `CollectLeft` join's loaded copy, shared by its partitions as
    /// DataFusion's join shares its build side.
    loaded: Arc<tokio::sync::OnceCell<Loaded>>,
}

/// A join over its loaded build side, and the rows of its output batches.
#[derive(Debug, Clone)]
struct Loaded {
    join: Arc<dyn ExecutionPlan>,
    rows: usize,
}

impl JoinRun {
    pub(super) fn new(planned: Arc<dyn ExecutionPlan>) -> Result<Self> {
        if planned.children().len() != 2 {
            return Err(DataFusionError::Internal(format!("{} takes two inputs", planned.name())));
        }
        Ok(JoinRun { planned, loaded: Default::default() })
    }

    fn collects_left(&self) -> bool {
        self.planned
            .downcast_ref::<HashJoinExec>()
            .is_some_and(|join| *join.partition_mode() == PartitionMode::CollectLeft)
    }
}

/// `planned`'s build side for `partition` loaded (reserved in the pool
/// while it loads, measured), and `planned` over it.
async fn load(planned: Arc<dyn ExecutionPlan>, partition: usize, context: Arc<TaskContext>) -> Result<Loaded> {
    let children = planned.children();
    let (build, probe) = (children[0].clone(), children[1].clone());
    let partitions = build.output_partitioning().partition_count();
    let mut input = build.execute(partition, context.clone())?;
    let reservation = MemoryConsumer::new(format!("JoinRunBuild[{partition}]")).register(context.memory_pool());
    let (mut batches, mut widest) = (Vec::new(), 0u128);
    while let Some(batch) = input.next().await {
        let batch = batch?;
        reservation.try_grow(batch.get_array_memory_size())?;
        widest = widest.max(batch.columns().iter().map(|c| widest_value(c.as_ref())).sum());
        batches.push(batch);
    }
    // One batch, which the join's own gathering takes as it is.
    let loaded = arrow::compute::concat_batches(&build.schema(), &batches)?;
    drop(batches);
    let mut sources = vec![Vec::new(); partitions];
    sources[partition] = vec![loaded];
    let source = MemorySourceConfig::try_new_exec(&sources, build.schema(), None)?;
    let options = ReplaceChildrenOptions::new(ChildrenPropertiesMode::Keep);
    let join = planned.clone().replace_children(vec![source, probe], options)?;
    let widest = widest.min(usize::MAX as u128) as usize;
    let rows = (REPEATED_BATCH_BYTES / widest.max(1)).clamp(1, context.session_config().batch_size());
    // The join reserves what it gathers itself.
    drop(reservation);
    Ok(Loaded { join, rows })
}

/// `context` with output batches of `rows` rows.
fn with_batch_size(context: Arc<TaskContext>, rows: usize) -> Arc<TaskContext> {
    if rows == context.session_config().batch_size() {
        return context;
    }
    Arc::new(TaskContext::new(
        context.task_id(),
        context.session_id(),
        context.session_config().clone().with_batch_size(rows),
        context.scalar_functions().clone(),
        context.higher_order_functions().clone(),
        context.aggregate_functions().clone(),
        context.window_functions().clone(),
        context.runtime_env(),
    ))
}

impl DisplayAs for JoinRun {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "JoinRun")
    }
}

impl ExecutionPlan for JoinRun {
    fn name(&self) -> &str {
        "JoinRun"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        self.planned.properties()
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        self.planned.children()
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(self: Arc<Self>, children: Vec<Arc<dyn ExecutionPlan>>) -> Result<Arc<dyn ExecutionPlan>> {
        let options = ReplaceChildrenOptions::new(ChildrenPropertiesMode::Recompute);
        JoinRun::new(self.planned.clone().replace_children(children, options)?).map(|run| Arc::new(run) as _)
    }

    fn execute(&self, partition: usize, context: Arc<TaskContext>) -> Result<SendableRecordBatchStream> {
        let (planned, shared) = (self.planned.clone(), self.collects_left().then(|| self.loaded.clone()));
        let run = async move {
            let loaded = match shared {
                Some(shared) => shared.get_or_try_init(|| load(planned, 0, context.clone())).await?.clone(),
                None => load(planned, partition, context.clone()).await?,
            };
            loaded.join.execute(partition, with_batch_size(context, loaded.rows))
        };
        let batches = futures::stream::once(run).try_flatten();
        Ok(Box::pin(RecordBatchStreamAdapter::new(self.planned.schema(), batches)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::guarded::batches::testing::{context, longs};
    use arrow::array::AsArray;
    use datafusion::prelude::{SessionConfig, SessionContext};

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
    #[tokio::test]
    async fn a_hash_join_cuts_its_output_to_its_widest_build_row_with_datafusions_answers() {
        // 100 KB build rows matching 400 probe rows each: DataFusion's
        // batches would hold 8,192 copies (800 MB); here 167 rows at most.
        let wide = "SELECT k, repeat(CAST(k AS VARCHAR), 102400) AS w FROM generate_series(1, 3) t(k)";
        let probe = "SELECT n % 5 AS k, n FROM generate_series(1, 2000) t(n)";
        let joins = ["JOIN", "LEFT JOIN", "RIGHT JOIN", "FULL JOIN", "LEFT SEMI JOIN", "LEFT ANTI JOIN"];
        let mut modes = std::collections::BTreeSet::new();
        for partitioned in [false, true] {
            let ctx = context(64 << 20);
            let plain = SessionContext::new_with_config(SessionConfig::new().with_target_partitions(2));
            for c in [&ctx, &plain] {
                // Without repartitioned joins, the build side is collected.
                c.sql(&format!("SET datafusion.optimizer.repartition_joins = {partitioned}")).await.unwrap();
                let threshold = if partitioned { 0 } else { 1 << 30 };
                c.sql(&format!("SET datafusion.optimizer.hash_join_single_partition_threshold = {threshold}"))
                    .await
                    .unwrap();
                c.sql(&format!("SET datafusion.optimizer.hash_join_single_partition_threshold_rows = {threshold}"))
                    .await
                    .unwrap();
            }
            for join in joins {
                let columns = if join.contains("SEMI") || join.contains("ANTI") {
                    "count(*), sum(length(a.w))"
                } else {
                    "count(*), count(a.w), sum(length(a.w)), sum(b.n)"
                };
                let sql = format!("SELECT {columns} FROM ({wide}) a {join} ({probe}) b ON a.k = b.k");
                let expected = plain.sql(&sql).await.unwrap().collect().await.unwrap();
                let plan = ctx.sql(&sql).await.unwrap().create_physical_plan().await.unwrap();
                let shown = datafusion::physical_plan::displayable(plan.as_ref()).indent(false).to_string();
                let mode = ["mode=CollectLeft", "mode=Partitioned"].into_iter().find(|m| shown.contains(m));
                modes.insert(mode);
                let got = datafusion::physical_plan::collect(plan, ctx.task_ctx()).await.unwrap();
                assert_eq!(
                    arrow::util::pretty::pretty_format_batches(&got).unwrap().to_string(),
                    arrow::util::pretty::pretty_format_batches(&expected).unwrap().to_string(),
                    "{join} ({mode:?})"
                );
            }
            // The join's own batches: at most 16 MiB of build rows each.
            let sql = format!("SELECT length(a.w) FROM ({wide}) a JOIN ({probe}) b ON a.k = b.k");
            let plan = ctx.sql(&sql).await.unwrap().create_physical_plan().await.unwrap();
            let mut stream = datafusion::physical_plan::execute_stream(plan, ctx.task_ctx()).unwrap();
            let (mut rows, mut largest) = (0, 0);
            while let Some(batch) = futures::StreamExt::next(&mut stream).await {
                let batch = batch.unwrap();
                rows += batch.num_rows();
                largest = largest.max(batch.num_rows());
            }
            assert_eq!(rows, 1200);
            assert!(largest <= REPEATED_BATCH_BYTES / 102400, "{largest} rows in a batch");
        }
        assert!(modes.contains(&Some("mode=CollectLeft")) && modes.contains(&Some("mode=Partitioned")), "{modes:?}");
    }
}
