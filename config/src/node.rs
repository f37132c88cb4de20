//! Node files: what a worker (`sluice ingest`) or a query node (`sluice query`)
//! needs to join the cluster.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::Problems;
use crate::units::{self, ByteSize, HostPort, parse_host_ports};

/// Where the cluster's coordination state lives.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CoordinatorConfig {
    /// A ZooKeeper connect string (`zk1:2181,zk2:2181,zk3:2181`) or `embedded`
    /// for the in-process coordinator of a single-process deployment.
    pub connect: String,
    /// The ZooKeeper path all of sluice's nodes live under (a chroot).
    #[serde(default = "CoordinatorConfig::default_root")]
    pub root: String,
    /// How long ZooKeeper waits for a silent node before it expires its
    /// session, and with it every partition lock the node held.
    #[serde(default = "CoordinatorConfig::default_session_timeout", with = "units::duration")]
    pub session_timeout: Duration,
    /// ZooKeeper digest authentication: sluice's nodes are then writable by
    /// this identity only. Absent: world-writable nodes (a trusted network).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<ZooKeeperAuthConfig>,
    /// TLS to ZooKeeper's secure client port (`secureClientPort`): every
    /// connection is encrypted and the servers' certificates verified.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ZooKeeperTlsConfig>,
}

/// How to reach ZooKeeper over TLS.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ZooKeeperTlsConfig {
    /// PEM certificate(s) of the authority that signed the servers'
    /// certificates (their names must match the connect string's hosts).
    pub ca: PathBuf,
    /// A client certificate and its key (PEM), for servers that require
    /// client authentication (`ssl.clientAuth=need`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<PathBuf>,
}

/// A ZooKeeper digest identity (`addauth digest user:password`); write the
/// password as `${VAR}`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ZooKeeperAuthConfig {
    pub username: String,
    pub password: String,
    /// Anyone may read sluice's nodes (`zkCli.sh`, monitoring); only this
    /// identity may change them.
    #[serde(default = "default_true")]
    pub world_readable: bool,
}

impl std::fmt::Debug for ZooKeeperAuthConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ZooKeeperAuthConfig")
            .field("username", &self.username)
            .field("world_readable", &self.world_readable)
            .finish_non_exhaustive()
    }
}

/// What `coordinator.connect` designates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CoordinatorEndpoint {
    Embedded,
    ZooKeeper(Vec<HostPort>),
}

impl CoordinatorConfig {
    fn default_root() -> String {
        "/sluice".to_string()
    }
    fn default_session_timeout() -> Duration {
        Duration::from_secs(10)
    }

    pub fn embedded() -> Self {
        Self {
            connect: "embedded".to_string(),
            root: Self::default_root(),
            session_timeout: Self::default_session_timeout(),
            auth: None,
            tls: None,
        }
    }

    pub fn endpoint(&self) -> Result<CoordinatorEndpoint, String> {
        if self.connect.trim() == "embedded" {
            return Ok(CoordinatorEndpoint::Embedded);
        }
        parse_host_ports(&self.connect).map(CoordinatorEndpoint::ZooKeeper)
    }

    pub(crate) fn validate(&self, p: &mut Problems) {
        if let Some(auth) = &self.auth {
            if auth.username.is_empty() || auth.username.contains(':') {
                p.push("coordinator.auth.username", format!("{:?}", auth.username), "a non-empty name without `:`");
            }
            if auth.password.len() < 8 {
                p.push("coordinator.auth.password", "a short password", "at least 8 characters");
            }
        }
        if let Some(tls) = &self.tls {
            if tls.cert.is_some() != tls.key.is_some() {
                p.push("coordinator.tls", "only one of `cert` and `key`", "both (client authentication) or neither");
            }
            if self.connect.trim() == "embedded" {
                p.push("coordinator.tls", "TLS with `connect = \"embedded\"`", "a ZooKeeper connect string");
            }
        }
        if let Err(why) = self.endpoint() {
            p.push(
                "coordinator.connect",
                format!("{:?} ({why})", self.connect),
                "a ZooKeeper connect string such as `zk1:2181,zk2:2181,zk3:2181`, or `embedded`",
            );
        }
        let root = &self.root;
        let well_formed = root.starts_with('/')
            && (root == "/"
                || (!root.ends_with('/') && !root[1..].split('/').any(|s| s.is_empty() || s == "." || s == "..")));
        if !well_formed {
            p.push(
                "coordinator.root",
                format!("{root:?}"),
                "an absolute ZooKeeper path such as `/sluice`, without a trailing `/`",
            );
        }
        let timeout = self.session_timeout;
        if !(Duration::from_secs(1)..=Duration::from_secs(600)).contains(&timeout) {
            p.push(
                "coordinator.session_timeout",
                format!("`{}`", humantime::format_duration(timeout)),
                "a duration from `1s` to `10m` (ZooKeeper also bounds it by its tickTime)",
            );
        }
    }
}

/// An HTTP endpoint (a query node's SQL endpoint, a worker's health and
/// metrics): where it listens and how much a client may hold of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    pub listen: SocketAddr,
    /// A client must send a request's whole header within this time, on a
    /// new connection and between the requests of a kept-alive one;
    /// otherwise the connection is closed.
    #[serde(default = "HttpConfig::default_header_read_timeout", with = "units::duration")]
    pub header_read_timeout: Duration,
    /// A request's whole body must arrive within this time (408 otherwise).
    #[serde(default = "HttpConfig::default_body_read_timeout", with = "units::duration")]
    pub body_read_timeout: Duration,
    /// A connection that carries no request for this long is closed.
    #[serde(default = "HttpConfig::default_idle_timeout", with = "units::duration")]
    pub idle_timeout: Duration,
    /// Connections served at once. At the cap, a new connection closes the
    /// oldest one that is idle (no request in progress); when none is idle,
    /// the new one waits in the listen backlog.
    #[serde(default = "HttpConfig::default_max_connections")]
    pub max_connections: u32,
    /// The largest request body accepted (413 beyond).
    #[serde(default = "HttpConfig::default_max_body_size")]
    pub max_body_size: ByteSize,
    /// Serve HTTPS with this certificate and key. Absent: plain HTTP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsConfig>,
    /// Require credentials on every endpoint but `/health` (and `/metrics`
    /// unless `protect_metrics`). Absent: no authentication.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<HttpAuth>,
    /// Origins (`https://grafana.example.com`) whose pages may send
    /// requests other than GET (a query) to this node. A request from
    /// another origin than the node's own is refused (403). Default: none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_origins: Vec<String>,
    /// Host names (without port) a request may name in `Host` when the node
    /// listens on a loopback address, besides `localhost`, `127.0.0.1` and
    /// `::1`: any other is refused (403), so a page whose name was rebound
    /// to 127.0.0.1 (DNS rebinding) cannot read the node.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_hosts: Vec<String>,
}

/// A certificate chain and its private key, PEM files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Who may call an endpoint: HTTP basic users (Pinot's broker scheme, which
/// `pinotdb` and Pinot's JDBC driver send) and bearer tokens. Secrets come
/// from `${VAR}`s.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpAuth {
    #[serde(default)]
    pub users: Vec<HttpUser>,
    #[serde(default)]
    pub tokens: Vec<String>,
    /// Also require credentials on `/metrics`.
    #[serde(default)]
    pub protect_metrics: bool,
}

impl std::fmt::Debug for HttpAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let users: Vec<&str> = self.users.iter().map(|u| u.username.as_str()).collect();
        f.debug_struct("HttpAuth")
            .field("users", &users)
            .field("tokens", &self.tokens.len())
            .field("protect_metrics", &self.protect_metrics)
            .finish()
    }
}

#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpUser {
    pub username: String,
    pub password: String,
}

impl HttpConfig {
    /// Listening on `listen` with every other setting at its default.
    pub fn on(listen: SocketAddr) -> Self {
        Self {
            listen,
            header_read_timeout: Self::default_header_read_timeout(),
            body_read_timeout: Self::default_body_read_timeout(),
            idle_timeout: Self::default_idle_timeout(),
            max_connections: Self::default_max_connections(),
            max_body_size: Self::default_max_body_size(),
            tls: None,
            auth: None,
            allowed_origins: Vec::new(),
            allowed_hosts: Vec::new(),
        }
    }
    fn default_header_read_timeout() -> Duration {
        Duration::from_secs(10)
    }
    fn default_body_read_timeout() -> Duration {
        Duration::from_secs(30)
    }
    fn default_idle_timeout() -> Duration {
        Duration::from_secs(60)
    }
    fn default_max_connections() -> u32 {
        1024
    }
    fn default_max_body_size() -> ByteSize {
        ByteSize::mib(1)
    }

    pub(crate) fn validate(&self, p: &mut Problems) {
        let timeouts = [
            ("http.header_read_timeout", self.header_read_timeout),
            ("http.body_read_timeout", self.body_read_timeout),
            ("http.idle_timeout", self.idle_timeout),
        ];
        for (field, value) in timeouts {
            if !(Duration::from_millis(100)..=Duration::from_secs(3600)).contains(&value) {
                p.push(field, format!("`{}`", humantime::format_duration(value)), "a duration from `100ms` to `1h`");
            }
        }
        if !(1..=1_000_000).contains(&self.max_connections) {
            p.push("http.max_connections", self.max_connections.to_string(), "from 1 to 1000000 connections");
        }
        if !(ByteSize::kib(1)..=ByteSize::gib(1)).contains(&self.max_body_size) {
            p.push("http.max_body_size", self.max_body_size.to_string(), "a size from `1KiB` to `1GiB`");
        }
        for (i, origin) in self.allowed_origins.iter().enumerate() {
            let authority = origin.strip_prefix("https://").or_else(|| origin.strip_prefix("http://"));
            if !authority.is_some_and(|a| !a.is_empty() && !a.contains(['/', ' ', '?', '#'])) {
                p.push(
                    format!("http.allowed_origins[{i}]"),
                    format!("`{origin}`"),
                    "an origin: `scheme://host[:port]`",
                );
            }
        }
        for (i, host) in self.allowed_hosts.iter().enumerate() {
            if host.is_empty() || host.contains([':', '/', ' ']) {
                p.push(format!("http.allowed_hosts[{i}]"), format!("`{host}`"), "a host name without port");
            }
        }
        if let Some(auth) = &self.auth {
            if auth.users.is_empty() && auth.tokens.is_empty() {
                p.push("http.auth", "no users and no tokens", "at least one user or token (or no `[http.auth]`)");
            }
            let mut seen = std::collections::BTreeSet::new();
            for (i, user) in auth.users.iter().enumerate() {
                if user.username.is_empty() || user.username.contains(':') || !seen.insert(&user.username) {
                    p.push(
                        format!("http.auth.users[{i}].username"),
                        format!("{:?}", user.username),
                        "a unique, non-empty name without `:`",
                    );
                }
                if user.password.len() < 8 {
                    p.push(format!("http.auth.users[{i}].password"), "a short password", "at least 8 characters");
                }
            }
            for (i, token) in auth.tokens.iter().enumerate() {
                if token.len() < 16 {
                    p.push(format!("http.auth.tokens[{i}]"), "a short token", "at least 16 characters");
                }
            }
        }
    }
}

/// Which pipelines a worker runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineSources {
    /// Pipeline files, relative to the worker file's directory.
    #[serde(default)]
    pub files: Vec<PathBuf>,
    /// Also run the pipelines applied to the coordinator with
    /// `sluice pipeline apply`, following changes as they are applied.
    #[serde(default = "default_true")]
    pub from_coordinator: bool,
}

fn default_true() -> bool {
    true
}

impl Default for PipelineSources {
    fn default() -> Self {
        Self { files: Vec::new(), from_coordinator: true }
    }
}

/// `sluice ingest --config worker.toml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerConfig {
    /// Stable identity of this worker in the cluster. Absent: `<hostname>-<pid>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_id: Option<String>,
    pub coordinator: CoordinatorConfig,
    #[serde(default = "WorkerConfig::default_http")]
    pub http: HttpConfig,
    /// Local scratch space: sealed segment files before upload, the default
    /// deep store.
    #[serde(default = "WorkerConfig::default_data_dir")]
    pub data_dir: PathBuf,
    /// Upper bound for the memory of all consuming segments together.
    #[serde(default = "WorkerConfig::default_memory_budget")]
    pub memory_budget: ByteSize,
    #[serde(default)]
    pub pipelines: PipelineSources,
    /// `/health` turns unhealthy when a partition this worker is assigned
    /// has made no progress for this long while it has work: records
    /// waiting in Kafka, or a failure it has not recovered from.
    #[serde(default = "WorkerConfig::default_stall_timeout", with = "units::duration")]
    pub stall_timeout: Duration,
    /// How this node reaches object stores (deep stores on S3, GCS, Azure).
    #[serde(default)]
    pub object_store: ObjectStoreConfig,
}

impl WorkerConfig {
    fn default_http() -> HttpConfig {
        HttpConfig::on(SocketAddr::from(([0, 0, 0, 0], 9100)))
    }
    fn default_data_dir() -> PathBuf {
        PathBuf::from("data/worker")
    }
    fn default_memory_budget() -> ByteSize {
        ByteSize::gib(1)
    }
    fn default_stall_timeout() -> Duration {
        Duration::from_secs(60)
    }

    /// Checks the worker file itself; the pipeline files it names are loaded
    /// and checked by [`crate::load_worker`].
    pub fn validate(&self) -> Problems {
        let mut p = Problems::default();
        validate_node_id(self.node_id.as_deref(), &mut p);
        self.coordinator.validate(&mut p);
        if self.memory_budget < ByteSize::mib(16) {
            p.push("memory_budget", self.memory_budget.to_string(), "at least `16MiB`");
        }
        self.http.validate(&mut p);
        if !(Duration::from_secs(1)..=Duration::from_secs(86_400)).contains(&self.stall_timeout) {
            p.push(
                "stall_timeout",
                format!("`{}`", humantime::format_duration(self.stall_timeout)),
                "a duration from `1s` to `24h`",
            );
        }
        self.object_store.validate(&mut p);
        if self.pipelines.files.is_empty() && !self.pipelines.from_coordinator {
            p.push(
                "pipelines",
                "no pipeline files and from_coordinator = false",
                "pipeline files in `pipelines.files`, or `from_coordinator = true`",
            );
        }
        p
    }
}

/// Resource limits of a query node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueryLimits {
    #[serde(default = "QueryLimits::default_timeout", with = "units::duration")]
    pub query_timeout: Duration,
    #[serde(default = "QueryLimits::default_max_result_rows")]
    pub max_result_rows: u64,
    #[serde(default = "QueryLimits::default_max_concurrent_queries")]
    pub max_concurrent_queries: u32,
    /// Memory pool shared by running queries (sorts, joins, aggregations).
    #[serde(default = "QueryLimits::default_memory")]
    pub memory: ByteSize,
    /// The longest SQL statement accepted, in bytes.
    #[serde(default = "QueryLimits::default_max_query_size")]
    pub max_query_size: ByteSize,
    /// The deepest expression accepted: operators, function calls and
    /// parentheses nested in one another (`a OR b OR c` nests two ORs).
    #[serde(default = "QueryLimits::default_max_expression_depth")]
    pub max_expression_depth: u32,
    /// The most items in one list: an `IN (...)` list, a function's
    /// arguments, a select list.
    #[serde(default = "QueryLimits::default_max_list_items")]
    pub max_list_items: u32,
    /// The most common table expressions (`WITH` items) in a statement.
    #[serde(default = "QueryLimits::default_max_ctes")]
    pub max_ctes: u32,
    /// The most relations a statement names: each `SELECT` block and each
    /// table, view or subquery in a `FROM` or `JOIN`.
    #[serde(default = "QueryLimits::default_max_relations")]
    pub max_relations: u32,
    /// The most nodes of a statement's logical plan before optimization,
    /// each reference to a CTE counting its whole plan.
    #[serde(default = "QueryLimits::default_max_plan_nodes")]
    pub max_plan_nodes: u32,
    /// The most iterations of a recursive CTE (413 beyond).
    #[serde(default = "QueryLimits::default_max_recursive_iterations")]
    pub max_recursive_iterations: u32,
    /// The largest result, in bytes of Arrow data (413 beyond).
    #[serde(default = "QueryLimits::default_max_result_bytes")]
    pub max_result_bytes: ByteSize,
    /// The most bytes one call of a string function (`lpad`, `repeat`,
    /// `replace`, ...) may produce for one batch of rows.
    #[serde(default = "QueryLimits::default_max_function_output")]
    pub max_function_output: ByteSize,
    /// Memory for the real-time tails (rows not yet committed, read from
    /// Kafka) of every table; `0` serves committed segments only.
    #[serde(default = "QueryLimits::default_tail_memory")]
    pub tail_memory: ByteSize,
    /// Threads that run queries: DataFusion's partitions per scan and the
    /// query runtime's workers (Druid's `processing.numThreads`). Absent:
    /// one per core. Lower it where query nodes share a machine's cores.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threads: Option<u32>,
}

impl QueryLimits {
    fn default_timeout() -> Duration {
        Duration::from_secs(30)
    }
    fn default_max_result_rows() -> u64 {
        100_000
    }
    fn default_max_concurrent_queries() -> u32 {
        8
    }
    fn default_memory() -> ByteSize {
        ByteSize::gib(2)
    }
    fn default_max_query_size() -> ByteSize {
        ByteSize::kib(256)
    }
    fn default_max_expression_depth() -> u32 {
        1000
    }
    fn default_max_list_items() -> u32 {
        10_000
    }
    fn default_max_ctes() -> u32 {
        64
    }
    // Planning a join grows with the cube of the relations: a 64-way join
    // plans in 0.6 s in a debug build, a 127-way one in 4 s, and planning
    // cannot be interrupted (query crate, `limits`).
    fn default_max_relations() -> u32 {
        64
    }
    fn default_max_plan_nodes() -> u32 {
        10_000
    }
    fn default_max_recursive_iterations() -> u32 {
        10_000
    }
    fn default_max_result_bytes() -> ByteSize {
        ByteSize::mib(64)
    }
    fn default_max_function_output() -> ByteSize {
        ByteSize::mib(64)
    }
    fn default_tail_memory() -> ByteSize {
        ByteSize::gib(1)
    }
}

impl Default for QueryLimits {
    fn default() -> Self {
        Self {
            query_timeout: Self::default_timeout(),
            max_result_rows: Self::default_max_result_rows(),
            max_concurrent_queries: Self::default_max_concurrent_queries(),
            memory: Self::default_memory(),
            max_query_size: Self::default_max_query_size(),
            max_expression_depth: Self::default_max_expression_depth(),
            max_list_items: Self::default_max_list_items(),
            max_ctes: Self::default_max_ctes(),
            max_relations: Self::default_max_relations(),
            max_plan_nodes: Self::default_max_plan_nodes(),
            max_recursive_iterations: Self::default_max_recursive_iterations(),
            max_result_bytes: Self::default_max_result_bytes(),
            max_function_output: Self::default_max_function_output(),
            tail_memory: Self::default_tail_memory(),
            threads: None,
        }
    }
}

/// `sluice query --config query.toml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueryNodeConfig {
    /// Stable identity of this query node in the cluster (its registration
    /// under `/query-nodes`). Absent: `<hostname>-<pid>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_id: Option<String>,
    pub coordinator: CoordinatorConfig,
    #[serde(default = "QueryNodeConfig::default_http")]
    pub http: HttpConfig,
    /// Local copies of the segments served, kept across restarts.
    #[serde(default = "QueryNodeConfig::default_cache_dir")]
    pub cache_dir: PathBuf,
    #[serde(default)]
    pub limits: QueryLimits,
    /// How this node reaches object stores (deep stores on S3, GCS, Azure).
    #[serde(default)]
    pub object_store: ObjectStoreConfig,
    /// Where this node serves the distributed tasks of the cluster's queries
    /// (Arrow Flight, `host:port`; port 0 picks a free one). Set: the node
    /// joins the cluster of query nodes, serves only its share of the
    /// segments and runs queries across the cluster. Absent: it serves every
    /// segment by itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flight_listen: Option<SocketAddr>,
    /// How many live query nodes serve each committed segment. Absent: 1
    /// while the node is alone, 2 once the cluster has more nodes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replication: Option<u32>,
    /// The cluster's shared secret (write it as `${VAR}`): every node
    /// presents it on the Flight port of the others and refuses callers
    /// without it. Required when `flight_listen` is not a loopback address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flight_token: Option<FlightToken>,
    /// How the batches this node's tasks send to other nodes are
    /// compressed. Default `none`: lz4 costs more CPU on both ends than it
    /// saves on a 10 Gbit/s network; worth it on slower links.
    #[serde(default)]
    pub flight_compression: FlightCompression,
    /// Groups (the most distinct values of a grouping's keys in one
    /// segment) from which the nodes holding a table merge a grouping's
    /// partial states among themselves, each its share of the keys, rather
    /// than all at the node that took the query. Absent: 65536; 0 shuffles
    /// every grouping but those on one small dictionary's ids.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shuffle_min_groups: Option<u64>,
    /// The Postgres wire protocol (psql, psycopg, Grafana's and Metabase's
    /// Postgres sources). Absent: not served.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pgwire: Option<PgWireConfig>,
}

/// `[pgwire]`: where the node speaks the Postgres wire protocol. The same
/// read-only rules and limits as `/query/sql` apply, and the users of
/// `http.auth` log in with their passwords (cleartext: put it behind TLS).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PgWireConfig {
    pub listen: SocketAddr,
    /// Connections served at once; more are refused.
    #[serde(default = "PgWireConfig::default_max_connections")]
    pub max_connections: u32,
    /// A connection must complete its startup (and log in) within this
    /// time; otherwise it is closed.
    #[serde(default = "PgWireConfig::default_startup_timeout", with = "units::duration")]
    pub startup_timeout: Duration,
    /// Connections still in their startup, counted apart from
    /// `max_connections`. At the cap a new connection closes the oldest of
    /// them, so stalled startups never lock a client out.
    #[serde(default = "PgWireConfig::default_max_startups")]
    pub max_startups: u32,
    /// Named prepared statements one connection may hold at once.
    #[serde(default = "PgWireConfig::default_max_prepared_statements")]
    pub max_prepared_statements: u32,
    /// The bytes of the prepared statements one connection may hold.
    #[serde(default = "PgWireConfig::default_max_prepared_bytes")]
    pub max_prepared_bytes: ByteSize,
}

impl PgWireConfig {
    fn default_max_connections() -> u32 {
        256
    }
    fn default_startup_timeout() -> Duration {
        Duration::from_secs(10)
    }
    fn default_max_startups() -> u32 {
        64
    }
    fn default_max_prepared_statements() -> u32 {
        1000
    }
    fn default_max_prepared_bytes() -> ByteSize {
        ByteSize::mib(64)
    }
}

/// Compression of Arrow batches between query nodes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FlightCompression {
    #[default]
    None,
    Lz4,
    Zstd,
}

/// A secret that never shows in `Debug` output or logs.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct FlightToken(pub String);

impl std::fmt::Debug for FlightToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FlightToken(..)")
    }
}

impl QueryNodeConfig {
    fn default_http() -> HttpConfig {
        HttpConfig::on(SocketAddr::from(([0, 0, 0, 0], 8099)))
    }
    fn default_cache_dir() -> PathBuf {
        PathBuf::from("data/segment-cache")
    }

    pub fn validate(&self) -> Problems {
        let mut p = Problems::default();
        validate_node_id(self.node_id.as_deref(), &mut p);
        self.coordinator.validate(&mut p);
        self.object_store.validate(&mut p);
        if let Some(r) = self.replication.filter(|r| !(1..=16).contains(r)) {
            p.push("replication", r.to_string(), "from 1 to 16 query nodes per segment");
        }
        if self.shuffle_min_groups.is_some() && self.flight_listen.is_none() {
            p.push("shuffle_min_groups", "set", "`flight_listen` too: only a node in a cluster shuffles");
        }
        if self.replication.is_some() && self.flight_listen.is_none() {
            p.push("replication", "set", "`flight_listen` too: only a node in a cluster shares segments");
        }
        match (&self.flight_listen, &self.flight_token) {
            (None, Some(_)) => p.push("flight_token", "set", "`flight_listen` too: only a node in a cluster uses it"),
            (Some(listen), None) if !listen.ip().is_loopback() => p.push(
                "flight_token",
                "absent",
                format!(
                    "a shared secret of at least 16 characters: the Flight port {listen} is reachable from other \
                     machines and runs any query plan it is sent"
                ),
            ),
            (_, Some(token)) if token.0.len() < 16 || token.0.chars().any(|c| c.is_control() || c == ' ') => p.push(
                "flight_token",
                "a short or malformed secret",
                "at least 16 characters, without spaces or control characters",
            ),
            _ => {}
        }
        if let Some(pg) = &self.pgwire {
            if !(1..=100_000).contains(&pg.max_connections) {
                p.push("pgwire.max_connections", pg.max_connections.to_string(), "from 1 to 100000 connections");
            }
            if !(1..=100_000).contains(&pg.max_startups) {
                p.push("pgwire.max_startups", pg.max_startups.to_string(), "from 1 to 100000 connections");
            }
            if !(Duration::from_millis(100)..=Duration::from_secs(600)).contains(&pg.startup_timeout) {
                let found = format!("`{}`", humantime::format_duration(pg.startup_timeout));
                p.push("pgwire.startup_timeout", found, "a duration from `100ms` to `10m`");
            }
            if pg.max_prepared_statements == 0 {
                p.push("pgwire.max_prepared_statements", "0", "at least one statement");
            }
            if pg.max_prepared_bytes < ByteSize::kib(64) {
                p.push("pgwire.max_prepared_bytes", pg.max_prepared_bytes.to_string(), "at least `64KiB`");
            }
            if pg.listen == self.http.listen && pg.listen.port() != 0 {
                p.push("pgwire.listen", pg.listen.to_string(), "another address than http.listen");
            }
        }
        let limits = &self.limits;
        if limits.query_timeout.is_zero() || limits.query_timeout > Duration::from_secs(86_400) {
            p.push(
                "limits.query_timeout",
                format!("`{}`", humantime::format_duration(limits.query_timeout)),
                "a duration greater than zero and at most `24h`, such as `30s`",
            );
        }
        if limits.max_result_rows == 0 {
            p.push("limits.max_result_rows", "0", "a number of rows greater than zero");
        }
        if limits.max_concurrent_queries == 0 {
            p.push("limits.max_concurrent_queries", "0", "at least one query");
        }
        if limits.memory < ByteSize::mib(16) {
            p.push("limits.memory", limits.memory.to_string(), "at least `16MiB`");
        }
        if !(ByteSize::kib(1)..=ByteSize::mib(64)).contains(&limits.max_query_size) {
            p.push("limits.max_query_size", limits.max_query_size.to_string(), "a size from `1KiB` to `64MiB`");
        }
        // Planning time grows faster than linearly with depth: 2,000 levels
        // plan in seconds, 5,000 took over a minute (query crate tests).
        if !(8..=2000).contains(&limits.max_expression_depth) {
            p.push("limits.max_expression_depth", limits.max_expression_depth.to_string(), "from 8 to 2000");
        }
        if limits.max_list_items == 0 {
            p.push("limits.max_list_items", "0", "at least one item");
        }
        // Planning time grows with these faster than linearly; the upper
        // bounds keep one statement's planning within seconds (query crate
        // tests plan the largest statements they admit).
        for (field, value, range) in [
            ("limits.max_ctes", limits.max_ctes, 1..=1000),
            ("limits.max_relations", limits.max_relations, 2..=1000),
            ("limits.max_plan_nodes", limits.max_plan_nodes, 16..=100_000),
            ("limits.max_recursive_iterations", limits.max_recursive_iterations, 1..=1_000_000),
        ] {
            if !range.contains(&value) {
                p.push(field, value.to_string(), format!("from {} to {}", range.start(), range.end()));
            }
        }
        if let Some(threads) = limits.threads.filter(|t| !(1..=1024).contains(t)) {
            p.push("limits.threads", threads.to_string(), "from 1 to 1024 threads");
        }
        for (field, size) in [
            ("limits.max_result_bytes", limits.max_result_bytes),
            ("limits.max_function_output", limits.max_function_output),
        ] {
            if size < ByteSize::kib(64) {
                p.push(field, size.to_string(), "at least `64KiB`");
            }
        }
        self.http.validate(&mut p);
        p
    }
}

/// How a node reaches object stores. The deep store's location is the
/// pipeline's `deep_store.uri`; credentials come from the environment
/// (`AWS_ACCESS_KEY_ID`, `GOOGLE_APPLICATION_CREDENTIALS`,
/// `AZURE_STORAGE_ACCOUNT_KEY`, instance metadata, ...), never from here.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ObjectStoreConfig {
    /// An S3-compatible server (MinIO, Ceph, R2, ...) or an Azure endpoint.
    /// Absent: the provider's own (or `AWS_ENDPOINT`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// S3's region. Absent: `AWS_REGION`, else `us-east-1`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Allows `http://` endpoints (a private network, tests).
    #[serde(default)]
    pub allow_http: bool,
    /// Further `object_store` options by name, such as
    /// `aws_virtual_hosted_style_request`; unknown names are errors.
    #[serde(default)]
    pub options: BTreeMap<String, String>,
    /// Retries of a failed request (5xx, reset, timeout), with backoff.
    #[serde(default = "ObjectStoreConfig::default_max_retries")]
    pub max_retries: usize,
    /// No retry starts later than this after the first attempt.
    #[serde(default = "ObjectStoreConfig::default_retry_timeout", with = "units::duration")]
    pub retry_timeout: Duration,
    /// One request's time limit (a stalled connection is retried after it).
    #[serde(default = "ObjectStoreConfig::default_request_timeout", with = "units::duration")]
    pub request_timeout: Duration,
}

impl Default for ObjectStoreConfig {
    fn default() -> Self {
        ObjectStoreConfig {
            endpoint: None,
            region: None,
            allow_http: false,
            options: BTreeMap::new(),
            max_retries: Self::default_max_retries(),
            retry_timeout: Self::default_retry_timeout(),
            request_timeout: Self::default_request_timeout(),
        }
    }
}

impl ObjectStoreConfig {
    fn default_max_retries() -> usize {
        10
    }
    fn default_retry_timeout() -> Duration {
        Duration::from_secs(180)
    }
    fn default_request_timeout() -> Duration {
        Duration::from_secs(30)
    }

    fn validate(&self, p: &mut Problems) {
        if let Some(endpoint) = &self.endpoint {
            let scheme = endpoint.split_once("://").map(|(s, _)| s.to_ascii_lowercase());
            match scheme.as_deref() {
                Some("https") => {}
                Some("http") if self.allow_http => {}
                Some("http") => p.push(
                    "object_store.endpoint",
                    format!("{endpoint:?}"),
                    "an `https://` URL, or `allow_http = true` for plain HTTP",
                ),
                _ => p.push("object_store.endpoint", format!("{endpoint:?}"), "an `https://` or `http://` URL"),
            }
        }
        for (field, value) in [("retry_timeout", self.retry_timeout), ("request_timeout", self.request_timeout)] {
            if value.is_zero() || value > Duration::from_secs(3_600) {
                p.push(
                    format!("object_store.{field}"),
                    format!("`{}`", humantime::format_duration(value)),
                    "a duration greater than zero and at most `1h`",
                );
            }
        }
        if self.max_retries > 100 {
            p.push("object_store.max_retries", self.max_retries.to_string(), "at most 100");
        }
    }
}

/// A node id becomes a ZooKeeper node name.
fn validate_node_id(id: Option<&str>, p: &mut Problems) {
    if let Some(id) = id
        && (id.is_empty() || !id.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    {
        p.push("node_id", format!("{id:?}"), "letters, digits, `-`, `_` and `.` (it becomes a ZooKeeper node name)");
    }
}
