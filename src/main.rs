//! The `sluice` command line.

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
    match cli.command {
        Command::Validate { files, kind } => validate(&files, kind.map(Into::into)),
    }
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
