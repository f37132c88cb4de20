//! A cluster on a ZooKeeper whose nodes carry ACLs, with real processes:
//! the command line applies a pipeline with `SLUICE_ZOOKEEPER_AUTH`, a
//! worker with `coordinator.auth` in its file ingests and commits, and an
//! anonymous ZooKeeper client can read but not change what they wrote.

use std::process::{Command, Stdio};
use std::time::Duration;

use std::path::{Path, PathBuf};

use sluice_coordinator::{Coordinator, ZooKeeperAuth, ZooKeeperCoordinator, ZooKeeperOptions};
use sluice_testkit::{GuardedChild, KafkaBroker, ZooKeeper, unique_name, wait_until};

/// Rows each test produces and expects committed.
const ROWS: i64 = 300;

/// `events.toml` in `dir`: one timestamp column from `topic`, segments of
/// 100 rows, a deep store in `dir`.
fn write_pipeline(dir: &Path, broker: &KafkaBroker, topic: &str) -> PathBuf {
    let pipeline = dir.join("events.toml");
    std::fs::write(
        &pipeline,
        format!(
            "table = \"events\"\n[source]\nbootstrap_servers = \"{}\"\ntopic = \"{topic}\"\n[schema]\ntime_column = \"ts\"\n\
             [[schema.columns]]\nname = \"ts\"\ntype = \"timestamp\"\nnullable = false\n\
             [flush]\nrows = 100\ntime = \"10m\"\n[deep_store]\nuri = \"file://{}\"\n",
            broker.bootstrap_servers(),
            dir.join("deep").display()
        ),
    )
    .unwrap();
    pipeline
}

/// `sluice ingest --config <config>` with `env`, logging to `dir/worker.log`.
fn start_worker(dir: &Path, config: &Path, env: &[(&str, &str)]) -> GuardedChild {
    let log = std::fs::File::create(dir.join("worker.log")).unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_sluice"));
    command
        .args(["ingest", "--config"])
        .arg(config)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log);
    GuardedChild::spawn(command).unwrap()
}

async fn produce(broker: &KafkaBroker, topic: &str) {
    let records = (0..ROWS).map(|ts| (0, format!("{{\"ts\": {ts}}}").into_bytes()));
    broker.producer().unwrap().send_all(topic, records).await.unwrap();
}

/// Waits until the catalog holds every produced row (the worker's log on failure).
async fn wait_for_every_row(observer: &ZooKeeperCoordinator, dir: &Path) {
    let committed = || async {
        let rows = observer.segments("events").await.map(|(s, _)| s.iter().map(|s| s.row_count).sum::<u64>());
        rows.unwrap_or(0) == ROWS as u64
    };
    if let Err(e) = wait_until("the worker commits every row", Duration::from_secs(60), committed).await {
        panic!("{e}\n{}", std::fs::read_to_string(dir.join("worker.log")).unwrap_or_default());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_ingests_on_a_secured_zookeeper() {
    let zk = ZooKeeper::start().unwrap();
    let broker = KafkaBroker::start().unwrap();
    let topic = unique_name("acl");
    broker.create_topic(&topic, 1).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let root = format!("/{}", unique_name("secured"));
    let credentials = ("sluice", "a long zookeeper password");

    let pipeline = write_pipeline(dir.path(), &broker, &topic);
    let applied = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["pipeline", "apply", pipeline.to_str().unwrap(), "--zookeeper", &zk.connect_string(), "--root", &root])
        .env("SLUICE_ZOOKEEPER_AUTH", format!("{}:{}", credentials.0, credentials.1))
        .output()
        .unwrap();
    assert!(applied.status.success(), "{}", String::from_utf8_lossy(&applied.stderr));
    let anonymous_apply = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["pipeline", "apply", pipeline.to_str().unwrap(), "--zookeeper", &zk.connect_string(), "--root", &root])
        .env_remove("SLUICE_ZOOKEEPER_AUTH")
        .output()
        .unwrap();
    let refused = String::from_utf8_lossy(&anonymous_apply.stderr);
    assert!(!anonymous_apply.status.success() && refused.contains("coordinator.auth"), "{refused}");

    let worker = dir.path().join("worker.toml");
    std::fs::write(
        &worker,
        format!(
            "node_id = \"w1\"\ndata_dir = \"{}\"\n[coordinator]\nconnect = \"{}\"\nroot = \"{root}\"\n\
             [coordinator.auth]\nusername = \"{}\"\npassword = \"${{ZK_PASSWORD}}\"\n\
             [http]\nlisten = \"127.0.0.1:0\"\n[pipelines]\nfrom_coordinator = true\n",
            dir.path().join("data").display(),
            zk.connect_string(),
            credentials.0
        ),
    )
    .unwrap();
    let _worker = start_worker(dir.path(), &worker, &[("ZK_PASSWORD", credentials.1)]);
    produce(&broker, &topic).await;
    let observer = ZooKeeperCoordinator::connect(ZooKeeperOptions {
        connect: zk.connect_string(),
        root: root.clone(),
        session_timeout: Duration::from_secs(10),
        tls: None,
        auth: Some(ZooKeeperAuth {
            username: credentials.0.into(),
            password: credentials.1.into(),
            world_readable: true,
        }),
    })
    .await
    .unwrap();
    wait_for_every_row(&observer, dir.path()).await;

    // What the worker wrote is readable by anyone, changeable by no one else.
    let anonymous = zookeeper_client::Client::connect(&zk.connect_string()).await.unwrap();
    let checkpoint = format!("{root}/pipelines/events/partitions/0/checkpoint");
    let (data, _) = anonymous.get_data(&checkpoint).await.unwrap();
    assert!(!data.is_empty());
    let overwritten = anonymous.set_data(&checkpoint, b"{}", None).await;
    assert_eq!(overwritten.unwrap_err(), zookeeper_client::Error::NoAuth);
}

/// ZooKeeper's TLS port: the command line (`SLUICE_ZOOKEEPER_CA`) applies a
/// pipeline, a worker with `[coordinator.tls]` ingests and commits, and a
/// client without the CA gets no session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_and_the_cli_reach_zookeeper_over_tls() {
    let zk = ZooKeeper::start_tls().unwrap();
    let (secure, ca) = (zk.secure_connect_string().unwrap(), zk.ca().unwrap().to_path_buf());
    let broker = KafkaBroker::start().unwrap();
    let topic = unique_name("zktls");
    broker.create_topic(&topic, 1).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let root = format!("/{}", unique_name("zktls"));

    let pipeline = write_pipeline(dir.path(), &broker, &topic);
    let apply = |with_ca: bool| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_sluice"));
        command.args(["pipeline", "apply", pipeline.to_str().unwrap(), "--zookeeper", &secure, "--root", &root]);
        if with_ca {
            command.env("SLUICE_ZOOKEEPER_CA", &ca);
        } else {
            command.env_remove("SLUICE_ZOOKEEPER_CA");
        }
        command.output().unwrap()
    };
    let applied = apply(true);
    assert!(applied.status.success(), "{}", String::from_utf8_lossy(&applied.stderr));

    let worker = dir.path().join("worker.toml");
    std::fs::write(
        &worker,
        format!(
            "node_id = \"w1\"\ndata_dir = \"{}\"\n[coordinator]\nconnect = \"{secure}\"\nroot = \"{root}\"\n\
             [coordinator.tls]\nca = \"{}\"\n[http]\nlisten = \"127.0.0.1:0\"\n[pipelines]\nfrom_coordinator = true\n",
            dir.path().join("data").display(),
            ca.display()
        ),
    )
    .unwrap();
    let _worker = start_worker(dir.path(), &worker, &[]);
    produce(&broker, &topic).await;
    let observer = ZooKeeperCoordinator::connect(ZooKeeperOptions {
        connect: secure.clone(),
        root: root.clone(),
        session_timeout: Duration::from_secs(10),
        tls: Some(sluice_config::ZooKeeperTlsConfig { ca: ca.clone(), cert: None, key: None }),
        auth: None,
    })
    .await
    .unwrap();
    wait_for_every_row(&observer, dir.path()).await;

    // Without the CA, the TLS port gives no session: the command fails
    // within its session timeout instead of writing in clear text.
    let refused = apply(false);
    assert!(!refused.status.success(), "a plaintext client reached the TLS port");
}
