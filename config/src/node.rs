//! Node files: what a worker (`sluice ingest`) or a query node (`sluice query`)
//! needs to join the cluster.

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
        }
    }

    pub fn endpoint(&self) -> Result<CoordinatorEndpoint, String> {
        if self.connect.trim() == "embedded" {
            return Ok(CoordinatorEndpoint::Embedded);
        }
        parse_host_ports(&self.connect).map(CoordinatorEndpoint::ZooKeeper)
    }

    pub(crate) fn validate(&self, p: &mut Problems) {
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

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    pub listen: SocketAddr,
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
}

impl WorkerConfig {
    fn default_http() -> HttpConfig {
        HttpConfig { listen: SocketAddr::from(([0, 0, 0, 0], 9100)) }
    }
    fn default_data_dir() -> PathBuf {
        PathBuf::from("data/worker")
    }
    fn default_memory_budget() -> ByteSize {
        ByteSize::gib(1)
    }

    /// Checks the worker file itself; the pipeline files it names are loaded
    /// and checked by [`crate::load_worker`].
    pub fn validate(&self) -> Problems {
        let mut p = Problems::default();
        if let Some(id) = &self.node_id
            && (id.is_empty() || !id.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
        {
            p.push(
                "node_id",
                format!("{id:?}"),
                "letters, digits, `-`, `_` and `.` (it becomes a ZooKeeper node name)",
            );
        }
        self.coordinator.validate(&mut p);
        if self.memory_budget < ByteSize::mib(16) {
            p.push("memory_budget", self.memory_budget.to_string(), "at least `16MiB`");
        }
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
}

impl Default for QueryLimits {
    fn default() -> Self {
        Self {
            query_timeout: Self::default_timeout(),
            max_result_rows: Self::default_max_result_rows(),
            max_concurrent_queries: Self::default_max_concurrent_queries(),
            memory: Self::default_memory(),
        }
    }
}

/// `sluice query --config query.toml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueryNodeConfig {
    pub coordinator: CoordinatorConfig,
    #[serde(default = "QueryNodeConfig::default_http")]
    pub http: HttpConfig,
    /// Local copies of the segments served, kept across restarts.
    #[serde(default = "QueryNodeConfig::default_cache_dir")]
    pub cache_dir: PathBuf,
    #[serde(default)]
    pub limits: QueryLimits,
}

impl QueryNodeConfig {
    fn default_http() -> HttpConfig {
        HttpConfig { listen: SocketAddr::from(([0, 0, 0, 0], 8099)) }
    }
    fn default_cache_dir() -> PathBuf {
        PathBuf::from("data/segment-cache")
    }

    pub fn validate(&self) -> Problems {
        let mut p = Problems::default();
        self.coordinator.validate(&mut p);
        let limits = &self.limits;
        if limits.query_timeout.is_zero() {
            p.push("limits.query_timeout", "`0s`", "a duration greater than zero, such as `30s`");
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
        p
    }
}
