//! Real `sluice ingest` processes against real ZooKeeper and a
//! Kafka-protocol broker: workers are SIGKILLed and restarted while records
//! keep arriving, and the committed segment files — read back, not counted —
//! hold every record exactly once. Then SIGTERM drains cleanly.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use arrow::array::AsArray;
use arrow::datatypes::Int64Type;
use sluice_coordinator::{Coordinator, ZooKeeperCoordinator, ZooKeeperOptions};
use sluice_segments::Segment;
use sluice_storage::file_uri_path;
use sluice_testkit::net::{http_get, metric_sum};
use sluice_testkit::{GuardedChild, KafkaBroker, ZooKeeper, unique_name, wait_until};

struct Cluster {
    dir: tempfile::TempDir,
    zk_connect: String,
    root: String,
}

impl Cluster {
    fn worker_config(&self, id: &str) -> PathBuf {
        self.worker_config_listening(id, "127.0.0.1:0")
    }

    fn worker_config_listening(&self, id: &str, listen: &str) -> PathBuf {
        self.worker_config_with(id, listen, "")
    }

    /// A worker file with `top` (top-level settings) added.
    fn worker_config_with(&self, id: &str, listen: &str, top: &str) -> PathBuf {
        let path = self.dir.path().join(format!("{id}.toml"));
        let text = format!(
            "node_id = \"{id}\"\n{top}data_dir = \"{}\"\n[coordinator]\nconnect = \"{}\"\nroot = \"{}\"\nsession_timeout = \"2s\"\n\
             [http]\nlisten = \"{listen}\"\n[pipelines]\nfiles = [\"events.toml\"]\nfrom_coordinator = false\n",
            self.dir.path().join(id).display(),
            self.zk_connect,
            self.root
        );
        std::fs::write(&path, text).unwrap();
        path
    }

    fn start(&self, id: &str) -> GuardedChild {
        self.start_with(id, self.worker_config(id))
    }

    fn start_with(&self, id: &str, config: PathBuf) -> GuardedChild {
        let log =
            std::fs::File::options().create(true).append(true).open(self.dir.path().join(format!("{id}.log"))).unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_sluice"));
        command
            .arg("ingest")
            .arg("--config")
            .arg(config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        GuardedChild::spawn(command).unwrap()
    }

    fn log(&self, id: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("{id}.log"))).unwrap_or_default()
    }
}

fn write_pipeline(dir: &Path, topic: &str, bootstrap: &str) {
    let text = format!(
        "table = \"events\"\n[source]\nbootstrap_servers = \"{bootstrap}\"\ntopic = \"{topic}\"\n[schema]\ntime_column = \"ts\"\n\
         [[schema.columns]]\nname = \"ts\"\ntype = \"timestamp\"\nnullable = false\n\
         [[schema.columns]]\nname = \"id\"\ntype = \"int64\"\nnullable = false\n\
         [flush]\nrows = 700\ntime = \"1s\"\n[deep_store]\nuri = \"file://{}\"\n",
        dir.join("deep").display()
    );
    std::fs::write(dir.join("events.toml"), text).unwrap();
}

/// (partition, offset) → id over every committed segment file, and how many
/// (partition, offset) pairs appeared in more than one segment.
async fn committed(c: &dyn Coordinator) -> (BTreeMap<(i32, i64), i64>, usize) {
    let (segments, _) = c.segments("events").await.unwrap();
    let mut rows = BTreeMap::new();
    let mut duplicates = 0;
    for record in segments {
        let batch = Segment::open(&file_uri_path(&record.uri).unwrap()).unwrap().to_record_batch().unwrap();
        let column = |name: &str| batch.column_by_name(name).unwrap().as_primitive::<Int64Type>().clone();
        let (ids, offsets) = (column("id"), column("__offset"));
        for i in 0..batch.num_rows() {
            duplicates += usize::from(rows.insert((record.partition, offsets.value(i)), ids.value(i)).is_some());
        }
    }
    (rows, duplicates)
}

async fn committed_rows(c: &dyn Coordinator) -> u64 {
    c.segments("events").await.unwrap().0.iter().map(|s| s.row_count).sum()
}

/// ZooKeeper, a broker, a topic, a cluster directory holding the default
/// pipeline, and an observer session on the cluster's root.
struct Setup {
    zk: ZooKeeper,
    broker: KafkaBroker,
    topic: String,
    cluster: Cluster,
    observer: ZooKeeperCoordinator,
}

async fn setup(partitions: i32, name: &str) -> Setup {
    let zk = ZooKeeper::start().unwrap();
    let broker = KafkaBroker::start().unwrap();
    let topic = unique_name("events");
    broker.create_topic(&topic, partitions).await.unwrap();
    let cluster = Cluster {
        dir: tempfile::tempdir().unwrap(),
        zk_connect: zk.connect_string(),
        root: format!("/{}", unique_name(name)),
    };
    write_pipeline(cluster.dir.path(), &topic, broker.bootstrap_servers());
    let observer = ZooKeeperCoordinator::connect(ZooKeeperOptions::plain(
        zk.connect_string(),
        &cluster.root,
        Duration::from_secs(30),
    ))
    .await
    .unwrap();
    Setup { zk, broker, topic, cluster, observer }
}

/// `{"ts": id, "id": id}` records, spread over `partitions` by id.
fn events(ids: std::ops::Range<i64>, partitions: i64) -> impl Iterator<Item = (i32, Vec<u8>)> {
    ids.map(move |id| ((id % partitions) as i32, format!("{{\"ts\": {id}, \"id\": {id}}}").into_bytes()))
}

/// An independent producer writing `chunks` chunks of `chunk` records, with
/// a pause after each, so that disturbances land while records flow.
fn produce_paced(
    s: &Setup,
    chunks: i64,
    chunk: i64,
    partitions: i64,
    pause: Duration,
) -> tokio::task::JoinHandle<Vec<(i32, i64)>> {
    let bootstrap = s.broker.bootstrap_servers().to_string();
    let topic = s.topic.clone();
    tokio::spawn(async move {
        let producer = sluice_testkit::TestProducer::new(&bootstrap).unwrap();
        let mut delivered = Vec::new();
        for n in 0..chunks {
            delivered.extend(producer.send_all(&topic, events(n * chunk..(n + 1) * chunk, partitions)).await.unwrap());
            tokio::time::sleep(pause).await;
        }
        delivered
    })
}

/// SIGTERM to every worker: each commits what it consumed and exits 0.
fn drain<'a>(cluster: &Cluster, workers: impl IntoIterator<Item = (&'a str, &'a mut GuardedChild)>) {
    let mut workers: Vec<_> = workers.into_iter().collect();
    for (_, worker) in workers.iter_mut() {
        worker.signal(libc::SIGTERM).unwrap();
    }
    for (id, worker) in workers.iter_mut() {
        let status = worker.wait_timeout(Duration::from_secs(30)).unwrap().expect("exits after SIGTERM");
        assert!(status.success(), "{id} exit {status:?}\n{}", cluster.log(id));
    }
}

/// The committed segment files hold every delivered record exactly once, at
/// its own offset (the id is the delivery order).
async fn assert_exactly_once(observer: &ZooKeeperCoordinator, delivered: &[(i32, i64)]) {
    let (rows, duplicates) = committed(observer).await;
    assert_eq!(duplicates, 0, "no record committed twice");
    let expected: BTreeMap<(i32, i64), i64> =
        delivered.iter().enumerate().map(|(id, (p, o))| ((*p, *o), id as i64)).collect();
    assert_eq!(rows.len(), expected.len(), "no record lost");
    assert_eq!(rows, expected, "each record at its own offset");
}

/// What happens to the cluster while records flow.
enum Disturbance {
    /// SIGKILL a worker and start it again, alternating, three times.
    KillAndRestart,
    /// SIGSTOP a worker past its session timeout while the other takes its
    /// partitions over, then SIGCONT it: a zombie that must commit nothing.
    Zombie,
    /// Every broker down for 10 s.
    BrokerDown,
    /// ZooKeeper killed and restarted.
    ZooKeeperRestart,
}

async fn scenario(disturbance: Disturbance) {
    let mut s = setup(4, "e2e").await;
    if matches!(disturbance, Disturbance::BrokerDown) && !s.broker.is_mock() {
        eprintln!("skipped: taking the broker down needs the mock broker");
        return;
    }
    let total = 30_000i64;
    let producing = produce_paced(&s, 10, 3_000, 4, Duration::from_millis(300));
    let (cluster, observer) = (&s.cluster, &s.observer);

    let mut w1 = cluster.start("w1");
    let mut w2 = cluster.start("w2");
    match disturbance {
        Disturbance::KillAndRestart => {
            for round in 0..3 {
                tokio::time::sleep(Duration::from_millis(1_500)).await;
                let (victim, id) = if round % 2 == 0 { (&mut w1, "w1") } else { (&mut w2, "w2") };
                victim.signal(libc::SIGKILL).unwrap();
                victim.wait_timeout(Duration::from_secs(5)).unwrap();
                *victim = cluster.start(id);
            }
        }
        Disturbance::Zombie => {
            let both_own = || async {
                let owners = observer.partition_owners("events").await.unwrap();
                owners.iter().any(|(_, o)| o == "w1") && owners.iter().any(|(_, o)| o == "w2")
            };
            wait_until("both workers own partitions", Duration::from_secs(30), both_own).await.unwrap();
            w1.signal(libc::SIGSTOP).unwrap();
            let w2_owns_all = || async {
                let owners = observer.partition_owners("events").await.unwrap();
                owners.len() == 4 && owners.iter().all(|(_, o)| o == "w2")
            };
            wait_until("w2 takes over the stopped worker's partitions", Duration::from_secs(30), w2_owns_all)
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_secs(2)).await;
            w1.signal(libc::SIGCONT).unwrap();
        }
        Disturbance::BrokerDown => {
            tokio::time::sleep(Duration::from_secs(1)).await;
            s.broker.take_down().unwrap();
            tokio::time::sleep(Duration::from_secs(10)).await;
            s.broker.bring_up().unwrap();
        }
        Disturbance::ZooKeeperRestart => {
            tokio::time::sleep(Duration::from_secs(1)).await;
            s.zk.stop();
            tokio::time::sleep(Duration::from_secs(3)).await;
            s.zk.restart().unwrap();
        }
    }
    let delivered = producing.await.unwrap();
    assert_eq!(delivered.len(), total as usize);

    let all = || async { committed_rows(observer).await >= total as u64 };
    if let Err(e) = wait_until("every record is committed", Duration::from_secs(120), all).await {
        panic!("{e}\n--- w1 ---\n{}\n--- w2 ---\n{}", cluster.log("w1"), cluster.log("w2"));
    }

    drain(cluster, [("w1", &mut w1), ("w2", &mut w2)]);
    assert_exactly_once(observer, &delivered).await;
    if matches!(disturbance, Disturbance::Zombie) {
        assert!(
            cluster.log("w1").contains("fenced") || cluster.log("w1").contains("session ended"),
            "{}",
            cluster.log("w1")
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_and_restarted_workers_keep_exactly_once() {
    scenario(Disturbance::KillAndRestart).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_zombie_worker_commits_nothing() {
    scenario(Disturbance::Zombie).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingestion_resumes_after_the_broker_was_down_for_ten_seconds() {
    scenario(Disturbance::BrokerDown).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingestion_resumes_after_zookeeper_restarts() {
    scenario(Disturbance::ZooKeeperRestart).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_serves_health_and_metrics() {
    let s = setup(2, "http").await;
    let (cluster, observer) = (&s.cluster, &s.observer);
    let producer = s.broker.producer().unwrap();
    let mut records: Vec<(i32, Vec<u8>)> = events(0..1_000, 2).collect();
    records.push((0, b"not json".to_vec()));
    producer.send_all(&s.topic, records).await.unwrap();
    let addr = format!("127.0.0.1:{}", sluice_testkit::net::free_port().unwrap());
    let mut worker = cluster.start_with("w1", cluster.worker_config_listening("w1", &addr));
    let done = || async { committed_rows(observer).await >= 1_000 };
    wait_until("the worker commits the records", Duration::from_secs(60), done).await.unwrap();
    let (workers, _) = observer.workers().await.unwrap();
    assert_eq!(workers[0].http_addr, addr, "the registration names the HTTP address");

    let (status, body) = http_get(&addr, "/health");
    assert_eq!(status, 200);
    assert!(body.contains("\"status\":\"ok\"") && body.contains("\"worker\":\"w1\""), "{body}");
    let metrics_ready = || async {
        let (_, body) = http_get(&addr, "/metrics");
        body.contains("sluice_partition_lag")
    };
    wait_until("lag is reported", Duration::from_secs(15), metrics_ready).await.unwrap();
    let (status, body) = http_get(&addr, "/metrics");
    assert_eq!(status, 200);
    for metric in [
        "sluice_records_consumed_total",
        "sluice_bytes_consumed_total",
        "sluice_segments_sealed_total",
        "sluice_segments_committed_total",
        "sluice_seal_seconds",
        "sluice_commit_seconds",
        "sluice_consuming_segment_bytes",
        "sluice_partitions_owned",
        "sluice_partition_lag",
    ] {
        assert!(body.contains(metric), "{metric} missing from /metrics:\n{body}");
    }
    assert!(
        body.contains("sluice_bad_records_total{table=\"events\",partition=\"0\",reason=\"invalid_json\"} 1"),
        "{body}"
    );
    worker.signal(libc::SIGTERM).unwrap();
    assert!(worker.wait_timeout(Duration::from_secs(30)).unwrap().unwrap().success());
}

/// The full scale: 200,000 records with unique ids over 8
/// partitions, 3 workers, one of them SIGKILLed and restarted every few
/// seconds for as long as ingestion runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_thousand_records_through_repeated_kills() {
    let s = setup(8, "scale").await;
    let text =
        std::fs::read_to_string(s.cluster.dir.path().join("events.toml")).unwrap().replace("rows = 700", "rows = 5000");
    std::fs::write(s.cluster.dir.path().join("events.toml"), text).unwrap();
    let (cluster, observer) = (&s.cluster, &s.observer);
    let total = 200_000i64;
    // Paced, so that kills land throughout ingestion.
    let producing = produce_paced(&s, 20, 10_000, 8, Duration::from_millis(600));

    let ids = ["w1", "w2", "w3"];
    let mut workers: Vec<GuardedChild> = ids.iter().map(|id| cluster.start(id)).collect();
    let mut kills = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(240);
    while committed_rows(observer).await < total as u64 {
        assert!(tokio::time::Instant::now() < deadline, "not done after 240 s\n{}", cluster.log("w1"));
        tokio::time::sleep(Duration::from_secs(2)).await;
        let victim = kills % ids.len();
        workers[victim].signal(libc::SIGKILL).unwrap();
        workers[victim].wait_timeout(Duration::from_secs(5)).unwrap();
        workers[victim] = cluster.start(ids[victim]);
        kills += 1;
    }
    let delivered = producing.await.unwrap();
    assert!(kills >= 4, "workers were killed throughout ingestion ({kills})");
    drain(cluster, ids.iter().copied().zip(workers.iter_mut()));
    assert_exactly_once(observer, &delivered).await;
    let (rows, _) = committed(observer).await;
    let unique_ids: std::collections::BTreeSet<i64> = rows.values().copied().collect();
    assert_eq!(unique_ids.len(), total as usize);
    eprintln!("{kills} kills during ingestion of {total} records");
}

/// Every class of bad record, mixed into a valid stream, through a real
/// worker with the `dead_letter` policy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_record_class_in_a_valid_stream() {
    let s = setup(1, "bad").await;
    let (cluster, observer, broker, topic) = (&s.cluster, &s.observer, &s.broker, &s.topic);
    let dead = format!("{topic}-dead");
    broker.create_topic(&dead, 1).await.unwrap();
    let pipeline = format!(
        "table = \"events\"\n[source]\nbootstrap_servers = \"{}\"\ntopic = \"{topic}\"\n[schema]\ntime_column = \"ts\"\n\
         [[schema.columns]]\nname = \"ts\"\ntype = \"timestamp\"\nnullable = false\n\
         [[schema.columns]]\nname = \"id\"\ntype = \"int64\"\nnullable = false\n\
         [[schema.columns]]\nname = \"small\"\ntype = \"int32\"\n\
         [[schema.columns]]\nname = \"seen\"\ntype = \"timestamp\"\nformat = \"rfc3339\"\n\
         [flush]\nrows = 300\ntime = \"1s\"\n[deep_store]\nuri = \"file://{}\"\n\
         [bad_records]\npolicy = \"dead_letter\"\ntopic = \"{dead}\"\nmax_message_bytes = \"2KiB\"\n",
        broker.bootstrap_servers(),
        cluster.dir.path().join("deep").display()
    );
    std::fs::write(cluster.dir.path().join("events.toml"), pipeline).unwrap();
    let deep_array = format!("{{\"ts\": 5, \"id\": 1, \"small\": {}{}}}", "[".repeat(900), "]".repeat(900));
    let bad: Vec<(&str, Vec<u8>)> = vec![
        ("invalid_json", b"{\"ts\": 1,".to_vec()),
        ("not_an_object", b"[1, 2]".to_vec()),
        ("missing_required", b"{\"ts\": 5}".to_vec()),
        ("wrong_type", b"{\"ts\": 5, \"id\": \"x\"}".to_vec()),
        ("out_of_range", b"{\"ts\": 5, \"id\": 1, \"small\": 99999999999}".to_vec()),
        ("invalid_timestamp", b"{\"ts\": 5, \"id\": 1, \"seen\": \"yesterday\"}".to_vec()),
        ("invalid_utf8", b"{\"ts\": 5, \"id\": 1, \"x\": \"\xff\"}".to_vec()),
        ("empty", Vec::new()),
        ("oversized", format!("{{\"ts\": 5, \"id\": 1, \"pad\": \"{}\"}}", "x".repeat(3000)).into_bytes()),
        ("wrong_type", deep_array.into_bytes()),
        ("null_in_required", b"{\"ts\": 5, \"id\": null}".to_vec()),
        ("duplicate_key", b"{\"ts\": 5, \"id\": 1, \"id\": 2}".to_vec()),
    ];
    // 1,000 valid records with the bad ones spread among them.
    let mut stream: Vec<(i32, Vec<u8>)> = Vec::new();
    for id in 0..1_000i64 {
        if id % 80 == 40 && (id / 80) < bad.len() as i64 {
            stream.push((0, bad[(id / 80) as usize].1.clone()));
        }
        stream.push((
            0,
            format!(
                "{{\"ts\": {id}, \"id\": {id}, \"ignored\": {{\"deep\": {}{}}}}}",
                "[".repeat(id as usize % 50 + 1),
                "]".repeat(id as usize % 50 + 1)
            )
            .into_bytes(),
        ));
    }
    let producer = broker.producer().unwrap();
    let delivered = producer.send_all(topic, stream.clone()).await.unwrap();
    let last_offset = delivered.iter().map(|(_, o)| *o).max().unwrap();

    let addr = format!("127.0.0.1:{}", sluice_testkit::net::free_port().unwrap());
    let mut worker = cluster.start_with("w1", cluster.worker_config_listening("w1", &addr));
    let past_everything = || async {
        observer.checkpoint("events", 0).await.unwrap().and_then(|c| c.next_offset) == Some(last_offset + 1)
    };
    if let Err(e) = wait_until("the partition passes every record", Duration::from_secs(60), past_everything).await {
        panic!("{e}\n{}", cluster.log("w1"));
    }

    let (rows, duplicates) = committed(observer).await;
    assert_eq!(duplicates, 0);
    let ids: Vec<i64> = rows.values().copied().collect();
    assert_eq!(ids, (0..1_000).collect::<Vec<_>>(), "every valid row landed, once");

    let (_, metrics) = http_get(&addr, "/metrics");
    for reason in bad.iter().map(|(r, _)| *r).collect::<std::collections::BTreeSet<_>>() {
        let count = bad.iter().filter(|(r, _)| *r == reason).count();
        let line = format!("sluice_bad_records_total{{table=\"events\",partition=\"0\",reason=\"{reason}\"}} {count}");
        assert!(metrics.contains(&line), "{line} missing:\n{metrics}");
    }

    use rdkafka::Message;
    use rdkafka::consumer::{Consumer, StreamConsumer};
    use rdkafka::message::Headers;
    let consumer: StreamConsumer = broker.consumer_config().create().unwrap();
    let mut assignment = rdkafka::TopicPartitionList::new();
    assignment.add_partition_offset(&dead, 0, rdkafka::Offset::Beginning).unwrap();
    consumer.assign(&assignment).unwrap();
    let mut letters = Vec::new();
    while letters.len() < bad.len() {
        let m = tokio::time::timeout(Duration::from_secs(20), consumer.recv()).await.expect("dead letters").unwrap();
        let reason =
            m.headers().and_then(|h| h.iter().find(|h| h.key == "sluice.reason").and_then(|h| h.value)).unwrap();
        letters.push((String::from_utf8_lossy(reason).to_string(), m.payload().unwrap_or_default().to_vec()));
    }
    let expected: Vec<(String, Vec<u8>)> = bad.iter().map(|(r, b)| (r.to_string(), b.clone())).collect();
    assert_eq!(letters, expected, "each bad record in the dead-letter topic, original bytes and reason");

    worker.signal(libc::SIGTERM).unwrap();
    assert!(worker.wait_timeout(Duration::from_secs(30)).unwrap().unwrap().success());
}

/// SIGTERM commits the consumed tail (below every flush threshold); the
/// next worker continues exactly after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_commits_the_tail_and_the_next_worker_continues_after_it() {
    let s = setup(2, "drain").await;
    let (cluster, observer) = (&s.cluster, &s.observer);
    let text = std::fs::read_to_string(cluster.dir.path().join("events.toml"))
        .unwrap()
        .replace("rows = 700", "rows = 1000000")
        .replace("time = \"1s\"", "time = \"1h\"");
    std::fs::write(cluster.dir.path().join("events.toml"), text).unwrap();
    let producer = s.broker.producer().unwrap();
    let mut delivered = producer.send_all(&s.topic, events(0..5_000, 2)).await.unwrap();

    let addr = format!("127.0.0.1:{}", sluice_testkit::net::free_port().unwrap());
    let mut first = cluster.start_with("w1", cluster.worker_config_listening("w1", &addr));
    let consumed_all = || async {
        let (_, metrics) = http_get(&addr, "/metrics");
        metric_sum(&metrics, "sluice_records_consumed_total") >= 5_000.0
    };
    wait_until("the first worker consumed everything", Duration::from_secs(30), consumed_all).await.unwrap();
    assert_eq!(committed_rows(observer).await, 0, "no threshold reached: nothing committed yet");
    first.signal(libc::SIGTERM).unwrap();
    assert!(first.wait_timeout(Duration::from_secs(30)).unwrap().unwrap().success(), "{}", cluster.log("w1"));
    assert_eq!(committed_rows(observer).await, 5_000, "shutdown committed the consumed tail");
    let tails: Vec<(i32, i64)> =
        observer.checkpoints("events").await.unwrap().iter().map(|(p, c)| (*p, c.next_offset.unwrap())).collect();

    delivered.extend(producer.send_all(&s.topic, events(5_000..8_000, 2)).await.unwrap());
    let mut second = cluster.start("w2");
    let all = || async {
        observer.checkpoints("events").await.unwrap().iter().map(|(_, c)| c.next_offset.unwrap_or(0)).sum::<i64>()
            >= 8_000
    };
    // The second worker holds its tail too; SIGTERM once it has read it all.
    tokio::time::sleep(Duration::from_secs(3)).await;
    second.signal(libc::SIGTERM).unwrap();
    assert!(second.wait_timeout(Duration::from_secs(30)).unwrap().unwrap().success(), "{}", cluster.log("w2"));
    wait_until("everything committed", Duration::from_secs(5), all).await.unwrap();
    let (segments, _) = observer.segments("events").await.unwrap();
    for (partition, tail) in tails {
        let next = segments.iter().filter(|s| s.partition == partition && s.seq == 1).map(|s| s.start_offset).next();
        assert_eq!(
            next,
            Some(tail),
            "partition {partition}: the next worker's first segment starts exactly after the tail"
        );
    }
    assert_exactly_once(observer, &delivered).await;
}

/// `/health` of a worker: (status code, body).
fn health(addr: &str) -> (u16, String) {
    http_get(addr, "/health")
}

/// Deep-store writes fail (the table's directory is a file: every segment
/// write fails as "Not a directory" — permissions would not stop root),
/// then recover: the partition task fails, releases its lease, is counted
/// and retried with backoff; `/health` and `sluice status` report the stall
/// while it lasts; once writes work the partitions resume on their own and
/// every record is committed exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_whose_deep_store_writes_fail_resumes_on_its_own() {
    let s = setup(2, "fault").await;
    let (cluster, observer) = (&s.cluster, &s.observer);
    let blocked = cluster.dir.path().join("deep").join("events");
    std::fs::create_dir_all(blocked.parent().unwrap()).unwrap();
    std::fs::write(&blocked, b"a file where the table's directory goes").unwrap();
    let delivered = s.broker.producer().unwrap().send_all(&s.topic, events(0..2_000, 2)).await.unwrap();
    let addr = format!("127.0.0.1:{}", sluice_testkit::net::free_port().unwrap());
    let config = cluster.worker_config_with("w1", &addr, "stall_timeout = \"2s\"\n");
    let mut worker = cluster.start_with("w1", config);

    let unhealthy = || async {
        let (status, body) = health(&addr);
        status == 503 && body.matches("\"partition\":").count() >= 2
    };
    if let Err(e) = wait_until("/health reports the stalled partitions", Duration::from_secs(60), unhealthy).await {
        panic!("{e}: {:?}\n{}", health(&addr), cluster.log("w1"));
    }
    let (_, body) = health(&addr);
    assert!(body.contains("\"status\":\"unhealthy\"") && body.contains("\"stalled\""), "{body}");
    let (_, metrics) = http_get(&addr, "/metrics");
    assert!(metric_sum(&metrics, "sluice_partition_failures_total") >= 2.0, "{metrics}");
    assert!(metrics.contains("reason=\"upload\""), "{metrics}");
    assert_eq!(committed_rows(observer).await, 0);
    let status = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["status", "--zookeeper", &cluster.zk_connect, "--root", &cluster.root])
        .output()
        .unwrap();
    let printed = String::from_utf8_lossy(&status.stdout);
    assert!(status.status.success(), "{printed}{}", String::from_utf8_lossy(&status.stderr));
    assert!(printed.contains("health unhealthy") && printed.contains("stalled partitions: 2"), "{printed}");
    assert!(printed.contains("events/0") && printed.contains("upload"), "{printed}");

    std::fs::remove_file(&blocked).unwrap();
    let all = || async { committed_rows(observer).await >= 2_000 };
    if let Err(e) = wait_until("the partitions resume by themselves", Duration::from_secs(90), all).await {
        panic!("{e}\n{}", cluster.log("w1"));
    }
    let healthy = || async { health(&addr).0 == 200 };
    wait_until("/health is ok again", Duration::from_secs(30), healthy).await.unwrap();
    assert_exactly_once(observer, &delivered).await;
    worker.signal(libc::SIGTERM).unwrap();
    assert!(worker.wait_timeout(Duration::from_secs(30)).unwrap().unwrap().success(), "{}", cluster.log("w1"));
}

/// `sluice pipeline reset-offset` fences the live owner; the owner's task
/// ends, releases its lease, and the worker takes the partition again at
/// the reset position within seconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_offset_on_a_live_owner_resumes_within_seconds() {
    let s = setup(1, "reset").await;
    let (cluster, observer) = (&s.cluster, &s.observer);
    let producer = s.broker.producer().unwrap();
    let mut delivered = producer.send_all(&s.topic, events(0..500, 1)).await.unwrap();
    let mut worker = cluster.start("w1");
    let first = || async { committed_rows(observer).await >= 500 };
    wait_until("the first records commit", Duration::from_secs(60), first).await.unwrap();
    // Reset to where the partition is: nothing is read twice, but the owner
    // is fenced all the same.
    let reset = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["pipeline", "reset-offset", "events", "0", "500", "--zookeeper", &cluster.zk_connect])
        .args(["--root", &cluster.root])
        .output()
        .unwrap();
    assert!(reset.status.success(), "{}", String::from_utf8_lossy(&reset.stderr));
    delivered.extend(producer.send_all(&s.topic, events(500..1_000, 1)).await.unwrap());
    let started = std::time::Instant::now();
    let all = || async { committed_rows(observer).await >= 1_000 };
    if let Err(e) = wait_until("the partition resumes after the reset", Duration::from_secs(30), all).await {
        panic!("{e}\n{}", cluster.log("w1"));
    }
    eprintln!("resumed and committed within {:?}", started.elapsed());
    assert!(started.elapsed() < Duration::from_secs(15), "{}", cluster.log("w1"));
    assert!(cluster.log("w1").contains("fenced"), "the owner was fenced:\n{}", cluster.log("w1"));
    assert_exactly_once(observer, &delivered).await;
    worker.signal(libc::SIGTERM).unwrap();
    assert!(worker.wait_timeout(Duration::from_secs(30)).unwrap().unwrap().success());
}

/// Policy `fail`: a bad record stops the partition (reported, retried with
/// backoff, never skipped); resetting the offset past it resumes ingestion
/// within seconds, without waiting out the backoff.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fail_policy_stops_at_a_bad_record_until_a_reset_past_it() {
    let s = setup(1, "failpolicy").await;
    let (cluster, observer) = (&s.cluster, &s.observer);
    let path = cluster.dir.path().join("events.toml");
    let text = std::fs::read_to_string(&path).unwrap() + "[bad_records]\npolicy = \"fail\"\n";
    std::fs::write(&path, text).unwrap();
    let producer = s.broker.producer().unwrap();
    let mut delivered = producer.send_all(&s.topic, events(0..300, 1)).await.unwrap();
    let addr = format!("127.0.0.1:{}", sluice_testkit::net::free_port().unwrap());
    let mut worker = cluster.start_with("w1", cluster.worker_config_with("w1", &addr, "stall_timeout = \"2s\"\n"));
    let first = || async { committed_rows(observer).await >= 300 };
    wait_until("the good records commit", Duration::from_secs(60), first).await.unwrap();
    let bad = producer.send(&s.topic, 0, None, b"not json").await.unwrap();
    let rest: Vec<(i32, Vec<u8>)> = events(300..600, 1).collect();
    delivered.extend(producer.send_all(&s.topic, rest).await.unwrap());
    let stuck = || async {
        let (status, body) = health(&addr);
        status == 503 && body.contains("bad_record")
    };
    if let Err(e) = wait_until("the bad record stops the partition", Duration::from_secs(60), stuck).await {
        panic!("{e}: {:?}\n{}", health(&addr), cluster.log("w1"));
    }
    assert_eq!(committed_rows(observer).await, 300, "nothing past the bad record");
    let reset = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["pipeline", "reset-offset", "events", "0", &(bad + 1).to_string()])
        .args(["--zookeeper", &cluster.zk_connect, "--root", &cluster.root])
        .output()
        .unwrap();
    assert!(reset.status.success(), "{}", String::from_utf8_lossy(&reset.stderr));
    let started = std::time::Instant::now();
    let all = || async { committed_rows(observer).await >= 600 };
    if let Err(e) = wait_until("ingestion resumes past the bad record", Duration::from_secs(30), all).await {
        panic!("{e}\n{}", cluster.log("w1"));
    }
    assert!(started.elapsed() < Duration::from_secs(15), "resumed in {:?}", started.elapsed());
    let healthy = || async { health(&addr).0 == 200 };
    wait_until("/health is ok again", Duration::from_secs(30), healthy).await.unwrap();
    // Every good record once; the checkpoint moved past the bad one.
    let (rows, duplicates) = committed(observer).await;
    assert_eq!(duplicates, 0);
    assert_eq!(rows.values().copied().collect::<Vec<_>>(), (0..600).collect::<Vec<i64>>());
    assert!(rows.keys().all(|(_, offset)| *offset != bad));
    worker.signal(libc::SIGTERM).unwrap();
    assert!(worker.wait_timeout(Duration::from_secs(30)).unwrap().unwrap().success());
}

/// Records the broker no longer holds (the mock broker keeps 5 MB per
/// partition, as retention would): a worker restarting from its checkpoint
/// finds the log starting later. The jump is logged, counted, recorded in
/// the segment's metadata and catalog entry, and shown by `sluice status`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offset_gap_is_counted_and_reported() {
    let s = setup(1, "gap").await;
    if !s.broker.is_mock() {
        eprintln!("skipped: needs the mock broker's bounded log");
        return;
    }
    let (cluster, observer) = (&s.cluster, &s.observer);
    let producer = s.broker.producer().unwrap();
    producer.send_all(&s.topic, events(0..100, 1)).await.unwrap();
    let mut worker = cluster.start("w1");
    let first = || async { committed_rows(observer).await >= 100 };
    wait_until("the first records commit", Duration::from_secs(60), first).await.unwrap();
    drain(cluster, [("w1", &mut worker)]);
    // 8 MB more: the broker drops the oldest records, offsets 100.. among them.
    let pad = "x".repeat(1024);
    let big = (100..8_100i64).map(|id| (0, format!("{{\"ts\": {id}, \"id\": {id}, \"pad\": \"{pad}\"}}").into_bytes()));
    let delivered = producer.send_all(&s.topic, big).await.unwrap();
    let last = delivered.iter().map(|(_, o)| *o).max().unwrap();
    let addr = format!("127.0.0.1:{}", sluice_testkit::net::free_port().unwrap());
    let mut worker = cluster.start_with("w2", cluster.worker_config_listening("w2", &addr));
    let past =
        || async { observer.checkpoint("events", 0).await.unwrap().and_then(|c| c.next_offset) == Some(last + 1) };
    if let Err(e) = wait_until("the partition reaches the end", Duration::from_secs(90), past).await {
        panic!("{e}\n{}", cluster.log("w2"));
    }
    let (segments, _) = observer.segments("events").await.unwrap();
    let gapped: Vec<_> = segments.iter().filter(|s| s.offset_gaps > 0).collect();
    assert_eq!(gapped.len(), 1, "{segments:?}");
    assert_eq!(gapped[0].start_offset, 100);
    let meta = Segment::open(&file_uri_path(&gapped[0].uri).unwrap()).unwrap().meta().clone();
    let (from, to) = meta.offset_gaps[0];
    assert_eq!(from, 100);
    assert_eq!((to - from + 1) as u64, gapped[0].offset_gaps);
    let (_, metrics) = http_get(&addr, "/metrics");
    assert_eq!(metric_sum(&metrics, "sluice_offset_gaps_total"), 1.0, "{metrics}");
    assert_eq!(metric_sum(&metrics, "sluice_offset_gap_records_total"), gapped[0].offset_gaps as f64);
    assert!(cluster.log("w2").contains("offset gap"), "{}", cluster.log("w2"));
    let status = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["status", "--zookeeper", &cluster.zk_connect, "--root", &cluster.root])
        .output()
        .unwrap();
    let printed = String::from_utf8_lossy(&status.stdout);
    assert!(printed.contains(&format!("offset gaps: {} offsets", gapped[0].offset_gaps)), "{printed}");

    // A query over those segments says so too.
    let query_addr = format!("127.0.0.1:{}", sluice_testkit::net::free_port().unwrap());
    let query_config = cluster.dir.path().join("query.toml");
    let text = format!(
        "cache_dir = \"{}\"\n[coordinator]\nconnect = \"{}\"\nroot = \"{}\"\n[http]\nlisten = \"{query_addr}\"\n",
        cluster.dir.path().join("cache").display(),
        cluster.zk_connect,
        cluster.root
    );
    std::fs::write(&query_config, text).unwrap();
    let log = std::fs::File::create(cluster.dir.path().join("query.log")).unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_sluice"));
    command
        .args(["query", "--config"])
        .arg(&query_config)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log);
    let _query = GuardedChild::spawn(command).unwrap();
    let body = serde_json::to_vec(&serde_json::json!({"sql": "SELECT COUNT(*) FROM events"})).unwrap();
    let answered = || async {
        let (status, text) = sluice_testkit::net::http_post(&query_addr, "/query/sql", &body);
        status == 200 && text.contains(&format!("\"numOffsetGaps\":{}", gapped[0].offset_gaps))
    };
    wait_until("the query response reports the gap", Duration::from_secs(30), answered).await.unwrap();
    drain(cluster, [("w2", &mut worker)]);
}
