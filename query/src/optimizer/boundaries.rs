//! Where a cluster query's plan is cut into stages, and where each stage's
//! tasks run.
//!
//! [`PlaceBoundaries`] cuts the plan right above the highest operator that
//! can run next to the data (filters, projections, the partial step of an
//! aggregation with the repartition by its keys that may feed it, a
//! per-partition top-k): that much runs on the holders, the
//! rest (final merge, joins, sort) on the node that took the query. A
//! grouping with many groups is the exception: there every holder's partial
//! states would be merged by one node, so the holders shuffle them by group
//! key (DataFusion Distributed's `NetworkShuffleExec`) and each merges its
//! share of the keys; the node that took the query only gathers merged
//! groups. [`route_tasks`] sends a scan's tasks to the nodes holding their
//! segments, and a shuffle's consumers to the same nodes. Where DataFusion
//! Distributed would lose a boundary (a stage of one remote task), the
//! stages are prepared here instead ([`prepare_stages`]).
//!
//! Invariants:
//! - A stage answers through one stream per task, and an operator that
//!   read one partition before the cut still reads one.
//! - A shuffle only replaces a `Final`/`FinalPartitioned` aggregation over
//!   the partial step of the same grouping: the merge is the one DataFusion
//!   planned, on a partitioning by the same keys.
//! - A stage runs on the planner without a boundary only when its one task
//!   is the planner's own: a task that reads another node's segments always
//!   crosses the network to it.

use std::sync::Arc;

use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::{DataFusionError, Result};
use datafusion::config::ConfigOptions;
use datafusion::physical_expr::Distribution;
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::aggregates::{AggregateExec, AggregateMode};
use datafusion::physical_plan::coalesce_partitions::CoalescePartitionsExec;
use datafusion::physical_plan::filter::FilterExec;
use datafusion::physical_plan::limit::LocalLimitExec;
use datafusion::physical_plan::projection::ProjectionExec;
use datafusion::physical_plan::repartition::RepartitionExec;
use datafusion::physical_plan::sorts::sort::SortExec;
use datafusion::physical_plan::sorts::sort_preserving_merge::SortPreservingMergeExec;
use datafusion::physical_plan::{
    ChildrenPropertiesMode, ExecutionPlan, ExecutionPlanProperties, Partitioning, ReplaceChildrenOptions,
};
use datafusion_distributed::{
    DistributedConfig, DistributedExec, NetworkBoundary, NetworkBoundaryExt, NetworkCoalesceExec, NetworkShuffleExec,
    RouteTasksEvent, RouteTasksEventResponse, Stage,
};
use url::Url;
use uuid::Uuid;

use crate::optimizer::dictionary_group::DictionaryGroupBy;
use crate::optimizer::hashed_groups::{MergedPartial, estimated_groups};
use crate::scan::spread::ClusterScanExec;

/// Groups per segment above which the holders merge a grouping's partial
/// states among themselves: 200,000 users shipped whole by three nodes
/// cost the node that took the query a third more CPU than one node
/// holding everything, while a shuffle adds a stage (a round of tasks, a
/// few milliseconds) that a few thousand groups do not repay.
pub const DEFAULT_SHUFFLE_MIN_GROUPS: u64 = 65_536;

/// Cuts the plan above the highest operator over a [`ClusterScanExec`]
/// that runs partition by partition next to the data: the holders run that
/// much, and the node that took the query the rest.
#[derive(Debug)]
pub struct PlaceBoundaries {
    /// The estimated groups (the most distinct values of the grouping in
    /// one of the planner's segments) from which a grouping's final merge
    /// is shuffled over the holders.
    pub shuffle_min_groups: u64,
}

impl Default for PlaceBoundaries {
    fn default() -> Self {
        PlaceBoundaries { shuffle_min_groups: DEFAULT_SHUFFLE_MIN_GROUPS }
    }
}

impl PhysicalOptimizerRule for PlaceBoundaries {
    fn optimize(&self, plan: Arc<dyn ExecutionPlan>, config: &ConfigOptions) -> Result<Arc<dyn ExecutionPlan>> {
        let placed = self.placed(plan)?;
        // DataFusion Distributed prepares the stages, except where it would
        // lose a boundary ([`prepare_stages`]).
        let idle = |p: &Arc<dyn ExecutionPlan>| p.downcast_ref::<ClusterScanExec>().is_some_and(|s| s.has_idle_task());
        if placed.exists(|p| Ok(idle(p)))?
            && let Some(prepared) = prepare_stages(Arc::clone(&placed), config)?
        {
            return Ok(prepared);
        }
        Ok(placed)
    }

    fn name(&self) -> &str {
        "sluice_place_network_boundaries"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

impl PlaceBoundaries {
    /// `plan` of a selection (no grouping, so no shuffle) planned without
    /// DataFusion's planner (`crate::engine::fast`), cut into stages and prepared to
    /// run on DataFusion Distributed.
    pub(crate) fn distribute_selection(
        plan: Arc<dyn ExecutionPlan>,
        config: &ConfigOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let fitted = plan.transform_up(|p| {
            let fitted = p.downcast_ref::<ClusterScanExec>().and_then(ClusterScanExec::fitted_to_its_segments);
            Ok(fitted.map_or(Transformed::no(p), |scan| Transformed::yes(Arc::new(scan) as Arc<dyn ExecutionPlan>)))
        })?;
        let placed = PlaceBoundaries::default().placed(fitted.data)?;
        prepare_stages(placed, config)?
            .ok_or_else(|| DataFusionError::Internal("a selection was planned with a shuffle".into()))
    }

    /// `plan` cut into stages, answering through one partition.
    fn placed(&self, plan: Arc<dyn ExecutionPlan>) -> Result<Arc<dyn ExecutionPlan>> {
        let placed = self.place(plan)?;
        if placed.exists(|p| Ok(p.is_network_boundary()))? && placed.output_partitioning().partition_count() > 1 {
            return Ok(Arc::new(CoalescePartitionsExec::new(placed)));
        }
        Ok(placed)
    }

    fn place(&self, plan: Arc<dyn ExecutionPlan>) -> Result<Arc<dyn ExecutionPlan>> {
        if plan.is_network_boundary() {
            return Ok(plan);
        }
        if let Some((stage, tasks)) = self.next_to_data(&plan)? {
            // Each task answers through one stream.
            return Ok(Arc::new(NetworkCoalesceExec::try_new(one_partition(stage), tasks, 1)?));
        }
        let children: Vec<Arc<dyn ExecutionPlan>> = plan.children().into_iter().cloned().collect();
        if children.is_empty() {
            return Ok(plan);
        }
        let requirements = plan.input_distribution_requirements();
        let required: Vec<&Distribution> = requirements.per_child_distributions().collect();
        let placed = children
            .into_iter()
            .enumerate()
            .map(|(i, child)| {
                let single = child.output_partitioning().partition_count() == 1
                    || matches!(required.get(i), Some(Distribution::SinglePartition));
                let placed = self.place(child)?;
                // A boundary answers with one partition per task: where the
                // parent read one partition (a `Single` aggregation, a global
                // limit, as DataFusion plans them when a scan has one
                // partition), it must still read one, or it answers once per
                // task.
                Ok(if single && placed.output_partitioning().partition_count() > 1 {
                    one_partition(placed)
                } else {
                    placed
                })
            })
            .collect::<Result<Vec<_>>>()?;
        plan.replace_children(placed, ReplaceChildrenOptions::new(ChildrenPropertiesMode::Recompute))
    }

    /// `plan` as it runs on the holders partition by partition, shuffles
    /// placed, and its task count; `None` when something in it must run on
    /// the node that took the query.
    fn next_to_data(&self, plan: &Arc<dyn ExecutionPlan>) -> Result<Option<(Arc<dyn ExecutionPlan>, usize)>> {
        if let Some(scan) = plan.downcast_ref::<ClusterScanExec>() {
            return Ok(Some((plan.clone(), scan.task_count())));
        }
        if let Some(merged) = self.shuffled_merge(plan)? {
            return Ok(Some(merged));
        }
        // A partial step over a repartition by its own keys
        // (`crate::optimizer::hashed_groups`) runs in the task, repartition and all:
        // the repartition only sorts the task's rows into smaller tables.
        if let Some(partial) = plan.downcast_ref::<AggregateExec>()
            && matches!(partial.mode(), AggregateMode::Partial)
            && let Some(hashed) = partial.input().downcast_ref::<RepartitionExec>()
            && matches!(hashed.partitioning(), Partitioning::Hash(..))
        {
            let Some((placed, tasks)) = self.next_to_data(hashed.input())? else { return Ok(None) };
            let recompute = || ReplaceChildrenOptions::new(ChildrenPropertiesMode::Recompute);
            let hashed = Arc::clone(partial.input()).replace_children(vec![placed], recompute())?;
            return Ok(Some((plan.clone().replace_children(vec![hashed], recompute())?, tasks)));
        }
        let per_partition = plan.is::<FilterExec>()
            || plan.is::<ProjectionExec>()
            || plan.is::<LocalLimitExec>()
            || plan.downcast_ref::<SortExec>().is_some_and(|s| s.preserve_partitioning())
            || plan.downcast_ref::<AggregateExec>().is_some_and(|a| matches!(a.mode(), AggregateMode::Partial))
            || plan.is::<DictionaryGroupBy>();
        let children = plan.children();
        let [child] = children.as_slice() else { return Ok(None) };
        if !per_partition {
            return Ok(None);
        }
        let Some((placed, tasks)) = self.next_to_data(child)? else { return Ok(None) };
        let plan = if Arc::ptr_eq(&placed, child) {
            plan.clone()
        } else {
            plan.clone()
                .replace_children(vec![placed], ReplaceChildrenOptions::new(ChildrenPropertiesMode::Recompute))?
        };
        Ok(Some((plan, tasks)))
    }

    /// A grouping's final merge over its partial step on the holders,
    /// when it has many groups: the merge runs on the holders too, each
    /// taking the keys hashed to it.
    fn shuffled_merge(&self, plan: &Arc<dyn ExecutionPlan>) -> Result<Option<(Arc<dyn ExecutionPlan>, usize)>> {
        let Some(merge) = plan.downcast_ref::<AggregateExec>() else { return Ok(None) };
        let group = merge.group_expr();
        if group.expr().is_empty() || group.has_grouping_set() || merge.limit_options().is_some() {
            return Ok(None);
        }
        // DataFusion merges either on several partitions hashed by the keys
        // (FinalPartitioned), or, on one thread, on one partition (Final).
        let Some(MergedPartial { input: partials, partial, partitions, .. }) = MergedPartial::of(merge) else {
            return Ok(None);
        };
        let few = |groups: Option<u64>| groups.is_none_or(|groups| groups < self.shuffle_min_groups);
        if self.shuffle_min_groups > 0 && few(estimated_groups(partial)) {
            return Ok(None);
        }
        let Some((partials, tasks)) = self.next_to_data(partials)? else { return Ok(None) };
        if tasks < 2 {
            return Ok(None);
        }
        let keys = Partitioning::Hash(group.input_exprs(), partitions);
        let shuffle = NetworkShuffleExec::try_new(Arc::new(RepartitionExec::try_new(partials, keys)?), tasks)?;
        let merged = AggregateExec::try_new(
            AggregateMode::FinalPartitioned,
            group.clone(),
            merge.aggr_expr().to_vec(),
            merge.filter_expr().to_vec(),
            Arc::new(shuffle),
            merge.input_schema(),
        )?;
        Ok(Some((Arc::new(merged), tasks)))
    }
}

/// `plan` ready for DataFusion Distributed to run: the planner's idle scan
/// tasks dropped, its stages prepared as its own planner would; `None` when
/// a boundary is not a coalesce (a shuffle's stages need its preparation).
///
/// DataFusion Distributed runs a stage of one task under a head of one on
/// the node that took the query, without its boundary. So a scan whose rows
/// are all on one other node keeps an idle task of the planner's own beside
/// that node's ([`ClusterScanExec::plan`]): a round of a task that reads
/// nothing, on every query whose filter rules out the planner's segments.
/// Here the idle tasks are dropped and the stages prepared as it would: one
/// query id, a number per stage, a stage of only the planner's own task run
/// in place. The plan is a `DistributedExec`, which its planner takes as it
/// is.
fn prepare_stages(plan: Arc<dyn ExecutionPlan>, config: &ConfigOptions) -> Result<Option<Arc<dyn ExecutionPlan>>> {
    if plan.exists(|p| Ok(p.is_network_boundary() && !p.is::<NetworkCoalesceExec>()))? {
        return Ok(None);
    }
    let query_id = Uuid::new_v4();
    let mut stages = 0;
    let prepared = plan.transform_up(|node| {
        let Some(stage) = node.as_network_boundary().and_then(|b| b.input_stage().local_plan()) else {
            return Ok(Transformed::no(node));
        };
        let mut tasks = 0;
        let stage = Arc::clone(stage).transform_up(|p| {
            let Some(scan) = p.downcast_ref::<ClusterScanExec>() else { return Ok(Transformed::no(p)) };
            if scan.runs_here_alone() {
                tasks = 0;
                return Ok(Transformed::no(p));
            }
            let busy = scan.without_idle_tasks();
            tasks = busy.as_ref().map_or(scan.task_count(), ClusterScanExec::task_count);
            Ok(busy.map_or(Transformed::no(p), |busy| Transformed::yes(Arc::new(busy) as Arc<dyn ExecutionPlan>)))
        })?;
        if tasks == 0 {
            // The planner's own task alone: run in place.
            return Ok(Transformed::yes(stage.data));
        }
        stages += 1;
        let boundary = NetworkCoalesceExec::try_new(stage.data, tasks, 1)?;
        let Stage::Local(mut local) = boundary.input_stage().clone() else {
            return Err(DataFusionError::Internal("a new boundary's stage is not local".into()));
        };
        (local.query_id, local.num) = (query_id, stages);
        let boundary: Arc<dyn ExecutionPlan> = boundary.with_input_stage(Stage::Local(local))?;
        Ok(Transformed::yes(boundary))
    })?;
    if stages == 0 {
        return Ok(Some(prepared.data));
    }
    let metrics = DistributedConfig::from_config_options(config).is_ok_and(|c| c.collect_metrics);
    Ok(Some(Arc::new(DistributedExec::new(prepared.data).with_metrics_collection(metrics))))
}

/// `plan`'s partitions as one: merged in order when they are sorted (a
/// per-partition top-k), else concatenated.
pub(crate) fn one_partition(plan: Arc<dyn ExecutionPlan>) -> Arc<dyn ExecutionPlan> {
    match plan.output_ordering().cloned() {
        Some(ordering) if plan.output_partitioning().partition_count() > 1 => {
            let fetch = plan.fetch();
            Arc::new(SortPreservingMergeExec::new(ordering, plan).with_fetch(fetch))
        }
        _ => Arc::new(CoalescePartitionsExec::new(plan)),
    }
}

/// Sends each task of a scan's stage to the node holding its segments, and
/// each consumer of a shuffle to a node of the stage it reads (the
/// holders, which already run the query's scan).
pub fn route_tasks(event: RouteTasksEvent) -> Option<Result<RouteTasksEventResponse>> {
    let urls = match stage_urls(event.plan)? {
        Ok(urls) => urls,
        Err(e) => return Some(Err(e)),
    };
    if urls.len() != event.task_count {
        return Some(Err(DataFusionError::Internal(format!(
            "a distributed stage planned {} tasks, it has {}",
            urls.len(),
            event.task_count
        ))));
    }
    Some(Ok(RouteTasksEventResponse::new(urls)))
}

/// The nodes a stage's tasks run on: its scan's holders, or the nodes of
/// the stage a shuffle in it reads.
fn stage_urls(plan: &Arc<dyn ExecutionPlan>) -> Option<Result<Vec<Url>>> {
    let mut urls = None;
    let walked = plan.apply(|node| {
        if let Some(shuffle) = node.downcast_ref::<NetworkShuffleExec>() {
            urls = match shuffle.input_stage() {
                Stage::Remote(remote) => Some(Ok(remote.workers.clone())),
                Stage::Local(_) => shuffle.input_stage().local_plan().and_then(stage_urls),
            };
            return Ok(TreeNodeRecursion::Stop);
        }
        if node.is_network_boundary() {
            return Ok(TreeNodeRecursion::Jump);
        }
        if let Some(scan) = node.downcast_ref::<ClusterScanExec>() {
            urls = Some(scan.urls());
            return Ok(TreeNodeRecursion::Stop);
        }
        Ok(TreeNodeRecursion::Continue)
    });
    match walked {
        Err(e) => Some(Err(e)),
        Ok(_) => urls,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scan::spread::tests::scan_over;
    use arrow::datatypes::{DataType, Field, Schema};
    use datafusion::physical_expr::PhysicalExpr;
    use datafusion::physical_expr::expressions::Column;

    /// `SELECT DISTINCT status` as DataFusion plans it on `threads`
    /// threads: a partial step over the scan, then a `Final` merge over one
    /// partition or a `FinalPartitioned` one over a hash repartition. With
    /// `hashed`, the partial step reads the scan hashed by its key, as
    /// `crate::optimizer::hashed_groups` plans many groups.
    fn distinct_status(threads: usize, hashed: bool) -> Arc<dyn ExecutionPlan> {
        use datafusion::physical_plan::aggregates::PhysicalGroupBy;
        let schema = Arc::new(Schema::new(vec![Field::new("status", DataType::Int32, true)]));
        let key: Arc<dyn PhysicalExpr> = Arc::new(Column::new("status", 0));
        let mut scan: Arc<dyn ExecutionPlan> = scan_over(schema.clone(), &[1, 2, 3], 2);
        if hashed {
            scan = Arc::new(RepartitionExec::try_new(scan, Partitioning::Hash(vec![key.clone()], 8)).unwrap());
        }
        let group = PhysicalGroupBy::new_single(vec![(key.clone(), "status".into())]);
        let partial = Arc::new(
            AggregateExec::try_new(AggregateMode::Partial, group.clone(), vec![], vec![], scan, schema.clone())
                .unwrap(),
        );
        let (mode, input): (_, Arc<dyn ExecutionPlan>) = if threads == 1 {
            (AggregateMode::Final, Arc::new(CoalescePartitionsExec::new(partial)))
        } else {
            let keys = Partitioning::Hash(vec![key], threads);
            (AggregateMode::FinalPartitioned, Arc::new(RepartitionExec::try_new(partial, keys).unwrap()))
        };
        Arc::new(AggregateExec::try_new(mode, group.as_final(), vec![], vec![], input, schema).unwrap())
    }

    /// Past the threshold, the merge runs on the holders, fed by a shuffle
    /// of their partial states by key, whatever mode DataFusion planned it
    /// in; under it, the holders ship partial states to the planner.
    #[test]
    fn many_groups_are_merged_on_the_holders() {
        let names = |plan: &Arc<dyn ExecutionPlan>| {
            let mut names = Vec::new();
            plan.apply(|node| {
                let name = match node.downcast_ref::<AggregateExec>() {
                    Some(a) => format!("{:?}", a.mode()),
                    None => node.name().to_string(),
                };
                names.push(name);
                Ok(TreeNodeRecursion::Continue)
            })
            .unwrap();
            names
        };
        for (threads, hashed) in [(1, false), (2, false), (1, true), (2, true)] {
            let shuffled = PlaceBoundaries { shuffle_min_groups: 0 }
                .optimize(distinct_status(threads, hashed), &ConfigOptions::default())
                .unwrap();
            let shuffled = names(&shuffled);
            let at = |name: &str| shuffled.iter().position(|n| n == name).unwrap_or_else(|| panic!("{shuffled:?}"));
            let (gather, merge, shuffle) =
                (at("NetworkCoalesceExec"), at("FinalPartitioned"), at("NetworkShuffleExec"));
            assert!(gather < merge && merge < shuffle && shuffle < at("Partial"), "{shuffled:?}");
            // A hashed partial step keeps its repartition, on the holders.
            let repartitions = shuffled.iter().enumerate().filter(|(_, n)| *n == "RepartitionExec");
            let below_partial = repartitions.filter(|(i, _)| *i > at("Partial")).count();
            assert_eq!(below_partial, usize::from(hashed), "{shuffled:?}");

            // The fixture's segments are not the planner's own: no estimate,
            // so a positive threshold keeps the merge at the planner.
            let gathered =
                PlaceBoundaries::default().optimize(distinct_status(threads, hashed), &ConfigOptions::default());
            let gathered = names(&gathered.unwrap());
            assert!(!gathered.iter().any(|n| n == "NetworkShuffleExec"), "{gathered:?}");
            let merge = gathered.iter().position(|n| n.starts_with("Final")).unwrap();
            let gather = gathered.iter().position(|n| n == "NetworkCoalesceExec").unwrap();
            assert!(merge < gather, "{gathered:?}");
            // The partial step, hashed or not, stays next to the data.
            let partial = gathered.iter().position(|n| n == "Partial").unwrap();
            assert!(gather < partial, "{gathered:?}");
        }
    }

    /// A planner holding none of a scan's rows sends one task, to the node
    /// holding them, without an idle one of its own: the stage is prepared
    /// here (DataFusion Distributed would run a stage of one task in place,
    /// on the planner), numbered, with a query id, under a
    /// `DistributedExec`. A selection over one segment reads it as one
    /// partition.
    #[test]
    fn a_scan_all_elsewhere_runs_as_one_remote_task() {
        use crate::scan::spread::tests::scan_beside_an_idle_planner;
        let schema = Arc::new(Schema::new(vec![Field::new("status", DataType::Int32, true)]));
        let stages = |plan: &Arc<dyn ExecutionPlan>| {
            let mut stages = Vec::new();
            plan.apply(|node| {
                if let Some(boundary) = node.as_network_boundary() {
                    let stage = boundary.input_stage();
                    let scan = stage.local_plan().and_then(|p| {
                        let mut found = None;
                        let _ = p.apply(|n| {
                            found = n
                                .downcast_ref::<ClusterScanExec>()
                                .map(|s| (s.urls().unwrap(), s.properties().partitioning.partition_count()));
                            Ok(if found.is_some() { TreeNodeRecursion::Stop } else { TreeNodeRecursion::Continue })
                        });
                        found
                    });
                    stages.push((stage.query_id(), stage.num(), stage.task_count(), scan));
                }
                Ok(TreeNodeRecursion::Continue)
            })
            .unwrap();
            stages
        };
        let one_remote: Arc<dyn ExecutionPlan> = scan_beside_an_idle_planner(schema.clone(), &[7], 2);
        let planned = PlaceBoundaries::default().optimize(one_remote.clone(), &ConfigOptions::default()).unwrap();
        assert!(planned.is::<DistributedExec>(), "{}", planned.name());
        let remote = Url::parse("http://127.0.0.1:7/").unwrap();
        match stages(&planned).as_slice() {
            [(query, 1, 1, Some((urls, 2)))] => {
                assert!(!query.is_nil());
                assert_eq!(urls, &[remote]);
            }
            other => panic!("{other:?}"),
        }
        let selection = PlaceBoundaries::distribute_selection(one_remote, &ConfigOptions::default()).unwrap();
        assert!(matches!(stages(&selection).as_slice(), [(_, 1, 1, Some((_, 1)))]), "{:?}", stages(&selection));

        // Beside no other node, the idle task is the scan: it runs in place.
        let alone = scan_beside_an_idle_planner(schema, &[], 2);
        assert!(alone.without_idle_tasks().is_none() && alone.runs_here_alone());
    }

    /// A scan of one partition per task, under an operator that reads one
    /// partition (what DataFusion plans on a one-core node or with
    /// `limits.threads = 1`): the boundary's one partition per task is
    /// merged back into one, or the operator answers once per node.
    #[test]
    fn a_single_partition_parent_reads_one_partition_across_the_boundary() {
        let schema = Arc::new(Schema::new(vec![Field::new("status", DataType::Int32, true)]));
        let scan = scan_over(schema, &[1, 2, 3], 1);
        let limit: Arc<dyn ExecutionPlan> =
            Arc::new(datafusion::physical_plan::limit::GlobalLimitExec::new(scan, 0, Some(5)));
        let placed = PlaceBoundaries::default().optimize(limit, &ConfigOptions::default()).unwrap();
        assert!(placed.exists(|p| Ok(p.is_network_boundary())).unwrap());
        placed
            .apply(|node| {
                let requirements = node.input_distribution_requirements();
                for (child, required) in node.children().iter().zip(requirements.per_child_distributions()) {
                    if matches!(required, Distribution::SinglePartition) {
                        assert_eq!(child.output_partitioning().partition_count(), 1, "under {}", node.name());
                    }
                }
                Ok(TreeNodeRecursion::Continue)
            })
            .unwrap();
    }
}
