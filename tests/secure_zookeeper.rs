//! A cluster on a ZooKeeper whose nodes carry ACLs, with real processes:
//! the command line applies a pipeline with `SLUICE_ZOOKEEPER_AUTH`, a
//! worker with `coordinator.auth` in its file ingests and commits, and an
//! anonymous ZooKeeper client can read but not change what they wrote.

use std::process::{Command, Stdio};
use std::time::Duration;

use sluice_coordinator::{Coordinator, ZooKeeperAuth, ZooKeeperCoordinator, ZooKeeperOptions};
use sluice_testkit::{GuardedChild, KafkaBroker, ZooKeeper, unique_name, wait_until};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_ingests_on_a_secured_zookeeper() {
    let zk = ZooKeeper::start().unwrap();
    let broker = KafkaBroker::start().unwrap();
    let topic = unique_name("acl");
    broker.create_topic(&topic, 1).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let root = format!("/{}", unique_name("secured"));
    let credentials = ("sluice", "a long zookeeper password");

    let pipeline = dir.path().join("events.toml");
    std::fs::write(
        &pipeline,
        format!(
            "table = \"events\"\n[source]\nbootstrap_servers = \"{}\"\ntopic = \"{topic}\"\n[schema]\ntime_column = \"ts\"\n\
             [[schema.columns]]\nname = \"ts\"\ntype = \"timestamp\"\nnullable = false\n\
             [flush]\nrows = 100\ntime = \"10m\"\n[deep_store]\nuri = \"file://{}\"\n",
            broker.bootstrap_servers(),
            dir.path().join("deep").display()
        ),
    )
    .unwrap();
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
    let log = std::fs::File::create(dir.path().join("worker.log")).unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_sluice"));
    command
        .args(["ingest", "--config", worker.to_str().unwrap()])
        .env("ZK_PASSWORD", credentials.1)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log);
    let _worker = GuardedChild::spawn(command).unwrap();

    broker
        .producer()
        .unwrap()
        .send_all(&topic, (0..300i64).map(|ts| (0, format!("{{\"ts\": {ts}}}").into_bytes())))
        .await
        .unwrap();
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
    let committed = || async {
        observer.segments("events").await.map(|(s, _)| s.iter().map(|s| s.row_count).sum::<u64>()).unwrap_or(0) == 300
    };
    if let Err(e) = wait_until("the worker commits every row", Duration::from_secs(60), committed).await {
        panic!("{e}\n{}", std::fs::read_to_string(dir.path().join("worker.log")).unwrap_or_default());
    }

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

    let pipeline = dir.path().join("events.toml");
    std::fs::write(
        &pipeline,
        format!(
            "table = \"events\"\n[source]\nbootstrap_servers = \"{}\"\ntopic = \"{topic}\"\n[schema]\ntime_column = \"ts\"\n\
             [[schema.columns]]\nname = \"ts\"\ntype = \"timestamp\"\nnullable = false\n\
             [flush]\nrows = 100\ntime = \"10m\"\n[deep_store]\nuri = \"file://{}\"\n",
            broker.bootstrap_servers(),
            dir.path().join("deep").display()
        ),
    )
    .unwrap();
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
    let log = std::fs::File::create(dir.path().join("worker.log")).unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_sluice"));
    command
        .args(["ingest", "--config", worker.to_str().unwrap()])
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log);
    let _worker = GuardedChild::spawn(command).unwrap();
    broker
        .producer()
        .unwrap()
        .send_all(&topic, (0..300i64).map(|ts| (0, format!("{{\"ts\": {ts}}}").into_bytes())))
        .await
        .unwrap();
    let observer = ZooKeeperCoordinator::connect(ZooKeeperOptions {
        connect: secure.clone(),
        root: root.clone(),
        session_timeout: Duration::from_secs(10),
        tls: Some(sluice_config::ZooKeeperTlsConfig { ca: ca.clone(), cert: None, key: None }),
        auth: None,
    })
    .await
    .unwrap();
    let committed = || async {
        observer.segments("events").await.map(|(s, _)| s.iter().map(|s| s.row_count).sum::<u64>()).unwrap_or(0) == 300
    };
    if let Err(e) = wait_until("the worker commits every row over TLS", Duration::from_secs(60), committed).await {
        panic!("{e}\n{}", std::fs::read_to_string(dir.path().join("worker.log")).unwrap_or_default());
    }

    // Without the CA, the TLS port gives no session: the command fails
    // within its session timeout instead of writing in clear text.
    let refused = apply(false);
    assert!(!refused.status.success(), "a plaintext client reached the TLS port");
}
