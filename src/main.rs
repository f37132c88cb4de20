//! The `sluice` command line.

mod admin;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use sluice_config::{AnyConfig, ConfigKind};

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
    },
    /// Run an ingestion worker: take this worker's share of its pipelines'
    /// partitions and turn them into committed segments. SIGTERM or SIGINT
    /// commits what was consumed and exits; a second signal exits at once.
    Ingest {
        /// The worker config file.
        #[arg(long)]
        config: PathBuf,
    },
    /// Manage pipelines stored in ZooKeeper.
    #[command(subcommand)]
    Pipeline(PipelineCommand),
    /// Show workers, partition owners, checkpoints and segments from ZooKeeper.
    Status {
        #[command(flatten)]
        coordinator: admin::CoordinatorArgs,
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
    let result = match cli.command {
        Command::Validate { files, kind } => return validate(&files, kind.map(Into::into)),
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
        Command::Status { coordinator } => run_async(async move { admin::status(&coordinator).await }),
        Command::Ingest { config } => run_async(async move { ingest(&config).await }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn ingest(path: &std::path::Path) -> anyhow::Result<()> {
    use anyhow::Context;
    use std::sync::Arc;
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let loaded = sluice_config::load_worker(path)?;
    let coordinator_config = &loaded.config.coordinator;
    let coordinator: Arc<dyn sluice_coordinator::Coordinator> =
        match coordinator_config.endpoint().map_err(anyhow::Error::msg)? {
            sluice_config::CoordinatorEndpoint::Embedded => Arc::new(sluice_coordinator::InProcessCoordinator::new()),
            sluice_config::CoordinatorEndpoint::ZooKeeper(_) => Arc::new(
                sluice_coordinator::ZooKeeperCoordinator::connect(sluice_coordinator::ZooKeeperOptions {
                    connect: coordinator_config.connect.clone(),
                    root: coordinator_config.root.clone(),
                    session_timeout: coordinator_config.session_timeout,
                })
                .await
                .with_context(|| format!("connect to ZooKeeper at {}", coordinator_config.connect))?,
            ),
        };
    let (shutdown, shutdown_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
            return;
        };
        tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
        tracing::info!("signal received: committing consumed data, then exiting (signal again to exit at once)");
        let _ = shutdown.send(true);
        tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
        tracing::warn!("second signal: exiting now; the uncommitted tail will be read again by the next owner");
        std::process::exit(130);
    });
    sluice_ingest::worker::run_worker(loaded, coordinator, shutdown_rx).await?;
    Ok(())
}

fn run_async(work: impl std::future::Future<Output = anyhow::Result<()>>) -> anyhow::Result<()> {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?.block_on(work)
}

fn validate(files: &[PathBuf], kind: Option<ConfigKind>) -> ExitCode {
    let mut failed = 0;
    for file in files {
        match sluice_config::load_any(file, kind) {
            Ok(config) => println!("OK    {}: {}", file.display(), describe(&config)),
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
