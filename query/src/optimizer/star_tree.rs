//! Aggregations answered from star-trees (Pinot's star-tree index).
//!
//! When a partial `AggregateExec` groups a segment scan by columns that are
//! dimensions of a segment's star-tree, the scan's filter reads only such
//! dimensions, and every aggregate is one the tree holds, [`StarTreeExec`]
//! replaces it: each such segment's answer is its tree's pre-aggregated
//! records ([`sluice_segments::StarTree::select`]), turned into the partial
//! aggregate's own states (a `SUM`'s sum, an `AVG`'s count and sum, ...).
//! The final aggregation above merges them as it merges any partial
//! states, so the plan stays DataFusion's. Segments without a fitting tree
//! (a consuming tail, a file sealed before the tree was configured) keep
//! the partial aggregation over their rows, as a child of this node.
//!
//! Exactness rests on the tree's: its records cover every row once, and the
//! aggregates taken are those whose states merge exactly from the records':
//! `COUNT(*)`, `COUNT(c)`, `SUM`, `MIN`, `MAX` and `AVG` of integer columns
//! (sums are 64-bit integers, wrapping like DataFusion's; an `AVG`'s sum is
//! converted to a float once, which is exact below 2^53 as DataFusion's own
//! sum of converted values is).

use std::fmt;
use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch};
use arrow::compute::cast;
use arrow::datatypes::{DataType, SchemaRef};
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::{DataFusionError, Result};
use datafusion::config::ConfigOptions;
use datafusion::execution::TaskContext;
use datafusion::execution::memory_pool::MemoryConsumer;
use datafusion::physical_expr::expressions::{CastExpr, Column, Literal, TryCastExpr};
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::aggregates::{AggregateExec, AggregateMode};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties, SendableRecordBatchStream,
};
use futures::StreamExt;
use sluice_config::MetricFunction;
use sluice_segments::{Predicate, Segment, StarMetric};

use crate::stats::{QUERY_STATS, ScanStats};

use crate::scan::read::SegmentScanExec;

/// Replaces partial aggregations that a segment's star-tree answers with
/// [`StarTreeExec`].
#[derive(Debug, Default)]
pub struct StarTreeAggregate;

impl PhysicalOptimizerRule for StarTreeAggregate {
    fn optimize(&self, plan: Arc<dyn ExecutionPlan>, _config: &ConfigOptions) -> Result<Arc<dyn ExecutionPlan>> {
        plan.transform_up(|node| {
            let Some(aggregate) = node.downcast_ref::<AggregateExec>() else {
                return Ok(Transformed::no(node));
            };
            match StarTreeExec::try_new(aggregate)? {
                Some(replaced) => Ok(Transformed::yes(Arc::new(replaced) as Arc<dyn ExecutionPlan>)),
                None => Ok(Transformed::no(node)),
            }
        })
        .map(|t| t.data)
    }

    fn name(&self) -> &str {
        "star_tree_aggregate"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

/// Where an aggregate's states come from in a tree's records.
#[derive(Debug, Clone, Copy)]
enum State {
    /// The metric's count of values (rows for `COUNT(*)`).
    Count(StarMetric),
    /// The metric's value (sum, min or max; NULL when it saw none).
    Value(StarMetric),
}

/// What a query needs of a tree, by column name.
#[derive(Debug, Clone)]
struct Needs {
    /// Grouped on, in the order of the aggregate's groups.
    groups: Vec<String>,
    /// Grouped or filtered on.
    used: Vec<String>,
    /// Per aggregate: the metric (function, column name).
    metrics: Vec<(MetricFunction, Option<String>)>,
    /// Per state field of the output, after the groups.
    states: Vec<(usize, StateKind)>,
}

#[derive(Debug, Clone, Copy)]
enum StateKind {
    Count,
    Value,
}

impl Needs {
    /// The tree of `segment` that answers these needs, and the states'
    /// sources in it.
    fn fit(&self, segment: &Segment) -> Option<Fit> {
        let schema = &segment.meta().schema;
        let used: Vec<usize> = self.used.iter().map(|c| schema.column_index(c)).collect::<Option<_>>()?;
        let metrics: Vec<StarMetric> = self
            .metrics
            .iter()
            .map(|(function, column)| {
                let column = match column {
                    Some(c) => Some(schema.column_index(c)?),
                    None => None,
                };
                Some(StarMetric { function: *function, column })
            })
            .collect::<Option<_>>()?;
        let tree = segment.star_trees().iter().position(|tree| {
            used.iter().all(|c| tree.spec().dimensions.contains(c))
                && metrics.iter().all(|m| tree.spec().metrics.contains(m))
        })?;
        let states = self
            .states
            .iter()
            .map(|&(aggregate, kind)| match kind {
                StateKind::Count => State::Count(metrics[aggregate]),
                StateKind::Value => State::Value(metrics[aggregate]),
            })
            .collect();
        Some(Fit { tree, used, states })
    }
}

/// How one segment's tree answers: which tree, the schema positions of the
/// used columns (groups first), and each state's source.
#[derive(Debug, Clone)]
struct Fit {
    tree: usize,
    used: Vec<usize>,
    states: Vec<State>,
}

/// A partial aggregation answered from star-trees where segments have a
/// fitting one, and by the partial aggregation over rows elsewhere.
#[derive(Debug)]
pub struct StarTreeExec {
    /// The aggregation replaced (its schema, groups and aggregates).
    aggregate: AggregateExec,
    needs: Needs,
    predicate: Option<Predicate>,
    /// Per output partition: the segments answered from their trees, and how.
    trees: Vec<Vec<(Arc<Segment>, Fit)>>,
    /// The partial aggregation of the other segments, if any.
    rest: Option<Arc<dyn ExecutionPlan>>,
    /// The planning query's counters: a tree's records selected count as
    /// its documents scanned (as Pinot counts them).
    stats: Option<Arc<std::sync::Mutex<ScanStats>>>,
    properties: Arc<PlanProperties>,
}

impl StarTreeExec {
    fn try_new(aggregate: &AggregateExec) -> Result<Option<Self>> {
        let Some(needs) = needs(aggregate) else { return Ok(None) };
        let scan = aggregate.input().downcast_ref::<SegmentScanExec>().expect("checked by needs");
        let predicate = scan.predicate().cloned();
        // The segments only: the trees are read with the predicate, and the
        // scan's bitmaps are left unevaluated where it deferred them.
        let segments = scan.segments();
        let mut trees: Vec<Vec<(Arc<Segment>, Fit)>> = vec![Vec::new(); segments.len()];
        for (partition, segments) in segments.iter().enumerate() {
            for segment in segments {
                if let Some(fit) = needs.fit(segment) {
                    trees[partition].push((segment.clone(), fit));
                }
            }
        }
        if trees.iter().all(Vec::is_empty) {
            return Ok(None);
        }
        let answered: std::collections::HashSet<*const Segment> =
            trees.iter().flatten().map(|(s, _)| Arc::as_ptr(s)).collect();
        let rest = scan.retain(|segment| !answered.contains(&(segment as *const Segment)))?;
        let rest = if rest.segments().iter().all(Vec::is_empty) {
            None
        } else {
            Some(Arc::new(AggregateExec::try_new(
                *aggregate.mode(),
                aggregate.group_expr().clone(),
                aggregate.aggr_expr().to_vec(),
                aggregate.filter_expr().to_vec(),
                Arc::new(rest),
                aggregate.input_schema(),
            )?) as Arc<dyn ExecutionPlan>)
        };
        let properties = Arc::new(PlanProperties::new(
            EquivalenceProperties::new(aggregate.schema()),
            Partitioning::UnknownPartitioning(segments.len().max(1)),
            EmissionType::Final,
            Boundedness::Bounded,
        ));
        // Where the scan's rows were selected while planning, they were
        // counted then; where selection was deferred, the trees count the
        // records they read instead.
        let stats = if scan.is_selected() { None } else { QUERY_STATS.try_with(Arc::clone).ok() };
        Ok(Some(StarTreeExec { aggregate: aggregate.clone(), needs, predicate, trees, rest, stats, properties }))
    }
}

/// What `aggregate` needs of a star-tree, if it is a shape trees answer: a
/// partial aggregation of a segment scan whose filters were all pushed to
/// the segments, grouped by plain columns, with plain aggregates of plain
/// columns.
fn needs(aggregate: &AggregateExec) -> Option<Needs> {
    let scan = aggregate.input().downcast_ref::<SegmentScanExec>()?;
    let group = aggregate.group_expr();
    if !matches!(aggregate.mode(), AggregateMode::Partial)
        || group.has_grouping_set()
        || aggregate.filter_expr().iter().any(Option::is_some)
        || aggregate.limit_options().is_some()
        || !scan.is_exact()
        || scan.reader.residual.is_some()
    {
        return None;
    }
    let column_name = |expr: &Arc<dyn PhysicalExpr>| -> Option<String> {
        let column = expr.downcast_ref::<Column>()?;
        let field = scan.schema.fields().get(column.index())?;
        (field.name() == column.name()).then(|| column.name().to_string())
    };
    let groups: Vec<String> = group.expr().iter().map(|(e, _)| column_name(e)).collect::<Option<_>>()?;
    let mut used = groups.clone();
    for column in scan.predicate().map(Predicate::columns).unwrap_or_default() {
        if !used.iter().any(|u| u == column) {
            used.push(column.to_string());
        }
    }
    let output = aggregate.schema();
    let mut field = groups.len();
    let mut metrics = Vec::new();
    let mut states = Vec::new();
    for (i, aggr) in aggregate.aggr_expr().iter().enumerate() {
        if aggr.is_distinct() || !aggr.order_bys().is_empty() {
            return None;
        }
        let arguments = aggr.expressions();
        let function = match aggr.fun().name() {
            "count" => MetricFunction::Count,
            "sum" => MetricFunction::Sum,
            "avg" => MetricFunction::Avg,
            "min" => MetricFunction::Min,
            "max" => MetricFunction::Max,
            _ => return None,
        };
        let column = match arguments.as_slice() {
            // COUNT(*): counts rows, its argument a non-null literal.
            [literal] if function == MetricFunction::Count && is_non_null_literal(literal) => None,
            // A widening cast DataFusion adds for SUM and AVG of integers
            // (to Int64, to Float64): the values are the column's.
            [argument] => Some(column_name(&strip_widening_cast(argument))?),
            _ => return None,
        };
        metrics.push((function, column));
        // Each state field by its name's suffix, so that a change of
        // DataFusion's state layout leaves the aggregation to DataFusion.
        for state in aggr.state_fields().ok()? {
            let kind = match (function, state.name().rsplit_once('[').map(|(_, s)| s)) {
                (MetricFunction::Count, Some("count]")) | (MetricFunction::Avg, Some("count]")) => StateKind::Count,
                (MetricFunction::Sum, Some("sum]"))
                | (MetricFunction::Avg, Some("sum]"))
                | (MetricFunction::Min | MetricFunction::Max, Some("value]")) => StateKind::Value,
                _ => return None,
            };
            if output.fields().get(field)?.name() != state.name() {
                return None;
            }
            states.push((i, kind));
            field += 1;
        }
    }
    (field == output.fields().len()).then_some(Needs { groups, used, metrics, states })
}

fn is_non_null_literal(expr: &Arc<dyn PhysicalExpr>) -> bool {
    expr.downcast_ref::<Literal>().is_some_and(|l| !l.value().is_null())
}

/// The column under a cast of an integer to `Int64` or `Float64`.
fn strip_widening_cast(expr: &Arc<dyn PhysicalExpr>) -> Arc<dyn PhysicalExpr> {
    let (inner, to) = if let Some(c) = expr.downcast_ref::<CastExpr>() {
        (c.expr(), c.cast_type())
    } else if let Some(c) = expr.downcast_ref::<TryCastExpr>() {
        (c.expr(), c.cast_type())
    } else {
        return expr.clone();
    };
    if matches!(to, DataType::Int64 | DataType::Float64) && inner.downcast_ref::<Column>().is_some() {
        inner.clone()
    } else {
        expr.clone()
    }
}

impl DisplayAs for StarTreeExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        let aggregates: Vec<&str> = self.aggregate.aggr_expr().iter().map(|a| a.name()).collect();
        let segments: usize = self.trees.iter().map(Vec::len).sum();
        write!(
            f,
            "StarTreeExec: gby=[{}], aggr=[{}], segments={segments}",
            self.needs.groups.join(", "),
            aggregates.join(", ")
        )?;
        if let Some(p) = &self.predicate {
            write!(f, ", predicate={p:?}")?;
        }
        Ok(())
    }
}

impl ExecutionPlan for StarTreeExec {
    fn name(&self) -> &str {
        "StarTreeExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        self.rest.iter().collect()
    }

    fn apply_expressions(
        &self,
        f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        crate::optimizer::dictionary_group::apply_aggregate_arguments(&self.aggregate, f)
    }

    fn with_new_children(self: Arc<Self>, children: Vec<Arc<dyn ExecutionPlan>>) -> Result<Arc<dyn ExecutionPlan>> {
        let rest = match (children.as_slice(), &self.rest) {
            ([], None) => None,
            ([child], Some(_)) => Some(child.clone()),
            _ => return Err(DataFusionError::Internal("StarTreeExec: wrong number of children".into())),
        };
        Ok(Arc::new(StarTreeExec {
            aggregate: self.aggregate.clone(),
            needs: self.needs.clone(),
            predicate: self.predicate.clone(),
            trees: self.trees.clone(),
            stats: self.stats.clone(),
            rest,
            properties: self.properties.clone(),
        }))
    }

    fn execute(&self, partition: usize, context: Arc<TaskContext>) -> Result<SendableRecordBatchStream> {
        let schema = self.aggregate.schema();
        let segments = self.trees.get(partition).cloned().unwrap_or_default();
        let reservation = MemoryConsumer::new(format!("StarTreeExec[{partition}]")).register(context.memory_pool());
        let (groups, predicate, out) = (self.needs.groups.len(), self.predicate.clone(), schema.clone());
        let stats = self.stats.clone();
        let from_trees = futures::stream::iter(segments).map(move |(segment, fit)| {
            let batch = answer(&segment, &fit, groups, predicate.as_ref(), &out)?;
            if let Some(stats) = &stats
                && batch.num_rows() > 0
            {
                let scanned =
                    ScanStats { segments_matched: 1, docs_scanned: batch.num_rows() as u64, ..Default::default() };
                stats.lock().unwrap_or_else(|e| e.into_inner()).add(&scanned);
            }
            // The records are few where the tree pays; where it does not,
            // they count against the query's memory like any batch.
            reservation.try_resize(batch.get_array_memory_size())?;
            Ok(batch)
        });
        // The rest's partitions are as many as ours at most.
        let rest = match &self.rest {
            Some(rest) if partition < rest.properties().output_partitioning().partition_count() => {
                Some(rest.execute(partition, context)?)
            }
            _ => None,
        };
        let stream = from_trees.chain(futures::stream::iter(rest).flatten());
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, stream)))
    }
}

/// One segment's partial states, from its tree.
fn answer(
    segment: &Segment,
    fit: &Fit,
    groups: usize,
    predicate: Option<&Predicate>,
    schema: &SchemaRef,
) -> Result<RecordBatch> {
    let Fit { tree, used, states } = fit;
    let tree = &segment.star_trees()[*tree];
    let records = tree.select(used, predicate).map_err(|e| DataFusionError::External(Box::new(e)))?;
    let missing = || DataFusionError::Internal("a star-tree without a column it was chosen for".into());
    let mut columns: Vec<ArrayRef> = Vec::with_capacity(schema.fields().len());
    // `used` starts with the groups, in their order.
    for &column in &used[..groups] {
        columns.push(records.column(tree.dimension_column(column).ok_or_else(missing)?).clone());
    }
    for state in states {
        let (metric, pick_count) = match *state {
            State::Count(m) => (m, true),
            State::Value(m) => (m, false),
        };
        let (value, count) = tree.metric_columns(&metric).ok_or_else(missing)?;
        columns.push(records.column(if pick_count { count } else { value }).clone());
    }
    let columns = columns
        .iter()
        .zip(schema.fields())
        .map(|(c, field)| cast(c, field.data_type()))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(RecordBatch::try_new(schema.clone(), columns)?)
}
