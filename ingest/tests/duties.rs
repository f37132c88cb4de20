//! Retention and orphan collection, and that the leader runs them — also
//! after a failover — against a real ZooKeeper.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use sluice_config::TimeUnit;
use sluice_coordinator::{CommitOutcome, Coordinator, SegmentRecord, ZooKeeperCoordinator, ZooKeeperOptions};
use sluice_ingest::duties::{Duties, collect_orphans, enforce_retention};
use sluice_storage::{DeepStore, Resolver, file_uri_path};
use sluice_testkit::{TcpProxy, ZooKeeper, unique_name, wait_until};

const HOUR_MS: i64 = 3_600_000;

fn now_ms() -> i64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap().as_millis() as i64
}

async fn connect(connect: String, root: &str) -> Arc<ZooKeeperCoordinator> {
    let options = ZooKeeperOptions::plain(connect, root, Duration::from_secs(2));
    Arc::new(ZooKeeperCoordinator::connect(options).await.unwrap())
}

/// Commits a segment of `table` whose newest row is at `newest_ms`, with a
/// file in the deep store.
async fn commit_with_file(
    c: &dyn Coordinator,
    store: &DeepStore,
    table: &str,
    partition: i32,
    newest_ms: i64,
) -> SegmentRecord {
    let mut lease = c.acquire(table, partition, "writer").await.unwrap().unwrap();
    let seq = lease.checkpoint.next_seq;
    let start = lease.checkpoint.next_offset.unwrap_or(0);
    let name = SegmentRecord::segment_name(table, partition, seq, newest_ms);
    let uri = store.put(table, &DeepStore::segment_name(&name, lease.epoch()), "segment".into()).await.unwrap();
    let record = SegmentRecord {
        name,
        partition,
        seq,
        start_offset: start,
        end_offset: start + 9,
        row_count: 10,
        uri,
        size_bytes: 7,
        crc32c: 0,
        time_range: Some((newest_ms - 1000, newest_ms)),
        created_at_ms: newest_ms,
        offset_gaps: 0,
    };
    assert_eq!(c.commit(&mut lease, &record).await.unwrap(), CommitOutcome::Committed);
    c.release(lease).await.unwrap();
    record
}

fn age(path: &std::path::Path, by: Duration) {
    let file = std::fs::File::options().write(true).open(path).unwrap();
    file.set_modified(SystemTime::now() - by).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_removes_old_segments_and_orphans_are_collected_after_a_grace_period() {
    let zk = ZooKeeper::start().unwrap();
    let c = connect(zk.connect_string(), &format!("/{}", unique_name("duties"))).await;
    let dir = tempfile::tempdir().unwrap();
    let store = DeepStore::local(dir.path()).unwrap();
    let resolver = Resolver::new(Default::default());
    let old = commit_with_file(c.as_ref(), &store, "clicks", 0, now_ms() - 48 * HOUR_MS).await;
    let fresh = commit_with_file(c.as_ref(), &store, "clicks", 0, now_ms() - HOUR_MS).await;

    let deleted = enforce_retention(
        c.as_ref(),
        &resolver,
        "clicks",
        Duration::from_secs(24 * 3600),
        TimeUnit::Milliseconds,
        SystemTime::now(),
    )
    .await
    .unwrap();
    assert_eq!(deleted, vec![old.name.clone()]);
    let (left, _) = c.segments("clicks").await.unwrap();
    assert_eq!(left, vec![fresh.clone()]);
    assert!(!file_uri_path(&old.uri).unwrap().exists(), "the expired file is deleted");
    assert!(file_uri_path(&fresh.uri).unwrap().exists());
    assert_eq!(
        c.checkpoint("clicks", 0).await.unwrap().unwrap().next_offset,
        Some(20),
        "checkpoints survive retention"
    );

    // Orphans: uncommitted uploads (old and young), a zombie's upload under
    // a committed segment's name, and a stray temp file.
    let mut put = Vec::new();
    for name in [
        DeepStore::segment_name("clicks__0__9__20200101T0000Z", 1),
        DeepStore::segment_name("clicks__0__10__20200101T0000Z", 1),
        DeepStore::segment_name(&fresh.name, 999),
    ] {
        put.push(store.put("clicks", &name, "x".into()).await.unwrap());
    }
    let [old_orphan, young_orphan, zombie] = <[String; 3]>::try_from(put).unwrap();
    // A temporary file an earlier version's crashed upload left behind.
    let stray = file_uri_path(&store.uri("clicks", ".clicks__0__11.tmp-42")).unwrap();
    std::fs::write(&stray, b"x").unwrap();
    for uri in [&old_orphan, &zombie, &fresh.uri] {
        age(&file_uri_path(uri).unwrap(), Duration::from_secs(7200));
    }
    age(&stray, Duration::from_secs(7200));
    let mut removed =
        collect_orphans(c.as_ref(), "clicks", &store, Duration::from_secs(3600), SystemTime::now()).await.unwrap();
    removed.sort();
    let mut expected = vec![old_orphan.clone(), zombie.clone(), store.uri("clicks", ".clicks__0__11.tmp-42")];
    expected.sort();
    assert_eq!(removed, expected);
    assert!(!stray.exists());
    assert!(
        file_uri_path(&young_orphan).unwrap().exists(),
        "within the grace period an upload may still be committing"
    );
    assert!(file_uri_path(&fresh.uri).unwrap().exists(), "a cataloged file is never an orphan");

    // Seconds as the time unit.
    let secs = commit_with_file(c.as_ref(), &store, "secs", 0, (now_ms() - 48 * HOUR_MS) / 1000).await;
    let deleted = enforce_retention(
        c.as_ref(),
        &resolver,
        "secs",
        Duration::from_secs(24 * 3600),
        TimeUnit::Seconds,
        SystemTime::now(),
    )
    .await
    .unwrap();
    assert_eq!(deleted, vec![secs.name]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_runs_the_duties_and_a_successor_takes_over() {
    let zk = ZooKeeper::start().unwrap();
    let root = format!("/{}", unique_name("leader-duties"));
    let dir = tempfile::tempdir().unwrap();
    let store = DeepStore::local(dir.path()).unwrap();
    let admin = connect(zk.connect_string(), &root).await;
    let pipeline = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/clickstream.toml"))
        .unwrap()
        .replace("retention = \"30days\"", "retention = \"1day\"")
        .replace("[bad_records]", &format!("[deep_store]\nuri = \"file://{}\"\n\n[bad_records]", dir.path().display()));
    admin.apply_pipeline("clickstream", &pipeline).await.unwrap();

    let upstream = format!("127.0.0.1:{}", zk.port()).parse().unwrap();
    let proxy_a = TcpProxy::start(upstream).await.unwrap();
    let node_a = connect(proxy_a.addr().to_string(), &root).await;
    let duties = |node: &str| Duties {
        node: node.into(),
        interval: Duration::from_millis(200),
        orphan_grace: Duration::from_secs(3600),
        default_deep_store: DeepStore::local(dir.path()).unwrap(),
        resolver: Resolver::new(Default::default()),
        local_pipelines: Vec::new(),
    };
    let a = tokio::spawn(duties("a").run(node_a.clone()));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let node_b = connect(zk.connect_string(), &root).await;
    let b = tokio::spawn(duties("b").run(node_b.clone()));

    let first = commit_with_file(admin.as_ref(), &store, "clickstream", 0, now_ms() - 48 * HOUR_MS).await;
    let gone = |name: String| {
        let admin = admin.clone();
        move || {
            let admin = admin.clone();
            let name = name.clone();
            async move { !admin.segments("clickstream").await.unwrap().0.iter().any(|s| s.name == name) }
        }
    };
    wait_until("the leader expires the old segment", Duration::from_secs(10), gone(first.name.clone())).await.unwrap();

    // The leader is partitioned away; its session expires; b takes over.
    proxy_a.blackhole();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let second = commit_with_file(admin.as_ref(), &store, "clickstream", 1, now_ms() - 48 * HOUR_MS).await;
    wait_until("the successor expires the next old segment", Duration::from_secs(10), gone(second.name.clone()))
        .await
        .unwrap();
    // The catalog entry goes first, then the file: a moment apart.
    let file = file_uri_path(&second.uri).unwrap();
    let file_gone = || {
        let file = file.clone();
        async move { !file.exists() }
    };
    wait_until("the successor deletes its file", Duration::from_secs(10), file_gone).await.unwrap();
    a.abort();
    b.abort();
}

/// Retention and orphan collection against a real S3-compatible server:
/// the catalog entry goes first, then the object; objects no entry names
/// go once past the grace period; cataloged ones stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_and_orphan_collection_on_s3() {
    let zk = ZooKeeper::start().unwrap();
    let s3 = sluice_testkit::S3Server::start().unwrap();
    s3.create_bucket("duties").unwrap();
    let mut options = sluice_config::ObjectStoreConfig {
        endpoint: Some(s3.endpoint()),
        allow_http: true,
        region: Some(sluice_testkit::s3::REGION.into()),
        ..Default::default()
    };
    options.options.insert("aws_access_key_id".into(), sluice_testkit::s3::ACCESS_KEY.into());
    options.options.insert("aws_secret_access_key".into(), sluice_testkit::s3::SECRET_KEY.into());
    let resolver = Resolver::new(options);
    let store = resolver.deep_store("s3://duties/deep").unwrap();
    let c = connect(zk.connect_string(), &format!("/{}", unique_name("s3-duties"))).await;
    let old = commit_with_file(c.as_ref(), &store, "clicks", 0, now_ms() - 48 * HOUR_MS).await;
    let fresh = commit_with_file(c.as_ref(), &store, "clicks", 0, now_ms() - HOUR_MS).await;
    let zombie = store.put("clicks", &DeepStore::segment_name(&fresh.name, 999), "x".into()).await.unwrap();

    let day = Duration::from_secs(24 * 3600);
    let deleted = enforce_retention(c.as_ref(), &resolver, "clicks", day, TimeUnit::Milliseconds, SystemTime::now())
        .await
        .unwrap();
    assert_eq!(deleted, vec![old.name.clone()]);
    let listed: Vec<String> = store.list("clicks").await.unwrap().into_iter().map(|o| o.uri).collect();
    assert_eq!(listed.len(), 2, "{listed:?}");
    assert!(!listed.contains(&old.uri), "the expired object is deleted");

    let grace = Duration::from_secs(3600);
    let removed = collect_orphans(c.as_ref(), "clicks", &store, grace, SystemTime::now()).await.unwrap();
    assert!(removed.is_empty(), "within the grace period nothing goes: {removed:?}");
    let later = SystemTime::now() + 2 * grace;
    let removed = collect_orphans(c.as_ref(), "clicks", &store, grace, later).await.unwrap();
    assert_eq!(removed, vec![zombie]);
    let listed: Vec<String> = store.list("clicks").await.unwrap().into_iter().map(|o| o.uri).collect();
    assert_eq!(listed, vec![fresh.uri.clone()], "a cataloged object is never an orphan");
}
