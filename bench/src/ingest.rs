//! `cargo run --release -p sluice-bench --bin ingest-bench -- [records] [partitions]`
//!
//! Produces `records` ten-column click events (~250 bytes of JSON) to a
//! fresh topic on the test-kit broker (or `SLUICE_TEST_KAFKA_BROKERS`), then
//! measures in the same run:
//!   (a) a bare rdkafka consumer that reads every record and parses its JSON;
//!   (b) `sluice ingest` (the release binary next to this one), from process
//!       start until the last segment is committed in ZooKeeper.
//! Prints rows/s of both, the ratio b/a, commit latency and consuming-segment
//! memory per million rows, as a markdown table for docs/PERFORMANCE.md.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Message, Offset, TopicPartitionList};
use sluice_coordinator::{Coordinator, ZooKeeperCoordinator, ZooKeeperOptions};
use sluice_testkit::net::{http_get, metric_sum};
use sluice_testkit::{GuardedChild, KafkaBroker, ZooKeeper, unique_name};

/// jemalloc, as in the `sluice` binary, so that the baseline consumer allocates as sluice does.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

const COUNTRIES: [&str; 8] = ["DE", "FR", "US", "BR", "IN", "JP", "NG", "AU"];
const DEVICES: [&str; 3] = ["mobile", "desktop", "tablet"];

fn event(i: u64) -> Vec<u8> {
    let h = i.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    format!(
        "{{\"ts\":{},\"session\":\"s-{:08}\",\"user\":{{\"id\":\"u-{:06}\",\"country\":\"{}\"}},\"device\":\"{}\",\
         \"url\":\"/product/{}/view?ref=search&page={}\",\"status\":{},\"latency_ms\":{},\"bytes\":{},\"is_bot\":{},\
         \"referrer\":\"https://www.example.com/search?q=item-{}\"}}",
        1_764_000_000_000u64 + i,
        i / 20,
        h % 200_000,
        COUNTRIES[(h >> 8) as usize % 8],
        DEVICES[(h >> 16) as usize % 3],
        h % 5_000,
        (h >> 20) % 10,
        [200, 200, 200, 200, 301, 404, 500][(h >> 24) as usize % 7],
        (h >> 32) % 2_000,
        (h >> 40) % 1_000_000,
        (h >> 50).is_multiple_of(20),
        h % 100_000,
    )
    .into_bytes()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let asked: u64 = args.get(1).map(|a| a.parse()).transpose()?.unwrap_or(1_000_000);
    let partitions: i32 = args.get(2).map(|a| a.parse()).transpose()?.unwrap_or(8);
    // Every partition gets the same number of records, a multiple of four,
    // so each of its four segments seals on its row threshold and the run
    // ends on throughput, never on the flush timer of a partial tail.
    let records = asked.max(1).next_multiple_of(4 * partitions as u64);
    let sluice = std::env::current_exe()?.with_file_name("sluice");
    anyhow::ensure!(sluice.exists(), "{} not found: build it with `cargo build --release`", sluice.display());

    let zk = ZooKeeper::start()?;
    let broker = KafkaBroker::start()?;
    let topic = unique_name("bench");
    broker.create_topic(&topic, partitions).await?;
    let producer = broker.producer()?;
    let started = Instant::now();
    let sample = event(0).len();
    // librdkafka's mock cluster keeps at most 5 MiB or 100,000 messages per
    // partition and silently drops older ones, so a larger run would lose
    // records before anything reads them (and wait for them forever).
    let per_partition = records.div_ceil(partitions as u64);
    let needed = (records * (sample as u64 + 80)).div_ceil(4 << 20);
    anyhow::ensure!(
        !broker.is_mock() || (per_partition * (sample as u64 + 80) < 4 << 20 && per_partition < 100_000),
        "{records} records over {partitions} partitions exceed the mock broker's per-partition log (5 MiB, 100k \
         messages; older ones are dropped): use at least {needed} partitions, or a real Kafka via SLUICE_TEST_KAFKA_BROKERS"
    );
    producer.send_all(&topic, (0..records).map(|i| ((i % partitions as u64) as i32, event(i)))).await?;
    eprintln!("produced {records} records ({sample} bytes each) in {:.1?}", started.elapsed());

    // (a) A bare consumer that only parses the JSON; and the same consumer
    // parsing nothing, which is what the broker can deliver at all.
    let bootstrap = broker.bootstrap_servers().to_string();
    let delivery = bare_consumer(&bootstrap, &topic, partitions, records, false).await?;
    let parse_alone = {
        let payloads: Vec<Vec<u8>> = (0..records.min(200_000)).map(event).collect();
        let started = Instant::now();
        for payload in &payloads {
            let value: serde_json::Value = serde_json::from_slice(payload)?;
            std::hint::black_box(value);
        }
        payloads.len() as f64 / started.elapsed().as_secs_f64()
    };
    let baseline = bare_consumer(&bootstrap, &topic, partitions, records, true).await?;

    // (b) sluice end to end.
    let dir = tempfile::tempdir()?;
    let root = format!("/{}", unique_name("bench"));
    let pipeline = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/clickstream.toml"))?
        .replace("${KAFKA_BOOTSTRAP:-localhost:9092}", broker.bootstrap_servers())
        .replace("topic = \"clickstream\"", &format!("topic = \"{topic}\""))
        // Four segments per partition, the last one sealed by its final row,
        // so the run ends on throughput, not on the flush timer.
        .replace("rows = 500000", &format!("rows = {}", records / partitions as u64 / 4))
        .replace("time = \"10m\"", "time = \"5s\"")
        .replace("policy = \"dead_letter\"\ntopic = \"clickstream-dead-letters\"", "policy = \"skip\"")
        .replace(
            "[bad_records]",
            &format!("[deep_store]\nuri = \"file://{}\"\n\n[bad_records]", dir.path().join("deep").display()),
        );
    std::fs::write(dir.path().join("clickstream.toml"), pipeline)?;
    let http = format!("127.0.0.1:{}", sluice_testkit::net::free_port()?);
    let worker = format!(
        "node_id = \"bench\"\ndata_dir = \"{}\"\nmemory_budget = \"4GiB\"\n[coordinator]\nconnect = \"{}\"\nroot = \"{root}\"\n\
         [http]\nlisten = \"{http}\"\n[pipelines]\nfiles = [\"clickstream.toml\"]\nfrom_coordinator = false\n",
        dir.path().join("data").display(),
        zk.connect_string()
    );
    std::fs::write(dir.path().join("worker.toml"), worker)?;
    let observer =
        ZooKeeperCoordinator::connect(ZooKeeperOptions::plain(zk.connect_string(), &root, Duration::from_secs(30)))
            .await?;
    // SLUICE_BENCH_LOG=<file> keeps the worker's log (at RUST_LOG, default warn).
    let log_path = std::env::var("SLUICE_BENCH_LOG").map_or_else(|_| dir.path().join("worker.log"), Into::into);
    let log = std::fs::File::create(&log_path)?;
    let mut command = Command::new(&sluice);
    command
        .args(["ingest", "--config"])
        .arg(dir.path().join("worker.toml"))
        .env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()))
        .stdin(Stdio::null())
        .stderr(log);
    let started = Instant::now();
    let mut process = GuardedChild::spawn(command).context("start sluice ingest")?;
    let mut peak_bytes_per_row = 0f64;
    // Progress from the worker's metrics, not from ZooKeeper: listing the
    // segment catalog every few milliseconds would load the ZooKeeper server
    // the worker commits to. The catalog is checked once at the end.
    let elapsed = loop {
        let (_, metrics) = http_get(&http, "/metrics");
        let committed = metric_sum(&metrics, "sluice_rows_committed_total");
        if committed >= records as f64 {
            break started.elapsed();
        }
        let in_flight = metric_sum(&metrics, "sluice_records_consumed_total") - committed;
        let memory = metric_sum(&metrics, "sluice_consuming_segment_bytes");
        if in_flight > 50_000.0 {
            peak_bytes_per_row = peak_bytes_per_row.max(memory / in_flight);
        }
        anyhow::ensure!(started.elapsed() < Duration::from_secs(600), "sluice did not finish within 10 minutes");
        // Each poll renders the worker's whole registry (3% of its CPU at
        // 50 polls a second): every 100 ms until the last quarter of the
        // rows (the last segment of each partition) is what remains, then
        // every 10 ms, so the end is seen within 10 ms.
        let near_end = committed >= records as f64 * 0.75 - 1.0;
        tokio::time::sleep(Duration::from_millis(if near_end { 10 } else { 100 })).await;
    };
    let (segments, _) = observer.segments("clickstream").await?;
    let in_catalog: u64 = segments.iter().map(|s| s.row_count).sum();
    anyhow::ensure!(in_catalog == records, "the catalog holds {in_catalog} rows, {records} were produced");
    let (_, metrics) = http_get(&http, "/metrics");
    let commit_sum = metric_sum(&metrics, "sluice_commit_seconds_sum");
    let commit_count = metric_sum(&metrics, "sluice_commit_seconds_count");
    let worker_cpu = process.id().and_then(cpu_seconds);
    process.signal(libc::SIGTERM)?;
    process.wait_timeout(Duration::from_secs(30))?;

    let a = records as f64 / baseline.as_secs_f64();
    let b = records as f64 / elapsed.as_secs_f64();
    println!(
        "Broker delivery alone (a consumer that parses nothing): {:.0} rows/s ({delivery:.2?}); JSON parse alone (in memory, one core): {parse_alone:.0} rows/s\n",
        records as f64 / delivery.as_secs_f64()
    );
    if let Some(cpu) = worker_cpu {
        println!(
            "sluice's CPU: {cpu:.2} s over {:.2} s ({:.2} µs per row; its threads, librdkafka's included)\n",
            elapsed.as_secs_f64(),
            cpu * 1e6 / records as f64
        );
    }
    println!(
        "| records | partitions | (a) bare consumer + JSON parse | (b) sluice end to end | b/a | commit latency (mean) | consuming memory per 1M rows |"
    );
    println!("|---|---|---|---|---|---|---|");
    println!(
        "| {records} | {partitions} | {:.0} rows/s ({:.2?}) | {:.0} rows/s ({:.2?}) | {:.2} | {:.1} ms over {commit_count} commits | {:.0} MiB |",
        a,
        baseline,
        b,
        elapsed,
        b / a,
        if commit_count > 0.0 { commit_sum / commit_count * 1000.0 } else { 0.0 },
        peak_bytes_per_row * 1_000_000.0 / (1024.0 * 1024.0)
    );
    Ok(())
}

/// Reads every record of `topic` with one consumer assigned all partitions,
/// parsing each payload into a `serde_json::Value` when `parse` is set.
async fn bare_consumer(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
    records: u64,
    parse: bool,
) -> anyhow::Result<Duration> {
    let (bootstrap, topic) = (bootstrap.to_string(), topic.to_string());
    tokio::task::spawn_blocking(move || -> anyhow::Result<Duration> {
        let consumer: BaseConsumer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .set("group.id", "bench-baseline")
            .set("enable.auto.commit", "false")
            // The baseline at its best: librdkafka's default caps the
            // prefetched queue of a consumer at 64 MiB over all its
            // partitions and then postpones fetching by a whole second
            // (`fetch.queue.backoff.ms`), which a parsing consumer hits on
            // large runs. sluice's consumers each hold one partition.
            .set("queued.max.messages.kbytes", "1048576")
            .set("fetch.queue.backoff.ms", "10")
            .create()?;
        let mut assignment = TopicPartitionList::new();
        for p in 0..partitions {
            assignment.add_partition_offset(&topic, p, Offset::Beginning)?;
        }
        consumer.assign(&assignment)?;
        let started = Instant::now();
        let mut seen = 0u64;
        while seen < records {
            if let Some(message) = consumer.poll(Duration::from_millis(100)) {
                let message = message?;
                let payload = message.payload().unwrap_or_default();
                if parse {
                    let value: serde_json::Value = serde_json::from_slice(payload)?;
                    std::hint::black_box(value);
                } else {
                    std::hint::black_box(payload);
                }
                seen += 1;
            }
        }
        Ok(started.elapsed())
    })
    .await?
}

/// User + system CPU seconds a process has used so far (Linux `/proc`).
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is parenthesised and may hold spaces.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Some(ticks / per_second)
}
