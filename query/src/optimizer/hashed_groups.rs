//! Grouping by many keys in tables that fit a core's cache (DuckDB's
//! radix-partitioned aggregation).
//!
//! DataFusion's partial aggregation builds one hash table per input
//! partition, and with many groups every table ends up holding nearly all
//! of them: 200,000 users in a table of several MiB per thread, most rows a
//! cache miss, then every group merged once per table. When a partial
//! aggregation is estimated to make many groups, [`HashedGroups`] hashes
//! its input rows by the grouping keys first ([`RepartitionExec`]), so each
//! partial table holds only its share of the keys, small enough to stay in
//! a core's cache, and each group leaves the partial step once per task
//! instead of once per thread: less to merge, and in a cluster less to
//! shuffle between the holders.
//!
//! Invariants:
//! - Only a `Partial` aggregation under DataFusion's own merge is rewritten
//!   (a `FinalPartitioned` over a hash repartition, or a `Final` over a
//!   coalesce): the merge reads every partition of the partial step
//!   whatever their number, so the answer cannot change.
//! - The partial step keeps its groups, aggregates and filters, and reads
//!   the same rows: a repartition moves rows between partitions, never
//!   drops or repeats one.
//! - An aggregation that needs its rows in order (an ordered aggregate, or
//!   groups streamed from a sorted input) keeps the input it had.
//! - An aggregation estimated to make few groups (or whose groups cannot
//!   be estimated) is left as DataFusion planned it: its tables already fit
//!   the cache, and the repartition would cost more than it saves.

use std::sync::Arc;

use datafusion::common::Result;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::config::ConfigOptions;
use datafusion::physical_expr::expressions::Column;
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::aggregates::{AggregateExec, AggregateMode};
use datafusion::physical_plan::coalesce_partitions::CoalescePartitionsExec;
use datafusion::physical_plan::filter::FilterExec;
use datafusion::physical_plan::projection::ProjectionExec;
use datafusion::physical_plan::repartition::RepartitionExec;
use datafusion::physical_plan::{
    ChildrenPropertiesMode, ExecutionPlan, ExecutionPlanProperties, InputOrderMode, Partitioning,
    ReplaceChildrenOptions,
};

use crate::scan::read::SegmentScanExec;
use crate::scan::spread::ClusterScanExec;

/// Estimated groups from which a partial aggregation hashes its rows first:
/// at about 32 bytes a group, a table of 65,536 groups outgrows a core's
/// L2 cache (2 MiB on this project's benchmark machine).
pub const MIN_GROUPS: u64 = 65_536;

/// Groups each partial table is sized for: a share of the keys whose table
/// stays in a core's cache with room for the rows streaming through.
const GROUPS_PER_TABLE: u64 = 16_384;

/// The most partitions the keys are hashed into: past this, each batch
/// splits into slices of a few hundred rows, whose handling costs more than
/// the smaller tables save. With DataFusion 55 grouping 10M strings on two
/// threads, 16 partitions beat 32 and 64 at 200,000 groups and at
/// 2,000,000 (`bench/grouping_partitions.py`, `docs/PERFORMANCE.md`).
const MAX_PARTITIONS: u64 = 16;

/// Rewrites each partial aggregation estimated to make at least
/// [`MIN_GROUPS`] groups to read its rows hashed by its grouping keys.
#[derive(Debug, Default)]
pub struct HashedGroups;

impl PhysicalOptimizerRule for HashedGroups {
    fn optimize(&self, plan: Arc<dyn ExecutionPlan>, _config: &ConfigOptions) -> Result<Arc<dyn ExecutionPlan>> {
        plan.transform_up(|node| {
            let Some(merge) = node.downcast_ref::<AggregateExec>() else {
                return Ok(Transformed::no(node));
            };
            let Some(merged) = MergedPartial::of(merge) else { return Ok(Transformed::no(node)) };
            let Some(hashed) = hashed(merged.partial)? else { return Ok(Transformed::no(node)) };
            let recompute = || ReplaceChildrenOptions::new(ChildrenPropertiesMode::Recompute);
            let between = Arc::clone(merged.between).replace_children(vec![hashed], recompute())?;
            Ok(Transformed::yes(Arc::clone(&node).replace_children(vec![between], recompute())?))
        })
        .map(|t| t.data)
    }

    fn name(&self) -> &str {
        "sluice_hashed_groups"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

/// DataFusion's merge of a grouping over its partial step, as it plans
/// one: a `FinalPartitioned` merge over a repartition hashed by the keys,
/// or, on one thread, a `Final` merge over a coalesce.
pub(crate) struct MergedPartial<'a> {
    /// The repartition or coalesce between the merge and the partial step.
    pub between: &'a Arc<dyn ExecutionPlan>,
    /// The partial step, as the plan it is.
    pub input: &'a Arc<dyn ExecutionPlan>,
    /// The partial step, as the aggregation it is.
    pub partial: &'a AggregateExec,
    /// The partitions the merge runs on.
    pub partitions: usize,
}

impl<'a> MergedPartial<'a> {
    /// `merge`'s shape, when it is DataFusion's merge over a partial step.
    pub(crate) fn of(merge: &'a AggregateExec) -> Option<MergedPartial<'a>> {
        let between = merge.input();
        let partitions = match merge.mode() {
            AggregateMode::FinalPartitioned => match between.downcast_ref::<RepartitionExec>()?.partitioning() {
                hashed @ Partitioning::Hash(..) => hashed.partition_count(),
                _ => return None,
            },
            AggregateMode::Final => between.downcast_ref::<CoalescePartitionsExec>().map(|_| 1)?,
            _ => return None,
        };
        let [input] = between.children()[..] else { return None };
        let partial = input.downcast_ref::<AggregateExec>().filter(|p| matches!(p.mode(), AggregateMode::Partial))?;
        Some(MergedPartial { between, input, partial, partitions })
    }
}

/// `partial` reading its rows hashed by its keys into enough partitions for
/// its estimated groups; `None` when it is not a plain partial step with
/// many groups (it is a partial step: [`MergedPartial::of`] found it).
fn hashed(partial: &AggregateExec) -> Result<Option<Arc<dyn ExecutionPlan>>> {
    let group = partial.group_expr();
    // A repartition keeps no order: aggregates that need their rows
    // ordered (`ARRAY_AGG(x ORDER BY y)`), or groups streamed in the
    // order of a sorted input, keep the input DataFusion gave them. (Today
    // their sort also hides the groups from the estimate; this does not
    // rely on it.)
    let needs_order = partial.required_input_ordering().iter().any(Option::is_some)
        || *partial.input_order_mode() != InputOrderMode::Linear;
    if group.expr().is_empty()
        || group.has_grouping_set()
        || partial.limit_options().is_some()
        || needs_order
        || matches!(partial.input().output_partitioning(), Partitioning::Hash(..))
    {
        return Ok(None);
    }
    let Some(groups) = estimated_groups(partial).filter(|g| *g >= MIN_GROUPS) else { return Ok(None) };
    let partitions = groups.div_ceil(GROUPS_PER_TABLE).next_power_of_two().clamp(2, MAX_PARTITIONS) as usize;
    let keys = Partitioning::Hash(group.input_exprs(), partitions);
    let repartitioned = Arc::new(RepartitionExec::try_new(Arc::clone(partial.input()), keys)?);
    let rewritten = AggregateExec::try_new(
        AggregateMode::Partial,
        group.clone(),
        partial.aggr_expr().to_vec(),
        partial.filter_expr().to_vec(),
        repartitioned,
        partial.input_schema(),
    )?;
    Ok(Some(Arc::new(rewritten)))
}

/// The groups `partial` makes at least, as this node's own segments tell:
/// the product over its keys of the most distinct values one segment
/// holds. `None` when a key is not a scanned column with known counts.
pub(crate) fn estimated_groups(partial: &AggregateExec) -> Option<u64> {
    let mut groups = 1u64;
    for (expr, _) in partial.group_expr().expr() {
        let column = expr.downcast_ref::<Column>()?;
        groups = groups.saturating_mul(distinct_values(partial.input(), column.name())?);
    }
    Some(groups)
}

/// The most distinct values of column `name` of `plan`'s output in one of
/// this node's segments, traced through projections, filters and
/// repartitions down to the scan.
fn distinct_values(plan: &Arc<dyn ExecutionPlan>, name: &str) -> Option<u64> {
    let most = |segments: &mut dyn Iterator<Item = &Arc<sluice_segments::Segment>>| {
        segments.filter_map(|s| s.meta().column_stats(name)?.distinct_count).max()
    };
    if let Some(scan) = plan.downcast_ref::<ClusterScanExec>() {
        return most(&mut scan.local().iter());
    }
    if let Some(scan) = plan.downcast_ref::<SegmentScanExec>() {
        return most(&mut scan.segments().iter().flatten());
    }
    if let Some(projection) = plan.downcast_ref::<ProjectionExec>() {
        let source = projection.expr().iter().find(|p| p.alias == name)?;
        let column = source.expr.downcast_ref::<Column>()?;
        return distinct_values(projection.input(), column.name());
    }
    if plan.is::<FilterExec>() || plan.is::<RepartitionExec>() {
        return distinct_values(plan.children()[0], name);
    }
    None
}
