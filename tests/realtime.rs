//! Real-time queries against real processes (ZooKeeper, the test kit's
//! broker, `sluice ingest`, `sluice query`): rows are answered before any
//! segment commits, and while segments commit and workers are killed no
//! answer ever counts a row twice or exceeds what was produced; on one node, no
//! answer goes down.

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sluice_coordinator::{Coordinator, ZooKeeperCoordinator, ZooKeeperOptions};
use sluice_testkit::net::{free_port, http_get, http_post, metric_sum};
use sluice_testkit::{GuardedChild, KafkaBroker, ZooKeeper, unique_name, wait_until};

struct Cluster {
    dir: tempfile::TempDir,
    zk: ZooKeeper,
    broker: KafkaBroker,
    topic: String,
    root: String,
    observer: ZooKeeperCoordinator,
    query_addr: String,
}

/// `sluice query` config: a lone node, or (with `id`) a member of a cluster.
fn query_config(cache: &std::path::Path, zk: &str, root: &str, addr: &str, id: Option<&str>) -> String {
    let member = id.map_or(String::new(), |id| {
        format!("node_id = \"{id}\"\nflight_listen = \"127.0.0.1:0\"\nflight_token = \"cluster-secret-0123456789\"\n")
    });
    format!(
        "{member}cache_dir = \"{}\"\n[coordinator]\nconnect = \"{zk}\"\nroot = \"{root}\"\nsession_timeout = \"4s\"\n\
         [http]\nlisten = \"{addr}\"\n",
        cache.display()
    )
}

impl Cluster {
    async fn start(flush_rows: u64) -> Cluster {
        let zk = ZooKeeper::start().unwrap();
        let broker = KafkaBroker::start().unwrap();
        let topic = unique_name("rt");
        broker.create_topic(&topic, 2).await.unwrap();
        let root = format!("/{}", unique_name("realtime"));
        let observer =
            ZooKeeperCoordinator::connect(ZooKeeperOptions::plain(zk.connect_string(), &root, Duration::from_secs(30)))
                .await
                .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let deep = dir.path().join("deep");
        let pipeline = pipeline(broker.bootstrap_servers(), &topic, &deep, flush_rows, "");
        observer.apply_pipeline("events", &pipeline).await.unwrap();
        let query_addr = format!("127.0.0.1:{}", free_port().unwrap());
        let query = query_config(&dir.path().join("cache"), &zk.connect_string(), &root, &query_addr, None);
        std::fs::write(dir.path().join("query.toml"), query).unwrap();
        Cluster { dir, zk, broker, topic, root, observer, query_addr }
    }

    fn spawn(&self, name: &str, args: &[&str]) -> GuardedChild {
        let log = std::fs::File::options()
            .create(true)
            .append(true)
            .open(self.dir.path().join(format!("{name}.log")))
            .unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_sluice"));
        command.args(args).stdin(Stdio::null()).stdout(log.try_clone().unwrap()).stderr(log);
        GuardedChild::spawn(command).unwrap()
    }

    fn worker(&self, id: &str) -> GuardedChild {
        let path = self.dir.path().join(format!("{id}.toml"));
        let text = format!(
            "node_id = \"{id}\"\ndata_dir = \"{}\"\n[coordinator]\nconnect = \"{}\"\nroot = \"{}\"\nsession_timeout = \"2s\"\n\
             [http]\nlisten = \"127.0.0.1:0\"\n[pipelines]\nfrom_coordinator = true\n",
            self.dir.path().join(id).display(),
            self.zk.connect_string(),
            self.root
        );
        std::fs::write(&path, text).unwrap();
        self.spawn(id, &["ingest", "--config", path.to_str().unwrap()])
    }

    /// SIGKILLs `worker` and starts worker `id` again.
    fn kill_and_restart(&self, mut worker: GuardedChild, id: &str) -> GuardedChild {
        worker.signal(libc::SIGKILL).unwrap();
        worker.wait_timeout(Duration::from_secs(5)).unwrap();
        self.worker(id)
    }

    fn query_node(&self) -> GuardedChild {
        self.spawn("query", &["query", "--config", self.dir.path().join("query.toml").to_str().unwrap()])
    }

    /// A member `id` of a cluster of query nodes; returns it and its address.
    fn cluster_node(&self, id: &str) -> (GuardedChild, String) {
        let addr = format!("127.0.0.1:{}", free_port().unwrap());
        let cache = self.dir.path().join(id);
        let config = query_config(&cache, &self.zk.connect_string(), &self.root, &addr, Some(id));
        let path = self.dir.path().join(format!("{id}.toml"));
        std::fs::write(&path, config).unwrap();
        (self.spawn(id, &["query", "--config", path.to_str().unwrap()]), addr)
    }

    /// Member `id` started again with the config it had.
    fn restart_node(&self, id: &str) -> GuardedChild {
        self.spawn(id, &["query", "--config", self.dir.path().join(format!("{id}.toml")).to_str().unwrap()])
    }

    fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("{name}.log"))).unwrap_or_default()
    }
}

/// The `events` pipeline; `properties`: lines of its `[source.properties]`.
fn pipeline(bootstrap: &str, topic: &str, deep: &std::path::Path, flush_rows: u64, properties: &str) -> String {
    format!(
        "table = \"events\"\n[source]\nbootstrap_servers = \"{bootstrap}\"\ntopic = \"{topic}\"\n\
         [source.properties]\n{properties}\n[schema]\ntime_column = \"ts\"\n\
         [[schema.columns]]\nname = \"ts\"\ntype = \"timestamp\"\nnullable = false\n\
         [[schema.columns]]\nname = \"id\"\ntype = \"int64\"\nnullable = false\n\
         [[schema.columns]]\nname = \"status\"\ntype = \"int32\"\n\
         [indexes]\ninverted = [\"status\"]\n\
         [flush]\nrows = {flush_rows}\ntime = \"10m\"\n[deep_store]\nuri = \"file://{}\"\n",
        deep.display()
    )
}

fn sql(addr: &str, sql: &str) -> Option<Value> {
    let (status, text) = http_post(addr, "/query/sql", &serde_json::to_vec(&json!({ "sql": sql })).unwrap());
    (status == 200).then(|| serde_json::from_str(&text).ok()).flatten()
}

fn first_i64(answer: &Value, column: usize) -> Option<i64> {
    answer["resultTable"]["rows"][0][column].as_i64()
}

/// `{"ts", "id", "status"}` records; status 404 for every tenth id.
fn events(ids: std::ops::Range<i64>) -> impl Iterator<Item = (i32, Vec<u8>)> {
    ids.map(|id| {
        let status = if id % 10 == 0 { 404 } else { 200 };
        ((id % 2) as i32, format!("{{\"ts\": {id}, \"id\": {id}, \"status\": {status}}}").into_bytes())
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_are_answered_before_any_segment_commits() {
    let c = Cluster::start(1_000_000).await;
    let _worker = c.worker("w1");
    let _query = c.query_node();
    let addr = c.query_addr.clone();
    let table_ready = || async { sql(&addr, "SELECT COUNT(*) FROM events").is_some() };
    wait_until("the query node serves the table", Duration::from_secs(60), table_ready).await.unwrap();

    let producer = c.broker.producer().unwrap();
    producer.send_all(&c.topic, events(0..1_000)).await.unwrap();
    let acked = Instant::now();
    let all = || async { sql(&addr, "SELECT COUNT(*) FROM events").and_then(|a| first_i64(&a, 0)) == Some(1_000) };
    if let Err(e) = wait_until("every produced row is answered", Duration::from_secs(30), all).await {
        panic!("{e}\nquery:\n{}\nworker:\n{}", c.log("query"), c.log("w1"));
    }
    eprintln!("produced rows answered {:?} after the producer's acknowledgement", acked.elapsed());
    assert!(acked.elapsed() < Duration::from_secs(5), "took {:?}", acked.elapsed());
    assert!(c.observer.segments("events").await.unwrap().0.is_empty(), "nothing was committed");

    let answer = sql(&addr, "SELECT COUNT(*) FROM events WHERE status = 404").unwrap();
    assert_eq!(first_i64(&answer, 0), Some(100), "{answer}");
    assert_eq!(answer["numConsumingSegmentsQueried"], 2, "{answer}");
    assert!(answer["minConsumingFreshnessTimeMs"].as_i64().unwrap() > 0, "{answer}");
    assert_eq!(answer["totalDocs"], 1_000, "{answer}");
    // The selection fast path over the tail, with the inverted index.
    let answer = sql(&addr, "SELECT id FROM events WHERE status = 404 LIMIT 1000").unwrap();
    let mut ids: Vec<i64> =
        answer["resultTable"]["rows"].as_array().unwrap().iter().map(|r| r[0].as_i64().unwrap()).collect();
    ids.sort();
    assert_eq!(ids, (0..1_000).step_by(10).collect::<Vec<i64>>());
    let answer = sql(&addr, "SELECT COUNT(DISTINCT id), SUM(id) FROM events").unwrap();
    assert_eq!(first_i64(&answer, 0), Some(1_000));
    assert_eq!(first_i64(&answer, 1), Some((0..1_000).sum::<i64>()));

    // Freshness, per partition, on the node and in `sluice status`.
    let status = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["status", "--zookeeper", &c.zk.connect_string(), "--root", &c.root, "--query-node", &addr])
        .output()
        .unwrap();
    let printed = String::from_utf8_lossy(&status.stdout);
    assert!(printed.contains("tail events/0") && printed.contains("tail events/1"), "{printed}");
    assert!(printed.contains("500 rows") && printed.contains("freshness"), "{printed}");
}

/// The exactly-once property at every instant: a reader queries
/// continuously while 100,000 records are produced, segments commit every
/// 2,500 rows per partition and the worker is killed and restarted. No answer counts a
/// row twice (`COUNT(*) = COUNT(DISTINCT id)`), exceeds what was sent, or
/// is below an earlier answer; the final answer is exact, and a restarted
/// query node gives it too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_are_exact_at_every_instant_through_commits_and_kills() {
    let c = Cluster::start(2_500).await;
    let mut worker = c.worker("w1");
    let mut query = c.query_node();
    let addr = c.query_addr.clone();
    let table_ready = || async { sql(&addr, "SELECT COUNT(*) FROM events").is_some() };
    wait_until("the query node serves the table", Duration::from_secs(60), table_ready).await.unwrap();

    let sent = Arc::new(AtomicI64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let (addr, sent, stop) = (addr.clone(), sent.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut last = 0i64;
            let mut answers = 0;
            while !stop.load(Ordering::SeqCst) {
                let Some(answer) = sql(&addr, "SELECT COUNT(*), COUNT(DISTINCT id), SUM(id) FROM events") else {
                    continue;
                };
                let (count, distinct) = (first_i64(&answer, 0).unwrap(), first_i64(&answer, 1).unwrap());
                let bound = sent.load(Ordering::SeqCst);
                assert_eq!(count, distinct, "a row counted twice: {answer}");
                assert!(count <= bound, "{count} rows answered, {bound} sent: {answer}");
                assert!(count >= last, "the answer went down from {last} to {count}");
                last = count;
                answers += 1;
            }
            answers
        })
    };
    let producer = c.broker.producer().unwrap();
    let total = 100_000i64;
    for chunk in 0..20 {
        let ids = chunk * 5_000..(chunk + 1) * 5_000;
        sent.store(ids.end, Ordering::SeqCst);
        producer.send_all(&c.topic, events(ids)).await.unwrap();
        if chunk == 6 || chunk == 13 {
            worker = c.kill_and_restart(worker, "w1");
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let exact = || async { sql(&addr, "SELECT COUNT(*) FROM events").and_then(|a| first_i64(&a, 0)) == Some(total) };
    if let Err(e) = wait_until("the final answer is exact", Duration::from_secs(60), exact).await {
        panic!("{e}\nquery:\n{}\nworker:\n{}", c.log("query"), c.log("w1"));
    }
    stop.store(true, Ordering::SeqCst);
    let answers = reader.join().expect("every answer was exact");
    eprintln!("{answers} answers checked");
    assert!(answers > 20);
    assert!(!c.observer.segments("events").await.unwrap().0.is_empty(), "segments committed meanwhile");

    query.signal(libc::SIGTERM).unwrap();
    assert!(query.wait_timeout(Duration::from_secs(20)).unwrap().unwrap().success());
    let _query = c.query_node();
    if let Err(e) = wait_until("a restarted query node answers the same", Duration::from_secs(60), exact).await {
        panic!("{e}\nquery:\n{}", c.log("query"));
    }
    let answer = sql(&addr, "SELECT COUNT(DISTINCT id), SUM(id) FROM events").unwrap();
    assert_eq!(first_i64(&answer, 0), Some(total));
    assert_eq!(first_i64(&answer, 1), Some((0..total).sum::<i64>()));
    drop(worker);
}

/// The exactly-once property at every instant across a cluster of three
/// query nodes (replication 2, DataFusion Distributed over Flight): readers
/// ask every node in turn while records arrive, segments commit and spread
/// over the nodes, the worker is killed and one query node is SIGKILLed and
/// restarted. No answer counts a row twice or exceeds what was sent, and
/// every node ends exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_are_exact_on_every_node_of_a_cluster() {
    let c = Cluster::start(2_000).await;
    let mut worker = c.worker("w1");
    let mut nodes: Vec<(GuardedChild, String)> = ["q1", "q2", "q3"].iter().map(|id| c.cluster_node(id)).collect();
    let addrs: Vec<String> = nodes.iter().map(|(_, a)| a.clone()).collect();
    // An empty topic: every tail is caught up at once, and every node
    // answers in full (no partition left out as unavailable).
    for addr in &addrs {
        let ready = || async { sql(addr, "SELECT COUNT(*) FROM events").is_some_and(|a| a["exceptions"] == json!([])) };
        if let Err(e) = wait_until("every node serves the table in full", Duration::from_secs(60), ready).await {
            panic!("{e}: {:?}\n{}", sql(addr, "SELECT COUNT(*) FROM events"), c.log("q1"));
        }
    }

    let sent = Arc::new(AtomicI64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    // A restarted node answers from what it has read since: its answers are
    // monotonic from then on (its tail catches up from the committed end).
    let restarted = Arc::new(AtomicBool::new(false));
    let reader = {
        let (addrs, sent, stop, restarted) = (addrs.clone(), sent.clone(), stop.clone(), restarted.clone());
        std::thread::spawn(move || {
            let mut last = vec![0i64; addrs.len()];
            let (mut answers, mut steps_back, mut flagged) = (0, 0, 0);
            while !stop.load(Ordering::SeqCst) {
                if restarted.swap(false, Ordering::SeqCst) {
                    last[2] = 0;
                }
                for (i, addr) in addrs.iter().enumerate() {
                    let Some(answer) = sql(addr, "SELECT COUNT(*), COUNT(DISTINCT id), SUM(id) FROM events") else {
                        continue; // a node down or restarting
                    };
                    if answer["exceptions"].as_array().is_some_and(|e| !e.is_empty()) {
                        flagged += 1; // partial, and saying so: never silently short
                        continue;
                    }
                    let (count, distinct) = (first_i64(&answer, 0).unwrap(), first_i64(&answer, 1).unwrap());
                    let bound = sent.load(Ordering::SeqCst);
                    assert_eq!(count, distinct, "a row counted twice by {addr}: {answer}");
                    assert!(count <= bound, "{count} rows answered by {addr}, {bound} sent: {answer}");
                    // A node's answers may step back, within the tails'
                    // one-second freshness bound, when the replica of a
                    // tail it reads changes (its own catching up, a holder
                    // dying): exact at every instant, not monotonic.
                    if count < last[i] {
                        steps_back += 1;
                    }
                    last[i] = count;
                    answers += 1;
                }
            }
            eprintln!("{steps_back} answers stepped back from their node's previous one; {flagged} flagged partial");
            answers
        })
    };
    let producer = c.broker.producer().unwrap();
    let total = 50_000i64;
    for chunk in 0..10 {
        let ids = chunk * 5_000..(chunk + 1) * 5_000;
        sent.store(ids.end, Ordering::SeqCst);
        producer.send_all(&c.topic, events(ids)).await.unwrap();
        if chunk == 3 {
            worker = c.kill_and_restart(worker, "w1");
        }
        if chunk == 5 {
            nodes[2].0.signal(libc::SIGKILL).unwrap();
            nodes[2].0.wait_timeout(Duration::from_secs(5)).unwrap();
            restarted.store(true, Ordering::SeqCst);
        }
        if chunk == 7 {
            nodes[2].0 = c.restart_node("q3");
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    for addr in &addrs {
        let exact = || async { sql(addr, "SELECT COUNT(*) FROM events").and_then(|a| first_i64(&a, 0)) == Some(total) };
        if let Err(e) = wait_until("every node's final answer is exact", Duration::from_secs(90), exact).await {
            panic!("{e} ({addr})\nq1:\n{}\nq3:\n{}\nworker:\n{}", c.log("q1"), c.log("q3"), c.log("w1"));
        }
    }
    // The reader goes on while the worker commits the rest and the nodes
    // hand the new segments to their holders.
    let committed = || async { c.observer.segments("events").await.unwrap().0.len() >= 20 };
    if let Err(e) = wait_until("the worker commits what it read", Duration::from_secs(90), committed).await {
        let segments = c.observer.segments("events").await.unwrap().0.len();
        panic!("{e}: {segments} segments\nworker:\n{}", c.log("w1"));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::SeqCst);
    let Ok(answers) = reader.join() else {
        panic!("a wrong answer\nq1:\n{}\nq2:\n{}\nq3:\n{}", c.log("q1"), c.log("q2"), c.log("q3"));
    };
    eprintln!("{answers} answers checked");
    assert!(answers > 20, "{answers} complete answers checked");
    // Each partition's tail is followed by two of the three nodes; a node
    // reads the tail it does not follow on one that does.
    let followed = || {
        addrs
            .iter()
            .map(|a| {
                serde_json::from_str::<Value>(&http_get(a, "/health").1).unwrap()["tails"]
                    .as_array()
                    .map_or(0, Vec::len)
            })
            .collect::<Vec<_>>()
    };
    let settled = || async { followed().iter().sum::<usize>() == 4 };
    if let Err(e) = wait_until("two nodes follow each partition's tail", Duration::from_secs(30), settled).await {
        panic!("{e}: {:?}", followed());
    }
    let plans: Vec<String> =
        addrs.iter().map(|a| sql(a, "EXPLAIN SELECT COUNT(*) FROM events").unwrap().to_string()).collect();
    assert!(plans.iter().any(|p| p.contains(" tail/")), "a tail read on another node: {plans:?}");
    for addr in &addrs {
        let answer = sql(addr, "SELECT COUNT(DISTINCT id), SUM(id) FROM events").unwrap();
        assert_eq!(first_i64(&answer, 0), Some(total), "{addr}");
        assert_eq!(first_i64(&answer, 1), Some((0..total).sum::<i64>()), "{addr}");
    }
    drop(worker);
}

/// A tail consumer that cannot run is retried with backoff and shown — 503
/// on `/health`, a failure counter, `sluice status` — never stopped
/// silently; a corrected config reaches it without a restart of the node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_tail_consumer_is_shown_retried_and_reconfigured() {
    let c = Cluster::start(1_000_000).await;
    let deep = c.dir.path().join("deep");
    let bad = pipeline(c.broker.bootstrap_servers(), &c.topic, &deep, 1_000_000, "\"fetch.wait.max.ms\" = \"soon\"");
    c.observer.apply_pipeline("events", &bad).await.unwrap();
    let _query = c.query_node();
    let addr = c.query_addr.clone();
    let retrying = || async {
        let (status, body) = http_get(&addr, "/health");
        status == 503 && body.contains("\"retrying\"") && body.contains("fetch.wait.max.ms")
    };
    if let Err(e) = wait_until("the failing tail consumer is unhealthy", Duration::from_secs(60), retrying).await {
        panic!("{e}\n{:?}\nquery:\n{}", http_get(&addr, "/health"), c.log("query"));
    }
    let counted = || async { metric_sum(&http_get(&addr, "/metrics").1, "sluice_query_tail_failures_total") >= 2.0 };
    wait_until("the consumer is retried and every failure counted", Duration::from_secs(30), counted).await.unwrap();
    let status = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["status", "--zookeeper", &c.zk.connect_string(), "--root", &c.root, "--query-node", &addr])
        .output()
        .unwrap();
    let printed = String::from_utf8_lossy(&status.stdout);
    assert!(printed.contains("tail consumer of events: retrying"), "{printed}");

    // The operator fixes the config: the consumer picks it up and catches up.
    let good = pipeline(c.broker.bootstrap_servers(), &c.topic, &deep, 1_000_000, "");
    c.observer.apply_pipeline("events", &good).await.unwrap();
    let _worker = c.worker("w1");
    c.broker.producer().unwrap().send_all(&c.topic, events(0..500)).await.unwrap();
    let all = || async { sql(&addr, "SELECT COUNT(*) FROM events").and_then(|a| first_i64(&a, 0)) == Some(500) };
    if let Err(e) = wait_until("rows are answered after the fix", Duration::from_secs(60), all).await {
        panic!("{e}\nquery:\n{}", c.log("query"));
    }
    let (status, body) = http_get(&addr, "/health");
    assert_eq!(status, 200, "{body}");
}

/// Schema evolution without a restart: `sluice pipeline apply` adds a
/// column with a default mid-stream. Rows written before (committed
/// segments and the tail) answer the default, in the output and in filters;
/// rows after answer their values. A change of a column's type is refused,
/// naming the column. A query node restarted afterwards serves every
/// segment, old and new.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_column_added_mid_stream_answers_its_default_for_older_rows() {
    let c = Cluster::start(400).await;
    let _worker = c.worker("w1");
    let mut query = c.query_node();
    let addr = c.query_addr.clone();
    let count = |sql_text: &'static str| {
        let addr = addr.clone();
        move || sql(&addr, sql_text).and_then(|a| first_i64(&a, 0))
    };
    let producer = c.broker.producer().unwrap();
    producer.send_all(&c.topic, events(0..1_000)).await.unwrap();
    let all = count("SELECT COUNT(*) FROM events");
    wait_until("the first rows are answered", Duration::from_secs(60), || async { all() == Some(1_000) })
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", c.log("query")));
    assert!(!c.observer.segments("events").await.unwrap().0.is_empty(), "segments committed before the change");

    let deep = c.dir.path().join("deep");
    let plain = pipeline(c.broker.bootstrap_servers(), &c.topic, &deep, 400, "");
    let apply = |name: &str, text: String| {
        let path = c.dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args([
                "pipeline",
                "apply",
                path.to_str().unwrap(),
                "--zookeeper",
                &c.zk.connect_string(),
                "--root",
                &c.root,
            ])
            .output()
            .unwrap()
    };
    let retyped = plain.replace("name = \"status\"\ntype = \"int32\"", "name = \"status\"\ntype = \"string\"");
    let refused = apply("retyped.toml", retyped);
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success() && said.contains("schema.columns.status.type"), "{said}");

    let added = plain.replace(
        "[indexes]",
        "[[schema.columns]]\nname = \"plan\"\ntype = \"string\"\nnullable = false\ndefault = \"free\"\n[indexes]",
    );
    let applied = apply("added.toml", added);
    assert!(applied.status.success(), "{}", String::from_utf8_lossy(&applied.stderr));
    let free = count("SELECT COUNT(*) FROM events WHERE plan = 'free'");
    wait_until("the query node serves the new column", Duration::from_secs(30), || async { free() == Some(1_000) })
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", c.log("query")));
    // Rows produced while the change propagates are decoded with the
    // columns in force where they are read (until their segment commits,
    // the node's tail may hold them decoded before): produce the new rows
    // once the worker and the node's tail consumer run the new config.
    let restarted = || async {
        c.log("w1").matches("starting pipeline").count() >= 2
            && c.log("query").matches("following the tail").count() >= 2
    };
    wait_until("the worker and the tail run the new config", Duration::from_secs(30), restarted).await.unwrap();

    let paid = (1_000i64..2_000).map(|id| {
        let record = format!("{{\"ts\": {id}, \"id\": {id}, \"status\": 200, \"plan\": \"paid\"}}");
        ((id % 2) as i32, record.into_bytes())
    });
    producer.send_all(&c.topic, paid).await.unwrap();
    let by_plan = || {
        let answer = sql(&addr, "SELECT plan, COUNT(*), COUNT(DISTINCT id) FROM events GROUP BY plan ORDER BY plan");
        answer.map(|a| a["resultTable"]["rows"].clone())
    };
    let expected = json!([["free", 1_000, 1_000], ["paid", 1_000, 1_000]]);
    let both = || async { by_plan().as_ref() == Some(&expected) };
    wait_until("old rows answer the default, new rows their value", Duration::from_secs(60), both)
        .await
        .unwrap_or_else(|e| panic!("{e}: {:?}\n{}\n{}", by_plan(), c.log("query"), c.log("w1")));
    let filtered = count("SELECT COUNT(*) FROM events WHERE plan <> 'paid' AND status = 404");
    assert_eq!(filtered(), Some(100));

    // Everything committed, then a restarted node serves old and new segments.
    let committed = || async {
        let (records, _) = c.observer.segments("events").await.unwrap();
        // Segments of 400 rows each partition, from its committed end (the
        // pipeline's restart may commit a short one): at least 1,600 rows.
        records.iter().map(|r| r.row_count).sum::<u64>() >= 1_600
    };
    wait_until("every row is committed", Duration::from_secs(60), committed).await.unwrap();
    query.signal(libc::SIGKILL).unwrap();
    query.wait_timeout(Duration::from_secs(5)).unwrap();
    let _query = c.query_node();
    wait_until("the restarted node answers as before", Duration::from_secs(60), both)
        .await
        .unwrap_or_else(|e| panic!("{e}: {:?}\n{}\n{}", by_plan(), c.log("query"), c.log("w1")));
    let log = c.log("query");
    assert!(!log.contains("segment refused"), "{log}");
}
