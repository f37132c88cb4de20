//! Queries across the cluster on DataFusion Distributed.
//!
//! A table spread over query nodes is scanned by a [`ClusterScanExec`]: one
//! task per node holding some of the table's segments, each reading only
//! the segments it serves. Where the plan is cut into stages and where the
//! tasks run is `boundaries`' business. Every query node is both: it plans
//! the queries it receives and runs the tasks others send it (its
//! [`Worker`] on the Flight port, [`serve`]).
//!
//! Invariants:
//! - A task reads exactly the segments the planner assigned it: named
//!   segments are resolved on the node that runs it, and a segment that node
//!   no longer serves fails the task ([`NOT_SERVED`]) rather than being
//!   skipped; the engine re-plans with a fresh view.
//! - The planner's own segments, tail included, are pinned for the query in
//!   its process ([`Pin`]) and read by its own task: the cut between
//!   committed segments and tail rows is the one it planned with.
//! - A tail the planner does not serve is read on a holder strictly above
//!   the planner's committed end of the partition ([`tail_rows`]); a holder
//!   whose tail begins later refuses. A task's segments are resolved once
//!   for all its partitions: a tail changes between two reads.
//! - Scan work runs on the query runtime of the node that holds the data
//!   (deep stacks, the node's memory pool and limits).

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex};

use arrow::datatypes::{Schema, SchemaRef};
use async_trait::async_trait;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{DataFusionError, Result};
use datafusion::execution::{SessionState, TaskContext};
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::aggregates::AggregateExec;
use datafusion::physical_plan::empty::EmptyExec;
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    ChildrenPropertiesMode, DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties,
    ReplaceChildrenOptions, SendableRecordBatchStream,
};
use datafusion_distributed::{
    DistributedExt, DistributedTaskContext, Worker, WorkerQueryContext, WorkerSessionBuilder,
};
use datafusion_proto::physical_plan::{
    PhysicalExtensionCodec, PhysicalPlanDecodeContext, PhysicalProtoConverterExtension,
};
use datafusion_proto::protobuf;
use prost::Message;
use serde::{Deserialize, Serialize};
use sluice_segments::{Predicate, Segment};
use url::Url;

use crate::membership::Cluster;
use crate::dictionary_group::DictionaryGroupBy;
use crate::selection::{Part, select, truncate};
use crate::stats::ScanStats;
use crate::table::{Reader, SegmentTable, read_parts};
use crate::topology::{Elsewhere, RemoteTail};

/// The mark of a task that reached a node no longer serving one of its
/// segments: the engine re-plans the query (the view has moved on).
pub const NOT_SERVED: &str = "sluice: segment not served here";

/// What a scan reads and how, as the table's `scan` decided it.
#[derive(Clone)]
pub(crate) struct ScanSpec {
    pub table: String,
    /// The scan's output.
    pub schema: SchemaRef,
    pub reader: Reader,
    pub predicate: Option<Predicate>,
    pub exact: bool,
    /// Rows each task may stop after (DataFusion's limit stays above).
    pub limit: Option<u64>,
}

/// One task of a scan: the node it runs on and what it reads there.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Task {
    url: String,
    /// Segments resolved by name on the node running the task.
    named: Vec<String>,
    /// The planner's own segments, pinned in its process for the query.
    pinned: Option<u64>,
    /// Partition tails read on the node running the task, above the
    /// planner's committed end of each.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    tails: Vec<RemoteTail>,
}

impl Task {
    /// Whether the task reads nothing: only the planner's own can, the
    /// others are made for what they read.
    fn is_idle(&self) -> bool {
        self.pinned.is_none() && self.named.is_empty() && self.tails.is_empty()
    }

    /// Whether the task runs on the node that planned it (its own
    /// segments, or nothing).
    fn is_own(&self) -> bool {
        self.pinned.is_some() || self.is_idle()
    }

    /// The task of the node at `url` among `tasks`, added empty if missing.
    fn on<'a>(tasks: &'a mut BTreeMap<String, Task>, url: &Url) -> &'a mut Task {
        tasks.entry(url.to_string()).or_insert_with(|| Task {
            url: url.to_string(),
            named: Vec::new(),
            pinned: None,
            tails: Vec::new(),
        })
    }
}

/// The serialized part of a scan (besides schemas and the residual filter).
#[derive(Serialize, Deserialize)]
struct Spec {
    table: String,
    tasks: Vec<Task>,
    predicate: Option<Predicate>,
    exact: bool,
    limit: Option<u64>,
    partitions: usize,
    output: Vec<usize>,
}

/// A planned query's own segments, shared by its plan and its tasks.
type Pinned = Arc<Vec<Arc<Segment>>>;

/// Segments pinned by the queries this process plans, by pin id.
static PINNED: LazyLock<Mutex<HashMap<u64, Pinned>>> = LazyLock::new(Default::default);
static NEXT_PIN: AtomicU64 = AtomicU64::new(1);

/// Keeps a query's own segments reachable by its tasks while its plan
/// lives.
struct Pin {
    id: u64,
    segments: Pinned,
}

impl Pin {
    fn new(segments: Pinned) -> Arc<Pin> {
        let id = NEXT_PIN.fetch_add(1, Ordering::Relaxed);
        PINNED.lock().unwrap_or_else(|e| e.into_inner()).insert(id, segments.clone());
        Arc::new(Pin { id, segments })
    }
}

impl Drop for Pin {
    fn drop(&mut self) {
        PINNED.lock().unwrap_or_else(|e| e.into_inner()).remove(&self.id);
    }
}

/// A scan of a table spread over query nodes, one task per node.
pub struct ClusterScanExec {
    spec: ScanSpec,
    tasks: Vec<Task>,
    partitions: usize,
    properties: Arc<PlanProperties>,
    /// Planner side only: this node's own segments, pinned, and the
    /// scan's counters.
    pin: Option<Arc<Pin>>,
    stats: ScanStats,
    /// Worker side: each task's segments, resolved once for all its
    /// partitions. A tail changes between two resolutions (a chunk sealed,
    /// merged, cut), and partitions that each took their share of a
    /// different list would read a row twice or not at all.
    resolved: Mutex<HashMap<usize, Arc<Vec<Arc<Segment>>>>>,
}

impl fmt::Debug for ClusterScanExec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterScanExec").field("table", &self.spec.table).field("tasks", &self.tasks).finish()
    }
}

impl ClusterScanExec {
    /// Plans the scan of `local` (this node's segments that may match, tail
    /// included; `local_stats` counts all of them) and `elsewhere` (segments
    /// other nodes serve): each remote segment goes to the least loaded of
    /// its live holders, each node's share is one task.
    pub(crate) fn plan(
        cluster: &Cluster,
        spec: ScanSpec,
        (local, local_stats): (Vec<Arc<Segment>>, ScanStats),
        elsewhere: &Elsewhere,
        partitions: usize,
    ) -> Result<Self> {
        let mut stats = local_stats;
        stats.segments_queried += (elsewhere.remote.len() + elsewhere.missing.len()) as u64;
        stats.total_docs += elsewhere.remote.iter().map(|r| r.rows).sum::<u64>();
        // Each other node's task, by its URL.
        let mut by_url: BTreeMap<String, Task> = BTreeMap::new();
        let mut load: HashMap<String, u64> = HashMap::new();
        let mut missing = elsewhere.missing.len() as u64;
        for segment in &elsewhere.remote {
            let holders = cluster.holders(&spec.table, &segment.name);
            let Some(holder) = holders.iter().min_by_key(|m| (load.get(m.url.as_str()).copied().unwrap_or(0), &m.id))
            else {
                missing += 1;
                continue;
            };
            *load.entry(holder.url.to_string()).or_default() += segment.rows;
            Task::on(&mut by_url, &holder.url).named.push(segment.name.clone());
        }
        // Each tail this node does not serve goes to the first node serving
        // it caught up, with this node's cut of the partition.
        let mut tails_unavailable = 0;
        for tail in &elsewhere.remote_tails {
            match cluster.tail_holders(&spec.table, tail.partition).first() {
                Some(holder) => Task::on(&mut by_url, &holder.url).tails.push(*tail),
                None => tails_unavailable += 1,
            }
        }
        stats.consuming_segments += (elsewhere.remote_tails.len() - tails_unavailable as usize) as u64;
        stats.segments_processed += by_url.values().map(|t| t.named.len() as u64).sum::<u64>();
        let pin = (!local.is_empty()).then(|| Pin::new(Arc::new(local)));
        let others: Vec<Task> = by_url.into_values().collect();
        // This node's task first, when it reads something. An idle one
        // stays beside a single other node's task: DataFusion Distributed
        // runs a stage of one task under a head of one on the planner,
        // without its boundary. `boundaries` drops it where it prepares the
        // stages itself ([`ClusterScanExec::without_idle_tasks`]).
        let mut tasks = Vec::with_capacity(others.len() + 1);
        if pin.is_some() || others.len() < 2 {
            tasks.push(Task {
                url: cluster.self_url().to_string(),
                named: Vec::new(),
                pinned: pin.as_ref().map(|p| p.id),
                tails: Vec::new(),
            });
        }
        tasks.extend(others);
        let servers = tasks.iter().filter(|t| !t.is_idle()).count() as u64;
        stats.servers_responded = servers.max(1);
        stats.servers_queried = stats.servers_responded + u64::from(missing > 0 || tails_unavailable > 0);
        stats.segments_missing = missing;
        stats.tails_unavailable = tails_unavailable;
        if spec.predicate.is_none() && spec.reader.residual.is_none() {
            stats.docs_scanned = stats.total_docs;
        }
        Ok(Self::new(spec, tasks, partitions, pin, stats))
    }

    fn new(spec: ScanSpec, tasks: Vec<Task>, partitions: usize, pin: Option<Arc<Pin>>, stats: ScanStats) -> Self {
        let partitions = partitions.max(1);
        let properties = Arc::new(PlanProperties::new(
            EquivalenceProperties::new(spec.schema.clone()),
            Partitioning::UnknownPartitioning(partitions),
            EmissionType::Incremental,
            Boundedness::Bounded,
        ));
        ClusterScanExec { spec, tasks, partitions, properties, pin, stats, resolved: Mutex::default() }
    }

    /// The scan's counters, as the planner knows them.
    pub(crate) fn stats(&self, tails_excluded: u64) -> ScanStats {
        ScanStats { tails_excluded, ..self.stats }
    }

    /// How many tasks (nodes) the scan runs as.
    pub(crate) fn task_count(&self) -> usize {
        self.tasks.len()
    }

    /// Whether the scan is one task, on the node that planned it.
    pub(crate) fn runs_here_alone(&self) -> bool {
        matches!(self.tasks.as_slice(), [task] if task.is_own())
    }

    /// The scan over no more partitions than its busiest task has segments
    /// to read: a selection over one segment then runs as one stream, with
    /// no empty partition to merge on the way out. Not for a scan under a
    /// grouping, which needs two partitions (see `SegmentTable::scan`).
    pub(crate) fn fitted_to_its_segments(&self) -> Option<Self> {
        let pinned = self.local().len();
        let busiest = self
            .tasks
            .iter()
            .map(|t| t.named.len() + t.tails.len() + if t.pinned.is_some() { pinned } else { 0 })
            .max()
            .unwrap_or(0);
        let partitions = self.partitions.min(busiest).max(1);
        (partitions < self.partitions)
            .then(|| Self::new(self.spec.clone(), self.tasks.clone(), partitions, self.pin.clone(), self.stats))
    }

    /// Whether the scan has the planner's idle task beside others (see
    /// [`ClusterScanExec::plan`]).
    pub(crate) fn has_idle_task(&self) -> bool {
        self.tasks.iter().any(Task::is_idle) && !self.tasks.iter().all(Task::is_idle)
    }

    /// The scan without the planner's idle task, if it has one beside
    /// others.
    pub(crate) fn without_idle_tasks(&self) -> Option<Self> {
        self.has_idle_task().then(|| {
            let busy = self.tasks.iter().filter(|t| !t.is_idle()).cloned().collect();
            Self::new(self.spec.clone(), busy, self.partitions, self.pin.clone(), self.stats)
        })
    }

    /// The node each task runs on, in task order.
    pub(crate) fn urls(&self) -> Result<Vec<Url>> {
        self.tasks
            .iter()
            .map(|t| Url::parse(&t.url).map_err(|e| DataFusionError::Internal(format!("task URL {}: {e}", t.url))))
            .collect()
    }

    /// What the scan reads and how.
    pub(crate) fn spec(&self) -> &ScanSpec {
        &self.spec
    }

    /// Planner side: the segments this node serves itself (empty on the
    /// node running a task).
    pub(crate) fn local(&self) -> &[Arc<Segment>] {
        self.pin.as_ref().map_or(&[], |p| p.segments.as_slice())
    }

    /// The rows `partition` of the running task reads: its share of the
    /// task's segments (as resolved for the task's first partition), with
    /// the rows the predicate selects in each. Several segments are
    /// selected off the async threads, on the blocking pool.
    pub(crate) fn parts(
        &self,
        partition: usize,
        context: &Arc<TaskContext>,
    ) -> Result<impl std::future::Future<Output = Result<Vec<Part>>> + Send + 'static> {
        let index = DistributedTaskContext::from_ctx(context).task_index;
        let task = self
            .tasks
            .get(index)
            .ok_or_else(|| DataFusionError::Internal(format!("ClusterScanExec has no task {index}")))?;
        let resolved = {
            let mut cache = self.resolved.lock().unwrap_or_else(|e| e.into_inner());
            match cache.get(&index) {
                Some(resolved) => resolved.clone(),
                None => {
                    let resolved = Arc::new(self.resolve(task, context)?);
                    cache.insert(index, resolved.clone());
                    resolved
                }
            }
        };
        // Each partition of a grouping builds its own partial state, and
        // every one of them is shipped and merged: a node configured for
        // fewer threads than the planner's partitions (three nodes sharing
        // two cores at `limits.threads = 1`) fills only as many, and
        // leaves the others empty.
        let node = context.session_config().get_extension::<NodeTables>();
        let threads = node.as_ref().map_or(self.partitions, |n| n.threads);
        // The defaults of columns a segment lacks: this node's table's.
        let table =
            node.and_then(|n| n.table(&self.spec.table)).map_or_else(|| self.spec.schema.clone(), |t| t.schema_ref());
        let filled = self.partitions.min(threads).max(1);
        let segments: Vec<Arc<Segment>> =
            resolved.iter().cloned().enumerate().filter(|(i, _)| i % filled == partition).map(|(_, s)| s).collect();
        let (predicate, limit) = (self.spec.predicate.clone(), self.spec.limit);
        let count = segments.len();
        let run = move || {
            let (mut parts, _) = select(&segments, predicate.as_ref(), &table, 1)?;
            if let Some(limit) = limit {
                truncate(&mut parts, limit);
            }
            Ok::<_, DataFusionError>(parts)
        };
        Ok(async move {
            match count {
                // Nothing to read (one segment over two threads, the
                // planner's idle task): answered at once.
                0 => Ok(Vec::new()),
                // One segment's selection (an index lookup, at most one
                // pass over a column, as a filter over a batch would make)
                // runs where the partition is polled: the blocking pool
                // would add two thread hops, each a wake-up of a sleeping
                // thread, for no parallelism.
                1 => run(),
                _ => tokio::task::spawn_blocking(run).await.map_err(|e| DataFusionError::External(Box::new(e)))?,
            }
        })
    }

    /// The segments of `task`, on the node running it.
    fn resolve(&self, task: &Task, context: &TaskContext) -> Result<Vec<Arc<Segment>>> {
        let mut out = Vec::new();
        if let Some(id) = task.pinned {
            let pinned = PINNED.lock().unwrap_or_else(|e| e.into_inner()).get(&id).cloned();
            let pinned = pinned.ok_or_else(|| {
                DataFusionError::Execution(format!("{NOT_SERVED}: the query's pinned segments are gone"))
            })?;
            out.extend(pinned.iter().cloned());
        }
        if task.named.is_empty() && task.tails.is_empty() {
            return Ok(out);
        }
        let tables = context
            .session_config()
            .get_extension::<NodeTables>()
            .ok_or_else(|| DataFusionError::Internal("a distributed scan ran outside a query node's worker".into()))?;
        let table = tables.table(&self.spec.table).ok_or_else(|| {
            DataFusionError::Execution(format!("{NOT_SERVED}: table `{}` is not served", self.spec.table))
        })?;
        let (snapshot, elsewhere) = table.cluster_snapshot();
        let by_name: HashMap<&str, &Arc<Segment>> = snapshot.iter().map(|s| (s.meta().name.as_str(), s)).collect();
        for name in &task.named {
            let segment = by_name.get(name.as_str()).ok_or_else(|| {
                DataFusionError::Execution(format!("{NOT_SERVED}: segment `{name}` of `{}`", self.spec.table))
            })?;
            out.push(Arc::clone(segment));
        }
        for tail in &task.tails {
            out.extend(tail_rows(&self.spec.table, &snapshot, &elsewhere, *tail)?);
        }
        Ok(out)
    }
}

/// The rows of `tail` this node serves: its chunks of the partition, cut
/// above the planner's committed end. A tail that begins past that end
/// (this node saw a commit the planner has not yet) or is not served here
/// fails the task, and the planner re-plans: never a row missing unnoticed.
pub(crate) fn tail_rows(
    table: &str,
    snapshot: &[Arc<Segment>],
    elsewhere: &Elsewhere,
    tail: RemoteTail,
) -> Result<Vec<Arc<Segment>>> {
    let not_served =
        |why: String| DataFusionError::Execution(format!("{NOT_SERVED}: tail {table}/{}: {why}", tail.partition));
    let start = *elsewhere.tails_from.get(&tail.partition).ok_or_else(|| not_served("not followed here".into()))?;
    match (tail.after, start.committed_end) {
        (Some(after), _) if start.from > after.saturating_add(1) => {
            return Err(not_served(format!(
                "begins at offset {}, past the planner's committed end {after}",
                start.from
            )));
        }
        (None, Some(end)) => {
            return Err(not_served(format!("cut at committed offset {end}, which the planner has not seen")));
        }
        _ => {}
    }
    let name = format!("{table}__{}{}", tail.partition, crate::topology::CONSUMING_SUFFIX);
    let mut out = Vec::new();
    for chunk in snapshot.iter().filter(|s| s.meta().name == name) {
        let meta = chunk.meta();
        match tail.after {
            Some(after) if meta.end_offset <= after => {}
            Some(after) if meta.start_offset <= after => {
                let cut =
                    sluice_segments::reseal(&[chunk.as_ref()], after.saturating_add(1), &name, meta.created_at_ms)
                        .and_then(|image| image.map(|i| i.open()).transpose())
                        .map_err(|e| DataFusionError::Execution(format!("cutting tail {name}: {e}")))?;
                out.extend(cut.map(Arc::new));
            }
            _ => out.push(Arc::clone(chunk)),
        }
    }
    Ok(out)
}

impl DisplayAs for ClusterScanExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        let describe: Vec<String> = self
            .tasks
            .iter()
            .map(|t| {
                let pinned = if t.pinned.is_some() { " local+tail" } else { "" };
                let tails: String = t.tails.iter().map(|tail| format!(" tail/{}", tail.partition)).collect();
                format!("{}[{}{pinned}{tails}]", t.url, t.named.len())
            })
            .collect();
        write!(f, "ClusterScanExec: table={}, tasks={}", self.spec.table, describe.join(", "))?;
        self.spec.reader.fmt_filters(f, self.spec.predicate.as_ref(), self.spec.exact)
    }
}

impl ExecutionPlan for ClusterScanExec {
    fn name(&self) -> &str {
        "ClusterScanExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![]
    }

    fn apply_expressions(
        &self,
        f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        self.spec.reader.apply_residual(f)
    }

    fn with_new_children(self: Arc<Self>, _children: Vec<Arc<dyn ExecutionPlan>>) -> Result<Arc<dyn ExecutionPlan>> {
        Ok(self)
    }

    fn execute(&self, partition: usize, context: Arc<TaskContext>) -> Result<SendableRecordBatchStream> {
        let selected = self.parts(partition, &context)?;
        let batch_size = context.session_config().batch_size().max(1) as u32;
        let schema = self.spec.schema.clone();
        let reader = Arc::new(self.spec.reader.clone());
        let out = schema.clone();
        let batches = futures::stream::once(selected)
            .map(move |parts| {
                let reads: Box<dyn Iterator<Item = Result<arrow::record_batch::RecordBatch>> + Send> = match parts {
                    Err(e) => Box::new(std::iter::once(Err(e))),
                    Ok(parts) => Box::new(read_parts(parts, reader.clone(), out.clone(), batch_size)),
                };
                futures::stream::iter(reads)
            })
            .flatten();
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, batches)))
    }
}

use futures::StreamExt;

/// The query node's tables and threads, for the tasks its worker runs.
pub(crate) struct NodeTables {
    pub(crate) tables: crate::engine::Tables,
    /// This node's `limits.threads`: a task's scan spreads its segments over
    /// that many of its partitions at most (the planner's count may be
    /// another node's).
    pub(crate) threads: usize,
}

impl NodeTables {
    fn table(&self, name: &str) -> Option<Arc<SegmentTable>> {
        self.tables.read().unwrap_or_else(|e| e.into_inner()).get(name).cloned()
    }
}

/// (De)serializes [`ClusterScanExec`] for the tasks sent between nodes.
#[derive(Debug)]
pub struct ClusterCodec;

#[derive(Clone, PartialEq, prost::Message)]
struct ScanProto {
    #[prost(bytes = "vec", tag = "1")]
    spec: Vec<u8>,
    #[prost(message, optional, tag = "2")]
    schema: Option<protobuf::Schema>,
    #[prost(message, optional, tag = "3")]
    read_schema: Option<protobuf::Schema>,
    #[prost(message, optional, tag = "4")]
    residual: Option<protobuf::PhysicalExprNode>,
    /// Set instead of the scan's fields for a [`DictionaryGroupBy`]: its
    /// aggregation over a placeholder, the scan being the node's input. A
    /// node that predates the field ignores it and refuses the input.
    #[prost(message, optional, tag = "5")]
    dictionary_group: Option<protobuf::PhysicalPlanNode>,
    /// Set instead of the scan's fields for a [`crate::bounds::YieldExec`]
    /// over the node's input.
    #[prost(bool, tag = "6")]
    yield_point: bool,
    /// Set instead of the scan's fields for a [`crate::bounds::RecursionCap`]
    /// over the node's input: its most iterations.
    #[prost(uint32, tag = "7")]
    recursion_cap: u32,
}

fn decode_error(what: &str, e: impl fmt::Display) -> DataFusionError {
    DataFusionError::Internal(format!("decoding a distributed scan's {what}: {e}"))
}

impl PhysicalExtensionCodec for ClusterCodec {
    fn try_decode(
        &self,
        buf: &[u8],
        inputs: &[Arc<dyn ExecutionPlan>],
        ctx: &TaskContext,
        proto_converter: &dyn PhysicalProtoConverterExtension,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let proto = ScanProto::decode(buf).map_err(|e| decode_error("message", e))?;
        if proto.yield_point || proto.recursion_cap > 0 {
            let [input] = inputs else {
                return Err(decode_error("yield point or recursion cap", "not exactly one input"));
            };
            if proto.yield_point {
                return Ok(Arc::new(crate::bounds::YieldExec::new(Arc::clone(input))));
            }
            return Ok(Arc::new(crate::bounds::RecursionCap::new(Arc::clone(input), proto.recursion_cap)));
        }
        if let Some(aggregate) = &proto.dictionary_group {
            let [scan] = inputs else {
                return Err(decode_error("grouping", "not exactly one input"));
            };
            if !scan.is::<ClusterScanExec>() {
                return Err(decode_error("grouping", "its input is not a distributed scan"));
            }
            let decode = PhysicalPlanDecodeContext::new(ctx, self);
            let aggregate = proto_converter.proto_to_execution_plan(aggregate, &decode)?;
            let aggregate = aggregate.replace_children(
                vec![Arc::clone(scan)],
                ReplaceChildrenOptions::new(ChildrenPropertiesMode::Recompute),
            )?;
            let replaced = aggregate
                .downcast_ref::<AggregateExec>()
                .and_then(DictionaryGroupBy::of_shape)
                .filter(DictionaryGroupBy::is_grouped)
                .ok_or_else(|| decode_error("grouping", "not a partial aggregation by one string column"))?;
            return Ok(Arc::new(replaced));
        }
        if !inputs.is_empty() {
            return Err(DataFusionError::Internal("ClusterScanExec has no inputs".into()));
        }
        let spec: Spec = serde_json::from_slice(&proto.spec).map_err(|e| decode_error("spec", e))?;
        let schema = proto.schema.as_ref().ok_or_else(|| decode_error("schema", "absent"))?;
        let schema: SchemaRef = Arc::new(Schema::try_from(schema)?);
        let read_schema = proto.read_schema.as_ref().ok_or_else(|| decode_error("read schema", "absent"))?;
        let read_schema: SchemaRef = Arc::new(Schema::try_from(read_schema)?);
        let residual = match &proto.residual {
            Some(node) => {
                let decode = PhysicalPlanDecodeContext::new(ctx, self);
                Some(proto_converter.proto_to_physical_expr(node, &read_schema, &decode)?)
            }
            None => None,
        };
        if spec.output.iter().any(|&i| i >= read_schema.fields().len()) {
            return Err(decode_error("output columns", "out of range"));
        }
        let reader = Reader { read_schema, residual, output: spec.output };
        let scan = ScanSpec {
            table: spec.table,
            schema,
            reader,
            predicate: spec.predicate,
            exact: spec.exact,
            limit: spec.limit,
        };
        Ok(Arc::new(ClusterScanExec::new(scan, spec.tasks, spec.partitions, None, ScanStats::default())))
    }

    fn try_encode(
        &self,
        node: Arc<dyn ExecutionPlan>,
        buf: &mut Vec<u8>,
        proto_converter: &dyn PhysicalProtoConverterExtension,
    ) -> Result<()> {
        if let Some(group) = node.downcast_ref::<DictionaryGroupBy>() {
            // The scan travels as the node's input: the aggregation is sent
            // over a placeholder of the scan's schema, not a second copy.
            let aggregate = group.aggregate();
            let placeholder: Arc<dyn ExecutionPlan> = Arc::new(EmptyExec::new(aggregate.input().schema()));
            let aggregate = Arc::new(aggregate.clone())
                .replace_children(vec![placeholder], ReplaceChildrenOptions::new(ChildrenPropertiesMode::Recompute))?;
            let proto = ScanProto {
                dictionary_group: Some(proto_converter.execution_plan_to_proto(&aggregate, self)?),
                ..Default::default()
            };
            return proto
                .encode(buf)
                .map_err(|e| DataFusionError::Internal(format!("encoding a distributed grouping: {e}")));
        }
        let wrapper = if node.is::<crate::bounds::YieldExec>() {
            Some(ScanProto { yield_point: true, ..Default::default() })
        } else {
            node.downcast_ref::<crate::bounds::RecursionCap>()
                .map(|cap| ScanProto { recursion_cap: cap.max(), ..Default::default() })
        };
        if let Some(proto) = wrapper {
            return proto.encode(buf).map_err(|e| DataFusionError::Internal(format!("encoding a yield point: {e}")));
        }
        let Some(scan) = node.downcast_ref::<ClusterScanExec>() else {
            return Err(DataFusionError::Internal(format!("ClusterCodec cannot encode {}", node.name())));
        };
        let spec = Spec {
            table: scan.spec.table.clone(),
            tasks: scan.tasks.clone(),
            predicate: scan.spec.predicate.clone(),
            exact: scan.spec.exact,
            limit: scan.spec.limit,
            partitions: scan.partitions,
            output: scan.spec.reader.output.clone(),
        };
        let residual = match &scan.spec.reader.residual {
            Some(expr) => Some(proto_converter.physical_expr_to_proto(expr, self)?),
            None => None,
        };
        let proto = ScanProto {
            spec: serde_json::to_vec(&spec).map_err(|e| DataFusionError::Internal(e.to_string()))?,
            schema: Some(scan.spec.schema.as_ref().try_into()?),
            read_schema: Some(scan.spec.reader.read_schema.as_ref().try_into()?),
            residual,
            ..Default::default()
        };
        proto.encode(buf).map_err(|e| DataFusionError::Internal(format!("encoding a distributed scan: {e}")))
    }
}

/// The header a planner sets on the tasks of a plain selection: the
/// table's scan, its filter translated exactly into the segments' own
/// predicate, nothing left for an expression to evaluate. Such a task's
/// plan names no function, so its worker builds its session bare: a clone
/// of the template copies a few hundred functions' registries, and its
/// task context copies them again, for a plan that never looks one up.
/// A plan that did name a function would fail to decode ("no UDF named
/// ..."), never run differently.
const TASK_HEADER: &str = "x-sluice-task";
/// [`TASK_HEADER`]'s value for a plain selection.
const SELECTION_TASK: &str = "selection";

/// The headers a planner sends with a plain selection's tasks (see
/// [`TASK_HEADER`]).
pub(crate) fn selection_task_headers() -> tonic::codegen::http::HeaderMap {
    use tonic::codegen::http::{HeaderMap, HeaderName, HeaderValue};
    let mut headers = HeaderMap::new();
    headers.insert(HeaderName::from_static(TASK_HEADER), HeaderValue::from_static(SELECTION_TASK));
    headers
}

/// The session a node's worker runs others' tasks in: the node's tables,
/// functions and codec.
pub(crate) struct WorkerSessions {
    pub(crate) tables: crate::engine::Tables,
    /// This node's `limits.threads`.
    pub(crate) threads: usize,
    /// This node's `limits.max_function_output`.
    pub(crate) max_function_output: u64,
    /// Workers call each other too: with the cluster's token.
    pub(crate) channels: crate::channels::TokenChannels,
    /// Every task's session but its config. Building a session registers
    /// DataFusion's few hundred functions and ours one by one, which cost
    /// each task more than its plan's decoding; a clone copies the
    /// registries. Built with the worker's runtime (its memory pool) and
    /// the default options a task's session starts from, so the functions
    /// that read the config at registration see what they would.
    template: SessionState,
    /// The session of a plain selection's task (see [`TASK_HEADER`]): the
    /// worker's runtime, no functions.
    bare: SessionState,
}

impl WorkerSessions {
    pub(crate) fn new(
        tables: crate::engine::Tables,
        threads: usize,
        max_function_output: u64,
        channels: crate::channels::TokenChannels,
        runtime: Arc<datafusion::execution::runtime_env::RuntimeEnv>,
    ) -> Self {
        use datafusion::execution::SessionStateBuilder;
        let bare = SessionStateBuilder::new().with_runtime_env(runtime.clone()).build();
        let mut template = SessionStateBuilder::new().with_default_features().with_runtime_env(runtime).build();
        crate::functions::register(&mut template, max_function_output);
        WorkerSessions { tables, threads, max_function_output, channels, template, bare }
    }
}

#[async_trait]
impl WorkerSessionBuilder for WorkerSessions {
    async fn build_session_state(&self, mut ctx: WorkerQueryContext) -> Result<SessionState> {
        // The task's config (its place in the stage, the options the
        // planner sent as headers), then this node's additions.
        let mut config = ctx.builder.config().take().unwrap_or_default();
        config.set_distributed_user_codec(ClusterCodec);
        config.set_distributed_channel_resolver(self.channels.clone());
        config.set_extension(Arc::new(NodeTables { tables: self.tables.clone(), threads: self.threads }));
        config.set_extension(Arc::new(crate::guarded::OutputLimit(self.max_function_output)));
        let selection = ctx.headers.get(TASK_HEADER).is_some_and(|v| v == SELECTION_TASK);
        let mut state = if selection { self.bare.clone() } else { self.template.clone() };
        *state.config_mut() = config;
        Ok(state)
    }
}

/// Serves the node's worker on `listener` until `shutdown` turns true,
/// to callers presenting `token` when there is one.
pub(crate) async fn serve(
    listener: tokio::net::TcpListener,
    worker: Worker,
    token: Option<crate::flight_auth::ClusterToken>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let authenticate = move |request: tonic::Request<()>| match &token {
        Some(token) => token.check(request),
        None => Ok(request),
    };
    // Small messages (a plan, a partial aggregate) must not wait out
    // Nagle's algorithm against the peer's delayed acknowledgement (40 ms
    // a round trip): tonic sets TCP_NODELAY only on listeners it binds.
    let incoming = futures::StreamExt::map(tokio_stream::wrappers::TcpListenerStream::new(listener), |conn| {
        if let Ok(stream) = &conn {
            let _ = stream.set_nodelay(true);
        }
        conn
    });
    let stop = async move {
        let _ = shutdown.wait_for(|stop| *stop).await;
    };
    if let Err(e) = tonic::transport::Server::builder()
        // A plan or a batch a peer sends crosses in one frame (see
        // `channels`).
        .max_frame_size(crate::channels::MAX_FRAME)
        .layer(tonic::service::InterceptorLayer::new(authenticate))
        .add_service(worker.into_worker_server())
        .serve_with_incoming_shutdown(incoming, stop)
        .await
    {
        tracing::error!(error = %e, "the Flight server of distributed tasks stopped");
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use arrow::datatypes::{DataType, Field};
    use datafusion_proto::physical_plan::DefaultPhysicalProtoConverter;

    /// A task's session comes from the node's template: the config the
    /// task arrived with, this node's tables added, and the node's bounded
    /// functions; the template itself is left as it was.
    #[tokio::test]
    async fn a_task_session_keeps_its_config_and_gets_the_nodes_functions() {
        use datafusion::execution::SessionStateBuilder;
        use datafusion::execution::runtime_env::RuntimeEnv;
        use datafusion::prelude::SessionConfig;
        struct Mark;
        let sessions = WorkerSessions::new(
            crate::engine::Tables::default(),
            3,
            1024,
            crate::channels::TokenChannels::new(None),
            Arc::new(RuntimeEnv::default()),
        );
        let config = SessionConfig::new().with_batch_size(123).with_extension(Arc::new(Mark));
        let task =
            WorkerQueryContext { builder: SessionStateBuilder::new().with_config(config), headers: Default::default() };
        let state = sessions.build_session_state(task).await.unwrap();
        assert_eq!(state.config().batch_size(), 123);
        assert!(state.config().get_extension::<Mark>().is_some());
        assert_eq!(state.config().get_extension::<NodeTables>().map(|n| n.threads), Some(3));
        let repeat = state.scalar_functions().get("repeat").expect("repeat is registered");
        assert!(format!("{:?}", repeat.inner()).starts_with("Bounded"), "{repeat:?}");
        assert!(state.scalar_functions().len() > 100, "DataFusion's functions too");
        assert!(sessions.template.config().get_extension::<NodeTables>().is_none());
    }

    /// A plain selection's task (the header its planner sets) gets a bare
    /// session: the task's config and this node's tables, no function
    /// registries to copy.
    #[tokio::test]
    async fn a_selection_task_session_is_bare() {
        use datafusion::execution::SessionStateBuilder;
        use datafusion::execution::runtime_env::RuntimeEnv;
        use datafusion::prelude::SessionConfig;
        use tonic::codegen::http::{HeaderMap, HeaderName, HeaderValue};
        let sessions = WorkerSessions::new(
            crate::engine::Tables::default(),
            2,
            1024,
            crate::channels::TokenChannels::new(None),
            Arc::new(RuntimeEnv::default()),
        );
        let config = SessionConfig::new().with_batch_size(77);
        let task = WorkerQueryContext {
            builder: SessionStateBuilder::new().with_config(config),
            headers: selection_task_headers(),
        };
        let state = sessions.build_session_state(task).await.unwrap();
        assert_eq!(state.config().batch_size(), 77);
        assert_eq!(state.config().get_extension::<NodeTables>().map(|n| n.threads), Some(2));
        assert!(state.scalar_functions().is_empty() && state.aggregate_functions().is_empty());

        // Any other value is an ordinary task.
        let mut headers = HeaderMap::new();
        headers.insert(HeaderName::from_static(TASK_HEADER), HeaderValue::from_static("other"));
        let task = WorkerQueryContext { builder: SessionStateBuilder::new(), headers };
        let state = sessions.build_session_state(task).await.unwrap();
        assert!(state.scalar_functions().len() > 100);
    }

    fn scan(output: Vec<usize>) -> ScanProto {
        let schema = Schema::new(vec![Field::new("status", DataType::Int32, true)]);
        let spec = Spec {
            table: "clicks".into(),
            tasks: vec![Task {
                url: "http://127.0.0.1:1".into(),
                named: vec!["s".into()],
                pinned: None,
                tails: vec![],
            }],
            predicate: None,
            exact: true,
            limit: None,
            partitions: 2,
            output,
        };
        ScanProto {
            spec: serde_json::to_vec(&spec).unwrap(),
            schema: Some((&schema).try_into().unwrap()),
            read_schema: Some((&schema).try_into().unwrap()),
            residual: None,
            ..Default::default()
        }
    }

    /// A scan of `schema` with one task per port (a node at that port on
    /// loopback, one segment each) and `partitions` partitions.
    pub(crate) fn scan_over(schema: SchemaRef, ports: &[u16], partitions: usize) -> Arc<ClusterScanExec> {
        scan_of(schema, ports, partitions, false)
    }

    /// [`scan_over`] planned on a node holding none of the scan's segments:
    /// its own idle task first, as [`ClusterScanExec::plan`] keeps it beside
    /// a single other node's.
    pub(crate) fn scan_beside_an_idle_planner(
        schema: SchemaRef,
        ports: &[u16],
        partitions: usize,
    ) -> Arc<ClusterScanExec> {
        scan_of(schema, ports, partitions, true)
    }

    fn scan_of(schema: SchemaRef, ports: &[u16], partitions: usize, idle_planner: bool) -> Arc<ClusterScanExec> {
        let idle = Task { url: "http://127.0.0.1:1/".into(), named: vec![], pinned: None, tails: vec![] };
        let remote = ports.iter().map(|port| Task {
            url: format!("http://127.0.0.1:{port}/"),
            named: vec!["s".into()],
            pinned: None,
            tails: vec![],
        });
        let tasks = idle_planner.then_some(idle).into_iter().chain(remote).collect();
        let spec = ScanSpec {
            table: "clicks".into(),
            schema: schema.clone(),
            reader: Reader { read_schema: schema, residual: None, output: vec![0] },
            predicate: None,
            exact: true,
            limit: None,
        };
        Arc::new(ClusterScanExec::new(spec, tasks, partitions, None, ScanStats::default()))
    }

    /// The Flight port takes plans from the network: bytes that are not a
    /// scan, or a scan pointing outside its own columns, are refused with
    /// an error, never a panic or an out-of-bounds read later.
    #[test]
    fn hostile_scan_bytes_are_refused() {
        let (ctx, converter) = (TaskContext::default(), DefaultPhysicalProtoConverter {});
        let decode = |bytes: &[u8]| ClusterCodec.try_decode(bytes, &[], &ctx, &converter);
        let mut truncated = scan(vec![0]).encode_to_vec();
        truncated.truncate(truncated.len() / 2);
        let mut bad_spec = scan(vec![0]);
        bad_spec.spec = b"{\"table\": 7}".to_vec();
        let mut no_schema = scan(vec![0]);
        no_schema.schema = None;
        for bytes in [
            Vec::new(),
            vec![0xff; 64],
            truncated,
            bad_spec.encode_to_vec(),
            no_schema.encode_to_vec(),
            scan(vec![5]).encode_to_vec(),
        ] {
            assert!(decode(&bytes).is_err(), "{bytes:?}");
        }
        assert!(decode(&scan(vec![0]).encode_to_vec()).is_ok(), "a well-formed scan decodes");

        // A grouping: without its scan, over something else than a scan,
        // or carrying no aggregation, it is refused.
        let well_formed = decode(&scan(vec![0]).encode_to_vec()).unwrap();
        let grouping =
            ScanProto { dictionary_group: Some(protobuf::PhysicalPlanNode::default()), ..Default::default() }
                .encode_to_vec();
        let empty: Arc<dyn ExecutionPlan> = Arc::new(EmptyExec::new(well_formed.schema()));
        for inputs in [vec![], vec![empty], vec![well_formed.clone(), well_formed.clone()], vec![well_formed]] {
            let decoded = ClusterCodec.try_decode(&grouping, &inputs, &ctx, &converter);
            assert!(decoded.is_err(), "{} inputs", inputs.len());
        }
    }

    /// A stage sent to another node keeps its yield points and its
    /// recursion cap; either needs exactly one input.
    #[test]
    fn yield_points_and_recursion_caps_travel() {
        let (ctx, converter) = (TaskContext::default(), DefaultPhysicalProtoConverter {});
        let input: Arc<dyn ExecutionPlan> = Arc::new(EmptyExec::new(Arc::new(Schema::empty())));
        let round_trip = |node: Arc<dyn ExecutionPlan>, inputs: &[Arc<dyn ExecutionPlan>]| {
            let mut buf = Vec::new();
            ClusterCodec.try_encode(node, &mut buf, &converter).unwrap();
            ClusterCodec.try_decode(&buf, inputs, &ctx, &converter)
        };
        let yielding = Arc::new(crate::bounds::YieldExec::new(input.clone()));
        let decoded = round_trip(yielding.clone(), std::slice::from_ref(&input)).unwrap();
        assert!(decoded.is::<crate::bounds::YieldExec>());
        let capped = Arc::new(crate::bounds::RecursionCap::new(input.clone(), 77));
        let decoded = round_trip(capped, std::slice::from_ref(&input)).unwrap();
        assert_eq!(decoded.downcast_ref::<crate::bounds::RecursionCap>().map(|c| c.max()), Some(77));
        for inputs in [vec![], vec![input.clone(), input.clone()]] {
            assert!(round_trip(yielding.clone(), &inputs).is_err(), "{} inputs", inputs.len());
        }
    }
}
