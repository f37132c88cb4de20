//! The `sluice` command line.

mod admin;
mod quickstart;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand, ValueEnum};
use sluice_config::{AnyConfig, ConfigKind};
use tokio::sync::watch;

/// jemalloc for every allocation in the process, librdkafka's included (the
/// `unprefixed_malloc_on_supported_platforms` feature makes it `malloc` and
/// `free`). librdkafka allocates each fetched record on its broker thread
/// and a partition task frees it on another: under glibc those frees
/// contended for the broker thread's arena lock (futex waits in `free`, 8% of
/// the worker's CPU). jemalloc frees into the freeing thread's cache and
/// returns memory in batches; the worker needs 20–25% less CPU per row
/// (docs/PERFORMANCE.md). mimalloc was measured too and did worse than glibc.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(
    name = "sluice",
    version,
    about = "Real-time analytics ingestion: Kafka partitions to indexed, exactly-once segments, queried with SQL."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check pipeline, worker and query-node config files and report every
    /// problem with its file, field, what was found and what was expected.
    Validate {
        /// Config files to check.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// The kind of the files; recognised from their keys when absent.
        #[arg(long, value_enum)]
        kind: Option<KindArg>,
        /// The pipeline as it runs now: each pipeline file is also checked
        /// as a change of its schema (columns may be added, nullable ones
        /// removed; none may change type, nor the time column its name).
        #[arg(long)]
        previous: Option<PathBuf>,
    },
    /// Run an ingestion worker: take this worker's share of its pipelines'
    /// partitions and turn them into committed segments. SIGTERM or SIGINT
    /// commits what was consumed and exits; a second signal exits at once.
    Ingest {
        /// The worker config file.
        #[arg(long)]
        config: PathBuf,
    },
    /// Run a query node: follow the segment catalog, serve every committed
    /// segment, answer SQL on a Pinot-compatible `POST /query/sql`.
    Query {
        /// The query-node config file.
        #[arg(long)]
        config: PathBuf,
    },
    /// The whole system in one process, no external services: an embedded
    /// Kafka-protocol broker, a clickstream generator, a worker and a query
    /// node on 127.0.0.1:8099. Ctrl-C stops it cleanly.
    Quickstart(quickstart::Args),
    /// Manage pipelines stored in ZooKeeper.
    #[command(subcommand)]
    Pipeline(PipelineCommand),
    /// Show workers (with their health and stalled partitions), partition
    /// owners, checkpoints, segments, lag and offset gaps; with
    /// `--query-node`, the segments a query node refused as corrupt.
    Status {
        #[command(flatten)]
        coordinator: admin::CoordinatorArgs,
        /// A query node's HTTP address (`host:port`) whose refused, corrupt
        /// segments to list; repeat for several nodes.
        #[arg(long = "query-node")]
        query_nodes: Vec<String>,
    },
}

#[derive(Subcommand)]
enum PipelineCommand {
    /// Validate pipeline files and store them in ZooKeeper; workers that
    /// follow the coordinator pick them up (and later changes) without restart.
    Apply {
        #[arg(required = true)]
        files: Vec<PathBuf>,
        #[command(flatten)]
        coordinator: admin::CoordinatorArgs,
    },
    /// List the pipelines applied to ZooKeeper.
    List {
        #[command(flatten)]
        coordinator: admin::CoordinatorArgs,
    },
    /// Remove an applied pipeline (its checkpoints and segments are kept).
    Delete {
        name: String,
        #[command(flatten)]
        coordinator: admin::CoordinatorArgs,
    },
    /// Make a partition restart from an offset, `earliest` or `latest`. The
    /// partition's current owner is fenced: it can no longer commit.
    ResetOffset {
        pipeline: String,
        partition: i32,
        #[arg(value_parser = admin::parse_position, allow_hyphen_values = true)]
        position: sluice_coordinator::Position,
        #[command(flatten)]
        coordinator: admin::CoordinatorArgs,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum KindArg {
    Pipeline,
    Worker,
    Query,
}

impl From<KindArg> for ConfigKind {
    fn from(kind: KindArg) -> Self {
        match kind {
            KindArg::Pipeline => ConfigKind::Pipeline,
            KindArg::Worker => ConfigKind::Worker,
            KindArg::Query => ConfigKind::QueryNode,
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    raise_open_files_limit();
    let result = match cli.command {
        Command::Validate { files, kind, previous } => {
            return validate(&files, kind.map(Into::into), previous.as_deref());
        }
        Command::Pipeline(command) => run_async(async move {
            match command {
                PipelineCommand::Apply { files, coordinator } => admin::apply(&files, &coordinator).await,
                PipelineCommand::List { coordinator } => admin::list(&coordinator).await,
                PipelineCommand::Delete { name, coordinator } => admin::delete(&name, &coordinator).await,
                PipelineCommand::ResetOffset { pipeline, partition, position, coordinator } => {
                    admin::reset_offset(&pipeline, partition, position, &coordinator).await
                }
            }
        }),
        Command::Status { coordinator, query_nodes } => {
            run_async(async move { admin::status(&coordinator, &query_nodes).await })
        }
        Command::Ingest { config } => run_async(async move { ingest(&config).await }),
        Command::Query { config } => run_async(async move { query(&config).await }),
        Command::Quickstart(args) => run_async(async move { quickstart::run(args).await }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// Raises the soft limit of open files to the hard limit. A node holds a
/// descriptor per connection, per mapped segment and per Kafka broker; the
/// usual soft default (1024) turns a burst of connections or a large
/// catalog into "Too many open files" failures of deep-store writes.
fn raise_open_files_limit() {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max {
            limit.rlim_cur = limit.rlim_max;
            let _ = libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

/// Logs to stderr at `RUST_LOG`'s level, or `default` when it is unset.
fn init_tracing(default: &str) {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default)),
        )
        .with_writer(std::io::stderr)
        .init();
}

/// The coordinator a node config names: ZooKeeper, or the in-process one.
async fn connect_coordinator(
    config: &sluice_config::CoordinatorConfig,
) -> anyhow::Result<Arc<dyn sluice_coordinator::Coordinator>> {
    use anyhow::Context;
    Ok(match config.endpoint().map_err(anyhow::Error::msg)? {
        sluice_config::CoordinatorEndpoint::Embedded => Arc::new(sluice_coordinator::InProcessCoordinator::new()),
        sluice_config::CoordinatorEndpoint::ZooKeeper(_) => Arc::new(
            sluice_coordinator::ZooKeeperCoordinator::connect(sluice_coordinator::ZooKeeperOptions::from_config(
                config,
            ))
            .await
            .with_context(|| format!("connect to ZooKeeper at {}", config.connect))?,
        ),
    })
}

/// Turns true on the first SIGTERM or SIGINT; a second one exits at once
/// (after `on_second`, which says what that means for this command).
fn shutdown_on_signals(on_first: &'static str, on_second: &'static str) -> watch::Receiver<bool> {
    let (shutdown, shutdown_rx) = watch::channel(false);
    tokio::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
            return;
        };
        tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
        tracing::info!("signal received: {on_first} (signal again to exit at once)");
        let _ = shutdown.send(true);
        tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
        tracing::warn!("second signal: exiting now; {on_second}");
        std::process::exit(130);
    });
    shutdown_rx
}

async fn ingest(path: &std::path::Path) -> anyhow::Result<()> {
    init_tracing("info");
    // Signals first: a SIGTERM while the worker connects or waits out its
    // previous session must still mean "stop cleanly", not the default
    // action (found by a test that stopped a just-restarted worker).
    let shutdown_rx = shutdown_on_signals(
        "committing consumed data, then exiting",
        "the uncommitted tail will be read again by the next owner",
    );
    let loaded = sluice_config::load_worker(path)?;
    let coordinator = connect_coordinator(&loaded.config.coordinator).await?;
    sluice_ingest::worker::run_worker(loaded, coordinator, shutdown_rx).await?;
    Ok(())
}

async fn query(path: &std::path::Path) -> anyhow::Result<()> {
    init_tracing("info");
    let shutdown_rx = shutdown_on_signals("finishing running queries, then exiting", "running queries were cut off");
    let config = sluice_config::load_query_node(path)?;
    let coordinator = connect_coordinator(&config.coordinator).await?;
    let metrics = sluice_http::install_recorder();
    let node = sluice_query::QueryNode::start(&config, coordinator, Some(metrics), shutdown_rx).await?;
    node.join().await;
    Ok(())
}

fn run_async(work: impl std::future::Future<Output = anyhow::Result<()>>) -> anyhow::Result<()> {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?.block_on(work)
}

fn validate(files: &[PathBuf], kind: Option<ConfigKind>, previous: Option<&std::path::Path>) -> ExitCode {
    let previous = match previous.map(|path| (path, sluice_config::load_any(path, Some(ConfigKind::Pipeline)))) {
        None => None,
        Some((_, Ok(AnyConfig::Pipeline(p)))) => Some(p),
        Some((path, Ok(_))) => {
            eprintln!("{}: --previous takes a pipeline file", path.display());
            return ExitCode::FAILURE;
        }
        Some((_, Err(error))) => {
            eprintln!("{error}");
            return ExitCode::FAILURE;
        }
    };
    let mut failed = 0;
    for file in files {
        let change = |config: &AnyConfig| match (&previous, config) {
            (Some(before), AnyConfig::Pipeline(after)) => {
                let problems = sluice_config::schema_change_problems(before, after).into_vec();
                let lines: Vec<String> = problems.iter().map(|p| format!("\n  {p}")).collect();
                (!problems.is_empty())
                    .then(|| format!("not a compatible change of the running pipeline:{}", lines.concat()))
            }
            _ => None,
        };
        match sluice_config::load_any(file, kind) {
            Ok(config) => match deep_store_problem(&config).or_else(|| change(&config)) {
                None => println!("OK    {}: {}", file.display(), describe(&config)),
                Some(problem) => {
                    failed += 1;
                    eprintln!("{}: {problem}", file.display());
                }
            },
            Err(error) => {
                failed += 1;
                eprintln!("{error}");
            }
        }
    }
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        eprintln!("{failed} of {} file(s) invalid", files.len());
        ExitCode::FAILURE
    }
}

/// Builds (offline) the deep-store client each pipeline's URI needs with
/// the node's object-store options: an unknown option or a URI the backend
/// refuses is reported here rather than at the first upload.
fn deep_store_problem(config: &AnyConfig) -> Option<String> {
    let default = sluice_config::ObjectStoreConfig::default();
    let (options, pipelines): (&sluice_config::ObjectStoreConfig, Vec<&sluice_config::PipelineConfig>) = match config {
        AnyConfig::Pipeline(p) => (&default, vec![p]),
        AnyConfig::Worker(w) => (&w.config.object_store, w.pipelines.iter().map(|(_, p)| p).collect()),
        AnyConfig::QueryNode(_) => return None,
    };
    pipelines.iter().find_map(|p| {
        let uri = p.deep_store.uri.as_deref()?;
        sluice_storage::check_uri(uri, options).err().map(|e| format!("pipeline `{}`: deep_store.uri: {e}", p.table))
    })
}

fn describe(config: &AnyConfig) -> String {
    match config {
        AnyConfig::Pipeline(p) => format!(
            "pipeline for table `{}` from topic `{}`, {} columns",
            p.table,
            p.source.topic,
            p.schema.columns.len()
        ),
        AnyConfig::Worker(w) => {
            let tables: Vec<&str> = w.pipelines.iter().map(|(_, p)| p.table.as_str()).collect();
            format!(
                "worker, coordinator `{}`, pipeline files for [{}]{}",
                w.config.coordinator.connect,
                tables.join(", "),
                if w.config.pipelines.from_coordinator { " and those applied to the coordinator" } else { "" }
            )
        }
        AnyConfig::QueryNode(q) => {
            format!("query node, coordinator `{}`, listening on {}", q.coordinator.connect, q.http.listen)
        }
    }
}
