//! Scale-out benchmark: the same clickstream rows served by one `sluice
//! query` node holding every segment and, side by side, by three nodes in a
//! cluster at replication 1 (DataFusion Distributed over Arrow Flight), over a real
//! ZooKeeper, on this machine. For each benchmark query: the median latency
//! over HTTP on each setup and their ratio, the bytes that crossed the
//! loopback interface per query (HTTP alone on one node; HTTP plus Flight
//! in the cluster), and the CPU time each node spent per query. Each
//! node's share of the mapped segment bytes is printed first.
//!
//! ```text
//! cargo build --release -p sluice -p sluice-bench
//! ./target/release/cluster-bench [rows=10000000] [segments=30] [repeats=10] [query,query...]
//! ```
//!
//! Naming queries runs only those (to profile one). The cluster's nodes
//! send batches uncompressed unless `CLUSTER_BENCH_COMPRESSION` names
//! another `flight_compression`; `CLUSTER_BENCH_THREADS` sets their
//! `limits.threads` and `CLUSTER_BENCH_SHUFFLE_MIN_GROUPS` their
//! `shuffle_min_groups`. `CLUSTER_BENCH_HOLD=<seconds>` keeps both setups
//! up and idle that long before measuring, their addresses printed (to
//! profile a node or send a query by hand).

#[path = "../../tests/common/catalog.rs"]
mod catalog;
#[path = "../../query/tests/common/mod.rs"]
mod common;
mod queries;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use common::*;
use queries::{Kind, QUERIES, median};
use serde_json::{Value, json};
use sluice_coordinator::{CommitOutcome, Coordinator, ZooKeeperCoordinator, ZooKeeperOptions};
use sluice_segments::SegmentSchema;
use sluice_testkit::net::{free_port, http_get, http_post, metric_sum};
use sluice_testkit::{GuardedChild, ZooKeeper, unique_name};

const PARTITIONS: usize = 3;
const TOKEN: &str = "cluster-bench-secret-0123456789";

fn main() -> anyhow::Result<()> {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let only: Vec<String> =
        if args.len() > 3 { args.split_off(3)[0].split(',').map(String::from).collect() } else { vec![] };
    let queries: Vec<_> =
        QUERIES.iter().filter(|(name, ..)| only.is_empty() || only.iter().any(|o| o == name)).collect();
    if queries.is_empty() {
        bail!("no benchmark query is named {only:?}");
    }
    let args: Vec<usize> = args.iter().map(|a| a.parse()).collect::<Result<_, _>>()?;
    let rows = args.first().copied().unwrap_or(10_000_000);
    let segments = args.get(1).copied().unwrap_or(30).max(PARTITIONS);
    let repeats = args.get(2).copied().unwrap_or(10).max(1);
    let sluice = std::env::current_exe()?.with_file_name("sluice");
    if !sluice.exists() {
        bail!("{} is missing: cargo build --release -p sluice", sluice.display());
    }
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let zk = ZooKeeper::start()?;
    let dir = tempfile::tempdir()?;
    let root = format!("/{}", unique_name("cluster-bench"));
    let started = Instant::now();
    eprintln!("generating, sealing and committing {rows} rows in {segments} segments...");
    let bytes = runtime.block_on(commit(&zk, &root, &dir.path().join("deep"), rows, segments))?;
    eprintln!("built in {:.1} s", started.elapsed().as_secs_f64());

    // Both setups run side by side and each query alternates between
    // them: this machine's speed drifts by up to 2x within minutes, and a
    // ratio of two runs taken minutes apart measured the drift as much as
    // the cluster. An idle node spends no CPU.
    let single = Setup::start(&sluice, dir.path(), &zk, &root, &["single"], false)?;
    let cluster = Setup::start(&sluice, dir.path(), &zk, &root, &["q1", "q2", "q3"], true)?;
    single.settle(rows, segments)?;
    cluster.settle(rows, segments)?;
    let single_shares = single.shares();
    let cluster_shares = cluster.shares();
    if std::env::var_os("CLUSTER_BENCH_EXPLAIN").is_some() {
        // The distributed plan of each query, as the first node makes it.
        for (name, sql, _) in &queries {
            let plan = query(&cluster.nodes[0].1, &format!("EXPLAIN {sql}"))?;
            eprintln!("{name}:");
            for row in plan["resultTable"]["rows"].as_array().into_iter().flatten() {
                eprintln!("{}", row[1].as_str().unwrap_or_default());
            }
        }
    }
    if let Some(seconds) = std::env::var("CLUSTER_BENCH_HOLD").ok().and_then(|s| s.parse().ok()) {
        // Both setups stay up, idle, for a profiler or a hand-run query.
        for (name, addr, _) in single.nodes.iter().chain(&cluster.nodes) {
            eprintln!("{name}: http://{addr}");
        }
        std::thread::sleep(Duration::from_secs(seconds));
    }
    let (one, three) = measure(&single, &cluster, &queries, repeats)?;
    drop((single, cluster));

    println!(
        "Scale-out benchmark: {rows} rows in {segments} segments over {PARTITIONS} partitions ({:.0} MiB of segment files); \
         one query node and three at replication 1 side by side, on one {}-core machine; median of {repeats} warm runs \
         over HTTP, alternating between the two setups, the three-node queries sent to each node in turn.\n",
        bytes as f64 / 1048576.0,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!("| node | segments | MiB mapped | share of the bytes |");
    println!("|---|---:|---:|---:|");
    for (name, count, mapped) in single_shares.iter().chain(&cluster_shares) {
        println!("| {name} | {count} | {:.0} | {:.2} |", mapped / 1048576.0, mapped / bytes as f64);
    }
    println!(
        "\n| query | rows out | 1 node ms | 3 nodes ms | 3 ÷ 1 | target | loopback KiB/query, 1 node | 3 nodes | \
         CPU ms/query, 1 node | 3 nodes (q1 + q2 + q3) |"
    );
    println!("|---|---:|---:|---:|---:|---|---:|---:|---:|---|");
    for ((name, _, kind), (a, b)) in queries.iter().zip(one.iter().zip(&three)) {
        if a.rows != b.rows {
            bail!("{name}: one node returned {} rows, three {}", a.rows, b.rows);
        }
        let target = match kind {
            Kind::Filter => "≤ 1.5×",
            Kind::Scan | Kind::StarTree => "≤ 1.3×",
        };
        let cpu: Vec<String> = b.cpu_ms.iter().map(|c| format!("{c:.1}")).collect();
        println!(
            "| {name} | {} | {:.1} | {:.1} | {:.2}× | {target} | {:.0} | {:.0} | {:.1} | {:.1} ({}) |",
            a.rows,
            a.median_ms,
            b.median_ms,
            b.median_ms / a.median_ms,
            a.loopback_bytes / 1024.0,
            b.loopback_bytes / 1024.0,
            a.cpu_ms.iter().sum::<f64>(),
            b.cpu_ms.iter().sum::<f64>(),
            cpu.join(" + ")
        );
    }
    Ok(())
}

/// Seals the rows into `store` as workers would and commits them to the
/// catalog under `root`, partition after partition; returns the bytes.
async fn commit(zk: &ZooKeeper, root: &str, store: &Path, rows: usize, segments: usize) -> anyhow::Result<u64> {
    let coordinator =
        ZooKeeperCoordinator::connect(ZooKeeperOptions::plain(zk.connect_string(), root, Duration::from_secs(30)))
            .await?;
    // The query benchmark's table: the fixture's indexes plus the URL's.
    let pipeline = CLICKS_PIPELINE.replace(
        "inverted = [\"country\", \"device\", \"status\"]",
        "inverted = [\"country\", \"device\", \"status\", \"url\"]",
    );
    coordinator.apply_pipeline("clicks", &pipeline).await?;
    let config = sluice_config::parse_pipeline(&pipeline, Path::new("clicks.toml"), &|_: &str| None)?;
    let schema = Arc::new(SegmentSchema::from_pipeline(&config));
    let per = rows.div_ceil(segments);
    let (mut ts, mut bytes) = (BASE_TS, 0);
    let mut next = [0i64; PARTITIONS];
    for i in 0..segments {
        let n = per.min(rows.saturating_sub(per * i));
        let generated = clicks(n, ts, 42 + i as u64, 200_000);
        ts += n as i64 * 10;
        let partition = i % PARTITIONS;
        let segment = consuming(&schema, partition as i32, next[partition], &generated, click_datums);
        next[partition] = segment.next_offset();
        let mut lease = coordinator
            .acquire("clicks", partition as i32, "cluster-bench")
            .await?
            .context("the partition's lease is free")?;
        let (_, image, record) = catalog::store_segment(store, "clicks", &lease, &segment, ts);
        bytes += image.len() as u64;
        if coordinator.commit(&mut lease, &record).await? != CommitOutcome::Committed {
            bail!("committing {} was refused", record.name);
        }
        coordinator.release(lease).await?;
    }
    Ok(bytes)
}

/// Running `sluice query` processes.
struct Setup {
    nodes: Vec<(String, String, GuardedChild)>,
}

/// One query's figures on one setup.
struct Measured {
    rows: usize,
    median_ms: f64,
    loopback_bytes: f64,
    /// Per node.
    cpu_ms: Vec<f64>,
}

impl Setup {
    fn start(
        sluice: &Path,
        dir: &Path,
        zk: &ZooKeeper,
        root: &str,
        ids: &[&str],
        cluster: bool,
    ) -> anyhow::Result<Self> {
        let mut nodes = Vec::new();
        for id in ids {
            let home = dir.join(id);
            std::fs::create_dir_all(&home)?;
            let addr = format!("127.0.0.1:{}", free_port()?);
            let member = if cluster {
                let compression = std::env::var("CLUSTER_BENCH_COMPRESSION").unwrap_or_else(|_| "none".into());
                let shuffle = std::env::var("CLUSTER_BENCH_SHUFFLE_MIN_GROUPS")
                    .map_or_else(|_| String::new(), |n| format!("shuffle_min_groups = {n}\n"));
                format!(
                    "flight_listen = \"127.0.0.1:0\"\nreplication = 1\nflight_token = \"{TOKEN}\"\n\
                     flight_compression = \"{compression}\"\n{shuffle}"
                )
            } else {
                String::new()
            };
            let threads = match std::env::var("CLUSTER_BENCH_THREADS") {
                Ok(threads) if cluster => format!("threads = {threads}\n"),
                _ => String::new(),
            };
            let config = format!(
                "node_id = \"{id}\"\ncache_dir = \"{}\"\n{member}[coordinator]\nconnect = \"{}\"\nroot = \"{root}\"\n\
                 [http]\nlisten = \"{addr}\"\n[limits]\nquery_timeout = \"10m\"\nmax_result_rows = 10000000\n\
                 max_result_bytes = \"1GiB\"\nmemory = \"4GiB\"\n{threads}",
                home.join("cache").display(),
                zk.connect_string()
            );
            let path = home.join("query.toml");
            std::fs::write(&path, config)?;
            let log = std::fs::File::create(home.join("query.log"))?;
            let mut command = Command::new(sluice);
            command.args(["query", "--config"]).arg(&path).stdin(Stdio::null()).stdout(log.try_clone()?).stderr(log);
            nodes.push((id.to_string(), addr, GuardedChild::spawn(command)?));
        }
        Ok(Setup { nodes })
    }

    /// Waits until the nodes hold every segment between them and each
    /// answers with every row.
    fn settle(&self, rows: usize, segments: usize) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(600);
        loop {
            let loaded: f64 = self.nodes.iter().map(|(_, a, _)| loaded(a).0).sum();
            let complete = self.nodes.iter().all(|(_, addr, _)| {
                query(addr, "SELECT COUNT(*) FROM clicks")
                    .is_ok_and(|v| v["exceptions"] == json!([]) && v["resultTable"]["rows"][0][0] == rows)
            });
            if loaded as usize == segments && complete {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("the nodes did not settle: {loaded} of {segments} segments loaded");
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// (node, segments, bytes mapped) per node.
    fn shares(&self) -> Vec<(String, f64, f64)> {
        self.nodes
            .iter()
            .map(|(id, addr, _)| {
                let (segments, bytes) = loaded(addr);
                (
                    format!("{id} ({} node{})", self.nodes.len(), if self.nodes.len() > 1 { "s" } else { "" }),
                    segments,
                    bytes,
                )
            })
            .collect()
    }
}

/// Each query's figures on one node and on the cluster: runs alternate
/// between them, the cluster's sent to each of its nodes in turn.
fn measure(
    single: &Setup,
    cluster: &Setup,
    queries: &[&(&str, &str, Kind)],
    repeats: usize,
) -> anyhow::Result<(Vec<Measured>, Vec<Measured>)> {
    let (mut one, mut three) = (Vec::new(), Vec::new());
    for (name, sql, _) in queries {
        let mut runs = [Run::default(), Run::default()];
        for (setup, run) in [single, cluster].into_iter().zip(&mut runs) {
            // Warm: each node plans and reads the query once.
            for (_, addr, _) in &setup.nodes {
                run.rows = query(addr, sql)?["resultTable"]["rows"].as_array().map_or(0, Vec::len);
            }
            run.cpu_ms = setup.nodes.iter().map(|(_, _, c)| -cpu_ms(c)).collect();
        }
        for r in 0..repeats {
            for (setup, run) in [single, cluster].into_iter().zip(&mut runs) {
                let (_, addr, _) = &setup.nodes[r % setup.nodes.len()];
                let loopback_before = loopback_bytes()?;
                let t = Instant::now();
                let answer = query(addr, sql)?;
                run.times.push(t.elapsed().as_secs_f64() * 1000.0);
                run.loopback += loopback_bytes()? - loopback_before;
                if answer["exceptions"] != json!([]) {
                    bail!("{name} on {addr}: {answer}");
                }
            }
        }
        for ((setup, run), out) in [single, cluster].into_iter().zip(runs).zip([&mut one, &mut three]) {
            let cpu = setup.nodes.iter().zip(&run.cpu_ms).map(|((_, _, c), b)| (cpu_ms(c) + b) / repeats as f64);
            out.push(Measured {
                rows: run.rows,
                median_ms: median(run.times),
                loopback_bytes: run.loopback as f64 / repeats as f64,
                cpu_ms: cpu.collect(),
            });
        }
    }
    Ok((one, three))
}

/// One setup's runs of one query so far.
#[derive(Default)]
struct Run {
    rows: usize,
    times: Vec<f64>,
    loopback: u64,
    /// Per node: minus its CPU time before the runs.
    cpu_ms: Vec<f64>,
}

fn query(addr: &str, sql: &str) -> anyhow::Result<Value> {
    let (status, text) = http_post(addr, "/query/sql", &serde_json::to_vec(&json!({ "sql": sql }))?);
    if status != 200 {
        bail!("{sql} on {addr}: HTTP {status}: {text}");
    }
    Ok(serde_json::from_str(&text)?)
}

/// (segments loaded, bytes mapped) of the node at `addr`.
fn loaded(addr: &str) -> (f64, f64) {
    let metrics = http_get(addr, "/metrics").1;
    (metric_sum(&metrics, "sluice_query_segments_loaded"), metric_sum(&metrics, "sluice_query_bytes_mapped"))
}

/// The user and system CPU time of `child` so far.
fn cpu_ms(child: &GuardedChild) -> f64 {
    let Some(pid) = child.id() else { return 0.0 };
    let stat = std::fs::read_to_string(PathBuf::from(format!("/proc/{pid}/stat"))).unwrap_or_default();
    // Fields after the command name (which may hold spaces) close with ')'.
    let fields: Vec<&str> = stat.rsplit_once(')').map_or("", |(_, rest)| rest).split_whitespace().collect();
    let ticks: f64 = fields.get(11..13).map_or(0.0, |f| f.iter().filter_map(|v| v.parse::<f64>().ok()).sum());
    // SAFETY: sysconf has no preconditions.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    ticks * 1000.0 / per_second
}

/// Bytes received on the loopback interface so far (every byte between the
/// benchmark and the nodes, and between the nodes).
fn loopback_bytes() -> anyhow::Result<u64> {
    let dev = std::fs::read_to_string("/proc/net/dev")?;
    let line = dev.lines().find(|l| l.trim_start().starts_with("lo:")).context("no loopback interface")?;
    let received = line.split_once(':').map(|(_, r)| r).unwrap_or_default().split_whitespace().next();
    Ok(received.context("no byte count")?.parse()?)
}
