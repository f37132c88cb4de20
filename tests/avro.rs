//! Avro input through real processes: records written by an independent
//! producer (PyPI's fastavro for raw Avro, confluent-kafka's AvroSerializer
//! for Confluent's wire format, registering its schema over HTTP) are
//! ingested by a real `sluice ingest` exactly once — the committed segment
//! files are read back — with every bad-record class counted and
//! dead-lettered; a query node serves the same rows over SQL. A schema
//! registry outage delays records, never skips them, and shows in
//! `/health`.
//!
//! The registry is the test kit's minimal Confluent-REST-compatible server
//! (no real one installs here; see `testkit/src/schema_registry.rs`).

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use arrow::array::{Array, AsArray};
use arrow::datatypes::{Int64Type, TimestampMicrosecondType};
use serde_json::Value;
use sluice_coordinator::{Coordinator, ZooKeeperCoordinator, ZooKeeperOptions};
use sluice_segments::Segment;
use sluice_storage::file_uri_path;
use sluice_testkit::net::{free_port, http_get, http_request_with, metric_sum};
use sluice_testkit::{GuardedChild, KafkaBroker, SchemaRegistry, ZooKeeper, unique_name, wait_until};

struct Setup {
    zk: ZooKeeper,
    broker: KafkaBroker,
    registry: SchemaRegistry,
    dir: tempfile::TempDir,
    root: String,
    observer: ZooKeeperCoordinator,
}

async fn setup(name: &str) -> Setup {
    let zk = ZooKeeper::start().unwrap();
    let broker = KafkaBroker::start().unwrap();
    let registry = SchemaRegistry::start().unwrap();
    let root = format!("/{}", unique_name(name));
    let options = ZooKeeperOptions::plain(zk.connect_string(), &root, Duration::from_secs(30));
    let observer = ZooKeeperCoordinator::connect(options).await.unwrap();
    Setup { zk, broker, registry, dir: tempfile::tempdir().unwrap(), root, observer }
}

impl Setup {
    /// A pipeline file for `table` reading `topic` with `source` (the
    /// format lines), dead-lettering to `<topic>-dead`.
    fn pipeline(&self, table: &str, topic: &str, source: &str) -> PathBuf {
        let text = format!(
            r#"table = "{table}"
[source]
bootstrap_servers = "{bootstrap}"
topic = "{topic}"
format = "avro"
{source}
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
[[schema.columns]]
name = "user"
type = "string"
path = "user.name"
[[schema.columns]]
name = "country"
type = "string"
path = "user.geo.country"
default = "none"
[[schema.columns]]
name = "price"
type = "float64"
[[schema.columns]]
name = "price_text"
type = "string"
path = "price"
[[schema.columns]]
name = "seen"
type = "timestamp"
unit = "us"
[[schema.columns]]
name = "kind"
type = "string"
[flush]
rows = 300
time = "1s"
[deep_store]
uri = "file://{deep}"
[bad_records]
policy = "dead_letter"
topic = "{topic}-dead"
"#,
            bootstrap = self.broker.bootstrap_servers(),
            deep = self.dir.path().join("deep").display(),
        );
        let path = self.dir.path().join(format!("{table}.toml"));
        std::fs::write(&path, text).unwrap();
        path
    }

    fn start_worker(&self, pipelines: &[&Path], http: &str) -> GuardedChild {
        let files: Vec<String> = pipelines.iter().map(|p| format!("{:?}", p.display().to_string())).collect();
        let config = self.dir.path().join("w1.toml");
        let text = format!(
            "node_id = \"w1\"\ndata_dir = \"{}\"\nstall_timeout = \"2s\"\n[coordinator]\nconnect = \"{}\"\nroot = \"{}\"\n\
             session_timeout = \"4s\"\n[http]\nlisten = \"{http}\"\n[pipelines]\nfiles = [{}]\nfrom_coordinator = false\n",
            self.dir.path().join("w1").display(),
            self.zk.connect_string(),
            self.root,
            files.join(", ")
        );
        std::fs::write(&config, text).unwrap();
        let log = std::fs::File::options().create(true).append(true).open(self.dir.path().join("w1.log")).unwrap();
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

    /// `sluice pipeline apply`, so query nodes follow the table.
    fn apply(&self, file: &Path) {
        let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args(["pipeline", "apply"])
            .arg(file)
            .args(["--zookeeper", &self.zk.connect_string(), "--root", &self.root])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }

    /// A query node on this catalog: its HTTP address, and the process.
    fn start_query_node(&self) -> (String, GuardedChild) {
        let http = format!("127.0.0.1:{}", free_port().unwrap());
        let config = common::query_config(self.dir.path(), &self.zk.connect_string(), &self.root, &http, "");
        (http, common::start_query_node(self.dir.path(), &config))
    }

    fn query_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("query.log")).unwrap_or_default()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("w1.log")).unwrap_or_default()
    }

    /// Runs the independent producer; what it delivered, in order.
    fn produce(&self, topic: &str, mode: &str, count: usize, partitions: i32, bad: &str) -> Vec<Value> {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/avro_produce.py");
        let out = Command::new("python3")
            .arg(script)
            .args(["--bootstrap", self.broker.bootstrap_servers(), "--topic", topic, "--mode", mode])
            .args(["--registry", &self.registry.url(), "--count", &count.to_string()])
            .args(["--partitions", &partitions.to_string(), "--bad", bad, "--bad-every", "90"])
            .args(["--schema-out", &self.dir.path().join("click.avsc").display().to_string()])
            .output()
            .unwrap();
        assert!(out.status.success(), "the producer failed: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    }
}

/// Every committed row of `table`: (partition, offset) → the row's id,
/// country, price text and `seen` (µs); and how many were committed twice.
type Rows = BTreeMap<(i32, i64), (i64, String, String, Option<i64>)>;

async fn committed(observer: &ZooKeeperCoordinator, table: &str) -> (Rows, usize) {
    let (segments, _) = observer.segments(table).await.unwrap();
    let (mut rows, mut twice) = (Rows::new(), 0);
    for record in segments {
        let batch = Segment::open(&file_uri_path(&record.uri).unwrap()).unwrap().to_record_batch().unwrap();
        let ints = |name: &str| batch.column_by_name(name).unwrap().as_primitive::<Int64Type>().clone();
        let text = |name: &str| {
            arrow::compute::cast(batch.column_by_name(name).unwrap(), &arrow::datatypes::DataType::Utf8).unwrap()
        };
        let (ids, offsets) = (ints("id"), ints("__offset"));
        let (country, price) = (text("country"), text("price_text"));
        let (country, price) = (country.as_string::<i32>(), price.as_string::<i32>());
        let seen = batch.column_by_name("seen").unwrap().as_primitive::<TimestampMicrosecondType>().clone();
        for i in 0..batch.num_rows() {
            let row = (
                ids.value(i),
                country.value(i).to_string(),
                price.value(i).to_string(),
                seen.is_valid(i).then(|| seen.value(i)),
            );
            twice += usize::from(rows.insert((record.partition, offsets.value(i)), row).is_some());
        }
    }
    (rows, twice)
}

/// What the producer's record `n` holds (see `avro_produce.py`).
fn expected_row(n: i64) -> (i64, String, String, Option<i64>) {
    let country = ["DE", "FR", "JP", "none"][n as usize % 4].to_string();
    let cents = n % 1000;
    let price = format!("{}.{:02}", cents / 100, cents % 100);
    (n, country, price, (n % 2 == 0).then_some(1_764_000_000_000_000 + n))
}

async fn ingested(s: &Setup, table: &str, delivered: &[Value]) {
    let last: BTreeMap<i32, i64> = delivered.iter().fold(BTreeMap::new(), |mut m, e| {
        let (p, o) = (e["partition"].as_i64().unwrap() as i32, e["offset"].as_i64().unwrap());
        let end = m.entry(p).or_insert(o);
        *end = (*end).max(o);
        m
    });
    let past_everything = || async {
        let mut all = true;
        for (p, o) in &last {
            let next = s.observer.checkpoint(table, *p).await.unwrap().and_then(|c| c.next_offset);
            all &= next == Some(o + 1);
        }
        all
    };
    if let Err(e) = wait_until("every record is passed", Duration::from_secs(90), past_everything).await {
        panic!("{table}: {e}\n{}", s.log());
    }
}

fn assert_exactly_once(rows: &Rows, twice: usize, delivered: &[Value]) {
    assert_eq!(twice, 0, "no record committed twice");
    let expected: Rows = delivered
        .iter()
        .filter_map(|e| {
            let key = (e["partition"].as_i64()? as i32, e["offset"].as_i64()?);
            Some((key, expected_row(e["id"].as_i64()?)))
        })
        .collect();
    assert_eq!(rows.len(), expected.len(), "every good record, once");
    assert_eq!(rows, &expected, "each at its own offset, with its values");
}

/// The dead-letter topic's messages: (reason header, payload as hex).
async fn dead_letters(broker: &KafkaBroker, topic: &str, partitions: i32, count: usize) -> Vec<(String, String)> {
    use rdkafka::Message;
    use rdkafka::consumer::{Consumer, StreamConsumer};
    use rdkafka::message::Headers;
    let consumer: StreamConsumer = broker.consumer_config().create().unwrap();
    let mut assignment = rdkafka::TopicPartitionList::new();
    for p in 0..partitions {
        assignment.add_partition_offset(topic, p, rdkafka::Offset::Beginning).unwrap();
    }
    consumer.assign(&assignment).unwrap();
    let mut letters = Vec::new();
    while letters.len() < count {
        let m = tokio::time::timeout(Duration::from_secs(20), consumer.recv()).await.expect("dead letters").unwrap();
        let reason = m.headers().and_then(|h| h.iter().find(|h| h.key == "sluice.reason").and_then(|h| h.value));
        let hex: String = m.payload().unwrap_or_default().iter().map(|b| format!("{b:02x}")).collect();
        letters.push((String::from_utf8_lossy(reason.unwrap()).to_string(), hex));
    }
    letters.sort();
    letters
}

fn bad_records(delivered: &[Value]) -> Vec<(String, String)> {
    let mut bad: Vec<(String, String)> = delivered
        .iter()
        .filter_map(|e| Some((e["bad"].as_str()?.to_string(), e["payload"].as_str()?.to_string())))
        .collect();
    bad.sort();
    bad
}

/// Raw and registry-framed streams, side by side in one worker, each with
/// its bad-record classes mixed in; then a query node answers over both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_and_registry_framed_avro_ingest_exactly_once_with_bad_records_dead_lettered() {
    let s = setup("avro").await;
    let (raw_topic, framed_topic) = (unique_name("raw"), unique_name("framed"));
    for topic in [&raw_topic, &framed_topic] {
        s.broker.create_topic(topic, 2).await.unwrap();
        s.broker.create_topic(&format!("{topic}-dead"), 1).await.unwrap();
    }
    let raw = s.produce(&raw_topic, "raw", 1_000, 2, "truncated,invalid_avro");
    let framed =
        s.produce(&framed_topic, "framed", 1_000, 2, "truncated,wrong_magic_byte,unknown_schema_id,invalid_avro");
    assert!(s.registry.requests() >= 1, "the producer registered its schema");
    let raw_pipeline = s.pipeline("clicks_raw", &raw_topic, "avro_schema_file = \"click.avsc\"");
    let framed_pipeline =
        s.pipeline("clicks_framed", &framed_topic, &format!("schema_registry = \"{}\"", s.registry.url()));

    let http = format!("127.0.0.1:{}", free_port().unwrap());
    let mut worker = s.start_worker(&[&raw_pipeline, &framed_pipeline], &http);
    ingested(&s, "clicks_raw", &raw).await;
    ingested(&s, "clicks_framed", &framed).await;

    for (table, delivered) in [("clicks_raw", &raw), ("clicks_framed", &framed)] {
        let (rows, twice) = committed(&s.observer, table).await;
        assert_exactly_once(&rows, twice, delivered);
        let bad = bad_records(delivered);
        let (_, metrics) = http_get(&http, "/metrics");
        for reason in bad.iter().map(|(r, _)| r.as_str()).collect::<std::collections::BTreeSet<_>>() {
            let count = bad.iter().filter(|(r, _)| r == reason).count() as f64;
            let counted: f64 = (0..2)
                .map(|p| {
                    let series =
                        format!("sluice_bad_records_total{{table=\"{table}\",partition=\"{p}\",reason=\"{reason}\"}}");
                    metric_sum(&metrics, &series)
                })
                .sum();
            assert_eq!(counted, count, "{table}: {reason} counted\n{metrics}");
        }
        let topic = if table == "clicks_raw" { &raw_topic } else { &framed_topic };
        let letters = dead_letters(&s.broker, &format!("{topic}-dead"), 1, bad.len()).await;
        assert_eq!(letters, bad, "{table}: each bad record dead-lettered, original bytes and reason");
    }
    // 2,000 framed messages: the producer registered its schema, the
    // worker asked for it and for the unknown id, once per partition at
    // most (a schema id's verdict is kept).
    assert!(s.registry.requests() <= 6, "{} registry requests", s.registry.requests());

    // A query node (its tail decodes with the same registry) answers over
    // both tables.
    s.apply(&raw_pipeline);
    s.apply(&framed_pipeline);
    let (query_http, _query) = s.start_query_node();
    let sql = "SELECT (SELECT COUNT(*) FROM clicks_raw) AS r, (SELECT COUNT(*) FROM clicks_framed) AS f, \
               (SELECT COUNT(*) FROM clicks_framed WHERE country = 'none') AS n";
    let body = serde_json::to_vec(&serde_json::json!({ "sql": sql })).unwrap();
    let answered = || async {
        let (status, text) = http_request_with(&query_http, "POST", "/query/sql", &body, "");
        status == 200 && text.contains("[[1000,1000,250]]")
    };
    if let Err(e) = wait_until("the query node serves both tables", Duration::from_secs(60), answered).await {
        let (_, text) = http_request_with(&query_http, "POST", "/query/sql", &body, "");
        panic!("{e}: {text}\n{}", s.query_log());
    }
    worker.signal(libc::SIGTERM).unwrap();
    assert!(worker.wait_timeout(Duration::from_secs(30)).unwrap().unwrap().success(), "{}", s.log());

    // With no worker left, records produced now are served by the query
    // node's real-time tail alone, decoded with the schema it fetched.
    let more = s.produce(&framed_topic, "framed", 100, 2, "");
    assert_eq!(more.len(), 100);
    let body = serde_json::to_vec(&serde_json::json!({ "sql": "SELECT COUNT(*) FROM clicks_framed" })).unwrap();
    let tail = || async { http_request_with(&query_http, "POST", "/query/sql", &body, "").1.contains("[[1100]]") };
    if let Err(e) = wait_until("the tail serves the new records", Duration::from_secs(30), tail).await {
        let (_, text) = http_request_with(&query_http, "POST", "/query/sql", &body, "");
        panic!("{e}: {text}\n{}", s.query_log());
    }
}

/// The registry is down when the worker first meets the schema id: the
/// partitions wait (failing, restarted with backoff, shown in `/health`
/// and counted), nothing is committed or skipped; once it is back, every
/// record lands exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_outage_delays_records_and_never_skips_them() {
    let s = setup("avro-outage").await;
    let topic = unique_name("framed");
    s.broker.create_topic(&topic, 2).await.unwrap();
    s.broker.create_topic(&format!("{topic}-dead"), 1).await.unwrap();
    let delivered = s.produce(&topic, "framed", 400, 2, "");
    let pipeline = s.pipeline("clicks", &topic, &format!("schema_registry = \"{}\"", s.registry.url()));
    s.apply(&pipeline);
    s.registry.set_down(true);

    let http = format!("127.0.0.1:{}", free_port().unwrap());
    let mut worker = s.start_worker(&[&pipeline], &http);
    // A query node's tail meets the same outage: it waits too, and says so.
    let (query_http, _query) = s.start_query_node();
    let waiting = || async {
        let (status, body) = http_get(&query_http, "/health");
        status == 503 && body.contains("waiting for schema")
    };
    if let Err(e) =
        wait_until("the query node's /health shows its tail waiting", Duration::from_secs(60), waiting).await
    {
        panic!("{e}: {:?}\n{}", http_get(&query_http, "/health"), s.query_log());
    }
    let unhealthy = || async {
        let (status, body) = http_get(&http, "/health");
        status == 503 && body.contains("schema_registry") && body.matches("\"partition\":").count() >= 2
    };
    if let Err(e) = wait_until("/health shows the waiting partitions", Duration::from_secs(60), unhealthy).await {
        panic!("{e}: {:?}\n{}", http_get(&http, "/health"), s.log());
    }
    let (_, metrics) = http_get(&http, "/metrics");
    assert!(metric_sum(&metrics, "sluice_schema_registry_errors_total") >= 2.0, "{metrics}");
    assert!(metrics.contains("reason=\"schema_registry\""), "{metrics}");
    assert_eq!(metric_sum(&metrics, "sluice_bad_records_total"), 0.0, "nothing is called bad for the outage");
    let (segments, _) = s.observer.segments("clicks").await.unwrap();
    assert!(segments.is_empty(), "nothing committed while the schema is unknown");

    s.registry.set_down(false);
    ingested(&s, "clicks", &delivered).await;
    let (rows, twice) = committed(&s.observer, "clicks").await;
    assert_exactly_once(&rows, twice, &delivered);
    let healthy = || async { http_get(&http, "/health").0 == 200 && http_get(&query_http, "/health").0 == 200 };
    wait_until("/health is ok again on both nodes", Duration::from_secs(30), healthy).await.unwrap();
    let body = serde_json::to_vec(&serde_json::json!({ "sql": "SELECT COUNT(*) FROM clicks" })).unwrap();
    let (_, answer) = http_request_with(&query_http, "POST", "/query/sql", &body, "");
    assert!(answer.contains("[[400]]"), "{answer}");
    worker.signal(libc::SIGTERM).unwrap();
    assert!(worker.wait_timeout(Duration::from_secs(30)).unwrap().unwrap().success(), "{}", s.log());
}
