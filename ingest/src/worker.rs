//! The worker: runs its pipelines' share of partitions, follows membership
//! and pipeline changes, runs the leader's duties when elected, and shuts
//! down by committing what it consumed.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::duties::Duties;
use rdkafka::consumer::Consumer;
use sluice_config::{LoadedWorker, PipelineConfig, ProcessEnv};
use sluice_coordinator::{Coordinator, WorkerInfo, assigned_partitions};
use sluice_storage::{Resolver, file_uri};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::budget::MemoryBudget;
use crate::health::PartitionHealth;
use crate::partition::{Exit, PipelineContext, ingest_partition};

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("coordinator: {0}")]
    Coordinator(#[from] sluice_coordinator::CoordError),
    #[error("data directory {path}: {source}")]
    DataDir { path: String, source: std::io::Error },
    #[error("HTTP listen address {addr}: {source}")]
    Http { addr: String, source: std::io::Error },
    #[error("default deep store: {0}")]
    DeepStore(#[from] sluice_storage::StorageError),
}

/// How long a restarted worker waits for its previous session to expire.
const REGISTRATION_WAIT: Duration = Duration::from_secs(120);

/// How long a partition that failed waits before it is tried again: the
/// first retry after a second, doubling up to half a minute. A reset of its
/// offset retries at once.
const RETRY_MIN: Duration = Duration::from_secs(1);
/// How long a partition assigned here may stay locked by another session
/// before it is reported: well past a session timeout (a killed owner's
/// locks go with its session).
const LOCK_WAIT_REPORTED_AFTER: Duration = Duration::from_secs(30);
/// How long reading the live workers may take before the supervisor gives
/// up the round (and says so).
const ASSIGNMENT_TIMEOUT: Duration = Duration::from_secs(15);
const RETRY_MAX: Duration = Duration::from_secs(30);

/// Runs the worker until `shutdown` turns true, then stops every partition
/// (committing what it consumed) and returns.
pub async fn run_worker(
    loaded: LoadedWorker,
    coordinator: Arc<dyn Coordinator>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), WorkerError> {
    let config = &loaded.config;
    let id = sluice_coordinator::node_id(config.node_id.as_deref(), "worker");
    std::fs::create_dir_all(&config.data_dir)
        .map_err(|source| WorkerError::DataDir { path: config.data_dir.display().to_string(), source })?;
    let data_dir = std::fs::canonicalize(&config.data_dir)
        .map_err(|source| WorkerError::DataDir { path: config.data_dir.display().to_string(), source })?;
    let resolver = Resolver::new(config.object_store.clone());
    let default_store = resolver.deep_store(&file_uri(&data_dir.join("deep-store")))?;
    let started_at_ms = crate::partition::now_ms();
    let host = sluice_coordinator::hostname();
    let health = Arc::new(PartitionHealth::default());
    let http_addr = crate::metrics::serve(
        &config.http,
        id.clone(),
        sluice_http::install_recorder(),
        health.clone(),
        config.stall_timeout,
    )
    .await
    .map_err(|source| WorkerError::Http { addr: config.http.listen.to_string(), source })?;
    let stall_timeout = config.stall_timeout;
    let stall_gauge = health.clone();
    let stall_task = tokio::spawn(async move {
        loop {
            let stalled = stall_gauge.stalled(stall_timeout);
            metrics::gauge!(crate::metrics::PARTITIONS_STALLED).set(stalled.len() as f64);
            for s in &stalled {
                tracing::warn!(table = %s.table, partition = s.partition, stalled_for_s = s.stalled_for_s, reason = %s.reason, "partition stalled");
            }
            let failing = stall_gauge.failing_pipelines(stall_timeout);
            metrics::gauge!(crate::metrics::PIPELINES_FAILING).set(failing.len() as f64);
            for f in &failing {
                tracing::warn!(table = %f.table, failing_for_s = f.failing_for_s, reason = %f.reason, "pipeline failing");
            }
            tokio::time::sleep(Duration::from_secs(10)).await;
        }
    });
    tracing::info!(%http_addr, "serving /health and /metrics");
    let info =
        WorkerInfo { id: id.clone(), host, http_addr: http_addr.to_string(), started_at_ms, ..WorkerInfo::default() };
    // A restarted worker may find its previous incarnation still registered
    // until that session expires: wait for it, within reason.
    let registering = Instant::now();
    loop {
        if *shutdown.borrow() {
            tracing::info!(worker = %id, "stopped before registering: nothing was consumed");
            return Ok(());
        }
        match coordinator.register_worker(&info).await {
            Ok(()) => break,
            Err(sluice_coordinator::CoordError::WorkerIdTaken { .. }) if registering.elapsed() < REGISTRATION_WAIT => {
                tracing::info!(worker = %id, "waiting for the previous session of this worker id to expire");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
    tracing::info!(worker = %id, "registered");

    let local: Vec<PipelineConfig> = loaded.pipelines.iter().map(|(_, p)| p.clone()).collect();
    let duties = Duties {
        node: id.clone(),
        interval: Duration::from_secs(60),
        orphan_grace: Duration::from_secs(3600),
        default_deep_store: default_store.clone(),
        resolver: resolver.clone(),
        local_pipelines: local.clone(),
    };
    let duties_task = tokio::spawn(duties.run(coordinator.clone()));

    let budget = Arc::new(MemoryBudget::new(config.memory_budget.as_u64() as usize));
    let mut supervisors: BTreeMap<String, Supervisor> = BTreeMap::new();
    loop {
        // The pipelines to run: the worker's files, then those applied to
        // the coordinator (a file wins over an applied config of the same table).
        let mut wanted: BTreeMap<String, PipelineConfig> = local.iter().map(|p| (p.table.clone(), p.clone())).collect();
        // A pipeline that could not start is tried again after a while,
        // not only when the configs change: what it lacked (a bucket, a
        // certificate file) may appear.
        let mut retry_soon = false;
        let changed = if config.pipelines.from_coordinator {
            match coordinator.pipelines().await {
                Ok((applied, changed)) => {
                    for (name, text) in applied {
                        match sluice_config::parse_pipeline(&text, Path::new(&name), &ProcessEnv) {
                            Ok(p) => {
                                wanted.entry(p.table.clone()).or_insert(p);
                            }
                            Err(e) => {
                                tracing::error!(pipeline = %name, error = %e, "applied pipeline does not validate here; not running it");
                                health.pipeline_failing(&name, format!("does not validate on this worker: {e}"));
                                retry_soon = true;
                            }
                        }
                    }
                    Some(changed)
                }
                Err(e) => {
                    tracing::warn!(error = %e, "reading applied pipelines; keeping the current ones");
                    wanted.extend(supervisors.iter().map(|(t, s)| (t.clone(), (*s.config).clone())));
                    None
                }
            }
        } else {
            None
        };
        // Stop what is gone or changed, start what is new or changed.
        let stale: Vec<String> = supervisors
            .iter()
            .filter(|(t, s)| wanted.get(*t).is_none_or(|w| *w != *s.config))
            .map(|(t, _)| t.clone())
            .collect();
        for table in stale {
            tracing::info!(%table, "pipeline removed or changed: stopping it");
            supervisors.remove(&table).expect("present").stop().await;
            health.pipeline_running(&table);
        }
        for (table, pipeline) in wanted {
            if supervisors.contains_key(&table) {
                continue;
            }
            let store = match &pipeline.deep_store.uri {
                Some(uri) => match resolver.deep_store(uri) {
                    Ok(store) => store,
                    Err(e) => {
                        tracing::error!(%table, error = %e, "deep store");
                        health.pipeline_failing(&table, format!("deep store: {e}"));
                        retry_soon = true;
                        continue;
                    }
                },
                None => default_store.clone(),
            };
            match PipelineContext::new(Arc::new(pipeline), coordinator.clone(), store, budget.clone()) {
                Ok(ctx) => {
                    let ctx = ctx.with_health(health.clone());
                    tracing::info!(%table, "starting pipeline");
                    supervisors.insert(table, Supervisor::start(Arc::new(ctx), id.clone()));
                }
                Err(e) => {
                    tracing::error!(%table, error = %e, "cannot start pipeline");
                    health.pipeline_failing(&table, e.to_string());
                    retry_soon = true;
                }
            }
        }
        let changed = async move {
            match changed {
                Some(changed) if !retry_soon => changed.await,
                Some(changed) => {
                    let _ = tokio::time::timeout(Duration::from_secs(5), changed).await;
                }
                None => tokio::time::sleep(Duration::from_secs(5)).await,
            }
        };
        tokio::select! {
            _ = changed => {}
            _ = shutdown.changed() => {}
        }
        if *shutdown.borrow() {
            break;
        }
    }
    tracing::info!(worker = %id, "shutting down: committing consumed data");
    duties_task.abort();
    stall_task.abort();
    for (_, supervisor) in std::mem::take(&mut supervisors) {
        supervisor.stop().await;
    }
    Ok(())
}

/// A running pipeline.
struct Supervisor {
    config: Arc<PipelineConfig>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Supervisor {
    fn start(ctx: Arc<PipelineContext>, me: String) -> Self {
        let (stop, stop_rx) = watch::channel(false);
        let config = ctx.config.clone();
        let task = tokio::spawn(supervise(ctx, me, stop_rx));
        Self { config, stop, task }
    }

    async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

struct Running {
    stop: watch::Sender<bool>,
    task: JoinHandle<Exit>,
    /// The lease's epoch: a checkpoint with another epoch was reset.
    epoch: u64,
    started: Instant,
}

/// A partition waiting to be retried after a failure.
struct Retry {
    attempts: u32,
    at: Instant,
    /// The epoch of the lease it failed under; an operator's reset changes
    /// the checkpoint's epoch, which retries at once.
    epoch: u64,
}

/// Schedules the retry of a partition whose task failed after running since
/// `started` under lease `epoch`: 1 s doubling to 30 s with the failures in
/// a row (a task that ran well past the longest backoff starts the count
/// again). Returns the attempt number and the backoff.
fn schedule_retry(retries: &mut BTreeMap<i32, Retry>, partition: i32, started: Instant, epoch: u64) -> (u32, Duration) {
    let previous =
        if started.elapsed() > 2 * RETRY_MAX { 0 } else { retries.get(&partition).map_or(0, |r| r.attempts) };
    let attempts = previous + 1;
    let backoff = RETRY_MIN.saturating_mul(1 << (attempts - 1).min(5)).min(RETRY_MAX);
    retries.insert(partition, Retry { attempts, at: Instant::now() + backoff, epoch });
    (attempts, backoff)
}

/// Keeps this worker's share of a pipeline's partitions running.
async fn supervise(ctx: Arc<PipelineContext>, me: String, mut stop: watch::Receiver<bool>) {
    let table = ctx.config.table.clone();
    let mut partitions = 0;
    let mut running: BTreeMap<i32, Running> = BTreeMap::new();
    let mut retries: BTreeMap<i32, Retry> = BTreeMap::new();
    // Partitions assigned here whose lock another session still holds,
    // since when, and whether that was reported: a lock that outlives its
    // owner's session timeout by far is a stall, and must be seen.
    let mut locked: BTreeMap<i32, (Instant, bool)> = BTreeMap::new();
    let health = ctx.health.clone();
    loop {
        if *stop.borrow() {
            break;
        }
        // Partition count from Kafka, every round: growth is picked up
        // without a restart. Reading it is also the proof that the source
        // can be read: until it can, the pipeline is failing, for the
        // reason librdkafka gave (a wrong password, an untrusted
        // certificate, no broker reachable, no such topic).
        let topic = ctx.config.source.topic.clone();
        let consumer = ctx.consumer.clone();
        let count =
            tokio::task::spawn_blocking(move || match consumer.fetch_metadata(Some(&topic), Duration::from_secs(5)) {
                Ok(md) => match md.topics().first().map(|t| (t, t.error())) {
                    Some((t, None)) => Ok(t.partitions().len() as i32),
                    Some((_, Some(e))) => {
                        Err(format!("topic `{topic}`: {}", rdkafka::types::RDKafkaErrorCode::from(e)))
                    }
                    None => Err(format!("no metadata for topic `{topic}`")),
                },
                Err(e) => Err(e.to_string()),
            })
            .await
            .unwrap_or_else(|e| Err(e.to_string()));
        match count {
            Ok(n) => {
                // The consumer now holds the topic's leaders: its partitions
                // need not fetch them again before their first assignment.
                let _ = ctx.metadata.set(());
                ctx.consumer.context().recovered();
                health.pipeline_running(&table);
                if n != partitions {
                    tracing::info!(%table, partitions = n, "topic partitions");
                    partitions = n;
                }
            }
            Err(e) => {
                let reason = ctx.consumer.context().failure().unwrap_or_else(|| {
                    format!("pipeline `{table}` cannot read the partitions of its Kafka topic: {e}")
                });
                tracing::warn!(%table, error = %e, "cannot read the topic's partitions from Kafka; keeping {partitions}");
                health.pipeline_failing(&table, reason);
            }
        }
        // Bounded: a ZooKeeper answer that never comes must not park the
        // supervisor in silence (no partition would be assigned, so none
        // could even be reported stalled).
        let assigned = tokio::time::timeout(
            ASSIGNMENT_TIMEOUT,
            assigned_partitions(ctx.coordinator.as_ref(), &table, partitions, &me),
        )
        .await;
        let (mine, changed) = match assigned {
            Ok(Ok(assigned)) => assigned,
            Ok(Err(e)) => {
                tracing::warn!(%table, error = %e, "assignment");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            Err(_) => {
                metrics::counter!(crate::metrics::COORDINATION_TIMEOUTS, "operation" => "workers").increment(1);
                tracing::warn!(%table, timeout = ?ASSIGNMENT_TIMEOUT, "the live workers could not be read from the coordinator in time; trying again");
                continue;
            }
        };
        health.assigned(&table, &mine);
        // Reap partitions that ended by themselves: each released its lease
        // (a panicked one cannot have: released here), and is counted and
        // started again — after a failure, with backoff.
        let finished: Vec<i32> = running.iter().filter(|(_, r)| r.task.is_finished()).map(|(p, _)| *p).collect();
        for partition in finished {
            let ended = running.remove(&partition).expect("present");
            health.owned(&table, partition, false);
            let exit = ended.task.await;
            let reason = match &exit {
                Ok(Exit::Stopped) => None,
                Ok(Exit::Fenced) => Some("fenced"),
                Ok(Exit::Failed { reason, .. }) => Some(reason.as_str()),
                Err(_) => Some("panic"),
            };
            if let Some(reason) = reason {
                metrics::counter!(crate::metrics::PARTITION_FAILURES, "table" => table.clone(), "reason" => reason)
                    .increment(1);
            }
            match exit {
                Ok(Exit::Failed { reason, detail }) => {
                    let (attempts, backoff) = schedule_retry(&mut retries, partition, ended.started, ended.epoch);
                    tracing::error!(%table, partition, reason = reason.as_str(), %detail, attempts, retry_in = ?backoff, "partition failed; retrying");
                    health.failed(&table, partition, format!("{}: {detail}", reason.as_str()));
                }
                Ok(Exit::Fenced) => {
                    // Another owner, or a reset: take it again if it is ours.
                    tracing::info!(%table, partition, "partition fenced; acquiring it again if it is still ours");
                }
                Ok(Exit::Stopped) => tracing::info!(%table, partition, "partition ended"),
                Err(e) => {
                    tracing::error!(%table, partition, error = %e, "partition task panicked; retrying");
                    health.failed(&table, partition, format!("panic: {e}"));
                    schedule_retry(&mut retries, partition, ended.started, ended.epoch);
                }
            }
        }
        // A partition waiting out its backoff is retried at once when its
        // checkpoint was reset meanwhile (`sluice pipeline reset-offset`).
        for (partition, retry) in retries.iter_mut() {
            if retry.at > Instant::now()
                && let Ok(Some(checkpoint)) = ctx.coordinator.checkpoint(&table, *partition).await
                && checkpoint.epoch != retry.epoch
            {
                tracing::info!(%table, partition, "checkpoint reset; retrying now");
                retry.at = Instant::now();
            }
        }
        // Hand over what is no longer ours: each task commits, then releases;
        // all of them at once.
        let surplus: Vec<i32> = running.keys().copied().filter(|p| !mine.contains(p)).collect();
        let surplus: Vec<(i32, Running)> =
            surplus.into_iter().map(|p| (p, running.remove(&p).expect("present"))).collect();
        for (_, r) in &surplus {
            let _ = r.stop.send(true);
        }
        for (partition, r) in surplus {
            let _ = r.task.await;
            health.owned(&table, partition, false);
            tracing::info!(%table, partition, "handed over");
        }
        retries.retain(|p, _| mine.contains(p));
        locked.retain(|p, _| mine.contains(p));
        // Take what is newly ours. Acquisitions are independent ZooKeeper
        // transactions on one session, so they are pipelined, not awaited
        // one by one: a worker starting with 48 partitions owns them all in
        // a few round trips.
        let wanted: Vec<i32> = mine
            .iter()
            .copied()
            .filter(|p| !running.contains_key(p) && retries.get(p).is_none_or(|r| r.at <= Instant::now()))
            .collect();
        let acquired = futures::future::join_all(wanted.iter().map(|&p| ctx.coordinator.acquire(&table, p, &me))).await;
        for (partition, result) in wanted.into_iter().zip(acquired) {
            match result {
                Ok(Some(lease)) => {
                    let (stop_tx, stop_rx) = watch::channel(false);
                    let epoch = lease.epoch();
                    health.owned(&table, partition, true);
                    let task = tokio::spawn(ingest_partition(ctx.clone(), lease, stop_rx));
                    running.insert(partition, Running { stop: stop_tx, task, epoch, started: Instant::now() });
                    locked.remove(&partition);
                }
                Ok(None) => {
                    // Its previous owner has not let go yet: normal for up to
                    // that owner's session timeout, a stall well beyond it.
                    let (since, reported) = locked.entry(partition).or_insert((Instant::now(), false));
                    if !*reported && since.elapsed() >= LOCK_WAIT_REPORTED_AFTER {
                        *reported = true;
                        metrics::counter!(crate::metrics::PARTITION_LOCK_WAITS, "table" => table.clone()).increment(1);
                        tracing::warn!(%table, partition, waited = ?since.elapsed(), "a partition assigned here is still locked by another session");
                    }
                }
                Err(e) => tracing::warn!(%table, partition, error = %e, "acquire"),
            }
        }
        metrics::gauge!(crate::metrics::PARTITIONS_OWNED, "table" => table.clone()).set(running.len() as f64);
        tokio::select! {
            _ = changed => {}
            _ = stop.changed() => {}
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
    for r in running.values() {
        let _ = r.stop.send(true);
    }
    // Stopped tasks commit in parallel; wait for all.
    for (_, r) in running {
        let _ = r.task.await;
    }
    // The pipeline is no longer run here: none of its partitions can stall.
    health.assigned(&table, &[]);
    health.pipeline_running(&table);
}
