//! Operator commands that talk to the coordinator: `pipeline apply/list/
//! delete/reset-offset` and `status`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use sluice_config::{CoordinatorConfig, CoordinatorEndpoint, ProcessEnv};
use sluice_coordinator::{Coordinator, Position, ZooKeeperCoordinator, ZooKeeperOptions};

/// Where the cluster's ZooKeeper is: `--zookeeper` (+ `--root`), or the
/// `[coordinator]` section of a worker or query-node file.
#[derive(Args, Debug)]
pub struct CoordinatorArgs {
    /// ZooKeeper connect string, e.g. `zk1:2181,zk2:2181,zk3:2181`.
    #[arg(long, conflicts_with = "config")]
    zookeeper: Option<String>,
    /// ZooKeeper root (chroot) of the cluster.
    #[arg(long, default_value = "/sluice", requires = "zookeeper")]
    root: String,
    /// A worker or query-node config file to take the coordinator from.
    #[arg(long)]
    config: Option<PathBuf>,
}

impl CoordinatorArgs {
    fn coordinator_config(&self) -> anyhow::Result<CoordinatorConfig> {
        if let Some(connect) = &self.zookeeper {
            // Credentials of a secured cluster: `SLUICE_ZOOKEEPER_AUTH=user:password`
            // (an environment variable, so they stay out of shell history).
            let auth = match std::env::var("SLUICE_ZOOKEEPER_AUTH") {
                Ok(value) => {
                    let Some((username, password)) = value.split_once(':') else {
                        bail!("SLUICE_ZOOKEEPER_AUTH: expected `user:password`");
                    };
                    Some(sluice_config::ZooKeeperAuthConfig {
                        username: username.to_string(),
                        password: password.to_string(),
                        world_readable: true,
                    })
                }
                Err(_) => None,
            };
            // TLS to ZooKeeper's secure port: `SLUICE_ZOOKEEPER_CA=<PEM file>`.
            let tls = std::env::var_os("SLUICE_ZOOKEEPER_CA").map(|ca| sluice_config::ZooKeeperTlsConfig {
                ca: ca.into(),
                cert: None,
                key: None,
            });
            let config = CoordinatorConfig {
                connect: connect.clone(),
                root: self.root.clone(),
                auth,
                tls,
                ..CoordinatorConfig::embedded()
            };
            if let Err(why) = config.endpoint() {
                bail!("--zookeeper {connect:?}: {why}");
            }
            return Ok(config);
        }
        let Some(path) = &self.config else {
            bail!("name the cluster with --zookeeper <host:port,...> or --config <worker or query-node file>");
        };
        Ok(match sluice_config::load_any(path, None)? {
            sluice_config::AnyConfig::Worker(w) => w.config.coordinator,
            sluice_config::AnyConfig::QueryNode(q) => q.coordinator,
            sluice_config::AnyConfig::Pipeline(_) => {
                bail!("{}: a pipeline file has no coordinator; pass a worker or query-node file", path.display())
            }
        })
    }

    pub async fn connect(&self) -> anyhow::Result<ZooKeeperCoordinator> {
        let config = self.coordinator_config()?;
        match config.endpoint().map_err(anyhow::Error::msg)? {
            CoordinatorEndpoint::Embedded => bail!(
                "the embedded coordinator lives inside one sluice process; these commands need a ZooKeeper cluster"
            ),
            CoordinatorEndpoint::ZooKeeper(_) => {}
        }
        let options = ZooKeeperOptions::from_config(&config);
        tokio::time::timeout(Duration::from_secs(30), ZooKeeperCoordinator::connect(options))
            .await
            .with_context(|| format!("ZooKeeper at {} did not answer within 30 s", config.connect))?
            .with_context(|| format!("connect to ZooKeeper at {}", config.connect))
    }
}

/// Validates each file and stores it as written: `${VAR}`s stay unresolved in
/// ZooKeeper and are resolved by each worker from its own environment, so
/// secrets never reach the coordinator.
pub async fn apply(files: &[PathBuf], args: &CoordinatorArgs) -> anyhow::Result<()> {
    let mut pipelines = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(file).with_context(|| format!("read {}", file.display()))?;
        let config = sluice_config::parse_pipeline(&text, file, &ProcessEnv)?;
        pipelines.push((config.table, text));
    }
    let coordinator = args.connect().await?;
    // A live table's schema may only grow compatibly: its committed
    // segments keep the columns they were written with.
    let (applied, _) = coordinator.pipelines().await?;
    for ((name, text), file) in pipelines.iter().zip(files) {
        let Some((_, running)) = applied.iter().find(|(n, _)| n == name) else { continue };
        let (Ok(before), Ok(after)) = (
            sluice_config::parse_pipeline(running, Path::new(name), &ProcessEnv),
            sluice_config::parse_pipeline(text, file, &ProcessEnv),
        ) else {
            continue;
        };
        let problems = sluice_config::schema_change_problems(&before, &after).into_vec();
        if !problems.is_empty() {
            let lines: Vec<String> = problems.iter().map(|p| format!("\n  {p}")).collect();
            bail!("{}: not a compatible change of the running pipeline `{name}`:{}", file.display(), lines.concat());
        }
    }
    for ((name, text), file) in pipelines.iter().zip(files) {
        coordinator.apply_pipeline(name, text).await.with_context(|| format!("apply {}", file.display()))?;
        println!("applied pipeline `{name}` from {}", file.display());
    }
    Ok(())
}

pub async fn list(args: &CoordinatorArgs) -> anyhow::Result<()> {
    let coordinator = args.connect().await?;
    let (pipelines, _) = coordinator.pipelines().await?;
    if pipelines.is_empty() {
        println!("no pipelines applied");
    }
    for (name, text) in pipelines {
        match sluice_config::parse_pipeline(&text, Path::new(&name), &ProcessEnv) {
            Ok(p) => println!("{name}\ttopic {}\t{} columns", p.source.topic, p.schema.columns.len()),
            Err(e) => println!("{name}\t(does not validate here: {})", e.to_string().replace('\n', "; ")),
        }
    }
    Ok(())
}

pub async fn delete(name: &str, args: &CoordinatorArgs) -> anyhow::Result<()> {
    let coordinator = args.connect().await?;
    let (pipelines, _) = coordinator.pipelines().await?;
    if !pipelines.iter().any(|(n, _)| n == name) {
        bail!("no pipeline `{name}` is applied");
    }
    coordinator.delete_pipeline(name).await?;
    println!("deleted pipeline `{name}` (its checkpoints and segments are kept)");
    Ok(())
}

pub fn parse_position(text: &str) -> Result<Position, String> {
    match text {
        "earliest" => Ok(Position::Earliest),
        "latest" => Ok(Position::Latest),
        other => other
            .parse::<i64>()
            .ok()
            .filter(|o| *o >= 0)
            .map(Position::Offset)
            .ok_or_else(|| format!("`{other}`: expected `earliest`, `latest` or a non-negative offset")),
    }
}

pub async fn reset_offset(pipeline: &str, partition: i32, to: Position, args: &CoordinatorArgs) -> anyhow::Result<()> {
    let coordinator = args.connect().await?;
    let checkpoint = coordinator.reset_offset(pipeline, partition, to).await?;
    let at = match (checkpoint.next_offset, checkpoint.reset_to) {
        (Some(offset), _) => offset.to_string(),
        (None, Some(position)) => format!("{position:?}").to_lowercase(),
        (None, None) => "the pipeline's start position".to_string(),
    };
    println!(
        "partition {partition} of `{pipeline}` restarts at {at}; its owner is fenced (epoch {})",
        checkpoint.epoch
    );
    Ok(())
}

pub async fn status(args: &CoordinatorArgs, query_nodes: &[String]) -> anyhow::Result<()> {
    let coordinator = args.connect().await?;
    let (workers, _) = coordinator.workers().await?;
    println!("workers: {}", workers.len());
    let (mut stalled, mut failing) = (Vec::new(), Vec::new());
    for w in &workers {
        // Each worker's own view of its partitions: `/health` on its HTTP port.
        let addr = w.reachable_http_addr();
        let health = match http_get_json(&addr, "/health").await {
            Ok(health) => {
                for s in health["stalled"].as_array().into_iter().flatten() {
                    stalled.push((w.id.clone(), s.clone()));
                }
                for f in health["failingPipelines"].as_array().into_iter().flatten() {
                    failing.push((w.id.clone(), f.clone()));
                }
                health["status"].as_str().unwrap_or("unknown").to_string()
            }
            Err(e) => format!("unreachable ({e})"),
        };
        println!("  {}\thost {}\thttp {}\thealth {health}", w.id, w.host, w.http_addr);
    }
    if !failing.is_empty() {
        println!("failing pipelines: {}", failing.len());
        for (worker, f) in &failing {
            println!(
                "  {}\ton {worker}\tfor {}s\t{}",
                f["table"].as_str().unwrap_or("?"),
                f["failing_for_s"],
                f["reason"].as_str().unwrap_or("?")
            );
        }
    }
    if !stalled.is_empty() {
        println!("stalled partitions: {}", stalled.len());
        for (worker, s) in &stalled {
            println!(
                "  {}/{}\ton {worker}\tfor {}s\t{}",
                s["table"].as_str().unwrap_or("?"),
                s["partition"],
                s["stalled_for_s"],
                s["reason"].as_str().unwrap_or("?")
            );
        }
    }
    // Registered query nodes, then any named on the command line.
    let (registered, _) = coordinator.query_nodes().await?;
    println!("query nodes: {}", registered.len());
    let mut addresses: Vec<(String, String)> =
        registered.iter().map(|n| (n.id.clone(), n.reachable_http_addr())).collect();
    for node in query_nodes {
        if !addresses.iter().any(|(_, addr)| addr == node) {
            addresses.push((node.clone(), node.clone()));
        }
    }
    for (id, node) in &addresses {
        let health = match http_get_json(node, "/health").await {
            Ok(health) => health,
            Err(e) => {
                println!("  {id}	http {node}	unreachable ({e})");
                continue;
            }
        };
        let corrupt = health["corruptSegments"].as_array().cloned().unwrap_or_default();
        println!(
            "  {id}	http {node}	health {}	serves {} segments, {} bytes	{} corrupt segment(s), not served",
            health["status"].as_str().unwrap_or("unknown"),
            health["served"]["segments"],
            health["served"]["bytes"],
            corrupt.len()
        );
        // A member of a cluster: where it takes distributed tasks, and the
        // partition tails it serves to the others.
        if let Some(info) = registered.iter().find(|n| &n.id == id)
            && let Some(flight) = &info.flight_addr
        {
            let tails: Vec<String> = info
                .tails
                .iter()
                .flat_map(|(table, partitions)| partitions.iter().map(move |p| format!("{table}/{p}")))
                .collect();
            let tails = if tails.is_empty() { "none".to_string() } else { tails.join(" ") };
            println!("  {id}	cluster member	flight {flight}	tails served {tails}");
        }
        for c in corrupt {
            println!(
                "  {}/{}\t{}",
                c["table"].as_str().unwrap_or("?"),
                c["segment"].as_str().unwrap_or("?"),
                c["reason"].as_str().unwrap_or("?")
            );
        }
        for c in health["tailConsumers"].as_array().into_iter().flatten() {
            if c["state"].as_str() != Some("running") {
                println!(
                    "  tail consumer of {}: {} ({} failures){}{}",
                    c["table"].as_str().unwrap_or("?"),
                    c["state"].as_str().unwrap_or("?"),
                    c["failures"],
                    c["error"].as_str().map_or(String::new(), |e| format!(": {e}")),
                    c["retry_in_s"].as_u64().map_or(String::new(), |s| format!(", retry in {s}s")),
                );
            }
        }
        for t in health["tails"].as_array().into_iter().flatten() {
            let freshness = t["freshness_ms"].as_i64().map_or("-".to_string(), |ms| format!("{ms} ms"));
            println!(
                "  tail {}/{}\t{} rows from offset {}\tfreshness {freshness}{}",
                t["table"].as_str().unwrap_or("?"),
                t["partition"],
                t["rows"],
                t["from_offset"],
                if t["over_limit"].as_bool() == Some(true) { "\tover limits.tail_memory: not served" } else { "" }
            );
        }
    }
    let (applied, _) = coordinator.pipelines().await?;
    for name in coordinator.known_pipelines().await? {
        let owners: BTreeMap<i32, String> = coordinator.partition_owners(&name).await?.into_iter().collect();
        let (segments, _) = coordinator.segments(&name).await?;
        let config = applied
            .iter()
            .find(|(n, _)| *n == name)
            .and_then(|(_, text)| sluice_config::parse_pipeline(text, Path::new(&name), &ProcessEnv).ok());
        let checkpoints = coordinator.checkpoints(&name).await?;
        let watermarks = match config {
            Some(config) => {
                let partitions: Vec<i32> = checkpoints.iter().map(|(p, _)| *p).collect();
                tokio::task::spawn_blocking(move || high_watermarks(&config, &partitions)).await?
            }
            None => Err("the pipeline is not applied to ZooKeeper, so its topic is unknown here".to_string()),
        };
        let rows: u64 = segments.iter().map(|s| s.row_count).sum();
        println!("pipeline {name}: {} segments, {rows} rows", segments.len());
        let gapped: Vec<_> = segments.iter().filter(|s| s.offset_gaps > 0).collect();
        if !gapped.is_empty() {
            let missing: u64 = gapped.iter().map(|s| s.offset_gaps).sum();
            println!(
                "  offset gaps: {missing} offsets without records in {} segment(s) (compaction, transactions, or records Kafka no longer holds)",
                gapped.len()
            );
        }
        if let Err(why) = &watermarks {
            println!("  lag unknown: {why}");
        }
        println!("  partition\towner\tnext offset\tsegments\tepoch\tlag");
        for (partition, checkpoint) in checkpoints {
            let count = segments.iter().filter(|s| s.partition == partition).count();
            let next = checkpoint.next_offset.map_or_else(
                || checkpoint.reset_to.map_or("start position".into(), |p| format!("{p:?}").to_lowercase()),
                |o| o.to_string(),
            );
            let owner = owners.get(&partition).map_or("-", String::as_str);
            let lag = match (&watermarks, checkpoint.next_offset) {
                (Ok(high), Some(next)) => {
                    high.get(&partition).map_or("-".to_string(), |h| (h - next).max(0).to_string())
                }
                _ => "-".to_string(),
            };
            println!("  {partition}\t{owner}\t{next}\t{count}\t{}\t{lag}", checkpoint.epoch);
        }
    }
    Ok(())
}

/// A GET of a JSON document on a node's HTTP port, within two seconds.
async fn http_get_json(addr: &str, path: &str) -> anyhow::Result<serde_json::Value> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await?;
        let mut response = Vec::new();
        stream.take(1 << 20).read_to_end(&mut response).await?;
        anyhow::Ok(response)
    };
    let response = tokio::time::timeout(Duration::from_secs(2), exchange).await.context("no answer within 2s")??;
    let text = String::from_utf8_lossy(&response);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).context("not an HTTP response")?;
    serde_json::from_str(body).context("not JSON")
}

/// High watermark per partition of the pipeline's topic, asked of Kafka with
/// the pipeline's own connection properties.
fn high_watermarks(config: &sluice_config::PipelineConfig, partitions: &[i32]) -> Result<BTreeMap<i32, i64>, String> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let consumer: BaseConsumer = sluice_ingest::partition::kafka_config(config)
        .set("group.id", "sluice-status")
        .create()
        .map_err(|e| format!("Kafka client: {e}"))?;
    partitions
        .iter()
        .map(|p| {
            consumer
                .fetch_watermarks(&config.source.topic, *p, Duration::from_secs(5))
                .map(|(_, high)| (*p, high))
                .map_err(|e| format!("Kafka at {}: {e}", config.source.bootstrap_servers))
        })
        .collect()
}
