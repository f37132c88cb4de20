//! `cargo run --release -p sluice-bench --bin freshness-bench -- [rate] [seconds] [partitions]`
//!
//! How soon a produced row is answered by SQL. A producer writes
//! `{"ts", "seq"}` records at a fixed `rate` for `seconds` to the test-kit
//! broker (or `SLUICE_TEST_KAFKA_BROKERS`), noting when each record is
//! acknowledged; `sluice ingest` and `sluice query` (the release binaries
//! next to this one) run with realistic flush thresholds (500,000 rows or a
//! minute), so rows are answered from the query node's real-time tail; a
//! reader polls `SELECT MAX(seq)` over HTTP. Each answer M gives one sample:
//! the time from record M's acknowledgement to the answer that first showed
//! it (0 when it showed before the acknowledgement arrived). Prints p50, p99
//! and max, and the query node's CPU and memory per million tail rows.

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use rdkafka::ClientConfig;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use serde_json::json;
use sluice_coordinator::{Coordinator, ZooKeeperCoordinator, ZooKeeperOptions};
use sluice_testkit::net::{free_port, http_get, http_post, metric_sum};
use sluice_testkit::{GuardedChild, KafkaBroker, ZooKeeper, unique_name};

#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Acknowledgement times, by sequence number (µs since the run started; 0
/// while unacknowledged).
struct Acks {
    started: Instant,
    at: Vec<AtomicU64>,
}

struct AckContext(Arc<Acks>);

impl rdkafka::ClientContext for AckContext {}

impl ProducerContext for AckContext {
    type DeliveryOpaque = Box<u64>;
    fn delivery(&self, result: &DeliveryResult<'_>, seq: Box<u64>) {
        if result.is_ok() {
            let micros = self.0.started.elapsed().as_micros() as u64;
            self.0.at[*seq as usize].store(micros.max(1), Ordering::Relaxed);
        }
    }
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// (user + system CPU seconds, resident bytes) of a process.
fn usage(pid: u32) -> (f64, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit(") ").next().unwrap_or("").split_whitespace().collect();
    let ticks: f64 = fields.get(11).and_then(|u| u.parse::<f64>().ok()).unwrap_or(0.0)
        + fields.get(12).and_then(|s| s.parse::<f64>().ok()).unwrap_or(0.0);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        .unwrap_or(0)
        * 1024;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    (ticks / hz, rss)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let rate: u64 = args.get(1).map(|a| a.parse()).transpose()?.unwrap_or(10_000);
    let seconds: u64 = args.get(2).map(|a| a.parse()).transpose()?.unwrap_or(10);
    let partitions: i32 = args.get(3).map(|a| a.parse()).transpose()?.unwrap_or(16);
    let total = rate * seconds;
    let sluice = std::env::current_exe()?.with_file_name("sluice");
    anyhow::ensure!(sluice.exists(), "{} not found: build it with `cargo build --release`", sluice.display());

    let zk = ZooKeeper::start()?;
    let broker = KafkaBroker::start()?;
    let topic = unique_name("fresh");
    broker.create_topic(&topic, partitions).await?;
    let dir = tempfile::tempdir()?;
    let root = format!("/{}", unique_name("fresh"));
    let observer =
        ZooKeeperCoordinator::connect(ZooKeeperOptions::plain(zk.connect_string(), &root, Duration::from_secs(30)))
            .await?;
    let pipeline = format!(
        "table = \"fresh\"\n[source]\nbootstrap_servers = \"{}\"\ntopic = \"{topic}\"\n[schema]\ntime_column = \"ts\"\n\
         [[schema.columns]]\nname = \"ts\"\ntype = \"timestamp\"\nnullable = false\n\
         [[schema.columns]]\nname = \"seq\"\ntype = \"int64\"\nnullable = false\n\
         [flush]\nrows = 500000\ntime = \"1m\"\n[deep_store]\nuri = \"file://{}\"\n",
        broker.bootstrap_servers(),
        dir.path().join("deep").display()
    );
    observer.apply_pipeline("fresh", &pipeline).await?;
    let query_addr = format!("127.0.0.1:{}", free_port()?);
    let worker_addr = format!("127.0.0.1:{}", free_port()?);
    std::fs::write(
        dir.path().join("worker.toml"),
        format!(
            "node_id = \"bench\"\ndata_dir = \"{}\"\nmemory_budget = \"4GiB\"\n[coordinator]\nconnect = \"{}\"\n\
             root = \"{root}\"\n[http]\nlisten = \"{worker_addr}\"\n[pipelines]\nfrom_coordinator = true\n",
            dir.path().join("data").display(),
            zk.connect_string()
        ),
    )?;
    std::fs::write(
        dir.path().join("query.toml"),
        format!(
            "cache_dir = \"{}\"\n[coordinator]\nconnect = \"{}\"\nroot = \"{root}\"\n[http]\nlisten = \"{query_addr}\"\n",
            dir.path().join("cache").display(),
            zk.connect_string()
        ),
    )?;
    let spawn = |args: &[&str], log: &str| -> anyhow::Result<GuardedChild> {
        let mut command = Command::new(&sluice);
        command
            .args(args)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join(log))?);
        GuardedChild::spawn(command).context("start sluice")
    };
    let worker_config = dir.path().join("worker.toml").display().to_string();
    let query_config = dir.path().join("query.toml").display().to_string();
    let _worker = spawn(&["ingest", "--config", &worker_config], "worker.log")?;
    let query = spawn(&["query", "--config", &query_config], "query.log")?;
    let query_pid = query.id().context("query node pid")?;
    let max_seq = |addr: &str| -> Option<i64> {
        let body = serde_json::to_vec(&json!({"sql": "SELECT MAX(seq) FROM fresh"})).ok()?;
        let (status, text) = http_post(addr, "/query/sql", &body);
        (status == 200).then_some(())?;
        let value: serde_json::Value = serde_json::from_str(&text).ok()?;
        Some(value["resultTable"]["rows"][0][0].as_i64().unwrap_or(-1))
    };
    let ready = Instant::now();
    while max_seq(&query_addr).is_none() {
        anyhow::ensure!(ready.elapsed() < Duration::from_secs(60), "the query node did not serve the table");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let acks = Arc::new(Acks { started: Instant::now(), at: (0..total).map(|_| AtomicU64::new(0)).collect() });
    let producing = Arc::new(AtomicBool::new(true));
    let producer_thread = {
        let (acks, producing, bootstrap, topic) =
            (acks.clone(), producing.clone(), broker.bootstrap_servers().to_string(), topic.clone());
        std::thread::spawn(move || -> anyhow::Result<()> {
            let producer: ThreadedProducer<AckContext> = ClientConfig::new()
                .set("bootstrap.servers", &bootstrap)
                .set("linger.ms", "5")
                .set("enable.idempotence", "true")
                .create_with_context(AckContext(acks.clone()))?;
            let started = Instant::now();
            for seq in 0..total {
                // Paced: record `seq` is sent no earlier than seq / rate.
                let due = Duration::from_micros(seq * 1_000_000 / rate);
                if let Some(wait) = due.checked_sub(started.elapsed()) {
                    std::thread::sleep(wait);
                }
                let payload = format!("{{\"ts\": {seq}, \"seq\": {seq}}}");
                let partition = (seq % partitions as u64) as i32;
                let mut record = BaseRecord::<(), String, Box<u64>>::with_opaque_to(&topic, Box::new(seq))
                    .payload(&payload)
                    .partition(partition);
                loop {
                    match producer.send(record) {
                        Ok(()) => break,
                        Err((_, back)) => {
                            record = back;
                            std::thread::sleep(Duration::from_millis(1));
                        }
                    }
                }
            }
            producer.flush(Duration::from_secs(30))?;
            producing.store(false, Ordering::SeqCst);
            Ok(())
        })
    };

    let samples: Arc<Mutex<Vec<u64>>> = Arc::default();
    let mut last = -1i64;
    let (cpu_before, _) = usage(query_pid);
    loop {
        let done = !producing.load(Ordering::SeqCst);
        if let Some(m) = max_seq(&query_addr)
            && m > last
        {
            let now = acks.started.elapsed().as_micros() as u64;
            let acked = acks.at[m as usize].load(Ordering::Relaxed);
            let latency = if acked == 0 { 0 } else { now.saturating_sub(acked) };
            samples.lock().unwrap().push(latency);
            if std::env::var_os("FRESHNESS_TRACE").is_some() {
                eprintln!("t={:.2}s max_seq={m} latency={:.0}ms", now as f64 / 1e6, latency as f64 / 1000.0);
            }
            last = m;
        }
        if done && last + 1 >= total as i64 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    producer_thread.join().map_err(|_| anyhow::anyhow!("producer panicked"))??;
    let (cpu_after, rss) = usage(query_pid);
    let (_, metrics) = http_get(&query_addr, "/metrics");
    let tail_rows = metric_sum(&metrics, "sluice_query_tail_rows");
    let segments = observer.segments("fresh").await?.0.len();

    let mut samples = samples.lock().unwrap().clone();
    samples.sort_unstable();
    let ms = |us: u64| us as f64 / 1000.0;
    println!(
        "| rate (rows/s) | seconds | partitions | samples | p50 | p99 | max | segments committed | tail rows at end |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    println!(
        "| {rate} | {seconds} | {partitions} | {} | {:.0} ms | {:.0} ms | {:.0} ms | {segments} | {tail_rows} |",
        samples.len(),
        ms(percentile(&samples, 0.5)),
        ms(percentile(&samples, 0.99)),
        ms(*samples.last().unwrap_or(&0)),
    );
    let per_million = 1e6 / (total as f64).max(1.0);
    println!(
        "query node: {:.2} CPU-s per 1M rows followed, {:.0} MiB resident at {} tail rows ({:.0} MiB per 1M)",
        (cpu_after - cpu_before) * per_million,
        rss as f64 / (1 << 20) as f64,
        tail_rows,
        rss as f64 / (1 << 20) as f64 * 1e6 / tail_rows.max(1.0),
    );
    Ok(())
}
