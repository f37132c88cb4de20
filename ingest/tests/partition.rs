//! A partition ingested through crashes and bad records, against real
//! ZooKeeper and a Kafka-protocol broker; exactly-once is checked by reading
//! the committed segment files.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use arrow::array::AsArray;
use arrow::datatypes::Int64Type;
use rdkafka::Message;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Headers;
use sluice_config::parse_pipeline;
use sluice_coordinator::{Coordinator, ZooKeeperCoordinator, ZooKeeperOptions};
use sluice_ingest::budget::MemoryBudget;
use sluice_ingest::partition::{Exit, PipelineContext, ingest_partition};
use sluice_segments::Segment;
use sluice_storage::{DeepStore, file_uri_path};
use sluice_testkit::kafka::committed_offsets;
use sluice_testkit::{KafkaBroker, ZooKeeper, unique_name, wait_until};
use tokio::sync::watch;

fn pipeline(topic: &str, bootstrap: &str, extra: &str) -> sluice_config::PipelineConfig {
    let text = format!(
        r#"
table = "events"
[source]
bootstrap_servers = "{bootstrap}"
topic = "{topic}"
[schema]
time_column = "ts"
[[schema.columns]]
name = "ts"
type = "timestamp"
nullable = false
[[schema.columns]]
name = "id"
type = "int64"
nullable = false
[indexes]
inverted = ["id"]
[flush]
rows = 250
time = "1s"
{extra}
"#
    );
    parse_pipeline(&text, Path::new("events.toml"), &|_: &str| None).unwrap()
}

async fn coordinator(zk: &ZooKeeper, root: &str) -> Arc<dyn Coordinator> {
    let options = ZooKeeperOptions::plain(zk.connect_string(), root, Duration::from_secs(2));
    Arc::new(ZooKeeperCoordinator::connect(options).await.unwrap())
}

/// Acquires the partition once its previous owner (or its session) let go.
async fn acquire_when_free(c: &dyn Coordinator, partition: i32, owner: &str) -> sluice_coordinator::Lease {
    loop {
        if let Some(lease) = c.acquire("events", partition, owner).await.unwrap() {
            return lease;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// (partition, offset) → id over every committed segment file.
async fn committed_rows(c: &dyn Coordinator) -> (BTreeMap<(i32, i64), i64>, usize) {
    let (segments, _) = c.segments("events").await.unwrap();
    let mut rows = BTreeMap::new();
    let mut duplicates = 0;
    for record in &segments {
        let segment = Segment::open(&file_uri_path(&record.uri).unwrap()).unwrap();
        let batch = segment.to_record_batch().unwrap();
        let ids = batch.column(1).as_primitive::<Int64Type>();
        let offsets = batch.column(2).as_primitive::<Int64Type>();
        for i in 0..batch.num_rows() {
            if rows.insert((record.partition, offsets.value(i)), ids.value(i)).is_some() {
                duplicates += 1;
            }
        }
    }
    (rows, duplicates)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_mid_stream_loses_nothing_and_duplicates_nothing() {
    let zk = ZooKeeper::start().unwrap();
    let broker = KafkaBroker::start().unwrap();
    let topic = unique_name("events");
    broker.create_topic(&topic, 2).await.unwrap();
    let producer = broker.producer().unwrap();
    let first = producer
        .send_all(
            &topic,
            (0..2_000i64).map(|id| ((id % 2) as i32, format!("{{\"ts\": {id}, \"id\": {id}}}").into_bytes())),
        )
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let root = format!("/{}", unique_name("ingest"));
    let config = Arc::new(pipeline(&topic, broker.bootstrap_servers(), ""));

    // Worker A takes both partitions, and dies (no flush, no release) after
    // committing some segments.
    let a = coordinator(&zk, &root).await;
    let ctx_a = Arc::new(
        PipelineContext::new(
            config.clone(),
            a.clone(),
            DeepStore::local(dir.path()).unwrap(),
            Arc::new(MemoryBudget::unlimited()),
        )
        .unwrap(),
    );
    let (_stop_a, stop_rx) = watch::channel(false);
    let mut tasks = Vec::new();
    for p in 0..2 {
        let lease = a.acquire("events", p, "a").await.unwrap().unwrap();
        tasks.push(tokio::spawn(ingest_partition(ctx_a.clone(), lease, stop_rx.clone())));
    }
    let some_committed = || async { committed_rows(a.as_ref()).await.0.len() >= 500 };
    wait_until("A commits some segments", Duration::from_secs(30), some_committed).await.unwrap();
    for task in &tasks {
        task.abort();
    }
    drop(ctx_a);
    drop(a); // the session closes: A's locks vanish as on a crash

    // More records arrive; worker B takes over from the checkpoints.
    let second = producer
        .send_all(
            &topic,
            (2_000..3_000i64).map(|id| ((id % 2) as i32, format!("{{\"ts\": {id}, \"id\": {id}}}").into_bytes())),
        )
        .await
        .unwrap();
    let b = coordinator(&zk, &root).await;
    let ctx_b = Arc::new(
        PipelineContext::new(
            config.clone(),
            b.clone(),
            DeepStore::local(dir.path()).unwrap(),
            Arc::new(MemoryBudget::unlimited()),
        )
        .unwrap(),
    );
    let (stop_b, stop_rx) = watch::channel(false);
    let mut tasks = Vec::new();
    for p in 0..2 {
        let lease = acquire_when_free(b.as_ref(), p, "b").await;
        tasks.push(tokio::spawn(ingest_partition(ctx_b.clone(), lease, stop_rx.clone())));
    }
    let all = || async { committed_rows(b.as_ref()).await.0.len() >= 3_000 };
    wait_until("B commits everything", Duration::from_secs(60), all).await.unwrap();
    stop_b.send(true).unwrap();
    for task in tasks {
        assert_eq!(task.await.unwrap(), Exit::Stopped);
    }

    let (rows, duplicates) = committed_rows(b.as_ref()).await;
    assert_eq!(duplicates, 0, "no (partition, offset) in two segments");
    let produced: BTreeMap<(i32, i64), i64> =
        first.iter().chain(&second).enumerate().map(|(id, (p, o))| ((*p, *o), id as i64)).collect();
    assert_eq!(rows, produced, "every produced record exactly once, at its offset");
    for p in 0..2 {
        let next = b.checkpoint("events", p).await.unwrap().unwrap().next_offset.unwrap();
        let last = produced.keys().filter(|(q, _)| *q == p).map(|(_, o)| *o).max().unwrap();
        assert_eq!(next, last + 1);
    }

    // Kafka's own tools see the same progress: an independent client reads
    // the consumer group `sluice-events`'s committed offsets.
    let mut checkpoints = BTreeMap::new();
    for p in 0..2 {
        checkpoints.insert(p, b.checkpoint("events", p).await.unwrap().unwrap().next_offset.unwrap());
    }
    let mut reader = rdkafka::ClientConfig::new();
    reader.set("bootstrap.servers", broker.bootstrap_servers());
    let mirrored = || committed_offsets(reader.clone(), "sluice-events", &topic, 2);
    let matches = || {
        let (mirrored, checkpoints) = (mirrored(), checkpoints.clone());
        async move { mirrored.await == Some(checkpoints) }
    };
    wait_until("the consumer group's offsets match the checkpoints", Duration::from_secs(30), matches).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_records_go_to_the_dead_letter_topic_and_the_partition_keeps_flowing() {
    let zk = ZooKeeper::start().unwrap();
    let broker = KafkaBroker::start().unwrap();
    let topic = unique_name("events");
    let dead = format!("{topic}-dlq");
    broker.create_topic(&topic, 1).await.unwrap();
    broker.create_topic(&dead, 1).await.unwrap();
    let producer = broker.producer().unwrap();
    let payloads: Vec<Vec<u8>> = vec![
        b"{\"ts\": 1, \"id\": 1}".to_vec(),
        b"not json".to_vec(),
        b"{\"ts\": 3, \"id\": \"three\"}".to_vec(),
        b"{\"ts\": 4, \"id\": 4}".to_vec(),
        b"".to_vec(),
        b"{\"ts\": 6, \"id\": 6}".to_vec(),
    ];
    producer.send_all(&topic, payloads.iter().map(|p| (0, p.clone()))).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let extra = format!("[bad_records]\npolicy = \"dead_letter\"\ntopic = \"{dead}\"\n");
    let config = Arc::new(pipeline(&topic, broker.bootstrap_servers(), &extra));
    let c = coordinator(&zk, &format!("/{}", unique_name("dlq"))).await;
    let ctx = Arc::new(
        PipelineContext::new(
            config,
            c.clone(),
            DeepStore::local(dir.path()).unwrap(),
            Arc::new(MemoryBudget::unlimited()),
        )
        .unwrap(),
    );
    let (stop, stop_rx) = watch::channel(false);
    let lease = c.acquire("events", 0, "w").await.unwrap().unwrap();
    let task = tokio::spawn(ingest_partition(ctx, lease, stop_rx));
    let done = || async { c.checkpoint("events", 0).await.unwrap().and_then(|cp| cp.next_offset) == Some(6) };
    wait_until("the checkpoint passes every record, bad ones included", Duration::from_secs(30), done).await.unwrap();
    stop.send(true).unwrap();
    assert_eq!(task.await.unwrap(), Exit::Stopped);
    let (rows, _) = committed_rows(c.as_ref()).await;
    assert_eq!(rows.values().copied().collect::<Vec<_>>(), vec![1, 4, 6]);

    let consumer: StreamConsumer = broker.consumer_config().create().unwrap();
    let mut assignment = rdkafka::TopicPartitionList::new();
    assignment.add_partition_offset(&dead, 0, rdkafka::Offset::Beginning).unwrap();
    consumer.assign(&assignment).unwrap();
    let mut letters = Vec::new();
    while letters.len() < 3 {
        let m = tokio::time::timeout(Duration::from_secs(20), consumer.recv()).await.unwrap().unwrap();
        let headers = m.headers().unwrap();
        let reason = headers
            .iter()
            .find(|h| h.key == "sluice.reason")
            .and_then(|h| h.value)
            .map(|v| String::from_utf8_lossy(v).to_string());
        letters.push((m.payload().unwrap_or_default().to_vec(), reason.unwrap()));
    }
    assert_eq!(
        letters,
        vec![
            (b"not json".to_vec(), "invalid_json".to_string()),
            (b"{\"ts\": 3, \"id\": \"three\"}".to_vec(), "wrong_type".to_string()),
            (Vec::new(), "empty".to_string()),
        ],
        "the original bytes, with the reason"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zombie_worker_is_fenced_and_the_data_stays_exactly_once() {
    let zk = ZooKeeper::start().unwrap();
    let broker = KafkaBroker::start().unwrap();
    let topic = unique_name("events");
    broker.create_topic(&topic, 1).await.unwrap();
    let producer = broker.producer().unwrap();
    let mut produced = producer
        .send_all(&topic, (0..600i64).map(|id| (0, format!("{{\"ts\": {id}, \"id\": {id}}}").into_bytes())))
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let root = format!("/{}", unique_name("zombie"));
    // Segments flush by time only, so A holds an uncommitted tail.
    let config = Arc::new(pipeline(&topic, broker.bootstrap_servers(), "").clone());
    let mut slow = (*config).clone();
    slow.flush.rows = 1_000_000;
    slow.flush.time = Duration::from_secs(3);
    let slow = Arc::new(slow);

    let proxy = sluice_testkit::TcpProxy::start(format!("127.0.0.1:{}", zk.port()).parse().unwrap()).await.unwrap();
    let options = ZooKeeperOptions::plain(proxy.addr().to_string(), &root, Duration::from_secs(2));
    let a: Arc<dyn Coordinator> = Arc::new(ZooKeeperCoordinator::connect(options).await.unwrap());
    let ctx_a = Arc::new(
        PipelineContext::new(
            slow.clone(),
            a.clone(),
            DeepStore::local(dir.path()).unwrap(),
            Arc::new(MemoryBudget::unlimited()),
        )
        .unwrap(),
    );
    let (_stop_a, stop_rx) = watch::channel(false);
    let lease = a.acquire("events", 0, "a").await.unwrap().unwrap();
    let zombie = tokio::spawn(ingest_partition(ctx_a, lease, stop_rx));
    tokio::time::sleep(Duration::from_millis(800)).await;

    // A is cut off from ZooKeeper (still reading Kafka) past its session
    // timeout; B takes the partition and commits everything.
    proxy.blackhole();
    let b = coordinator(&zk, &root).await;
    let lease_b = acquire_when_free(b.as_ref(), 0, "b").await;
    produced.extend(
        producer
            .send_all(&topic, (600..900i64).map(|id| (0, format!("{{\"ts\": {id}, \"id\": {id}}}").into_bytes())))
            .await
            .unwrap(),
    );
    let ctx_b = Arc::new(
        PipelineContext::new(
            config.clone(),
            b.clone(),
            DeepStore::local(dir.path()).unwrap(),
            Arc::new(MemoryBudget::unlimited()),
        )
        .unwrap(),
    );
    let (stop_b, stop_rx) = watch::channel(false);
    let task_b = tokio::spawn(ingest_partition(ctx_b, lease_b, stop_rx));
    let all = || async { committed_rows(b.as_ref()).await.0.len() >= 900 };
    wait_until("B commits everything", Duration::from_secs(60), all).await.unwrap();

    // A comes back: its commit is fenced and it stops.
    proxy.restore();
    let exit = tokio::time::timeout(Duration::from_secs(30), zombie).await.expect("the zombie stops").unwrap();
    assert_eq!(exit, Exit::Fenced);
    stop_b.send(true).unwrap();
    assert_eq!(task_b.await.unwrap(), Exit::Stopped);

    let (rows, duplicates) = committed_rows(b.as_ref()).await;
    assert_eq!(duplicates, 0);
    let expected: BTreeMap<(i32, i64), i64> =
        produced.iter().enumerate().map(|(id, (p, o))| ((*p, *o), id as i64)).collect();
    assert_eq!(rows, expected, "exactly once despite the zombie");
    let files = DeepStore::local(dir.path()).unwrap().list("events").await.unwrap().len();
    let (segments, _) = b.segments("events").await.unwrap();
    assert_eq!(files, segments.len(), "the zombie's upload was removed when it was fenced");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_the_memory_budget_the_largest_segment_seals_early() {
    let zk = ZooKeeper::start().unwrap();
    let broker = KafkaBroker::start().unwrap();
    let topic = unique_name("events");
    broker.create_topic(&topic, 4).await.unwrap();
    let producer = broker.producer().unwrap();
    let produced = producer
        .send_all(
            &topic,
            (0..20_000i64).map(|id| ((id % 4) as i32, format!("{{\"ts\": {id}, \"id\": {id}}}").into_bytes())),
        )
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    // Neither rows nor time would seal within this test: only the budget can.
    let mut config = pipeline(&topic, broker.bootstrap_servers(), "");
    config.flush.rows = 10_000_000;
    config.flush.time = Duration::from_secs(3600);
    let c = coordinator(&zk, &format!("/{}", unique_name("budget"))).await;
    let budget = Arc::new(MemoryBudget::new(256 * 1024));
    let ctx = Arc::new(
        PipelineContext::new(Arc::new(config), c.clone(), DeepStore::local(dir.path()).unwrap(), budget.clone())
            .unwrap(),
    );
    let (stop, stop_rx) = watch::channel(false);
    let mut tasks = Vec::new();
    for p in 0..4 {
        let lease = c.acquire("events", p, "w").await.unwrap().unwrap();
        tasks.push(tokio::spawn(ingest_partition(ctx.clone(), lease, stop_rx.clone())));
    }
    let mut peak = 0;
    let sealed_early = || async { !c.segments("events").await.unwrap().0.is_empty() };
    wait_until("the budget forces an early seal", Duration::from_secs(30), sealed_early).await.unwrap();
    for _ in 0..20 {
        peak = peak.max(budget.total());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(peak <= 2 * budget.limit(), "consuming memory stays near the budget: peak {peak}");
    stop.send(true).unwrap();
    for task in tasks {
        assert_eq!(task.await.unwrap(), Exit::Stopped);
    }
    // What was committed when stopped is every offset up to each checkpoint,
    // once; a loaded machine may not have consumed everything by then.
    let (rows, duplicates) = committed_rows(c.as_ref()).await;
    assert_eq!(duplicates, 0);
    for (p, checkpoint) in c.checkpoints("events").await.unwrap() {
        let next = checkpoint.next_offset.unwrap_or(0);
        let committed = rows.keys().filter(|(partition, _)| *partition == p).count() as i64;
        assert_eq!(committed, next, "partition {p}: every offset below the checkpoint {next} is a committed row");
    }
    assert!(c.segments("events").await.unwrap().0.len() > 4, "more segments than partitions: sealed early");
    // The next run starts at the checkpoints and commits the rest, flushing
    // on time now.
    let mut config = pipeline(&topic, broker.bootstrap_servers(), "");
    config.flush.time = Duration::from_millis(200);
    let ctx = Arc::new(
        PipelineContext::new(Arc::new(config), c.clone(), DeepStore::local(dir.path()).unwrap(), budget).unwrap(),
    );
    let (stop, stop_rx) = watch::channel(false);
    let mut tasks = Vec::new();
    for p in 0..4 {
        let lease = c.acquire("events", p, "w").await.unwrap().unwrap();
        tasks.push(tokio::spawn(ingest_partition(ctx.clone(), lease, stop_rx.clone())));
    }
    let everything = || async { committed_rows(c.as_ref()).await.0.len() == produced.len() };
    wait_until("the rest is committed", Duration::from_secs(60), everything).await.unwrap();
    stop.send(true).unwrap();
    for task in tasks {
        assert_eq!(task.await.unwrap(), Exit::Stopped);
    }
    let (rows, duplicates) = committed_rows(c.as_ref()).await;
    assert_eq!(duplicates, 0);
    assert_eq!(rows.len(), produced.len(), "everything committed by the end, exactly once");
}

/// Pauseless consumption: while ZooKeeper is unreachable (the test kit's
/// proxy holds every request back, shorter than the session timeout) the
/// commit in flight cannot land, yet the partition keeps consuming into its
/// next segment. Once ZooKeeper answers again, the commits land in order
/// and every record is committed exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumption_goes_on_while_a_commit_is_held_back() {
    let zk = ZooKeeper::start().unwrap();
    let proxy = sluice_testkit::TcpProxy::start(format!("127.0.0.1:{}", zk.port()).parse().unwrap()).await.unwrap();
    let broker = KafkaBroker::start().unwrap();
    let topic = unique_name("events");
    broker.create_topic(&topic, 1).await.unwrap();
    let root = format!("/{}", unique_name("pauseless"));
    let options = ZooKeeperOptions::plain(proxy.addr().to_string(), &root, Duration::from_secs(20));
    let c: Arc<dyn Coordinator> = Arc::new(ZooKeeperCoordinator::connect(options).await.unwrap());
    let observer = coordinator(&zk, &root).await;
    let dir = tempfile::tempdir().unwrap();
    let config = Arc::new(pipeline(&topic, broker.bootstrap_servers(), ""));
    let ctx = Arc::new(
        PipelineContext::new(
            config,
            c.clone(),
            DeepStore::local(dir.path()).unwrap(),
            Arc::new(MemoryBudget::unlimited()),
        )
        .unwrap(),
    );
    let (stop, stop_rx) = watch::channel(false);
    let lease = c.acquire("events", 0, "w").await.unwrap().unwrap();
    let task = tokio::spawn(ingest_partition(ctx.clone(), lease, stop_rx));

    // A producer that keeps going: 100 records every 100 ms.
    let bootstrap = broker.bootstrap_servers().to_string();
    let (producing_topic, producing) = (topic.clone(), Arc::new(std::sync::atomic::AtomicBool::new(true)));
    let keep_going = producing.clone();
    let producer = tokio::spawn(async move {
        let producer = sluice_testkit::TestProducer::new(&bootstrap).unwrap();
        let mut delivered = Vec::new();
        let mut id = 0i64;
        while keep_going.load(std::sync::atomic::Ordering::Relaxed) {
            let batch = (id..id + 100).map(|i| (0, format!("{{\"ts\": {i}, \"id\": {i}}}").into_bytes()));
            delivered.extend(producer.send_all(&producing_topic, batch).await.unwrap());
            id += 100;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        delivered
    });
    let committed = || async { observer.segments("events").await.unwrap().0.len() };
    wait_until("a first commit", Duration::from_secs(30), || async { committed().await >= 1 }).await.unwrap();

    proxy.blackhole();
    // Whatever was in flight when the requests stopped lands now or never.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (segments_before, consumed_before) = (committed().await, ctx.health.consumed_offset("events", 0).unwrap());
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (segments_after, consumed_after) = (committed().await, ctx.health.consumed_offset("events", 0).unwrap());
    proxy.restore();
    assert_eq!(segments_after, segments_before, "no commit can land while ZooKeeper is unreachable");
    // Flush thresholds: 250 rows or 1 s, so a pausing partition would have
    // stopped at most one segment (250 records) past its last commit.
    assert!(
        consumed_after >= consumed_before + 1_000,
        "consumption went on while the commit was held back: {consumed_before} -> {consumed_after}"
    );

    producing.store(false, std::sync::atomic::Ordering::Relaxed);
    let delivered = producer.await.unwrap();
    let last = delivered.iter().map(|(_, o)| *o).max().unwrap();
    let done =
        || async { observer.checkpoint("events", 0).await.unwrap().and_then(|cp| cp.next_offset) == Some(last + 1) };
    wait_until("everything commits once ZooKeeper is back", Duration::from_secs(60), done).await.unwrap();
    stop.send(true).unwrap();
    assert_eq!(task.await.unwrap(), Exit::Stopped);
    let (rows, duplicates) = committed_rows(observer.as_ref()).await;
    assert_eq!(duplicates, 0);
    let expected: BTreeMap<(i32, i64), i64> =
        delivered.iter().enumerate().map(|(id, (p, o))| ((*p, *o), id as i64)).collect();
    assert_eq!(rows, expected, "every record once, at its own offset");
    let (segments, _) = observer.segments("events").await.unwrap();
    let mut ranges: Vec<(u64, i64, i64)> = segments.iter().map(|s| (s.seq, s.start_offset, s.end_offset)).collect();
    ranges.sort();
    for pair in ranges.windows(2) {
        assert_eq!(pair[1].1, pair[0].2 + 1, "segments are contiguous and in sequence order: {ranges:?}");
    }
}
