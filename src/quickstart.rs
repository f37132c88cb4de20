//! `sluice quickstart`: the whole system in one process. An embedded
//! Kafka-protocol broker (librdkafka's mock cluster), a clickstream
//! generator, one worker and one query node sharing the in-process
//! coordinator, configured by the files in `examples/quickstart/` — the same
//! code paths as a real deployment, minus ZooKeeper and Kafka.

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use rdkafka::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use sluice_config::{Env, LoadedWorker};
use sluice_coordinator::{Coordinator, InProcessCoordinator};
use sluice_query::QueryNode;

const PIPELINE: &str = include_str!("../examples/quickstart/pipeline.toml");
const WORKER: &str = include_str!("../examples/quickstart/worker.toml");
const QUERY: &str = include_str!("../examples/quickstart/query.toml");
const TOPIC: &str = "clickstream";
const TABLE: &str = "clickstream";
const PARTITIONS: i32 = 4;

#[derive(clap::Args)]
pub struct Args {
    /// Events generated per second.
    #[arg(long, default_value_t = 2000)]
    rate: u32,
    /// Port of the SQL endpoint on 127.0.0.1.
    #[arg(long, default_value_t = 8099)]
    port: u16,
    /// Port of the Postgres wire protocol on 127.0.0.1 (psql, Grafana).
    #[arg(long, default_value_t = 5433)]
    pg_port: u16,
    /// Where segments, the deep store and the query cache go. Default: a
    /// fresh temporary directory, removed on exit unless --keep-data.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Keep the temporary data directory on exit.
    #[arg(long)]
    keep_data: bool,
}

/// The quickstart's values for the `${VAR}`s of its config files.
struct QuickstartEnv(HashMap<&'static str, String>);

impl Env for QuickstartEnv {
    fn var(&self, name: &str) -> Option<String> {
        self.0.get(name).cloned()
    }
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    // Warnings only: the progress line is the quickstart's output.
    crate::init_tracing("warn");
    anyhow::ensure!(args.rate > 0, "--rate must be at least 1 event per second");
    let (temp, data_dir) = match &args.data_dir {
        Some(dir) => {
            std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
            (None, std::fs::canonicalize(dir)?)
        }
        None => {
            let dir = tempfile::Builder::new().prefix("sluice-quickstart-").tempdir().context("create a temp dir")?;
            let path = dir.path().to_path_buf();
            (Some(dir), path)
        }
    };

    let cluster = rdkafka::mocking::MockCluster::new(1).context("start the embedded Kafka broker")?;
    cluster.create_topic(TOPIC, PARTITIONS, 1).context("create the clickstream topic")?;
    let bootstrap = cluster.bootstrap_servers();

    let env = QuickstartEnv(HashMap::from([
        ("SLUICE_KAFKA", bootstrap.clone()),
        ("SLUICE_DATA", data_dir.display().to_string()),
        ("SLUICE_QUERY_PORT", args.port.to_string()),
        ("SLUICE_PG_PORT", args.pg_port.to_string()),
        ("SLUICE_WORKER_PORT", "0".to_string()),
    ]));
    let origin = Path::new("examples/quickstart");
    let pipeline = sluice_config::parse_pipeline(PIPELINE, &origin.join("pipeline.toml"), &env)?;
    let worker = sluice_config::parse_worker(WORKER, &origin.join("worker.toml"), &env)?;
    let query = sluice_config::parse_query_node(QUERY, &origin.join("query.toml"), &env)?;
    let coordinator: Arc<dyn Coordinator> = Arc::new(InProcessCoordinator::new());
    // Applied with its values filled in, so the query node can read the
    // real-time tail from the embedded broker (the worker runs the file).
    let resolved = PIPELINE
        .replace("${SLUICE_KAFKA:-localhost:9092}", &bootstrap)
        .replace("${SLUICE_DATA:-/tmp/sluice-quickstart}", &data_dir.display().to_string());
    coordinator.apply_pipeline(TABLE, &resolved).await.context("apply the quickstart pipeline")?;

    let shutdown = crate::shutdown_on_signals(
        "stopping the generator, committing what was consumed",
        "the uncommitted tail is lost with the embedded broker",
    );
    let metrics = sluice_http::install_recorder();
    let node =
        QueryNode::start(&query, coordinator.clone(), Some(metrics), shutdown.clone()).await.with_context(|| {
            format!("start the query node on 127.0.0.1:{} (use --port and --pg-port to pick others)", args.port)
        })?;
    let loaded = LoadedWorker { config: worker, pipelines: vec![(origin.join("pipeline.toml"), pipeline)] };
    let worker = tokio::spawn(sluice_ingest::worker::run_worker(loaded, coordinator.clone(), shutdown.clone()));

    let stop = Arc::new(AtomicBool::new(false));
    let produced = Arc::new(AtomicU64::new(0));
    let generator = {
        let (bootstrap, stop, produced, rate) = (bootstrap.clone(), stop.clone(), produced.clone(), args.rate);
        std::thread::spawn(move || generate(&bootstrap, rate, &stop, &produced))
    };

    let endpoint = format!("http://{}/query/sql", node.addr);
    println!("sluice quickstart");
    println!("  broker     embedded Kafka-protocol broker at {bootstrap}, topic `{TOPIC}` ({PARTITIONS} partitions)");
    println!("  generator  {} clickstream events/s", args.rate);
    println!("  worker     pipeline `{TABLE}`: segments sealed every minute or 500,000 rows, exactly-once commits");
    println!("  real time  rows are queryable within a second: the query node reads the uncommitted tail");
    println!("  query      SQL on {endpoint}");
    println!("  console    http://{}/ in a browser", node.addr);
    if let Some(pg) = node.pg_addr {
        println!("  postgres   psql -h {} -p {} -U sluice -c \"SELECT COUNT(*) FROM {TABLE}\"", pg.ip(), pg.port());
    }
    println!("  data       {}", data_dir.display());
    println!("Ctrl-C to stop.\n");

    let live = std::io::stderr().is_terminal();
    let mut shown_examples = false;
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    let mut stopping = shutdown.clone();
    let started = Instant::now();
    let mut last_line = Instant::now() - Duration::from_secs(60);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stopping.wait_for(|s| *s) => break,
        }
        let (segments, rows) = match node.engine.table(TABLE) {
            Some(t) => (t.snapshot().len(), t.row_count()),
            None => (0, 0),
        };
        let committed = committed_offsets(coordinator.as_ref()).await;
        let sent = produced.load(Ordering::Relaxed);
        let line = format!(
            "[{:>4}s] produced {sent:>9} | queryable {rows:>9} in {segments:>3} segments | committed {committed:>9}",
            started.elapsed().as_secs()
        );
        if live {
            eprint!("\r{line}");
            let _ = std::io::stderr().flush();
        } else if last_line.elapsed() >= Duration::from_secs(5) {
            eprintln!("{line}");
            last_line = Instant::now();
        }
        if !shown_examples && rows > 0 {
            shown_examples = true;
            if live {
                eprintln!();
            }
            show_examples(&node, &endpoint).await;
        }
    }
    if live {
        eprintln!();
    }
    println!("Stopping: generator first, then the worker commits what it consumed.");
    stop.store(true, Ordering::Relaxed);
    let _ = tokio::task::spawn_blocking(move || generator.join()).await;
    match worker.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => eprintln!("worker: {e:#}"),
        Err(e) => eprintln!("worker task: {e}"),
    }
    let committed = committed_offsets(coordinator.as_ref()).await;
    let engine = node.engine.clone();
    node.join().await;
    println!(
        "Done: {} events produced, {committed} committed exactly once, {} segments served.",
        produced.load(Ordering::Relaxed),
        engine.table(TABLE).map_or(0, |t| t.snapshot().len())
    );
    drop(cluster);
    match temp {
        Some(dir) if args.keep_data => println!("Data kept in {}", dir.keep().display()),
        Some(dir) => drop(dir),
        None => println!("Data kept in {}", data_dir.display()),
    }
    Ok(())
}

/// Records committed so far: the sum of every partition's next offset
/// (offsets start at 0 on the embedded broker).
async fn committed_offsets(coordinator: &dyn Coordinator) -> i64 {
    coordinator.checkpoints(TABLE).await.map_or(0, |c| c.iter().filter_map(|(_, c)| c.next_offset).sum())
}

const EXAMPLES: [(&str, &str); 3] = [
    (
        "Page views and p50 latency by country",
        "SELECT country, COUNT(*) AS views, approx_percentile_cont(0.5) WITHIN GROUP (ORDER BY latency_ms) AS p50_ms FROM clickstream GROUP BY country ORDER BY views DESC LIMIT 5",
    ),
    (
        "Server errors per device (index-served filter)",
        "SELECT device, COUNT(*) AS errors FROM clickstream WHERE status >= 500 GROUP BY device ORDER BY errors DESC",
    ),
    (
        "Busiest pages in the last minute",
        "SELECT url, COUNT(*) AS hits FROM clickstream WHERE ts > now() - INTERVAL '1 minute' GROUP BY url ORDER BY hits DESC LIMIT 3",
    ),
];

async fn show_examples(node: &QueryNode, endpoint: &str) {
    println!("\nThe first rows are queryable. A few queries:\n");
    for (title, sql) in EXAMPLES {
        println!("-- {title}\n{sql};");
        match node.engine.query(sql).await {
            Ok(response) => {
                if let Some(table) = response.result_table {
                    println!("  {}", table.data_schema.column_names.join(" | "));
                    for row in table.rows {
                        let cells: Vec<String> =
                            row.iter().map(|v| v.to_string().trim_matches('"').to_string()).collect();
                        println!("  {}", cells.join(" | "));
                    }
                }
                println!("  ({} ms, {} docs scanned)\n", response.time_used_ms, response.num_docs_scanned);
            }
            Err(e) => println!("  error: {e}\n"),
        }
    }
    println!("Your own, with curl (any Pinot client works too):");
    println!("  curl -s -X POST {endpoint} -H 'Content-Type: application/json' \\");
    println!("       -d '{{\"sql\": \"SELECT COUNT(*) FROM clickstream WHERE country = '\\''DE'\\''\"}}'\n");
}

/// Produces `rate` events a second until `stop`, keyed by user so a user's
/// events stay in one partition.
fn generate(bootstrap: &str, rate: u32, stop: &AtomicBool, produced: &AtomicU64) {
    let producer: BaseProducer = match ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("linger.ms", "20")
        .set("enable.idempotence", "true")
        .create()
    {
        Ok(p) => p,
        Err(e) => {
            eprintln!("generator: cannot create a producer: {e}");
            return;
        }
    };
    let seed = SystemTime::now().duration_since(UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64) | 1;
    let mut rng = Rng(seed);
    let started = Instant::now();
    let mut sent = 0u64;
    let mut event = String::with_capacity(320);
    let mut user = String::with_capacity(16);
    while !stop.load(Ordering::Relaxed) {
        let due = (started.elapsed().as_secs_f64() * f64::from(rate)) as u64;
        while sent < due && !stop.load(Ordering::Relaxed) {
            rng.event(&mut event, &mut user);
            match producer.send(BaseRecord::to(TOPIC).key(user.as_str()).payload(event.as_str())) {
                Ok(()) => {
                    sent += 1;
                    produced.store(sent, Ordering::Relaxed);
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    producer.poll(Duration::from_millis(10));
                }
                Err((e, _)) => {
                    eprintln!("generator: {e}");
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
        producer.poll(Duration::from_millis(10));
    }
    let _ = producer.flush(Duration::from_secs(5));
}

/// xorshift, and the shape of a web clickstream.
struct Rng(u64);

const COUNTRIES: [(&str, u64); 10] =
    [("US", 30), ("DE", 12), ("GB", 10), ("FR", 9), ("IN", 9), ("BR", 8), ("JP", 7), ("CA", 6), ("NG", 5), ("AU", 4)];
const DEVICES: [(&str, u64); 3] = [("mobile", 60), ("desktop", 35), ("tablet", 5)];
const BROWSERS: [(&str, u64); 4] = [("chrome", 64), ("safari", 20), ("firefox", 8), ("edge", 8)];
const PAGES: [&str; 8] = ["/", "/search", "/product", "/cart", "/checkout", "/account", "/help", "/blog"];
const STATUSES: [(i32, u64); 5] = [(200, 900), (304, 40), (404, 35), (500, 20), (503, 5)];

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn weighted<T: Copy>(&mut self, items: &[(T, u64)]) -> T {
        let total: u64 = items.iter().map(|(_, w)| w).sum();
        let mut pick = self.below(total);
        for (item, weight) in items {
            if pick < *weight {
                return *item;
            }
            pick -= weight;
        }
        items[0].0
    }

    fn event(&mut self, out: &mut String, user: &mut String) {
        use std::fmt::Write;
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        // A few heavy users, a long tail of light ones.
        let u = self.below(1000) * self.below(1000) / 10;
        user.clear();
        let _ = write!(user, "u-{u:05}");
        let page = PAGES[self.below(PAGES.len() as u64) as usize];
        let status = self.weighted(&STATUSES);
        let latency = 20 + self.below(80) + if self.below(20) == 0 { self.below(2000) } else { 0 };
        out.clear();
        let _ = write!(
            out,
            r#"{{"ts":{now},"session":"s-{:06x}","user":{{"id":"{user}","country":"{}"}},"device":"{}","browser":"{}","url":"{page}{}","status":{status},"latency_ms":{latency},"bytes":{},"is_bot":{}}}"#,
            self.below(1 << 20),
            self.weighted(&COUNTRIES),
            self.weighted(&DEVICES),
            self.weighted(&BROWSERS),
            if page == "/product" { format!("/{}", self.below(500)) } else { String::new() },
            200 + self.below(50_000),
            self.below(50) == 0,
        );
    }
}
