//! The deep store on S3 with real processes: a worker and a query node with
//! their own data directories and no shared filesystem path meet only
//! through ZooKeeper and an S3-compatible server (moto, started by the test
//! kit). The worker's S3 traffic goes through the test kit's proxy, which
//! cuts it while segments commit: uploads are retried, and every row is
//! answered exactly once.

use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};
use sluice_coordinator::{Coordinator, ZooKeeperCoordinator, ZooKeeperOptions};
use sluice_testkit::net::{free_port, http_post};
use sluice_testkit::{GuardedChild, KafkaBroker, S3Server, TcpProxy, ZooKeeper, unique_name, wait_until};

fn sql(addr: &str, sql: &str) -> Option<Value> {
    let (status, text) = http_post(addr, "/query/sql", &serde_json::to_vec(&json!({ "sql": sql })).unwrap());
    (status == 200).then(|| serde_json::from_str(&text).ok()).flatten()
}

fn count(addr: &str) -> Option<i64> {
    sql(addr, "SELECT COUNT(*), COUNT(DISTINCT id) FROM events").and_then(|a| {
        let row = &a["resultTable"]["rows"][0];
        assert_eq!(row[0], row[1], "a row counted twice: {a}");
        row[0].as_i64()
    })
}

fn spawn(dir: &std::path::Path, name: &str, args: &[&str], s3: &S3Server) -> GuardedChild {
    let log = std::fs::File::create(dir.join(format!("{name}.log"))).unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_sluice"));
    command.args(args).envs(s3.env()).stdin(Stdio::null()).stdout(log.try_clone().unwrap()).stderr(log);
    GuardedChild::spawn(command).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn segments_go_through_s3_and_survive_its_failures() {
    let zk = ZooKeeper::start().unwrap();
    let broker = KafkaBroker::start().unwrap();
    let s3 = S3Server::start().unwrap();
    s3.create_bucket("lake").unwrap();
    let proxy = TcpProxy::start(s3.addr().parse().unwrap()).await.unwrap();
    let topic = unique_name("s3");
    broker.create_topic(&topic, 2).await.unwrap();
    let root = format!("/{}", unique_name("s3e2e"));
    let observer =
        ZooKeeperCoordinator::connect(ZooKeeperOptions::plain(zk.connect_string(), &root, Duration::from_secs(30)))
            .await
            .unwrap();
    let pipeline = format!(
        "table = \"events\"\n[source]\nbootstrap_servers = \"{}\"\ntopic = \"{topic}\"\n[schema]\ntime_column = \"ts\"\n\
         [[schema.columns]]\nname = \"ts\"\ntype = \"timestamp\"\nnullable = false\n\
         [[schema.columns]]\nname = \"id\"\ntype = \"int64\"\nnullable = false\n\
         [flush]\nrows = 500\ntime = \"10m\"\n[deep_store]\nuri = \"s3://lake/sluice/segments\"\n",
        broker.bootstrap_servers()
    );
    observer.apply_pipeline("events", &pipeline).await.unwrap();

    // Two machines, as far as files go: nothing shared but S3.
    let worker_dir = tempfile::tempdir().unwrap();
    let query_dir = tempfile::tempdir().unwrap();
    let object_store = |endpoint: String| {
        format!(
            "[object_store]\nendpoint = \"{endpoint}\"\nallow_http = true\nregion = \"us-east-1\"\n\
             request_timeout = \"2s\"\nmax_retries = 20\nretry_timeout = \"60s\"\n"
        )
    };
    let worker_config = worker_dir.path().join("worker.toml");
    std::fs::write(
        &worker_config,
        format!(
            "node_id = \"w1\"\ndata_dir = \"{}\"\n[coordinator]\nconnect = \"{}\"\nroot = \"{root}\"\n\
             [http]\nlisten = \"127.0.0.1:0\"\n[pipelines]\nfrom_coordinator = true\n{}",
            worker_dir.path().join("data").display(),
            zk.connect_string(),
            object_store(format!("http://{}", proxy.addr()))
        ),
    )
    .unwrap();
    let query_addr = format!("127.0.0.1:{}", free_port().unwrap());
    let query_config = |cache: &str| {
        let path = query_dir.path().join(format!("{cache}.toml"));
        std::fs::write(
            &path,
            format!(
                "cache_dir = \"{}\"\n[coordinator]\nconnect = \"{}\"\nroot = \"{root}\"\n[http]\nlisten = \"{query_addr}\"\n\
                 [limits]\ntail_memory = \"0B\"\n{}",
                query_dir.path().join(cache).display(),
                zk.connect_string(),
                object_store(s3.endpoint())
            ),
        )
        .unwrap();
        path.display().to_string()
    };
    let worker = spawn(worker_dir.path(), "worker", &["ingest", "--config", worker_config.to_str().unwrap()], &s3);
    let first_cache = query_config("cache-1");
    let mut query = spawn(query_dir.path(), "query-1", &["query", "--config", &first_cache], &s3);
    let log = |dir: &tempfile::TempDir, name: &str| std::fs::read_to_string(dir.path().join(name)).unwrap_or_default();

    // 4,000 records: 8 segments, the middle ones committed while the
    // worker's path to S3 is cut for three seconds.
    let producer = broker.producer().unwrap();
    let records = |ids: std::ops::Range<i64>| {
        ids.map(|id| ((id % 2) as i32, format!("{{\"ts\": {id}, \"id\": {id}}}").into_bytes()))
    };
    producer.send_all(&topic, records(0..2_000)).await.unwrap();
    proxy.blackhole();
    producer.send_all(&topic, records(2_000..4_000)).await.unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    proxy.restore();

    let all = || async { count(&query_addr) == Some(4_000) };
    if let Err(e) = wait_until("every row answered from S3 segments", Duration::from_secs(90), all).await {
        panic!("{e}\nworker:\n{}\nquery:\n{}", log(&worker_dir, "worker.log"), log(&query_dir, "query-1.log"));
    }
    let (segments, _) = observer.segments("events").await.unwrap();
    assert_eq!(segments.iter().map(|s| s.row_count).sum::<u64>(), 4_000);
    assert!(segments.iter().all(|s| s.uri.starts_with("s3://lake/sluice/segments/events/")), "{segments:?}");
    assert!(!worker_dir.path().join("data").join("deep-store").exists(), "nothing went to the local default");

    // A query node on a fresh cache downloads everything again from S3.
    query.kill();
    let second_cache = query_config("cache-2");
    let _query = spawn(query_dir.path(), "query-2", &["query", "--config", &second_cache], &s3);
    if let Err(e) = wait_until("a fresh node answers the same", Duration::from_secs(60), all).await {
        panic!("{e}\nquery:\n{}", log(&query_dir, "query-2.log"));
    }
    drop(worker);
}
