//! Runs one SQL query under the node's limits and answers in Pinot's shape.
//!
//! Limits are enforced here, not by the HTTP layer: the statement's size,
//! expression depth and list lengths are checked before it is parsed
//! ([`crate::limits::statement`]); a bounded number of queries run at once and a
//! bounded number wait (beyond that: overloaded); each query has a deadline
//! covering its wait, planning and execution (the query's task is aborted at
//! the deadline, which cancels DataFusion's tasks and returns their memory);
//! a memory pool bounds sorts, joins and aggregations; string functions
//! that grow their input are bounded per call ([`crate::limits::functions`]); and a
//! result may hold at most `max_result_rows` rows and `max_result_bytes`
//! bytes.
//!
//! Queries run on the engine's own runtime, whose threads have stacks large
//! enough for the deepest expression the statement limits admit (every pass
//! over a plan recurses once per level). The caller's runtime — in the
//! quickstart, the one ingesting — only waits for the answer.

pub(crate) mod fast;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use arrow::record_batch::RecordBatch;
use datafusion::error::DataFusionError;
use datafusion::execution::context::{SQLOptions, SessionConfig, SessionContext, SessionState};
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::physical_plan::execute_stream;
use futures::StreamExt;
use sluice_config::QueryLimits;
use tokio::sync::Semaphore;

use crate::error::{QueryError, crashed};
use crate::limits::statement::QUERY_STACK_SIZE;
use crate::response::{self, PinotResponse};
use crate::scan::spread::ClusterPlanner;
use crate::scan::table::SegmentTable;
use crate::scan::table::{SpreadScans, Tables};
use crate::stats::{QUERY_STATS, ScanStats};

/// The tables a query node serves, and how it runs queries over them.
pub struct QueryEngine {
    executor: Executor,
    permits: Arc<Semaphore>,
    waiting: AtomicUsize,
    running: Arc<AtomicUsize>,
    runtime: QueryRuntime,
}

/// What running one query needs, cheap to clone into the query's task.
#[derive(Clone)]
struct Executor {
    ctx: SessionContext,
    /// A copy of `ctx`'s session and a task context made from it, taken at
    /// the first spread selection, for all of them: copying a session
    /// clones its registries of a few hundred functions, and so does making
    /// a task context, which cost such a query more than planning it.
    /// Nothing changes the session once the engine serves (statements are
    /// refused; tables live in the catalog both share). The copy's start
    /// time is its first query's, which a selection never reads: its
    /// predicates are literals (`fast`), never `now()`; queries that go
    /// through DataFusion's planner take a fresh copy each. Shared by the
    /// executor's clones (one per query).
    session: Arc<std::sync::OnceLock<(SessionState, Arc<datafusion::execution::TaskContext>)>>,
    limits: QueryLimits,
    /// DataFusion's target partitions, also the fast path's threads.
    threads: usize,
    tables: Tables,
    /// Set when the node is part of a cluster of query nodes.
    cluster: Option<Arc<crate::membership::Cluster>>,
}

/// The engine's runtime. Shut down in the background on drop, so an engine
/// may be dropped inside another runtime.
struct QueryRuntime(Option<tokio::runtime::Runtime>);

impl Drop for QueryRuntime {
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

/// A running query's place: its permit and its count in `running`.
struct Slot {
    _permit: tokio::sync::OwnedSemaphorePermit,
    running: Arc<AtomicUsize>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.running.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Aborts the query's task when the query is given up (deadline, client
/// gone), which drops DataFusion's streams and returns their memory.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Attempts of a distributed query whose tasks failed on other nodes.
const MAX_ATTEMPTS: u32 = 5;

/// How many queries may wait for a slot, per slot.
const QUEUE_PER_SLOT: usize = 4;

impl QueryEngine {
    pub fn new(limits: QueryLimits) -> Result<Self, QueryError> {
        let threads = match limits.threads {
            Some(threads) => threads.max(1) as usize,
            None => std::thread::available_parallelism().map_or(2, |n| n.get()),
        };
        let config = SessionConfig::new()
            .with_target_partitions(threads)
            .with_information_schema(true)
            .with_default_catalog_and_schema("sluice", "public")
            .with_extension(Arc::new(crate::limits::guarded::OutputLimit(limits.max_function_output.as_u64())));
        let runtime = RuntimeEnvBuilder::new()
            .with_memory_limit(limits.memory.as_u64() as usize, 1.0)
            .build_arc()
            .map_err(|e| QueryError::Internal { message: e.to_string() })?;
        let state = datafusion::execution::SessionStateBuilder::new()
            .with_default_features()
            .with_config(config)
            .with_runtime_env(runtime)
            // Star-trees first: an aggregation a tree answers reads no rows,
            // and the segments it leaves may still group on dictionary ids.
            .with_physical_optimizer_rule(Arc::new(crate::optimizer::star_tree::StarTreeAggregate))
            .with_physical_optimizer_rule(Arc::new(crate::optimizer::dictionary_group::GroupByDictionary))
            // Then groups too many for a core's cache: what the star-trees
            // and dictionaries left is hashed into smaller tables.
            .with_physical_optimizer_rule(Arc::new(crate::optimizer::hashed_groups::HashedGroups))
            // Last of the node's own rules (a cluster's distribution rules
            // come after it, so a recursive query's cap stays with the node
            // that plans it): operators that amplify yield per batch, and
            // recursion is capped.
            .with_physical_optimizer_rule(Arc::new(crate::limits::bounds::ContainWork {
                max_recursive_iterations: limits.max_recursive_iterations,
            }))
            .build();
        // Planning stops within one rule once the query's deadline passed.
        let logical = crate::limits::deadline::interleave_logical(state.optimizer().rules.clone());
        let physical = crate::limits::deadline::interleave_physical(state.physical_optimizers().to_vec());
        let state = datafusion::execution::SessionStateBuilder::new_from_existing(state)
            .with_optimizer_rules(logical)
            .with_physical_optimizer_rules(physical)
            .build();
        let mut ctx = SessionContext::new_with_state(state);
        crate::limits::functions::register(&mut ctx, limits.max_function_output.as_u64());
        let tables = Tables::default();
        let permits = Arc::new(Semaphore::new(limits.max_concurrent_queries.max(1) as usize));
        let runtime = tokio::runtime::Builder::new_multi_thread()
            // One worker more than a scan's partitions: a query's
            // partitions cannot hold every worker, so the next query (a
            // `SELECT 1` behind one whose batches each build 64 MB of
            // strings, 1.4 s per batch in a debug build) starts at once.
            .worker_threads(threads + 1)
            .max_blocking_threads(4 * threads + 4)
            .thread_stack_size(QUERY_STACK_SIZE)
            .thread_name("sluice-query")
            // A query's tasks yield every time slice and queue again on
            // their own thread: look at newly arrived queries (`SELECT 1`
            // behind a long query) every few turns, not every 61.
            .global_queue_interval(4)
            .enable_all()
            .build()
            .map_err(|e| QueryError::Internal { message: format!("cannot start the query runtime: {e}") })?;
        Ok(QueryEngine {
            executor: Executor { ctx, session: Default::default(), limits, threads, tables, cluster: None },
            permits,
            waiting: AtomicUsize::new(0),
            running: Arc::default(),
            runtime: QueryRuntime(Some(runtime)),
        })
    }

    pub fn limits(&self) -> &QueryLimits {
        &self.executor.limits
    }

    /// Makes this engine one of `cluster`'s query nodes: its queries are
    /// planned with DataFusion Distributed, tasks for the segments other
    /// nodes serve are sent there, and the returned worker runs the tasks
    /// other nodes send here (on this engine's tables, functions and memory
    /// pool). Called before any table is registered.
    pub fn join_cluster(
        &mut self,
        cluster: Arc<crate::membership::Cluster>,
        token: Option<crate::cluster::auth::ClusterToken>,
        compression: sluice_config::FlightCompression,
        shuffle_min_groups: u64,
    ) -> datafusion_distributed::Worker {
        use datafusion::execution::SessionStateBuilder;
        use datafusion_distributed::{DistributedExt, SessionStateBuilderExt};
        let state = self.executor.ctx.state();
        let channels = crate::cluster::channels::TokenChannels::new(token.as_ref());
        let worker = datafusion_distributed::Worker::from_session_builder(crate::cluster::worker::WorkerSessions::new(
            self.executor.tables.clone(),
            self.executor.threads,
            self.executor.limits.max_function_output.as_u64(),
            channels.clone(),
            state.runtime_env().clone(),
        ))
        .with_runtime_env(state.runtime_env().clone());
        let mut distributed = SessionStateBuilder::new_from_existing(state)
            .with_physical_optimizer_rule(Arc::new(crate::optimizer::boundaries::PlaceBoundaries {
                shuffle_min_groups,
            }))
            .with_distributed_worker_resolver(crate::membership::ClusterResolver(cluster.clone()))
            .with_distributed_user_codec(crate::cluster::codec::ClusterCodec)
            .with_distributed_route_tasks_handler(crate::optimizer::boundaries::route_tasks)
            .with_distributed_channel_resolver(channels)
            .with_distributed_local_worker_context(worker.to_local_worker_context(cluster.self_url().clone()))
            .with_distributed_planner()
            .build();
        // Workers would otherwise hold each task open after its last batch
        // to send its metrics back: a round trip more per query, for
        // figures nothing here reads (answers count their own scans).
        // Both settings travel to the workers with each task (as headers).
        let compression = match compression {
            sluice_config::FlightCompression::None => None,
            sluice_config::FlightCompression::Lz4 => Some(arrow::ipc::CompressionType::LZ4_FRAME),
            sluice_config::FlightCompression::Zstd => Some(arrow::ipc::CompressionType::ZSTD),
        };
        let tuned = distributed
            .set_distributed_metrics_collection(false)
            .and_then(|()| distributed.set_distributed_compression(compression));
        if let Err(e) = tuned {
            tracing::warn!(error = %e, "could not tune the distributed session");
        }
        distributed.config_mut().set_extension(Arc::new(SpreadScans(Arc::new(ClusterPlanner(cluster.clone())))));
        self.executor.ctx = SessionContext::new_with_state(distributed);
        self.executor.session = Default::default();
        self.executor.cluster = Some(cluster);
        worker
    }

    /// Runs `future` on the query runtime (deep stacks): the Flight server
    /// of distributed tasks runs there, so others' tasks get the stacks and
    /// threads this node's own queries get.
    pub fn spawn<F>(&self, future: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: std::future::Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.runtime.0.as_ref().expect("the runtime lives as long as the engine").spawn(future)
    }

    /// Serves `table` under its name, replacing a previous table of that name.
    pub fn register(&self, table: Arc<SegmentTable>) {
        let name = table.name().to_string();
        // Only fails for a missing catalog or schema, and ours are created
        // with the context.
        if let Err(e) = self.executor.ctx.register_table(name.as_str(), table.clone()) {
            tracing::error!(table = %name, error = %e, "could not register table");
            return;
        }
        self.executor.tables.write().unwrap_or_else(|e| e.into_inner()).insert(name, table);
    }

    pub fn deregister(&self, name: &str) {
        let _ = self.executor.ctx.deregister_table(name);
        self.executor.tables.write().unwrap_or_else(|e| e.into_inner()).remove(name);
    }

    pub fn table(&self, name: &str) -> Option<Arc<SegmentTable>> {
        self.executor.table(name)
    }

    /// The map of served tables itself, for a catalog over them that
    /// follows every change (the Postgres front end's `pg_catalog`).
    pub(crate) fn tables_handle(&self) -> Tables {
        self.executor.tables.clone()
    }

    /// Served tables, sorted by name.
    pub fn tables(&self) -> Vec<Arc<SegmentTable>> {
        self.executor.tables.read().unwrap_or_else(|e| e.into_inner()).values().cloned().collect()
    }

    /// Runs `sql` and builds the Pinot broker response.
    pub async fn query(&self, sql: &str) -> Result<PinotResponse, QueryError> {
        self.limited(sql, |answer, stats, elapsed| {
            response::build(&answer, stats, elapsed).map_err(|message| QueryError::Internal { message })
        })
        .await
    }

    /// Runs `sql` under the same limits, slots and metrics as
    /// [`QueryEngine::query`], for front ends that encode Arrow themselves
    /// (the Postgres wire protocol).
    pub async fn query_arrow(
        &self,
        sql: &str,
    ) -> Result<(arrow::datatypes::SchemaRef, Vec<RecordBatch>, ScanStats), QueryError> {
        self.limited(sql, |(schema, batches), stats, _| Ok((schema, batches, *stats))).await
    }

    /// Runs `sql` within the node's limits and turns its answer into `T`
    /// with `build`, in the query's task (under its slot and deadline).
    async fn limited<T: Send + 'static>(
        &self,
        sql: &str,
        build: impl FnOnce(Answer, &ScanStats, Duration) -> Result<T, QueryError> + Send + 'static,
    ) -> Result<T, QueryError> {
        let started = Instant::now();
        let result = self.query_inner(sql, started, build).await;
        let outcome = match &result {
            Ok(_) => "ok",
            Err(e) => e.outcome(),
        };
        metrics::counter!("sluice_query_queries_total", "outcome" => outcome).increment(1);
        metrics::histogram!("sluice_query_duration_seconds", "outcome" => outcome)
            .record(started.elapsed().as_secs_f64());
        result
    }

    async fn query_inner<T: Send + 'static>(
        &self,
        sql: &str,
        started: Instant,
        build: impl FnOnce(Answer, &ScanStats, Duration) -> Result<T, QueryError> + Send + 'static,
    ) -> Result<T, QueryError> {
        crate::limits::statement::check(sql, self.limits())?;
        let queue_limit = self.limits().max_concurrent_queries.max(1) as usize * QUEUE_PER_SLOT;
        let permit = match self.permits.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                let queued = self.waiting.fetch_add(1, Ordering::SeqCst);
                let _unqueue = Defer(|| {
                    self.waiting.fetch_sub(1, Ordering::SeqCst);
                });
                if queued >= queue_limit {
                    return Err(QueryError::Overloaded { running: self.running.load(Ordering::SeqCst), queued });
                }
                let limit = self.limits().query_timeout;
                match tokio::time::timeout(limit, self.permits.clone().acquire_owned()).await {
                    Ok(Ok(p)) => p,
                    Ok(Err(_)) => return Err(QueryError::Internal { message: "query slots closed".into() }),
                    Err(_) => return Err(QueryError::Timeout { limit }),
                }
            }
        };
        // The slot is held by the query's task, not by this caller: a query
        // given up at its deadline keeps its slot until its work has really
        // stopped (at its next yield), so abandoned work never piles up
        // beyond `max_concurrent_queries`.
        self.running.fetch_add(1, Ordering::SeqCst);
        let slot = Slot { _permit: permit, running: self.running.clone() };
        let timeout = self.limits().query_timeout;
        let remaining = timeout.saturating_sub(started.elapsed());
        let stats = Arc::new(std::sync::Mutex::new(ScanStats::default()));
        let (executor, owned) = (self.executor.clone(), sql.to_string());
        let runtime = self.runtime.0.as_ref().expect("the runtime lives as long as the engine");
        // The response rows are built on the engine's runtime too, under the
        // slot and the deadline: for a large result that is real work, and
        // it must not hold up the threads that accept and answer requests.
        let scan_stats = stats.clone();
        let deadline = tokio::time::Instant::now() + remaining;
        let work = crate::limits::deadline::DEADLINE.scope(deadline, async move {
            let _slot = slot;
            let batches = executor.execute(&owned).await?;
            let stats = *scan_stats.lock().unwrap_or_else(|e| e.into_inner());
            build(batches, &stats, started.elapsed())
        });
        let mut task = AbortOnDrop(runtime.spawn(QUERY_STATS.scope(stats, work)));
        match tokio::time::timeout(remaining, &mut task.0).await {
            // Planning past the deadline fails (`crate::limits::deadline`), maybe
            // before the timer here fires: a timeout either way.
            Ok(Ok(Err(_))) if tokio::time::Instant::now() >= deadline => Err(QueryError::Timeout { limit: timeout }),
            Ok(Ok(result)) => result,
            Ok(Err(join)) => Err(crashed(&join.to_string())),
            Err(_) => Err(QueryError::Timeout { limit: timeout }),
        }
    }

    /// Runs `sql` to Arrow batches, by the fast path when it applies
    /// ([`crate::engine::fast`]), else through DataFusion. No slot, deadline or
    /// metrics: [`QueryEngine::query`] adds those.
    pub async fn execute(&self, sql: &str) -> Result<(arrow::datatypes::SchemaRef, Vec<RecordBatch>), QueryError> {
        self.executor.execute(sql).await
    }

    /// Whether `sql` takes the fast path on this node alone.
    pub fn is_fast_path(&self, sql: &str) -> bool {
        fast::plan(sql, |name| self.table(name)).is_some_and(|q| !q.spread())
    }

    /// Runs `sql` through DataFusion's planner, whatever its shape.
    pub async fn execute_datafusion(
        &self,
        sql: &str,
    ) -> Result<(arrow::datatypes::SchemaRef, Vec<RecordBatch>), QueryError> {
        self.executor.execute_datafusion(sql).await
    }

    /// The columns `sql` answers with, from its logical plan (nothing runs),
    /// under the statement limits and the read-only rules.
    pub async fn output_schema(&self, sql: &str) -> Result<arrow::datatypes::SchemaRef, QueryError> {
        crate::limits::statement::check(sql, self.limits())?;
        let (limits, owned) = (self.limits().clone(), sql.to_string());
        let state = self.executor.ctx.state();
        // Planned on the query runtime: its threads' stacks hold the
        // deepest statement the limits admit.
        let plan = self
            .spawn(async move { logical_plan(&state, &owned, &limits).await })
            .await
            .map_err(|join| crashed(&join.to_string()))??;
        Ok(Arc::new(plan.schema().as_arrow().clone()))
    }

    /// The physical plan of `sql`, as `EXPLAIN` prints it.
    pub async fn explain(&self, sql: &str) -> Result<String, QueryError> {
        let state = self.executor.ctx.state();
        let plan = logical_plan(&state, sql, self.limits()).await?;
        let physical = state.create_physical_plan(&plan).await.map_err(QueryError::from_datafusion)?;
        Ok(datafusion::physical_plan::displayable(physical.as_ref()).indent(true).to_string())
    }

    /// The session, for tests that compare against plain DataFusion.
    pub fn context(&self) -> &SessionContext {
        &self.executor.ctx
    }
}

/// Parses and plans `sql` within the planning limits: the statement's CTEs
/// and relations before it is planned, the plan's nodes before it is
/// optimized ([`crate::limits::statement`]), and nothing that would change the node.
async fn logical_plan(
    state: &SessionState,
    sql: &str,
    limits: &QueryLimits,
) -> Result<datafusion::logical_expr::LogicalPlan, QueryError> {
    let dialect = state.config().options().sql_parser.dialect;
    let statement = state.sql_to_statement(sql, &dialect).map_err(QueryError::from_planning)?;
    crate::limits::statement::check_statement(&statement, limits)?;
    let plan = state.statement_to_plan(statement).await.map_err(QueryError::from_planning)?;
    crate::limits::statement::check_plan(&plan, limits)?;
    // Only a query passes: no statement that would change the session.
    read_only(&plan)?;
    Ok(plan)
}

/// Refuses a plan that would write or change the session: the node is
/// read-only.
fn read_only(plan: &datafusion::logical_expr::LogicalPlan) -> Result<(), QueryError> {
    SQLOptions::new()
        .with_allow_ddl(false)
        .with_allow_dml(false)
        .with_allow_statements(false)
        .verify_plan(plan)
        .map_err(|e| QueryError::ReadOnly { message: e.find_root().to_string() })
}

/// A query's answer: its schema and batches.
type Answer = (arrow::datatypes::SchemaRef, Vec<RecordBatch>);

impl Executor {
    /// The session a spread selection plans in, and the task context it
    /// runs in.
    fn session(&self) -> &(SessionState, Arc<datafusion::execution::TaskContext>) {
        self.session.get_or_init(|| {
            let mut state = self.ctx.state();
            if self.cluster.is_some() {
                // Its tasks name no function: their workers build them a
                // bare session.
                use datafusion_distributed::DistributedExt;
                let headers = crate::cluster::worker::selection_task_headers();
                if let Err(e) = state.set_distributed_passthrough_headers(headers) {
                    tracing::warn!(error = %e, "a selection's tasks will get a whole session");
                }
            }
            let task = state.task_ctx();
            (state, task)
        })
    }

    fn table(&self, name: &str) -> Option<Arc<SegmentTable>> {
        self.tables.read().unwrap_or_else(|e| e.into_inner()).get(name).cloned()
    }

    async fn execute(&self, sql: &str) -> Result<(arrow::datatypes::SchemaRef, Vec<RecordBatch>), QueryError> {
        let Some(cluster) = &self.cluster else { return self.execute_once(sql).await };
        // A task that failed on another node is retried on a replica: the
        // query is planned again, around the node that failed (suspected)
        // or with the segments a node gave up (served elsewhere by now).
        let mut attempt = 0;
        loop {
            attempt += 1;
            // Each attempt reports its own counters.
            let _ = QUERY_STATS.try_with(|s| *s.lock().unwrap_or_else(|e| e.into_inner()) = ScanStats::default());
            match self.execute_once(sql).await {
                Err(QueryError::Remote { message, node }) if attempt < MAX_ATTEMPTS => {
                    metrics::counter!("sluice_query_retries_total").increment(1);
                    tracing::info!(attempt, %message, node = ?node, "a distributed task failed; planning the query again");
                    if let Some(node) = node {
                        cluster.suspect(&node);
                    } else {
                        tokio::time::sleep(Duration::from_millis(50 * attempt as u64)).await;
                    }
                }
                Err(QueryError::Remote { message, .. }) => return Err(QueryError::Internal { message }),
                other => return other,
            }
        }
    }

    /// The failure of a task on another node, as [`QueryError::Remote`]
    /// when a retry may succeed: the node could not be reached, or no
    /// longer serves a segment.
    fn remote_failure(&self, e: &DataFusionError) -> Option<QueryError> {
        let cluster = self.cluster.as_ref()?;
        let message = e.to_string();
        if message.contains(crate::scan::spread::NOT_SERVED) {
            return Some(QueryError::Remote { message, node: None });
        }
        let unreachable = [
            "transport error",
            "Connection refused",
            "connection refused",
            "tcp connect error",
            "error trying to connect",
            "Unavailable",
            "broken pipe",
            "connection reset",
            "h2 protocol error",
        ];
        if !unreachable.iter().any(|m| message.contains(m)) {
            return None;
        }
        let node = cluster.urls().iter().find(|u| message.contains(u.authority())).and_then(|u| cluster.member_at(u));
        Some(QueryError::Remote { message, node })
    }

    async fn execute_once(&self, sql: &str) -> Result<(arrow::datatypes::SchemaRef, Vec<RecordBatch>), QueryError> {
        if let Some(query) = fast::plan(sql, |name| self.table(name)) {
            if query.spread() {
                // Other nodes serve some of its segments: DataFusion
                // Distributed runs it, planned from the parsed query.
                metrics::counter!("sluice_query_planner_total", "planner" => "fast_distributed").increment(1);
                let (state, task) = self.session();
                let physical = query.physical_plan(state).await.map_err(QueryError::from_planning)?;
                let physical = crate::optimizer::boundaries::PlaceBoundaries::distribute_selection(
                    physical,
                    state.config_options(),
                )
                .map_err(QueryError::from_planning)?;
                return self.run(physical, task.clone()).await;
            }
            metrics::counter!("sluice_query_planner_total", "planner" => "fast").increment(1);
            let (schema, batches, stats) = fast::execute(query, self.threads, self.limits.max_result_rows).await?;
            let _ = QUERY_STATS.try_with(|s| s.lock().unwrap_or_else(|e| e.into_inner()).add(&stats));
            check_result_bytes(&batches, self.limits.max_result_bytes.as_u64())?;
            return Ok((schema, batches));
        }
        metrics::counter!("sluice_query_planner_total", "planner" => "datafusion").increment(1);
        self.execute_datafusion(sql).await
    }

    async fn execute_datafusion(
        &self,
        sql: &str,
    ) -> Result<(arrow::datatypes::SchemaRef, Vec<RecordBatch>), QueryError> {
        // One copy of the session for the whole query, stamped with its
        // start (what `now()` answers): each copy clones its function
        // registries and options.
        let state = self.ctx.state();
        let plan = logical_plan(&state, sql, &self.limits).await?;
        let physical = state.create_physical_plan(&plan).await.map_err(QueryError::from_planning)?;
        self.run(physical, state.task_ctx()).await
    }

    /// Runs a physical plan to its batches, within the result limits.
    async fn run(
        &self,
        physical: Arc<dyn datafusion::physical_plan::ExecutionPlan>,
        task_ctx: Arc<datafusion::execution::TaskContext>,
    ) -> Result<(arrow::datatypes::SchemaRef, Vec<RecordBatch>), QueryError> {
        let schema = physical.schema();
        let fail = |e: DataFusionError| self.remote_failure(&e).unwrap_or_else(|| QueryError::from_datafusion(e));
        let mut stream = execute_stream(physical, task_ctx).map_err(fail)?;
        let limit = self.limits.max_result_rows;
        let max_bytes = self.limits.max_result_bytes.as_u64();
        let (mut rows, mut bytes) = (0u64, 0u64);
        let mut batches = Vec::new();
        while let Some(batch) = stream.next().await {
            let batch = batch.map_err(fail)?;
            rows += batch.num_rows() as u64;
            if rows > limit {
                return Err(QueryError::TooManyRows { limit });
            }
            bytes += batch_bytes(&batch);
            if bytes > max_bytes {
                return Err(QueryError::ResultTooLarge { limit: max_bytes });
            }
            batches.push(batch);
        }
        Ok((schema, batches))
    }
}

/// The bytes a batch's rows occupy: the sliced length of each array's
/// buffers, not the buffers it shares with others (a slice of a segment
/// column counts its rows, not the column).
fn batch_bytes(batch: &RecordBatch) -> u64 {
    batch.columns().iter().map(|c| crate::limits::sizes::array_bytes(c.as_ref()) as u64).sum()
}

fn check_result_bytes(batches: &[RecordBatch], limit: u64) -> Result<(), QueryError> {
    let bytes: u64 = batches.iter().map(batch_bytes).sum();
    if bytes > limit { Err(QueryError::ResultTooLarge { limit }) } else { Ok(()) }
}

/// Runs a closure on drop: counters stay right on every early return and on
/// cancellation.
struct Defer<F: FnMut()>(F);

impl<F: FnMut()> Drop for Defer<F> {
    fn drop(&mut self) {
        (self.0)()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{ArrayRef, StringArray, StringViewArray};

    /// Every query runs on a clone of the executor: the session copy of
    /// spread selections is taken once and shared by all of them.
    #[test]
    fn the_selections_session_is_copied_once_for_every_query() {
        let engine = QueryEngine::new(QueryLimits::default()).unwrap();
        let (first, second) = (engine.executor.clone(), engine.executor.clone());
        let (a, b) = (first.session(), second.session());
        assert!(std::ptr::eq(a, b));
        assert!(Arc::ptr_eq(&a.1, &b.1));
        assert!(std::ptr::eq(engine.executor.session(), a));
    }

    /// A string-view column counts its strings, not just its views (Arrow's
    /// slice size misses them): a result of large strings is refused.
    #[test]
    fn string_view_results_are_measured_by_their_strings() {
        let big = "x".repeat(100_000);
        let views: ArrayRef = Arc::new(StringViewArray::from(vec![big.as_str(); 100]));
        let plain: ArrayRef = Arc::new(StringArray::from(vec![big.as_str(); 100]));
        for column in [views, plain] {
            let batch = RecordBatch::try_from_iter([("s", column)]).unwrap();
            assert!(batch_bytes(&batch) >= 10_000_000, "{}", batch_bytes(&batch));
            assert!(check_result_bytes(&[batch], 1 << 20).is_err());
        }
    }
}
