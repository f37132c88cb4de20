//! `sluice pipeline …` and `sluice status` against a real ZooKeeper.

use std::process::{Command, Output};

use sluice_testkit::{ZooKeeper, unique_name};

fn sluice(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sluice")).args(args).current_dir(env!("CARGO_MANIFEST_DIR")).output().unwrap()
}

fn ok(out: Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "stdout: {stdout}\nstderr: {}", String::from_utf8_lossy(&out.stderr));
    stdout
}

#[test]
fn apply_list_reset_status_and_delete() {
    let zk = ZooKeeper::start().unwrap();
    let connect = zk.connect_string();
    let root = format!("/{}", unique_name("cli"));
    let cluster = ["--zookeeper", connect.as_str(), "--root", root.as_str()];
    let with = |args: &[&str]| -> Vec<String> { args.iter().chain(cluster.iter()).map(|s| s.to_string()).collect() };
    let run = |args: &[&str]| {
        let args = with(args);
        sluice(&args.iter().map(String::as_str).collect::<Vec<_>>())
    };

    let out = ok(run(&["pipeline", "list"]));
    assert!(out.contains("no pipelines applied"), "{out}");

    let out = ok(run(&["pipeline", "apply", "examples/clickstream.toml", "examples/iot_sensors.toml"]));
    assert!(out.contains("applied pipeline `clickstream`") && out.contains("applied pipeline `iot_readings`"), "{out}");
    let out = ok(run(&["pipeline", "list"]));
    assert!(out.contains("clickstream\ttopic clickstream\t10 columns"), "{out}");
    assert!(out.contains("iot_readings\ttopic iot.readings"), "{out}");

    let out = ok(run(&["pipeline", "reset-offset", "clickstream", "3", "42"]));
    assert!(out.contains("partition 3 of `clickstream` restarts at 42"), "{out}");
    let out = ok(run(&["pipeline", "reset-offset", "clickstream", "4", "earliest"]));
    assert!(out.contains("restarts at earliest"), "{out}");
    let out = ok(run(&["status"]));
    assert!(out.contains("workers: 0"), "{out}");
    assert!(out.contains("pipeline clickstream: 0 segments, 0 rows"), "{out}");
    assert!(out.contains("lag unknown: Kafka at localhost:9092"), "{out}");
    assert!(out.contains("  3\t-\t42\t0\t1\t-"), "{out}");
    assert!(out.contains("  4\t-\tearliest\t0\t1\t-"), "{out}");

    ok(run(&["pipeline", "delete", "iot_readings"]));
    let out = ok(run(&["pipeline", "list"]));
    assert!(!out.contains("iot_readings"), "{out}");
}

#[test]
fn bad_input_is_refused_with_a_reason() {
    let zk = ZooKeeper::start().unwrap();
    let connect = zk.connect_string();
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "table = \"x\"\n").unwrap();
    let out = sluice(&["pipeline", "apply", bad.to_str().unwrap(), "--zookeeper", &connect]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("source: found nothing; expected the required field `source`"), "{stderr}");

    let out = sluice(&["pipeline", "reset-offset", "clicks", "0", "-5", "--zookeeper", &connect]);
    assert_ne!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stderr).contains("expected `earliest`, `latest` or a non-negative offset"));

    let out = sluice(&["status"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("name the cluster with --zookeeper"));

    let out = sluice(&["status", "--zookeeper", "zk1"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("has no `:port`"));

    let out = sluice(&["pipeline", "delete", "nope", "--zookeeper", &connect]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("no pipeline `nope` is applied"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_reports_lag_from_the_brokers_high_watermark() {
    let zk = ZooKeeper::start().unwrap();
    let broker = sluice_testkit::KafkaBroker::start_mock(1).unwrap();
    broker.create_topic("clickstream", 2).await.unwrap();
    let producer = broker.producer().unwrap();
    producer.send_all("clickstream", (0..100).map(|i| (i % 2, b"{}".to_vec()))).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let pipeline = dir.path().join("clickstream.toml");
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/clickstream.toml")).unwrap();
    std::fs::write(&pipeline, text.replace("${KAFKA_BOOTSTRAP:-localhost:9092}", broker.bootstrap_servers())).unwrap();
    let connect = zk.connect_string();
    let run = |args: &[&str]| {
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["--zookeeper", connect.as_str(), "--root", "/lag"]);
        sluice(&all)
    };
    ok(run(&["pipeline", "apply", pipeline.to_str().unwrap()]));
    ok(run(&["pipeline", "reset-offset", "clickstream", "0", "20"]));
    ok(run(&["pipeline", "reset-offset", "clickstream", "1", "50"]));
    let out = ok(run(&["status"]));
    assert!(out.contains("  0\t-\t20\t0\t1\t30"), "50 produced to partition 0, checkpoint at 20: {out}");
    assert!(out.contains("  1\t-\t50\t0\t1\t0"), "{out}");
}
