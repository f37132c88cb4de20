//! sluice's query node: follows the segment catalog, serves every sealed
//! segment of every pipeline — plus each partition's uncommitted tail, read
//! from Kafka ([`tail`]) — as a DataFusion table, and answers SQL over a
//! Pinot-compatible HTTP endpoint.
//!
//! Invariants:
//! - Only verified segments are served: a segment's whole-file CRC32C and
//!   size must equal its catalog entry, and every section its own checksum,
//!   before it joins a table. A refused file is retried, never served.
//! - A query sees one snapshot of each table's segments from planning to its
//!   last row; segments loaded or dropped meanwhile affect later queries only.
//!   A snapshot is a consistent cut per partition: loaded segments up to
//!   their largest end offset, tail rows above it — never a row twice.
//! - Filter pushdown is decided and translated by one function
//!   ([`scan::pushdown::translate`]). A filter answered `Exact` is evaluated by the
//!   segments with SQL's three-valued logic, so DataFusion drops it from the
//!   plan; anything the indexes cannot answer exactly is left to DataFusion.
//!   Results never depend on which path a filter took.
//! - Selection queries (`SELECT columns FROM t WHERE exact filter LIMIT n`)
//!   skip DataFusion's planner ([`engine::fast`]); their answer is the one DataFusion
//!   gives, row order aside.
//! - The node is read-only: DDL, DML and statements are refused before
//!   planning reaches any table.
//! - Every request gets an answer: bad input a 4xx with the reason, limits a
//!   413/503/504, and internal failures a 500, never a panic or a dropped
//!   connection.
//! - No statement can abort the node or outgrow its limits: size, list length
//!   and expression depth are bounded before parsing ([`limits`]), queries
//!   run on threads whose stacks hold the deepest admitted statement, growing
//!   string functions are bounded per call, results in rows and bytes, and a
//!   query past its deadline is aborted with its slot held until it stops.
//! - A segment file that fails verification or Arrow validation is
//!   quarantined, never served and never reloaded from the cache.

pub mod catalog;
pub mod cluster;
pub mod engine;
pub mod error;
pub mod frontends;
pub mod limits;
pub mod membership;
pub mod optimizer;
pub mod response;
mod retry;
pub mod scan;
pub mod stats;
pub mod tail;
pub mod topology;

use std::net::SocketAddr;
use std::sync::Arc;

pub use catalog::CatalogFollower;
pub use engine::QueryEngine;
pub use error::QueryError;
pub use response::PinotResponse;
pub use scan::read::SegmentScanExec;
pub use scan::table::SegmentTable;
pub use stats::ScanStats;

use metrics_exporter_prometheus::PrometheusHandle;
use sluice_config::QueryNodeConfig;
use sluice_coordinator::{Coordinator, NodeInfo};
use tokio::sync::watch;

/// A running query node: the catalog follower and the HTTP server.
pub struct QueryNode {
    pub addr: SocketAddr,
    /// Where the node speaks the Postgres wire protocol (`[pgwire]`).
    pub pg_addr: Option<SocketAddr>,
    pub engine: Arc<QueryEngine>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl QueryNode {
    /// Starts following the catalog of `coordinator` and serving HTTP on the
    /// configured address, until `shutdown` turns true.
    pub async fn start(
        config: &QueryNodeConfig,
        coordinator: Arc<dyn Coordinator>,
        metrics: Option<PrometheusHandle>,
        shutdown: watch::Receiver<bool>,
    ) -> Result<QueryNode, StartError> {
        let mut engine = QueryEngine::new(config.limits.clone())?;
        // The node's sessions know Postgres' catalog and functions whichever
        // front end a query comes through (clients probe them over HTTP too).
        frontends::postgres::catalog::register(engine.context(), engine.tables_handle());
        std::fs::create_dir_all(&config.cache_dir)
            .map_err(|source| StartError::CacheDir { path: config.cache_dir.display().to_string(), source })?;
        let started_at_ms =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64);
        let mut info = NodeInfo::this_process(config.node_id.as_deref(), "query", String::new(), started_at_ms);
        let mut tasks = Vec::new();
        // In a cluster: the Flight endpoint of distributed tasks, listening
        // before the node registers, and the view of the other nodes.
        let cluster = match config.flight_listen {
            None => None,
            Some(listen) => {
                let listener = tokio::net::TcpListener::bind(listen)
                    .await
                    .map_err(|source| StartError::Listen { listen: listen.to_string(), source })?;
                let flight = listener
                    .local_addr()
                    .map_err(|source| StartError::Listen { listen: listen.to_string(), source })?;
                info.flight_addr = Some(flight.to_string());
                let reachable = info.reachable_flight_addr().unwrap_or_else(|| flight.to_string());
                let url = url::Url::parse(&format!("http://{reachable}"))
                    .map_err(|e| StartError::Listen { listen: listen.to_string(), source: std::io::Error::other(e) })?;
                let cluster = membership::Cluster::new(info.id.clone(), url, config.replication);
                let token = config.flight_token.as_ref().map(|t| cluster::auth::ClusterToken::new(&t.0));
                let worker = engine.join_cluster(
                    cluster.clone(),
                    token.clone(),
                    config.flight_compression,
                    config.shuffle_min_groups.unwrap_or(optimizer::boundaries::DEFAULT_SHUFFLE_MIN_GROUPS),
                );
                tasks.push(engine.spawn(cluster::worker::serve(listener, worker, token, shutdown.clone())));
                tasks.push(tokio::spawn(cluster.clone().follow(coordinator.clone(), shutdown.clone())));
                tracing::info!(%flight, "query node serving distributed tasks (Arrow Flight)");
                Some(cluster)
            }
        };
        let engine = Arc::new(engine);
        let health = Arc::new(catalog::NodeHealth::default());
        let tails = tail::TailBudget::new(config.limits.tail_memory.as_u64());
        let listen = config.http.listen;
        let (addr, server) =
            frontends::http::serve(&config.http, engine.clone(), metrics, health.clone(), shutdown.clone())
                .await
                .map_err(|source| StartError::Listen { listen: listen.to_string(), source })?;
        tracing::info!(%addr, "query node serving SQL on /query/sql");
        let mut pg_addr = None;
        if let Some(pg) = &config.pgwire {
            let users = config.http.auth.as_ref().map(|a| a.users.clone());
            let (bound, server) = frontends::postgres::serve(pg, users, engine.clone(), shutdown.clone())
                .await
                .map_err(|source| StartError::Listen { listen: pg.listen.to_string(), source })?;
            tracing::info!(addr = %bound, "query node speaking the Postgres wire protocol");
            pg_addr = Some(bound);
            tasks.push(server);
        }
        info.http_addr = addr.to_string();
        let (registration, published) = watch::channel(info);
        let mut follower = CatalogFollower::new(coordinator.clone(), engine.clone(), config.cache_dir.clone(), health)
            .with_tails(tails)
            .with_resolver(sluice_storage::Resolver::new(config.object_store.clone()));
        // Outside a cluster the registration never changes: its sender is
        // dropped, and the publisher stops once it has registered.
        if let Some(cluster) = cluster {
            follower = follower.in_cluster(cluster, registration);
        }
        tasks.push(tokio::spawn(follower.run(shutdown.clone())));
        tasks.push(server);
        tasks.push(tokio::spawn(membership::publish(coordinator, published, shutdown)));
        Ok(QueryNode { addr, pg_addr, engine, tasks })
    }

    /// Waits for the follower and the server to stop (after shutdown).
    pub async fn join(self) {
        for task in self.tasks {
            let _ = task.await;
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Engine(#[from] QueryError),
    #[error("cannot create the segment cache {path}: {source}")]
    CacheDir { path: String, source: std::io::Error },
    #[error("cannot listen on {listen}: {source}")]
    Listen { listen: String, source: std::io::Error },
}
