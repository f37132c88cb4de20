//! A real `sluice query` process following a real ZooKeeper catalog:
//! committed segments become queryable within a second, deleted ones
//! disappear, a corrupt deep-store file is refused (and served once
//! repaired) without disturbing the others, and a restarted node serves
//! from its cache without downloading again.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{PIPELINE, start_query_node};
use serde_json::{Value, json};
use sluice_coordinator::{CommitOutcome, Coordinator, Lease, SegmentRecord, ZooKeeperCoordinator, ZooKeeperOptions};
use sluice_segments::SegmentSchema;
use sluice_testkit::net::{free_port, http_get, http_post, metric_sum};
use sluice_testkit::{ZooKeeper, unique_name, wait_until};

struct Writer {
    coordinator: Arc<ZooKeeperCoordinator>,
    lease: Lease,
    /// The deep store's directory (`file://`).
    store: PathBuf,
    schema: Arc<SegmentSchema>,
    next_offset: i64,
}

impl Writer {
    /// Seals `rows` rows into the deep store; returns the file's bytes and
    /// the catalog record a worker would commit.
    fn seal(&mut self, rows: i64) -> (PathBuf, Vec<u8>, SegmentRecord) {
        let sealed = common::seal_segment(&self.store, &self.schema, &self.lease, 0, self.next_offset, rows, |o| {
            (format!("u-{o}"), 200)
        });
        self.next_offset += rows;
        sealed
    }

    async fn commit(&mut self, record: &SegmentRecord) {
        let outcome = self.coordinator.commit(&mut self.lease, record).await.unwrap();
        assert_eq!(outcome, CommitOutcome::Committed);
    }
}

async fn count(addr: &str) -> Option<i64> {
    let addr = addr.to_string();
    let body = serde_json::to_vec(&json!({"sql": "SELECT COUNT(*) FROM clicks"})).unwrap();
    let (status, text) = tokio::task::spawn_blocking(move || http_post(&addr, "/query/sql", &body)).await.unwrap();
    if status != 200 {
        return None;
    }
    let v: Value = serde_json::from_str(&text).ok()?;
    v["resultTable"]["rows"][0][0].as_i64()
}

async fn metric(addr: &str, name: &str) -> f64 {
    let addr = addr.to_string();
    let (_, text) = tokio::task::spawn_blocking(move || http_get(&addr, "/metrics")).await.unwrap();
    metric_sum(&text, name)
}

async fn wait_count(addr: &str, expected: i64, within: Duration) -> Duration {
    let started = Instant::now();
    wait_until(&format!("COUNT(*) = {expected}"), within, || async { count(addr).await == Some(expected) })
        .await
        .unwrap_or_else(|e| panic!("{e}; last answer {}", last_answer(addr)));
    started.elapsed()
}

fn last_answer(addr: &str) -> String {
    let body = serde_json::to_vec(&json!({"sql": "SELECT COUNT(*) FROM clicks"})).unwrap();
    http_post(addr, "/query/sql", &body).1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_node_follows_the_catalog() {
    let zk = ZooKeeper::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let root = format!("/{}", unique_name("query"));
    let coordinator = Arc::new(
        ZooKeeperCoordinator::connect(ZooKeeperOptions::plain(zk.connect_string(), &root, Duration::from_secs(4)))
            .await
            .unwrap(),
    );
    coordinator.apply_pipeline("clicks", PIPELINE).await.unwrap();
    let lease = coordinator.acquire("clicks", 0, "test-writer").await.unwrap().expect("free partition");
    let mut writer = Writer {
        coordinator: coordinator.clone(),
        lease,
        store: dir.path().join("deep"),
        schema: common::schema(),
        next_offset: 0,
    };

    let port = free_port().unwrap();
    let addr = format!("127.0.0.1:{port}");
    let query_config = dir.path().join("query.toml");
    std::fs::write(
        &query_config,
        format!(
            "node_id = \"q1\"\ncache_dir = \"{}\"\n[coordinator]\nconnect = \"{}\"\nroot = \"{root}\"\n[http]\nlisten = \"{addr}\"\n",
            dir.path().join("cache").display(),
            zk.connect_string()
        ),
    )
    .unwrap();
    let mut node = start_query_node(dir.path(), &query_config);
    // The applied config gives the table its schema before any segment.
    wait_count(&addr, 0, Duration::from_secs(30)).await;

    let (_, _, a) = writer.seal(100);
    writer.commit(&a).await;
    let took = wait_count(&addr, 100, Duration::from_secs(5)).await;
    assert!(took < Duration::from_secs(1), "a committed segment took {took:?} to become queryable");
    let (_, _, b) = writer.seal(50);
    writer.commit(&b).await;
    let took = wait_count(&addr, 150, Duration::from_secs(5)).await;
    assert!(took < Duration::from_secs(1), "took {took:?}");

    // A file damaged after its commit recorded the checksum: refused.
    let (path, good, c) = writer.seal(25);
    let mut bad = good.clone();
    bad[good.len() / 2] ^= 0x10;
    std::fs::write(&path, &bad).unwrap();
    writer.commit(&c).await;
    wait_until("the corrupt segment to be refused", Duration::from_secs(10), || async {
        metric(&addr, "sluice_query_segment_load_failures_total").await >= 1.0
    })
    .await
    .unwrap();
    assert_eq!(count(&addr).await, Some(150), "the others are still served, the corrupt one is not");
    // Repaired in the deep store: picked up on a retry.
    std::fs::write(&path, &good).unwrap();
    wait_count(&addr, 175, Duration::from_secs(15)).await;

    // Retention removes a segment from the catalog: it disappears.
    coordinator.delete_segment("clicks", &a.name).await.unwrap();
    let took = wait_count(&addr, 75, Duration::from_secs(5)).await;
    assert!(took < Duration::from_secs(1), "took {took:?}");

    // Restart: everything comes from the cache, nothing is downloaded.
    node.signal(libc::SIGTERM).unwrap();
    let status = node.wait_timeout(Duration::from_secs(20)).unwrap().expect("query node exits on SIGTERM");
    assert!(status.success(), "{status:?}");
    let mut node = start_query_node(dir.path(), &query_config);
    wait_count(&addr, 75, Duration::from_secs(30)).await;
    assert_eq!(metric(&addr, "sluice_query_segments_downloaded_total").await, 0.0);
    assert_eq!(metric(&addr, "sluice_query_segments_loaded").await, 2.0);

    // A crafted file: every checksum valid (the catalog's whole-file CRC
    // included), Arrow offsets pointing far outside their buffer. Reading it
    // unvalidated would read out of bounds; it is refused, quarantined, and
    // reported corrupt, on this run and after a restart.
    let (path, good, mut crafted) = writer.seal(40);
    let forged = break_string_offsets(&good);
    std::fs::write(&path, &forged).unwrap();
    crafted.size_bytes = forged.len() as u64;
    crafted.crc32c = crc32c::crc32c(&forged);
    writer.commit(&crafted).await;
    let reported = || async {
        let (addr, name) = (addr.clone(), crafted.name.clone());
        tokio::task::spawn_blocking(move || http_get(&addr, "/health").1.contains(&name)).await.unwrap()
    };
    wait_until("the crafted segment to be reported corrupt", Duration::from_secs(20), reported).await.unwrap();
    assert_eq!(count(&addr).await, Some(75), "every other segment is still served");
    assert!(metric(&addr, "sluice_query_segments_quarantined_total").await >= 2.0, "refused on arrival and on refetch");
    assert!(dir.path().join("cache/.quarantine").read_dir().unwrap().next().is_some());
    let status = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["status", "--zookeeper", &zk.connect_string(), "--root", &root, "--query-node", &addr])
        .output()
        .unwrap();
    let printed = String::from_utf8_lossy(&status.stdout);
    assert!(printed.contains("1 corrupt segment(s)") && printed.contains(&crafted.name), "{printed}");
    // The node registered itself: listed once (named on the command line
    // too), with what it serves.
    assert!(printed.contains("query nodes: 1") && printed.contains(&format!("q1\thttp {addr}")), "{printed}");
    assert_eq!(printed.matches("corrupt segment(s)").count(), 1, "{printed}");
    assert!(printed.contains("q1\thttp") && printed.contains(" segments, "), "what it serves: {printed}");

    node.signal(libc::SIGTERM).unwrap();
    assert!(node.wait_timeout(Duration::from_secs(20)).unwrap().expect("exits").success());
    let _node = start_query_node(dir.path(), &query_config);
    wait_count(&addr, 75, Duration::from_secs(30)).await;
    wait_until("the crafted segment to be reported again", Duration::from_secs(20), reported).await.unwrap();
    assert_eq!(count(&addr).await, Some(75), "alive and serving after the restart");
}

/// A copy of a segment image whose first string column's second offset
/// points far beyond its data, with every section checksum and the footer's
/// recomputed, as an attacker who can write files and catalog entries would.
fn break_string_offsets(image: &[u8]) -> Vec<u8> {
    let mut bytes = image.to_vec();
    // The user ids `u-<offset>` of one segment have one length k: their
    // offsets buffer starts 0, k, 2k, 3k.
    let at = (3..12i32)
        .find_map(|k| {
            let pattern: Vec<u8> = [0, k, 2 * k, 3 * k].iter().flat_map(|o| o.to_le_bytes()).collect();
            bytes.windows(pattern.len()).position(|w| w == pattern)
        })
        .expect("the offsets buffer");
    bytes[at + 4..at + 8].copy_from_slice(&0x7fff_0000i32.to_le_bytes());
    // Footer: 4 x (u64 offset, u64 length, u32 crc), version, footer crc, magic.
    let footer = bytes.len() - 96;
    for section in 0..4 {
        let entry = footer + section * 20;
        let start = u64::from_le_bytes(bytes[entry..entry + 8].try_into().unwrap()) as usize;
        let len = u64::from_le_bytes(bytes[entry + 8..entry + 16].try_into().unwrap()) as usize;
        let crc = crc32c::crc32c(&bytes[start..start + len]);
        bytes[entry + 16..entry + 20].copy_from_slice(&crc.to_le_bytes());
    }
    let crc = crc32c::crc32c(&bytes[footer..bytes.len() - 12]);
    let at = bytes.len() - 12;
    bytes[at..at + 4].copy_from_slice(&crc.to_le_bytes());
    bytes
}
