//! The scan of a table spread over the cluster, on DataFusion Distributed:
//! a [`ClusterScanExec`] runs one task per node holding some of the
//! table's segments, each reading only the segments it serves. Where the
//! plan is cut into stages and where the tasks run is
//! `crate::optimizer::boundaries`' business; how the tasks travel is
//! `crate::cluster`'s.
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

use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{DataFusionError, Result};
use datafusion::execution::TaskContext;
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties, SendableRecordBatchStream,
};
use datafusion_distributed::DistributedTaskContext;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use sluice_segments::{Predicate, Segment};
use url::Url;

use crate::membership::Cluster;
use crate::scan::read::ScanSpec;
use crate::scan::read::read_parts;
use crate::scan::selection::{Part, select, truncate};
use crate::scan::table::SegmentTable;
use crate::scan::table::SpreadPlanner;
use crate::stats::ScanStats;
use crate::topology::{Elsewhere, RemoteTail};

/// The mark of a task that reached a node no longer serving one of its
/// segments: the engine re-plans the query (the view has moved on).
pub const NOT_SERVED: &str = "sluice: segment not served here";

/// One task of a scan: the node it runs on and what it reads there.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Task {
    pub(crate) url: String,
    /// Segments resolved by name on the node running the task.
    pub(crate) named: Vec<String>,
    /// The planner's own segments, pinned in its process for the query.
    pub(crate) pinned: Option<u64>,
    /// Partition tails read on the node running the task, above the
    /// planner's committed end of each.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) tails: Vec<RemoteTail>,
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
pub(crate) struct Spec {
    pub(crate) table: String,
    pub(crate) tasks: Vec<Task>,
    pub(crate) predicate: Option<Predicate>,
    pub(crate) exact: bool,
    pub(crate) limit: Option<u64>,
    pub(crate) partitions: usize,
    pub(crate) output: Vec<usize>,
}

/// A planned query's own segments, shared by its plan and its tasks.
type Pinned = Arc<Vec<Arc<Segment>>>;

/// Segments pinned by the queries this process plans, by pin id.
static PINNED: LazyLock<Mutex<HashMap<u64, Pinned>>> = LazyLock::new(Default::default);
static NEXT_PIN: AtomicU64 = AtomicU64::new(1);

/// Keeps a query's own segments reachable by its tasks while its plan
/// lives.
pub(crate) struct Pin {
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
    pub(crate) spec: ScanSpec,
    pub(crate) tasks: Vec<Task>,
    pub(crate) partitions: usize,
    pub(crate) properties: Arc<PlanProperties>,
    /// Planner side only: this node's own segments, pinned, and the
    /// scan's counters.
    pub(crate) pin: Option<Arc<Pin>>,
    pub(crate) stats: ScanStats,
    /// Worker side: each task's segments, resolved once for all its
    /// partitions. A tail changes between two resolutions (a chunk sealed,
    /// merged, cut), and partitions that each took their share of a
    /// different list would read a row twice or not at all.
    pub(crate) resolved: Mutex<HashMap<usize, Arc<Vec<Arc<Segment>>>>>,
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

    pub(crate) fn new(
        spec: ScanSpec,
        tasks: Vec<Task>,
        partitions: usize,
        pin: Option<Arc<Pin>>,
        stats: ScanStats,
    ) -> Self {
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

/// The query node's tables and threads, for the tasks its worker runs.
pub(crate) struct NodeTables {
    pub(crate) tables: crate::scan::table::Tables,
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

/// Plans the scans of tables spread over `0`'s nodes, for the tables of a
/// node in a cluster (`crate::scan::table::SpreadScans`).
pub(crate) struct ClusterPlanner(pub Arc<Cluster>);

impl SpreadPlanner for ClusterPlanner {
    fn plan(
        &self,
        spec: ScanSpec,
        own: (Vec<Arc<Segment>>, ScanStats),
        elsewhere: &Elsewhere,
        partitions: usize,
        tails_excluded: u64,
    ) -> Result<(Arc<dyn ExecutionPlan>, ScanStats)> {
        let scan = ClusterScanExec::plan(&self.0, spec, own, elsewhere, partitions)?;
        let stats = scan.stats(tails_excluded);
        Ok((Arc::new(scan), stats))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::scan::read::Reader;
    use arrow::datatypes::SchemaRef;

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
}
