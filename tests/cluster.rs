//! Three real `sluice query` processes forming a cluster over a real
//! ZooKeeper: each serves its share of the segments (rendezvous hashing with
//! replicas), any of them answers any query across all of them (DataFusion
//! Distributed over Arrow Flight) exactly as one node holding everything,
//! the partial step of an aggregation runs on the holders, and a node
//! killed mid-loop costs no wrong answer: complete ones at replication 2,
//! flagged partial ones at replication 1.

mod common;
#[path = "../query/tests/common/mod.rs"]
mod fixture;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use fixture::corpus::CORPUS;
use serde_json::{Value, json};
use sluice_coordinator::{CommitOutcome, Coordinator, SegmentRecord, ZooKeeperCoordinator, ZooKeeperOptions};
use sluice_testkit::net::{free_port, http_get, http_post, metric_sum};
use sluice_testkit::{GuardedChild, ZooKeeper, unique_name, wait_until};

/// Commits the differential fixture as workers would: the six `clicks`
/// segments alternately to partitions 0 and 1, the two `users` segments to
/// partition 0.
async fn commit_segments(coordinator: &Arc<ZooKeeperCoordinator>, store: &Path) -> Vec<SegmentRecord> {
    let mut records = Vec::new();
    let mut commit = async |table: &str, partition: i32, segment: sluice_segments::ConsumingSegment| {
        let mut lease = coordinator.acquire(table, partition, "test-writer").await.unwrap().unwrap();
        let created = fixture::BASE_TS + records.len() as i64;
        let (_, _, record) = common::store_segment(store, table, &lease, &segment, created);
        assert_eq!(coordinator.commit(&mut lease, &record).await.unwrap(), CommitOutcome::Committed);
        coordinator.release(lease).await.unwrap();
        records.push(record);
    };
    let clicks_schema = fixture::clicks_schema();
    let mut next = [0i64; 2];
    for (i, rows) in fixture::fixture_clicks().iter().enumerate() {
        let partition = (i % 2) as i32;
        let segment = fixture::consuming(&clicks_schema, partition, next[i % 2], rows, fixture::click_datums);
        next[i % 2] = segment.next_offset();
        commit("clicks", partition, segment).await;
    }
    let users_schema = fixture::users_schema();
    let (first, second) = fixture::fixture_users();
    let segment = fixture::consuming(&users_schema, 0, 0, &first, fixture::user_datums);
    let start = segment.next_offset();
    commit("users", 0, segment).await;
    commit("users", 0, fixture::consuming(&users_schema, 0, start, &second, fixture::user_datums)).await;
    records
}

/// The cluster's shared secret: every call between the nodes carries it.
const TOKEN: &str = "the-cluster-secret-0123456789";

/// The nodes' query deadline: the corpus answers well within it.
const QUERY_TIMEOUT_S: u64 = 5;

struct Node {
    addr: String,
    dir: PathBuf,
    config: PathBuf,
    child: Option<GuardedChild>,
}

impl Node {
    /// `settings` is more of the node's top-level settings, `limits` more
    /// of its `[limits]` table.
    fn new(
        root_dir: &Path,
        id: &str,
        zk: &ZooKeeper,
        root: &str,
        replication: u32,
        (settings, limits): (&str, &str),
    ) -> Node {
        let dir = root_dir.join(id);
        std::fs::create_dir_all(&dir).unwrap();
        let addr = format!("127.0.0.1:{}", free_port().unwrap());
        let config = dir.join("query.toml");
        std::fs::write(
            &config,
            format!(
                "node_id = \"{id}\"\ncache_dir = \"{}\"\nflight_listen = \"127.0.0.1:0\"\nreplication = {replication}\n\
                 flight_token = \"{TOKEN}\"\n{settings}\
                 [coordinator]\nconnect = \"{}\"\nroot = \"{root}\"\nsession_timeout = \"4s\"\n[http]\nlisten = \"{addr}\"\n\
                 [limits]\nquery_timeout = \"{QUERY_TIMEOUT_S}s\"\n{limits}",
                dir.join("cache").display(),
                zk.connect_string()
            ),
        )
        .unwrap();
        let mut node = Node { addr, dir, config, child: None };
        node.start();
        node
    }

    fn start(&mut self) {
        self.child = Some(common::start_query_node(&self.dir, &self.config));
    }

    fn kill(&mut self) {
        let mut child = self.child.take().expect("running");
        child.signal(libc::SIGKILL).unwrap();
        let _ = child.wait_timeout(Duration::from_secs(10));
    }

    /// Segments of `clicks` loaded (`users` is on every node).
    fn loaded(&self) -> f64 {
        loaded_of(&self.addr, "clicks")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("query.log")).unwrap_or_default()
    }
}

/// Segments of `table` the node at `addr` has loaded.
fn loaded_of(addr: &str, table: &str) -> f64 {
    metric_sum(&http_get(addr, "/metrics").1, &format!("sluice_query_segments_loaded{{table=\"{table}\"}}"))
}

async fn query(addr: &str, sql: &str) -> Value {
    let (addr, body) = (addr.to_string(), serde_json::to_vec(&json!({ "sql": sql })).unwrap());
    let (status, text) = tokio::task::spawn_blocking(move || http_post(&addr, "/query/sql", &body)).await.unwrap();
    let mut v: Value = serde_json::from_str(&text).unwrap_or(json!({ "unparsed": text }));
    v["httpStatus"] = json!(status);
    v
}

/// An answer's rows as strings, floats to 7 significant digits (the
/// summation order differs between plans), sorted unless the order is part
/// of the answer.
fn rows(v: &Value, keep_order: bool) -> Vec<String> {
    let cell = |c: &Value| match c {
        Value::Number(n) if n.is_f64() => format!("{:.6e}", n.as_f64().unwrap()),
        other => other.to_string(),
    };
    let mut rows: Vec<String> = v["resultTable"]["rows"]
        .as_array()
        .map(|r| r.iter().map(|row| row.as_array().unwrap().iter().map(cell).collect::<Vec<_>>().join(" | ")).collect())
        .unwrap_or_default();
    if !keep_order {
        rows.sort();
    }
    rows
}

/// The differential corpus's answers from the node at `addr`.
async fn answers(addr: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    for sql in CORPUS {
        let v = query(addr, sql).await;
        assert_eq!(v["httpStatus"], 200, "{sql}: {v}");
        assert_eq!(v["exceptions"], json!([]), "{sql}: {v}");
        out.push(rows(&v, sql.contains("ORDER BY") && !sql.contains("OVER")));
    }
    out
}

async fn count(addr: &str) -> (Option<i64>, Value) {
    let v = query(addr, "SELECT COUNT(*) FROM clicks").await;
    (v["resultTable"]["rows"][0][0].as_i64(), v)
}

async fn cluster(replication: u32) -> (ZooKeeper, tempfile::TempDir, Vec<Node>, i64) {
    let zk = ZooKeeper::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let root = format!("/{}", unique_name("cluster"));
    let coordinator = Arc::new(
        ZooKeeperCoordinator::connect(ZooKeeperOptions::plain(zk.connect_string(), &root, Duration::from_secs(4)))
            .await
            .unwrap(),
    );
    coordinator.apply_pipeline("clicks", fixture::CLICKS_PIPELINE).await.unwrap();
    coordinator.apply_pipeline("users", fixture::USERS_PIPELINE).await.unwrap();
    let records = commit_segments(&coordinator, &dir.path().join("deep")).await;
    let total = fixture::SEGMENT_ROWS.iter().sum::<usize>() as i64;
    // q2 runs one thread: DataFusion plans with one target partition there
    // (its cluster scans keep two, so partial steps stay on the holders).
    // q3 shuffles every grouping's partial states over the holders (the
    // fixture's groups are too few to reach the default threshold), so the
    // corpus runs through both merges.
    let nodes: Vec<Node> = [
        ("q1", ("", "")),
        ("q2", ("shuffle_min_groups = 0\n", "threads = 1\n")),
        ("q3", ("shuffle_min_groups = 0\n", "")),
    ]
    .into_iter()
    .map(|(id, settings)| Node::new(dir.path(), id, &zk, &root, replication, settings))
    .collect();
    // Each node holds its share of each table, ± one segment.
    // `users` sets its own replication: 3, every node.
    let share = |table: &str, replication: u32| {
        records.iter().filter(|r| r.name.starts_with(&format!("{table}__"))).count() as f64 * f64::from(replication)
            / 3.0
    };
    let (clicks_share, users_share) = (share("clicks", replication), share("users", 3));
    let settled = wait_until("every node to hold its share and answer in full", Duration::from_secs(60), || async {
        let mut ok = true;
        for node in &nodes {
            let addr = node.addr.clone();
            let (clicks, users) = tokio::task::spawn_blocking({
                let addr = addr.clone();
                move || (loaded_of(&addr, "clicks"), loaded_of(&addr, "users"))
            })
            .await
            .unwrap();
            ok &= (clicks - clicks_share).abs() <= 1.0 && users == users_share && count(&addr).await.0 == Some(total);
        }
        ok
    })
    .await;
    if let Err(e) = settled {
        for node in &nodes {
            eprintln!("--- {} loaded {}\n{}", node.addr, node.loaded(), node.log());
        }
        panic!("{e}");
    }
    (zk, dir, nodes, total)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_share_segments_and_answer_like_one() {
    let (zk, dir, mut nodes, total) = cluster(1).await;
    let segments = fixture::SEGMENT_ROWS.len() as f64;
    let loaded: Vec<f64> = nodes.iter().map(Node::loaded).collect();
    assert_eq!(loaded.iter().sum::<f64>(), segments, "each segment on exactly one node at replication 1: {loaded:?}");
    for node in &nodes {
        assert_eq!(loaded_of(&node.addr, "users"), 2.0, "users (replication = 3 in its pipeline) on every node");
    }

    // One node holding everything: the reference.
    let mut single_dir = dir.path().join("single");
    std::fs::create_dir_all(&single_dir).unwrap();
    single_dir = single_dir.canonicalize().unwrap();
    let reference = {
        let zk_connect = std::fs::read_to_string(&nodes[0].config).unwrap();
        let root_line = zk_connect.lines().find(|l| l.starts_with("root")).unwrap().to_string();
        let connect_line = zk_connect.lines().find(|l| l.starts_with("connect")).unwrap().to_string();
        let addr = format!("127.0.0.1:{}", free_port().unwrap());
        let config = single_dir.join("query.toml");
        std::fs::write(
            &config,
            format!(
                "node_id = \"single\"\ncache_dir = \"{}\"\n[coordinator]\n{connect_line}\n{root_line}\n[http]\nlisten = \"{addr}\"\n",
                single_dir.join("cache").display()
            ),
        )
        .unwrap();
        let mut single = Node { addr: addr.clone(), dir: single_dir.clone(), config, child: None };
        single.start();
        wait_until("the single node to serve everything", Duration::from_secs(30), || async {
            count(&addr).await.0 == Some(total)
        })
        .await
        .unwrap();
        let reference = answers(&addr).await;
        single.kill();
        reference
    };
    for node in &nodes {
        assert_eq!(answers(&node.addr).await, reference, "node {} differs from one node holding everything", node.addr);
        // The corpus's plain selections reached the other nodes' segments
        // planned from the parsed query, not from SQL again.
        let metrics = http_get(&node.addr, "/metrics").1;
        let spread = metric_sum(&metrics, "sluice_query_planner_total{planner=\"fast_distributed\"}");
        assert!(spread > 0.0, "node {}: no selection ran spread: {metrics}", node.addr);
    }

    // `sluice status` lists the members and where they take tasks (the
    // reference node, gone, may still be listed until its session expires).
    let root = std::fs::read_to_string(&nodes[0].config).unwrap();
    let root = root.lines().find_map(|l| l.strip_prefix("root = ")).unwrap().trim_matches('"').to_string();
    let zk_connect = zk.connect_string();
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["status", "--zookeeper", &zk_connect, "--root", &root])
        .output()
        .unwrap();
    let printed = String::from_utf8_lossy(&status.stdout);
    assert!(printed.contains("query nodes: "), "{printed}");
    assert_eq!(printed.matches("cluster member\tflight 127.0.0.1:").count(), 3, "{printed}");

    // EXPLAIN shows the stages; the partial aggregation runs below the
    // network boundary, on the holders, and only partial states cross it.
    let plan = query(&nodes[0].addr, "EXPLAIN SELECT status, COUNT(*) FROM clicks GROUP BY status").await;
    let plan = plan.to_string();
    assert!(plan.contains("[Stage") && plan.contains("NetworkCoalesceExec"), "{plan}");
    let boundary = plan.find("NetworkCoalesceExec").unwrap();
    let partial = plan.find("mode=Partial").expect("a partial aggregation");
    let scan = plan.find("ClusterScanExec").unwrap();
    assert!(boundary < partial && partial < scan, "the partial step runs next to the data: {plan}");
    // Grouped by a small dictionary, the holders group on its ids.
    let plan = query(&nodes[0].addr, "EXPLAIN SELECT device, COUNT(*) FROM clicks GROUP BY device").await.to_string();
    let (boundary, grouping) = (plan.find("NetworkCoalesceExec"), plan.find("DictionaryGroupBy: gby=[device]"));
    assert!(boundary.is_some() && boundary < grouping && grouping < plan.find("ClusterScanExec"), "{plan}");

    // A filter on the time column that the catalog's time ranges rule out
    // for every other node's segments is answered by the node alone (Pinot's
    // broker prunes by time before it routes): one server queried, no task
    // sent, and the right answer.
    let early = "SELECT COUNT(*) FROM clicks WHERE ts < TIMESTAMP '2000-01-01 00:00:00'";
    let v = query(&nodes[0].addr, early).await;
    assert_eq!((v["resultTable"]["rows"][0][0].as_i64(), v["numServersQueried"].as_u64()), (Some(0), Some(1)), "{v}");

    // Past `shuffle_min_groups` (0 on q2 and q3), the holders merge the
    // partial states among themselves: each task of the shuffle's stage
    // merges its share of the keys, and only merged groups reach the node
    // that took the query. On q2 (one thread) DataFusion planned a `Final`
    // merge on one partition; it becomes the same partitioned merge.
    for node in &nodes[1..] {
        // Two keys: a single small-dictionary key is grouped on its ids
        // (`DictionaryGroupBy`), whose few groups are always gathered.
        let sql = "EXPLAIN SELECT user_id, status, COUNT(*) FROM clicks GROUP BY user_id, status";
        let plan = query(&node.addr, sql).await.to_string();
        let at = |needle: &str| plan.find(needle).unwrap_or_else(|| panic!("{needle} in {plan}"));
        let (gather, merge, shuffle) =
            (at("NetworkCoalesceExec"), at("mode=FinalPartitioned"), at("NetworkShuffleExec"));
        let (partial, scan) = (at("mode=Partial"), at("ClusterScanExec"));
        assert!(gather < merge && merge < shuffle && shuffle < partial && partial < scan, "{plan}");
    }

    // The deadline covers the whole distributed query: with a holder hung
    // (SIGSTOP: connected, never answering) the query ends at its deadline
    // with a timeout, instead of waiting on the holder. The hung node is
    // the one killed next.
    nodes[2].child.as_ref().unwrap().signal(libc::SIGSTOP).unwrap();
    let started = std::time::Instant::now();
    let v = query(&nodes[0].addr, "SELECT status, COUNT(*) FROM clicks GROUP BY status").await;
    let waited = started.elapsed();
    assert!(v["httpStatus"] == 504 && v.to_string().contains("timed out"), "{v}");
    assert!(waited < Duration::from_secs(QUERY_TIMEOUT_S + 3), "answered {waited:?} after: {v}");

    // Replication 1, a node killed: answers are complete or flagged partial,
    // never silently short, and complete again once the survivors took
    // over the dead node's segments.
    nodes[2].kill();
    let (mut partial_seen, mut complete_again) = (0, false);
    for _ in 0..200 {
        let (n, v) = count(&nodes[0].addr).await;
        let exceptions = v["exceptions"].as_array().cloned().unwrap_or_default();
        match n {
            Some(n) if n == total && exceptions.is_empty() => {
                if partial_seen > 0 || nodes[0].loaded() + nodes[1].loaded() >= segments {
                    complete_again = true;
                    break;
                }
            }
            Some(n) => {
                assert!(n < total, "never more than the total: {v}");
                assert!(exceptions.iter().any(|e| e["errorCode"] == 305), "a short answer must say it is partial: {v}");
                assert!(v["numServersResponded"].as_u64() < v["numServersQueried"].as_u64(), "{v}");
                partial_seen += 1;
            }
            None => assert!(v["httpStatus"] != 200, "an answer without a count: {v}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        complete_again,
        "the survivors serve the dead node's segments; last loaded {:?}",
        (nodes[0].loaded(), nodes[1].loaded())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replication_two_survives_a_killed_node() {
    let (_zk, _dir, mut nodes, total) = cluster(2).await;
    let segments = fixture::SEGMENT_ROWS.len() as f64;
    let loaded: Vec<f64> = nodes.iter().map(Node::loaded).collect();
    assert_eq!(loaded.iter().sum::<f64>(), 2.0 * segments, "two copies of each segment: {loaded:?}");

    // A query loop on a survivor while a node is SIGKILLed: every answer
    // complete and right.
    let addr = nodes[0].addr.clone();
    let looping = tokio::spawn(async move {
        let mut answered = 0;
        for _ in 0..60 {
            let (n, v) = count(&addr).await;
            assert_eq!(n, Some(total), "a complete, right answer while a node dies: {v}");
            assert_eq!(v["exceptions"], json!([]), "{v}");
            answered += 1;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        answered
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    nodes[1].kill();
    assert_eq!(looping.await.unwrap(), 60);

    // Re-replicated to the survivors: each holds every segment.
    wait_until("the survivors to hold two copies again", Duration::from_secs(30), || async {
        nodes[0].loaded() + nodes[2].loaded() == 2.0 * segments
    })
    .await
    .unwrap();
    // The node comes back: it takes its share, and the others drop theirs
    // only once it serves them.
    nodes[1].start();
    let each = (2.0 * segments / 3.0).round();
    wait_until("the restarted node to take its share back", Duration::from_secs(60), || async {
        nodes.iter().all(|n| (n.loaded() - each).abs() <= 1.0)
    })
    .await
    .unwrap_or_else(|e| panic!("{e}: {:?}", nodes.iter().map(Node::loaded).collect::<Vec<_>>()));
    for node in &nodes {
        assert_eq!(count(&node.addr).await.0, Some(total));
    }
}
