//! Kafka over TLS and SASL, with real `sluice ingest` processes and a
//! broker that requires them (the test kit's TLS/SASL front before the
//! mock cluster, whose metadata sends every connection through the front):
//! - the README's deployment pipeline (SASL_SSL, SCRAM-SHA-512, secrets
//!   from the environment) ingests exactly what was produced, and the
//!   consumer group shows the checkpoints to an independent client;
//! - TLS alone, and SASL PLAIN without TLS, each ingest;
//! - a wrong password fails the pipeline by name in `/health`, `sluice
//!   status` and the log, with librdkafka's reason.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use sluice_coordinator::{Coordinator, ZooKeeperCoordinator, ZooKeeperOptions};
use sluice_testkit::kafka::committed_offsets;
use sluice_testkit::kafka_front::{SaslMechanism, SaslUser};
use sluice_testkit::net::{free_port, http_get};
use sluice_testkit::{GuardedChild, Requirements, SecureKafka, ZooKeeper, unique_name, wait_until};

const PASSWORD: &str = "a managed-kafka secret";

fn user(mechanism: SaslMechanism) -> SaslUser {
    SaslUser { mechanism, username: "sluice".into(), password: PASSWORD.into() }
}

/// The README's `clickstream.toml`, verbatim but for what a test must
/// change: its topic, a small flush threshold and a local deep store.
fn readme_pipeline(topic: &str, deep: &Path) -> String {
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let start = readme.find("<!-- file: clickstream.toml -->").expect("the README's pipeline");
    let body = &readme[start..];
    let body = &body[body.find("```toml").unwrap() + "```toml".len()..];
    let text = &body[..body.find("```").unwrap()];
    for expected in ["\"security.protocol\" = \"SASL_SSL\"", "\"sasl.password\" = \"${KAFKA_PASSWORD}\""] {
        assert!(text.contains(expected), "the README's pipeline should hold {expected}");
    }
    text.replace("topic = \"clickstream\"", &format!("topic = \"{topic}\""))
        .replace("rows = 1000000", "rows = 100")
        .replace("uri = \"s3://analytics-lake/sluice\"", &format!("uri = \"file://{}\"", deep.display()))
}

/// A pipeline of one timestamp column over `kafka` with `properties`.
fn small_pipeline(
    table: &str,
    topic: &str,
    kafka: &SecureKafka,
    properties: &BTreeMap<String, String>,
    deep: &Path,
) -> String {
    let properties: String = properties.iter().map(|(k, v)| format!("\"{k}\" = \"{v}\"\n")).collect();
    format!(
        "table = \"{table}\"\n[source]\nbootstrap_servers = \"{}\"\ntopic = \"{topic}\"\n[source.properties]\n{properties}\
         [schema]\ntime_column = \"ts\"\n[[schema.columns]]\nname = \"ts\"\ntype = \"timestamp\"\nnullable = false\n\
         [flush]\nrows = 100\ntime = \"10m\"\n[deep_store]\nuri = \"file://{}\"\n",
        kafka.bootstrap_servers(),
        deep.display()
    )
}

struct Worker {
    _process: GuardedChild,
    http: String,
    log: PathBuf,
}

impl Worker {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// `sluice ingest` over `pipelines` (file name, text), with `env` set.
fn start_worker(
    dir: &Path,
    zk: &ZooKeeper,
    root: &str,
    pipelines: &[(&str, String)],
    env: &[(&str, String)],
) -> Worker {
    for (name, text) in pipelines {
        std::fs::write(dir.join(name), text).unwrap();
    }
    let files: Vec<String> = pipelines.iter().map(|(name, _)| format!("\"{name}\"")).collect();
    let http = format!("127.0.0.1:{}", free_port().unwrap());
    std::fs::write(
        dir.join("worker.toml"),
        format!(
            "node_id = \"w1\"\ndata_dir = \"{}\"\nstall_timeout = \"1s\"\n[coordinator]\nconnect = \"{}\"\nroot = \"{root}\"\n\
             [http]\nlisten = \"{http}\"\n[pipelines]\nfiles = [{}]\nfrom_coordinator = false\n",
            dir.join("data").display(),
            zk.connect_string(),
            files.join(", ")
        ),
    )
    .unwrap();
    let log = dir.join("worker.log");
    let file = std::fs::File::create(&log).unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_sluice"));
    command
        .args(["ingest", "--config"])
        .arg(dir.join("worker.toml"))
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdin(Stdio::null())
        .stdout(file.try_clone().unwrap())
        .stderr(file);
    Worker { _process: GuardedChild::spawn(command).unwrap(), http, log }
}

async fn observer(zk: &ZooKeeper, root: &str) -> ZooKeeperCoordinator {
    ZooKeeperCoordinator::connect(ZooKeeperOptions::plain(zk.connect_string(), root, Duration::from_secs(10)))
        .await
        .unwrap()
}

async fn wait_for_rows(observer: &ZooKeeperCoordinator, table: &str, rows: u64, worker: &Worker) {
    let committed = || async {
        observer.segments(table).await.map(|(s, _)| s.iter().map(|s| s.row_count).sum::<u64>()).unwrap_or(0) == rows
    };
    if let Err(e) = wait_until(&format!("{table} commits {rows} rows"), Duration::from_secs(60), committed).await {
        panic!("{e}\n{}", worker.log());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readmes_sasl_ssl_pipeline_ingests_and_shows_its_offsets_to_kafka_tools() {
    let zk = ZooKeeper::start().unwrap();
    let kafka =
        SecureKafka::start(Requirements { tls: true, sasl: Some(user(SaslMechanism::ScramSha512)) }).await.unwrap();
    let topic = unique_name("secure");
    kafka.create_topic(&topic, 2).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let root = format!("/{}", unique_name("secure"));
    let pipeline = readme_pipeline(&topic, &dir.path().join("deep"));
    let env = [
        ("KAFKA_BOOTSTRAP", kafka.bootstrap_servers()),
        ("KAFKA_USER", "sluice".to_string()),
        ("KAFKA_PASSWORD", PASSWORD.to_string()),
        ("KAFKA_CA_LOCATION", kafka.ca_location().unwrap().display().to_string()),
    ];
    let worker = start_worker(dir.path(), &zk, &root, &[("clickstream.toml", pipeline)], &env);

    let records = (0..400i64).map(|i| {
        let json = format!("{{\"ts\": {i}, \"status\": 200, \"user\": {{\"id\": \"u{i}\", \"country\": \"DE\"}}}}");
        ((i % 2) as i32, json.into_bytes())
    });
    kafka.producer().unwrap().send_all(&topic, records).await.unwrap();
    let observer = observer(&zk, &root).await;
    wait_for_rows(&observer, "clickstream", 400, &worker).await;

    // The checkpoints, mirrored to the consumer group `sluice-clickstream`,
    // as an independent client over the same TLS and SASL reads them.
    let mut checkpoints = BTreeMap::new();
    for p in 0..2 {
        let checkpoint = observer.checkpoint("clickstream", p).await.unwrap().unwrap();
        checkpoints.insert(p, checkpoint.next_offset.unwrap());
    }
    assert_eq!(checkpoints.values().sum::<i64>(), 400);
    let mirrored = || committed_offsets(kafka.client_config(), "sluice-clickstream", &topic, 2);
    let matches = || {
        let (mirrored, checkpoints) = (mirrored(), checkpoints.clone());
        async move { mirrored.await == Some(checkpoints) }
    };
    if let Err(e) = wait_until("the consumer group shows the checkpoints", Duration::from_secs(30), matches).await {
        panic!("{e}: {:?} vs {checkpoints:?}", mirrored().await);
    }
    assert_eq!(http_get(&worker.http, "/health").0, 200, "{}", http_get(&worker.http, "/health").1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_alone_and_sasl_without_tls_each_ingest() {
    let zk = ZooKeeper::start().unwrap();
    let tls = SecureKafka::start(Requirements { tls: true, sasl: None }).await.unwrap();
    let sasl = SecureKafka::start(Requirements { tls: false, sasl: Some(user(SaslMechanism::Plain)) }).await.unwrap();
    let scram =
        SecureKafka::start(Requirements { tls: false, sasl: Some(user(SaslMechanism::ScramSha256)) }).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let root = format!("/{}", unique_name("secure"));
    let mut pipelines = Vec::new();
    for (table, kafka) in [("over_tls", &tls), ("over_plain", &sasl), ("over_scram", &scram)] {
        let topic = unique_name(table);
        kafka.create_topic(&topic, 1).await.unwrap();
        let properties = kafka.client_properties();
        assert_ne!(properties["security.protocol"], "PLAINTEXT");
        pipelines.push((
            table,
            topic.clone(),
            small_pipeline(table, &topic, kafka, &properties, &dir.path().join("deep")),
        ));
        let records = (0..250i64).map(|ts| (0, format!("{{\"ts\": {ts}}}").into_bytes()));
        kafka.producer().unwrap().send_all(&topic, records).await.unwrap();
    }
    let files: Vec<(String, String)> =
        pipelines.iter().map(|(t, _, text)| (format!("{t}.toml"), text.clone())).collect();
    let files: Vec<(&str, String)> = files.iter().map(|(n, t)| (n.as_str(), t.clone())).collect();
    let worker = start_worker(dir.path(), &zk, &root, &files, &[]);
    let observer = observer(&zk, &root).await;
    for (table, _, _) in &pipelines {
        // 250 rows: two segments of 100 at the row threshold; the rest waits
        // for the flush timer, so 200 are committed.
        wait_for_rows(&observer, table, 200, &worker).await;
    }
}

/// A `payments` pipeline over a TLS + SASL `mechanism` broker whose
/// password comes from `${KAFKA_PASSWORD}`, which the tests set wrong.
struct WrongPassword {
    zk: ZooKeeper,
    kafka: SecureKafka,
    dir: tempfile::TempDir,
    root: String,
    pipeline: String,
}

impl WrongPassword {
    async fn start(mechanism: SaslMechanism) -> Self {
        let zk = ZooKeeper::start().unwrap();
        let kafka = SecureKafka::start(Requirements { tls: true, sasl: Some(user(mechanism)) }).await.unwrap();
        let topic = unique_name("secure");
        kafka.create_topic(&topic, 1).await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let root = format!("/{}", unique_name("secure"));
        let mut properties = kafka.client_properties();
        properties.insert("sasl.password".into(), "${KAFKA_PASSWORD}".into());
        let pipeline = small_pipeline("payments", &topic, &kafka, &properties, &dir.path().join("deep"));
        WrongPassword { zk, kafka, dir, root, pipeline }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_fails_the_pipeline_by_name() {
    let WrongPassword { zk, kafka: _kafka, dir, root, pipeline } = WrongPassword::start(SaslMechanism::Plain).await;
    let worker = start_worker(
        dir.path(),
        &zk,
        &root,
        &[("payments.toml", pipeline)],
        &[("KAFKA_PASSWORD", "not the password".to_string())],
    );

    let failing = || async {
        let (status, body) = http_get(&worker.http, "/health");
        status == 503 && body.contains("failingPipelines") && body.contains("pipeline `payments`")
    };
    if let Err(e) = wait_until("/health names the failing pipeline", Duration::from_secs(60), failing).await {
        panic!("{e}: {:?}\n{}", http_get(&worker.http, "/health"), worker.log());
    }
    let (_, body) = http_get(&worker.http, "/health");
    let health: serde_json::Value = serde_json::from_str(&body).unwrap();
    let reason = health["failingPipelines"][0]["reason"].as_str().unwrap().to_string();
    assert!(reason.to_lowercase().contains("authentication"), "librdkafka's reason: {reason}");
    assert!(!reason.contains("not the password"), "the password is never shown: {reason}");
    assert_eq!(health["failingPipelines"][0]["table"], "payments");

    let status = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["status", "--zookeeper", &zk.connect_string(), "--root", &root])
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&status.stdout);
    assert!(shown.contains("failing pipelines: 1") && shown.contains("payments"), "{shown}");
    let log = worker.log();
    assert!(
        log.contains("pipeline `payments` cannot read its Kafka source") && log.contains("sasl.password"),
        "the log names the pipeline and what to check:\n{log}"
    );
    assert!(!log.contains("not the password"), "the password is never logged");
}

/// The same wrong password on a query node: its tail consumer of the
/// pipeline is shown `erroring` in `/health` (503) with librdkafka's reason
/// and the pipeline's name, and `sluice status` prints it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_nodes_tail_shows_a_wrong_password_by_name() {
    let WrongPassword { zk, kafka: _kafka, dir, root, pipeline } =
        WrongPassword::start(SaslMechanism::ScramSha256).await;
    observer(&zk, &root).await.apply_pipeline("payments", &pipeline).await.unwrap();

    let addr = format!("127.0.0.1:{}", free_port().unwrap());
    let config = dir.path().join("query.toml");
    std::fs::write(
        &config,
        format!(
            "node_id = \"q1\"\ncache_dir = \"{}\"\n[coordinator]\nconnect = \"{}\"\nroot = \"{root}\"\n[http]\nlisten = \"{addr}\"\n",
            dir.path().join("cache").display(),
            zk.connect_string()
        ),
    )
    .unwrap();
    let log = dir.path().join("query.log");
    let file = std::fs::File::create(&log).unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_sluice"));
    command
        .args(["query", "--config"])
        .arg(&config)
        .env("KAFKA_PASSWORD", "not the password")
        .stdin(Stdio::null())
        .stdout(file.try_clone().unwrap())
        .stderr(file);
    let _node = GuardedChild::spawn(command).unwrap();

    let erroring = || async {
        let (status, body) = http_get(&addr, "/health");
        status == 503 && body.contains("erroring") && body.contains("pipeline `payments`")
    };
    if let Err(e) = wait_until("the tail consumer shows the failure", Duration::from_secs(60), erroring).await {
        panic!("{e}: {:?}\n{}", http_get(&addr, "/health"), std::fs::read_to_string(&log).unwrap_or_default());
    }
    let (_, body) = http_get(&addr, "/health");
    let health: serde_json::Value = serde_json::from_str(&body).unwrap();
    let error = health["tailConsumers"][0]["error"].as_str().unwrap().to_string();
    assert!(error.to_lowercase().contains("authentication"), "librdkafka's reason: {error}");
    assert!(!error.contains("not the password"), "{error}");
    let status = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["status", "--zookeeper", &zk.connect_string(), "--root", &root])
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&status.stdout);
    assert!(shown.contains("tail consumer of payments: erroring") && shown.contains("q1\thttp"), "{shown}");
}
