//! Grouping by dictionary ids (Pinot's dictionary-based group-by).
//!
//! A sealed segment stores a low- or mid-cardinality string column as a
//! dictionary: sorted distinct values and an `i32` key per row. DataFusion's
//! partial aggregation would hash every row's string to find its group. When
//! a partial `AggregateExec` groups a segment scan by one such column,
//! [`DictionaryGroupBy`] replaces it: each segment's dictionary is mapped to
//! group ids once (one hash per distinct value), then every row's group id is
//! an array lookup by key. The aggregates are DataFusion's own groups
//! accumulators, fed exactly as `AggregateExec` feeds them, and the output
//! is the partial aggregate's own schema and states, so the final
//! aggregation above is unchanged. A segment whose column is not a
//! dictionary (a consuming tail, a plain-encoded column) hashes its values
//! into the same groups.
//!
//! Without groups it is taken only when every aggregate is a `MIN`/`MAX`
//! of a string column that every segment of a local scan stores as a
//! dictionary: one group, every aggregate on keys, no row read. Other
//! aggregations without groups stay DataFusion's (its ungrouped
//! accumulators; a float `MIN` fed through a groups accumulator differed
//! from them on signed zeros).
//!
//! A large dictionary (more than [`MAX_DICTIONARY`] values) is taken over
//! this node's segments when its values repeat ([`ROWS_PER_VALUE`] rows
//! each at least, on average): each segment's keys are then its groups, and
//! its partial states are emitted unmerged when it ends, for the final
//! aggregation to merge (no table of every segment's values is built here,
//! which cost as much as DataFusion's hashing of the rows).
//!
//! Only the plain shape is taken: one grouping column with at most
//! [`MAX_DICTIONARY`] distinct values in every segment (or repeating, as
//! above), no grouping sets, no
//! aggregate with `DISTINCT`, `FILTER`, `ORDER BY` or without groups
//! accumulator, no limit on groups, and a scan without a residual filter
//! (its rows are then exactly the bitmaps' rows, the keys' rows).

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, Int32Array, RecordBatch, StringArray, StringViewBuilder, UInt32Array};
use arrow::datatypes::{DataType, SchemaRef};
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::{DataFusionError, Result};
use datafusion::config::ConfigOptions;
use datafusion::execution::TaskContext;
use datafusion::execution::memory_pool::MemoryConsumer;
use datafusion::logical_expr::{EmitTo, GroupsAccumulator};
use datafusion::physical_expr::expressions::Column;
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::aggregates::{AggregateExec, AggregateMode};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties, SendableRecordBatchStream,
};

use futures::StreamExt;
use roaring::RoaringBitmap;
use sluice_segments::{Encoding, Segment};

use crate::scan::read::{Reader, SegmentScanExec, chunks};
use crate::scan::selection::Part;
use crate::scan::spread::ClusterScanExec;

/// Replaces partial aggregations that group a segment scan by one string
/// column with [`DictionaryGroupBy`].
#[derive(Debug, Default)]
pub struct GroupByDictionary;

impl PhysicalOptimizerRule for GroupByDictionary {
    fn optimize(&self, plan: Arc<dyn ExecutionPlan>, _config: &ConfigOptions) -> Result<Arc<dyn ExecutionPlan>> {
        plan.transform_up(|node| {
            let Some(aggregate) = node.downcast_ref::<AggregateExec>() else {
                return Ok(Transformed::no(node));
            };
            match DictionaryGroupBy::try_new(aggregate) {
                Some(replaced) => Ok(Transformed::yes(Arc::new(replaced) as Arc<dyn ExecutionPlan>)),
                None => Ok(Transformed::no(node)),
            }
        })
        .map(|t| t.data)
    }

    fn name(&self) -> &str {
        "group_by_dictionary"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

/// A partial aggregation grouped by one string column of a segment scan,
/// on dictionary ids.
#[derive(Debug)]
pub struct DictionaryGroupBy {
    /// The aggregation replaced: its schema, group and aggregate exprs.
    aggregate: AggregateExec,
    scan: Arc<dyn ExecutionPlan>,
    /// The grouping column: its name and index in the scan; None for an
    /// aggregation without groups (one group).
    column: Option<(String, usize)>,
    /// Each segment's groups are its dictionary keys, emitted when the
    /// segment ends (see [`DictionaryGroupBy::try_new`]).
    per_segment: bool,
    properties: Arc<PlanProperties>,
}

/// Where a [`DictionaryGroupBy`]'s rows come from: a scan of this node's
/// segments, or the scan of one node's share of a table spread over the
/// cluster (the node running the task resolves and selects its segments).
enum Source<'a> {
    Local(&'a SegmentScanExec),
    Cluster(&'a ClusterScanExec),
}

impl<'a> Source<'a> {
    fn of(plan: &'a Arc<dyn ExecutionPlan>) -> Option<Self> {
        if let Some(scan) = plan.downcast_ref::<SegmentScanExec>() {
            return Some(Source::Local(scan));
        }
        plan.downcast_ref::<ClusterScanExec>().map(Source::Cluster)
    }

    fn reader(&self) -> &'a Reader {
        match self {
            Source::Local(scan) => &scan.reader,
            Source::Cluster(scan) => &scan.spec().reader,
        }
    }

    fn schema(&self) -> &'a SchemaRef {
        match self {
            Source::Local(scan) => &scan.schema,
            Source::Cluster(scan) => &scan.spec().schema,
        }
    }

    /// The segments the planner sees: all of a local scan's; of a cluster
    /// scan, the planner's own (None when it holds none, so nothing is
    /// known of the others').
    fn planned_segments(&self) -> Option<Vec<Arc<Segment>>> {
        match self {
            Source::Local(scan) => Some(scan.segments().into_iter().flatten().collect()),
            Source::Cluster(scan) => (!scan.local().is_empty()).then(|| scan.local().to_vec()),
        }
    }
}

impl DictionaryGroupBy {
    /// The replacement of `aggregate`, when its shape fits and every
    /// segment the planner sees stores the grouping column as a small
    /// dictionary.
    fn try_new(aggregate: &AggregateExec) -> Option<Self> {
        let replaced = Self::of_shape(aggregate)?;
        let source = Source::of(&replaced.scan)?;
        let segments = source.planned_segments()?;
        let Some(column) = &replaced.column else {
            // Without groups: every aggregate a MIN/MAX of a column every
            // segment of a local scan stores as a dictionary.
            if !matches!(source, Source::Local(_)) {
                return None;
            }
            let on_keys = aggregate.aggr_expr().iter().all(|a| {
                extreme_column(a.fun().name(), &a.expressions(), source.schema()).is_some_and(|(name, _)| {
                    segments.iter().all(|s| s.meta().column(&name).is_some_and(|c| c.encoding == Encoding::Dictionary))
                })
            });
            return on_keys.then_some(replaced);
        };
        // Small dictionaries only: DataFusion's own grouping hashes a
        // high-cardinality column about as fast as a segment's dictionary
        // of hundreds of thousands of values is mapped here, and the
        // benchmark's 200,000 users went from ~250 to ~490 ms this way.
        // Over the cluster, the planner's own segments stand for the
        // others' (one table, one stream of rows); a holder's segment
        // that is not a dictionary has its values hashed into the groups.
        let small = segments.iter().all(|segment| {
            let stats = segment.meta().column_stats(&column.0);
            stats.and_then(|s| s.distinct_count).is_some_and(|n| n <= MAX_DICTIONARY)
        });
        if small {
            return Some(replaced);
        }
        // A large dictionary whose values repeat, in this node's segments:
        // mapping it to groups shared by every segment costs what hashing
        // the rows does, but a segment's keys are groups already. Each
        // segment's groups are then emitted when it ends, unmerged (the
        // final aggregation above merges partial rows of one value from
        // several segments as it merges several partitions'), and the
        // rows are never hashed here: ~200,000 groups per segment instead
        // of 1,000,000 rows hashed for the benchmark's users. Not over the
        // cluster, where each holder's unmerged rows would cross the
        // network.
        let repeated = matches!(source, Source::Local(_))
            && segments.iter().all(|segment| {
                let dictionary = segment.meta().column(&column.0).is_some_and(|c| c.encoding == Encoding::Dictionary);
                let stats = segment.meta().column_stats(&column.0);
                let distinct = stats.and_then(|s| s.distinct_count);
                dictionary
                    && distinct.is_some_and(|n| n.saturating_mul(ROWS_PER_VALUE) <= u64::from(segment.num_rows()))
            });
        repeated.then_some(DictionaryGroupBy { per_segment: true, ..replaced })
    }

    /// The replacement of `aggregate` when its shape fits, whatever the
    /// segments (as decoded on the node running a task).
    pub(crate) fn of_shape(aggregate: &AggregateExec) -> Option<Self> {
        let scan_plan = aggregate.input();
        let source = Source::of(scan_plan)?;
        let group = aggregate.group_expr();
        let plain_aggregates = aggregate
            .aggr_expr()
            .iter()
            .all(|a| a.groups_accumulator_supported() && !a.is_distinct() && a.order_bys().is_empty());
        if !matches!(aggregate.mode(), AggregateMode::Partial)
            || group.has_grouping_set()
            || group.expr().len() > 1
            || aggregate.filter_expr().iter().any(Option::is_some)
            || aggregate.limit_options().is_some()
            || !plain_aggregates
            || source.reader().residual.is_some()
        {
            return None;
        }
        let partitions = scan_plan.properties().output_partitioning().partition_count();
        let column = match group.expr().first() {
            None => None,
            Some((expr, _)) => {
                let column = expr.downcast_ref::<Column>()?;
                let field = source.schema().fields().get(column.index())?;
                if field.name() != column.name() || field.data_type() != &DataType::Utf8View {
                    return None;
                }
                Some((column.name().to_string(), column.index()))
            }
        };
        Some(DictionaryGroupBy {
            aggregate: aggregate.clone(),
            scan: scan_plan.clone(),
            column,
            per_segment: false,
            properties: Arc::new(PlanProperties::new(
                EquivalenceProperties::new(aggregate.schema()),
                Partitioning::UnknownPartitioning(partitions),
                EmissionType::Final,
                Boundedness::Bounded,
            )),
        })
    }

    /// Whether the aggregation has a group (a node decoded from the
    /// network must: only local scans take the ungrouped shape).
    pub(crate) fn is_grouped(&self) -> bool {
        self.column.is_some()
    }

    /// The aggregation this node stands for (its input is the scan).
    pub(crate) fn aggregate(&self) -> &AggregateExec {
        &self.aggregate
    }
}

impl DisplayAs for DictionaryGroupBy {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        let aggregates: Vec<&str> = self.aggregate.aggr_expr().iter().map(|a| a.name()).collect();
        let column = self.column.as_ref().map_or("", |c| c.0.as_str());
        write!(f, "DictionaryGroupBy: gby=[{column}], aggr=[{}]", aggregates.join(", "))?;
        if self.per_segment {
            write!(f, ", per segment")?;
        }
        Ok(())
    }
}

impl ExecutionPlan for DictionaryGroupBy {
    fn name(&self) -> &str {
        "DictionaryGroupBy"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.scan]
    }

    fn apply_expressions(
        &self,
        f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        apply_aggregate_arguments(&self.aggregate, f)
    }

    fn with_new_children(self: Arc<Self>, children: Vec<Arc<dyn ExecutionPlan>>) -> Result<Arc<dyn ExecutionPlan>> {
        let [child] = children.as_slice() else {
            return Err(DataFusionError::Internal("DictionaryGroupBy takes one child".into()));
        };
        let aggregate = AggregateExec::try_new(
            *self.aggregate.mode(),
            self.aggregate.group_expr().clone(),
            self.aggregate.aggr_expr().to_vec(),
            self.aggregate.filter_expr().to_vec(),
            child.clone(),
            self.aggregate.input_schema(),
        )?;
        // The segments were judged when this node was made; a new child
        // of the same kind keeps it (a task's decoded scan knows no
        // segments until it runs).
        match DictionaryGroupBy::of_shape(&aggregate) {
            Some(replaced) => Ok(Arc::new(DictionaryGroupBy { per_segment: self.per_segment, ..replaced })),
            None => Ok(Arc::new(aggregate)),
        }
    }

    fn execute(&self, partition: usize, context: Arc<TaskContext>) -> Result<SendableRecordBatchStream> {
        let source = Source::of(&self.scan)
            .ok_or_else(|| DataFusionError::Internal("DictionaryGroupBy reads a segment scan".into()))?;
        let parts: futures::future::BoxFuture<'static, Result<Vec<Part>>> = match source {
            Source::Local(scan) => {
                let parts = scan.partitions()?.get(partition).cloned().unwrap_or_default();
                Box::pin(futures::future::ready(Ok(parts)))
            }
            Source::Cluster(scan) => Box::pin(scan.parts(partition, &context)?),
        };
        let schema = self.aggregate.schema();
        let job = Grouping {
            reader: source.reader().clone(),
            scan_schema: source.schema().clone(),
            schema: schema.clone(),
            column: self.column.clone(),
            per_segment: self.per_segment,
            aggregate: self.aggregate.clone(),
            batch_size: context.session_config().batch_size().max(1) as u32,
        };
        let stream =
            futures::stream::once(async move { job.run(parts.await?, partition, context).await }).flat_map(|batches| {
                match batches {
                    Ok(batches) => futures::stream::iter(batches.into_iter().map(Ok).collect::<Vec<_>>()),
                    Err(e) => futures::stream::iter(vec![Err(e)]),
                }
            });
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, stream)))
    }
}

/// Visits the arguments of `aggregate`'s aggregates: the expressions of a
/// node that stands in for that aggregation (here and in `star_tree.rs`).
pub(crate) fn apply_aggregate_arguments(
    aggregate: &AggregateExec,
    f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
) -> Result<TreeNodeRecursion> {
    let mut recursion = TreeNodeRecursion::Continue;
    for aggregate in aggregate.aggr_expr() {
        for expr in aggregate.expressions() {
            recursion = f(&expr)?;
            if recursion == TreeNodeRecursion::Stop {
                return Ok(recursion);
            }
        }
    }
    Ok(recursion)
}

/// The most distinct values a segment's column may have for its scan to
/// group on dictionary ids.
const MAX_DICTIONARY: u64 = 4096;

/// How many rows per distinct value a segment needs, on average, for its
/// keys to be emitted as groups without merging across segments.
const ROWS_PER_VALUE: u64 = 4;

/// A dictionary key not yet given a group id.
const UNMAPPED: u32 = u32::MAX;

/// One partition's work.
struct Grouping {
    reader: crate::scan::read::Reader,
    scan_schema: SchemaRef,
    schema: SchemaRef,
    /// The grouping column: its name and index in the scan; None without
    /// groups.
    column: Option<(String, usize)>,
    per_segment: bool,
    aggregate: AggregateExec,
    batch_size: u32,
}

/// One segment's groups when they are its dictionary keys: the values,
/// and which keys the selected rows have (the last id for NULL).
struct KeyGroups<'s> {
    values: &'s StringArray,
    seen: Vec<bool>,
}

/// The groups seen so far: each distinct value's id, in order of arrival.
#[derive(Default)]
struct Groups {
    ids: HashMap<Box<str>, u32>,
    values: Vec<Option<Box<str>>>,
    null: Option<u32>,
    bytes: usize,
}

impl Groups {
    fn id(&mut self, value: Option<&str>) -> u32 {
        match value {
            None => *self.null.get_or_insert_with(|| {
                self.values.push(None);
                self.values.len() as u32 - 1
            }),
            Some(v) => {
                if let Some(&id) = self.ids.get(v) {
                    return id;
                }
                let id = self.values.len() as u32;
                self.bytes += 2 * v.len() + 48;
                self.ids.insert(v.into(), id);
                self.values.push(Some(v.into()));
                id
            }
        }
    }
}

/// The column of a `MIN` or `MAX` that can run on dictionary keys (one
/// argument, a column of the scan served as views — the type `KeyExtreme`
/// feeds the accumulator), and whether it is `MAX`.
fn extreme_column(function: &str, arguments: &[Arc<dyn PhysicalExpr>], scan: &SchemaRef) -> Option<(String, bool)> {
    let max = match function {
        "min" => false,
        "max" => true,
        _ => return None,
    };
    let [expr] = arguments else { return None };
    let column = expr.downcast_ref::<Column>()?;
    let field = scan.fields().get(column.index())?;
    (field.name() == column.name() && field.data_type() == &DataType::Utf8View)
        .then(|| (column.name().to_string(), max))
}

/// A chunk's dictionary keys of `column` (and the segment's dictionary),
/// selected once per chunk and kept in `taken`; None where the segment does
/// not store the column as a dictionary.
fn chunk_keys<'c, 's>(
    taken: &mut Vec<(&'c str, Option<(Int32Array, &'s StringArray)>)>,
    segment: &'s Segment,
    column: &'c str,
    rows: &RoaringBitmap,
    num_rows: usize,
) -> Option<(Int32Array, &'s StringArray)> {
    if let Some((_, keys)) = taken.iter().find(|(c, _)| *c == column) {
        return keys.clone();
    }
    let keys = segment.dictionary_keys(column, rows).filter(|(keys, _)| keys.len() == num_rows);
    taken.push((column, keys.clone()));
    keys
}

/// MIN or MAX of a dictionary-encoded string column within one segment:
/// the best key per group (keys order as their values do, the dictionary
/// being sorted), translated to its value once per group when the segment
/// ends and fed to DataFusion's own accumulator then.
struct KeyExtreme<'s> {
    max: bool,
    best: Vec<i32>,
    values: &'s StringArray,
}

/// No key yet (keys are never negative).
const NO_KEY: i32 = -1;

impl<'s> KeyExtreme<'s> {
    fn new(max: bool, values: &'s StringArray) -> Self {
        Self { max, best: Vec::new(), values }
    }

    fn update(&mut self, keys: &Int32Array, group_ids: &[usize], groups: usize) {
        if self.best.len() < groups {
            self.best.resize(groups, NO_KEY);
        }
        for (i, &group) in group_ids.iter().enumerate() {
            if keys.is_null(i) {
                continue;
            }
            let (key, best) = (keys.value(i), &mut self.best[group]);
            if *best == NO_KEY || (self.max && key > *best) || (!self.max && key < *best) {
                *best = key;
            }
        }
    }

    fn flush(self, accumulator: &mut dyn GroupsAccumulator, groups: usize) -> Result<()> {
        let mut values = StringViewBuilder::new();
        let mut group_ids = Vec::new();
        for (group, &key) in self.best.iter().enumerate().filter(|(_, k)| **k != NO_KEY) {
            let key = key as usize;
            if key >= self.values.len() {
                return Err(DataFusionError::Internal(format!("a dictionary key {key} out of range")));
            }
            if self.values.is_valid(key) {
                values.append_value(self.values.value(key));
                group_ids.push(group);
            }
        }
        if group_ids.is_empty() {
            return Ok(());
        }
        accumulator.update_batch(&[Arc::new(values.finish()) as ArrayRef], &group_ids, None, groups)
    }
}

impl Grouping {
    /// The chunk's rows of the scan's columns, read on first use.
    fn read_once<'b>(
        &self,
        batch: &'b mut Option<RecordBatch>,
        segment: &Segment,
        rows: &RoaringBitmap,
    ) -> Result<&'b RecordBatch> {
        match batch {
            Some(read) => Ok(read),
            None => Ok(batch.insert(self.reader.read(segment, rows, &self.scan_schema)?)),
        }
    }

    async fn run(self, parts: Vec<Part>, partition: usize, context: Arc<TaskContext>) -> Result<Vec<RecordBatch>> {
        let reservation =
            MemoryConsumer::new(format!("DictionaryGroupBy[{partition}]")).register(context.memory_pool());
        let aggregates = self.aggregate.aggr_expr();
        let mut accumulators: Vec<Box<dyn GroupsAccumulator>> =
            aggregates.iter().map(|a| a.create_groups_accumulator()).collect::<Result<_>>()?;
        let arguments: Vec<Vec<Arc<dyn PhysicalExpr>>> = aggregates.iter().map(|a| a.expressions()).collect();
        // MIN and MAX of a column, by name: run on its dictionary keys where
        // a segment has them.
        let extreme_of: Vec<Option<(String, bool)>> = aggregates
            .iter()
            .zip(&arguments)
            .map(|(aggregate, exprs)| extreme_column(aggregate.fun().name(), exprs, &self.scan_schema))
            .collect();
        let mut groups = Groups::default();
        let mut group_ids: Vec<usize> = Vec::new();
        // Per segment: the batches emitted so far, and their bytes.
        let (mut emitted, mut emitted_bytes) = (Vec::new(), 0usize);
        for part in &parts {
            // The segment's dictionary, mapped to group ids once.
            let mut by_key: Option<Vec<u32>> = None;
            // Per segment: its keys as its groups.
            let mut key_groups: Option<KeyGroups<'_>> = None;
            // Per aggregate, the best key per group in this segment.
            let mut extremes: Vec<Option<KeyExtreme<'_>>> = (0..aggregates.len()).map(|_| None).collect();
            for rows in chunks(&part.rows, self.batch_size) {
                // The rows are read only if something needs their values:
                // a grouping column or MIN/MAX argument that is not a
                // dictionary in this segment, or another aggregate.
                let num_rows = rows.len() as usize;
                let mut batch: Option<RecordBatch> = None;
                group_ids.clear();
                // Each column's keys selected once per chunk: the grouping
                // column and MIN/MAX arguments may be the same column.
                let mut taken = Vec::new();
                match &self.column {
                    // Without groups every row is the one group's.
                    None => {
                        let group = groups.id(None) as usize;
                        group_ids.resize(num_rows, group);
                    }
                    Some(column) => match chunk_keys(&mut taken, &part.segment, &column.0, &rows, num_rows) {
                        Some((keys, values)) if self.per_segment => {
                            let own = key_groups
                                .get_or_insert_with(|| KeyGroups { values, seen: vec![false; values.len() + 1] });
                            let null = values.len();
                            for (i, &key) in keys.values().iter().enumerate() {
                                let id = match keys.is_null(i) {
                                    true => null,
                                    // A negative key wraps far out of range.
                                    false if (key as usize) < null => key as usize,
                                    false => {
                                        let reason = format!("a dictionary key {key} out of range");
                                        return Err(DataFusionError::Internal(reason));
                                    }
                                };
                                own.seen[id] = true;
                                group_ids.push(id);
                            }
                        }
                        Some((keys, values)) => {
                            // Group ids by key, each made on the first row
                            // that has the key: a value no selected row has
                            // must not become a group.
                            let map = by_key.get_or_insert_with(|| vec![UNMAPPED; values.len()]);
                            for (i, &key) in keys.values().iter().enumerate() {
                                let id = if keys.is_null(i) {
                                    groups.id(None)
                                } else {
                                    let slot = map.get_mut(key as usize).ok_or_else(|| {
                                        DataFusionError::Internal(format!("a dictionary key {key} out of range"))
                                    })?;
                                    if *slot == UNMAPPED {
                                        *slot = groups
                                            .id((!values.is_null(key as usize)).then(|| values.value(key as usize)));
                                    }
                                    *slot
                                };
                                group_ids.push(id as usize);
                            }
                        }
                        None => {
                            let batch = self.read_once(&mut batch, &part.segment, &rows)?;
                            let column = batch.column(column.1).as_string_view();
                            group_ids.extend(
                                (0..column.len())
                                    .map(|i| groups.id((!column.is_null(i)).then(|| column.value(i))) as usize),
                            );
                        }
                    },
                }
                let num_groups = key_groups.as_ref().map_or(groups.values.len(), |k| k.seen.len());
                for (i, (accumulator, exprs)) in accumulators.iter_mut().zip(&arguments).enumerate() {
                    if let Some((column, max)) = &extreme_of[i]
                        && let Some((keys, values)) = chunk_keys(&mut taken, &part.segment, column, &rows, num_rows)
                    {
                        let extreme = extremes[i].get_or_insert_with(|| KeyExtreme::new(*max, values));
                        extreme.update(&keys, &group_ids, num_groups);
                        continue;
                    }
                    let batch = self.read_once(&mut batch, &part.segment, &rows)?;
                    let values: Vec<ArrayRef> = exprs
                        .iter()
                        .map(|e| e.evaluate(batch).and_then(|v| v.into_array(batch.num_rows())))
                        .collect::<Result<_>>()?;
                    accumulator.update_batch(&values, &group_ids, None, num_groups)?;
                }
                let used: usize = accumulators.iter().map(|a| a.size()).sum::<usize>() + groups.bytes + emitted_bytes;
                reservation.try_resize(used)?;
                // Yield between batches: the query's deadline and
                // cancellation get their turn.
                tokio::task::yield_now().await;
            }
            let num_groups = key_groups.as_ref().map_or(groups.values.len(), |k| k.seen.len());
            for (extreme, accumulator) in extremes.into_iter().zip(accumulators.iter_mut()) {
                if let Some(extreme) = extreme {
                    extreme.flush(accumulator.as_mut(), num_groups)?;
                }
            }
            if self.per_segment {
                let batch = match key_groups {
                    Some(own) => self.emit_keys(own, &mut accumulators, &arguments)?,
                    None => self.emit(&mut groups, &mut accumulators, &arguments)?,
                };
                emitted_bytes += batch.get_array_memory_size();
                reservation.try_resize(accumulators.iter().map(|a| a.size()).sum::<usize>() + emitted_bytes)?;
                if batch.num_rows() > 0 {
                    emitted.push(batch);
                }
            }
        }
        if self.per_segment {
            return Ok(emitted);
        }
        if self.column.is_none() && groups.values.is_empty() {
            // Without groups the partial aggregate is one row, rows or not:
            // the accumulators' initial states (NULL for MIN and MAX).
            groups.id(None);
        }
        let batch = self.emit(&mut groups, &mut accumulators, &arguments)?;
        reservation.free();
        Ok(vec![batch])
    }

    /// Every accumulator sized to `num_groups` (one not fed in a segment
    /// may be behind), so that their states line up with the groups.
    fn size_to(
        &self,
        accumulators: &mut [Box<dyn GroupsAccumulator>],
        arguments: &[Vec<Arc<dyn PhysicalExpr>>],
        num_groups: usize,
    ) -> Result<()> {
        for (accumulator, exprs) in accumulators.iter_mut().zip(arguments) {
            let empty: Vec<ArrayRef> = exprs
                .iter()
                .map(|e| e.data_type(&self.scan_schema).map(|t| arrow::array::new_empty_array(&t)))
                .collect::<Result<_>>()?;
            accumulator.update_batch(&empty, &[], None, num_groups)?;
        }
        Ok(())
    }

    /// The partial aggregate of `groups` (taken; the accumulators are
    /// emptied for the next).
    fn emit(
        &self,
        groups: &mut Groups,
        accumulators: &mut [Box<dyn GroupsAccumulator>],
        arguments: &[Vec<Arc<dyn PhysicalExpr>>],
    ) -> Result<RecordBatch> {
        let groups = std::mem::take(groups);
        self.size_to(accumulators, arguments, groups.values.len())?;
        let mut columns: Vec<ArrayRef> = Vec::new();
        if self.column.is_some() {
            let mut keys = StringViewBuilder::with_capacity(groups.values.len());
            for value in &groups.values {
                keys.append_option(value.as_deref());
            }
            columns.push(Arc::new(keys.finish()));
        }
        for accumulator in accumulators {
            columns.extend(accumulator.state(EmitTo::All)?);
        }
        Ok(RecordBatch::try_new(self.schema.clone(), columns)?)
    }

    /// The partial aggregate of one segment's keys: the groups its
    /// selected rows have, in key order.
    fn emit_keys(
        &self,
        own: KeyGroups<'_>,
        accumulators: &mut [Box<dyn GroupsAccumulator>],
        arguments: &[Vec<Arc<dyn PhysicalExpr>>],
    ) -> Result<RecordBatch> {
        self.size_to(accumulators, arguments, own.seen.len())?;
        let ids: UInt32Array =
            own.seen.iter().enumerate().filter(|(_, seen)| **seen).map(|(id, _)| id as u32).collect();
        let mut keys = StringViewBuilder::with_capacity(ids.len());
        for &id in ids.values() {
            let id = id as usize;
            keys.append_option((id < own.values.len() && own.values.is_valid(id)).then(|| own.values.value(id)));
        }
        let mut columns: Vec<ArrayRef> = vec![Arc::new(keys.finish())];
        for accumulator in accumulators {
            for state in accumulator.state(EmitTo::All)? {
                columns.push(arrow::compute::take(&state, &ids, None)?);
            }
        }
        Ok(RecordBatch::try_new(self.schema.clone(), columns)?)
    }
}
