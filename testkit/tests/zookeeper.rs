//! The test kit's ZooKeeper is a real server: nodes, versions and `multi`
//! behave as in production.

use std::time::Duration;

use sluice_testkit::process::pid_alive;
use sluice_testkit::{ZooKeeper, ZooKeeperEnsemble, wait_until};
use zookeeper_client::{Acls, Client, CreateMode, Error as ZkError, MultiWriteError};

fn persistent() -> zookeeper_client::CreateOptions<'static> {
    CreateMode::Persistent.with_acls(Acls::anyone_all())
}

#[tokio::test]
async fn nodes_can_be_created_read_and_deleted() {
    let zk = ZooKeeper::start().unwrap();
    let client = Client::connect(&zk.connect_string()).await.unwrap();

    client.create("/sluice", b"{\"v\":1}", &persistent()).await.unwrap();
    let (data, stat) = client.get_data("/sluice").await.unwrap();
    assert_eq!(data, b"{\"v\":1}");
    assert_eq!(stat.version, 0);

    let stat = client.set_data("/sluice", b"{\"v\":2}", Some(0)).await.unwrap();
    assert_eq!(stat.version, 1);
    assert_eq!(client.set_data("/sluice", b"x", Some(0)).await.unwrap_err(), ZkError::BadVersion);

    client.create("/sluice/child", b"", &persistent()).await.unwrap();
    assert_eq!(client.list_children("/sluice").await.unwrap(), vec!["child".to_string()]);
    assert_eq!(client.delete("/sluice", None).await.unwrap_err(), ZkError::NotEmpty);
    client.delete("/sluice/child", None).await.unwrap();
    client.delete("/sluice", Some(1)).await.unwrap();
    assert!(client.check_stat("/sluice").await.unwrap().is_none());
}

#[tokio::test]
async fn a_multi_whose_version_check_fails_applies_nothing() {
    let zk = ZooKeeper::start().unwrap();
    let client = Client::connect(&zk.connect_string()).await.unwrap();
    client.create("/checkpoint", b"{\"next_offset\":0}", &persistent()).await.unwrap();
    client.set_data("/checkpoint", b"{\"next_offset\":0,\"epoch\":1}", Some(0)).await.unwrap();
    client.create("/segments", b"", &persistent()).await.unwrap();

    // A stale fencing token (version 0; the node is at version 1).
    let mut multi = client.new_multi_writer();
    multi.add_check_version("/checkpoint", 0).unwrap();
    multi.add_create("/segments/seg-0", b"{\"rows\":10}", &persistent()).unwrap();
    multi.add_set_data("/checkpoint", b"{\"next_offset\":10}", Some(1)).unwrap();
    match multi.commit().await {
        Err(MultiWriteError::OperationFailed { index: 0, source: ZkError::BadVersion }) => {}
        other => panic!("expected the version check to fail, got {other:?}"),
    }
    assert!(client.check_stat("/segments/seg-0").await.unwrap().is_none(), "the create must not be applied");
    let (data, stat) = client.get_data("/checkpoint").await.unwrap();
    assert_eq!((data.as_slice(), stat.version), (&b"{\"next_offset\":0,\"epoch\":1}"[..], 1));

    // The same multi with the current token applies everything.
    let mut multi = client.new_multi_writer();
    multi.add_check_version("/checkpoint", 1).unwrap();
    multi.add_create("/segments/seg-0", b"{\"rows\":10}", &persistent()).unwrap();
    multi.add_set_data("/checkpoint", b"{\"next_offset\":10}", Some(1)).unwrap();
    multi.commit().await.unwrap();
    assert!(client.check_stat("/segments/seg-0").await.unwrap().is_some());
    assert_eq!(client.get_data("/checkpoint").await.unwrap().1.version, 2);
}

#[tokio::test]
async fn a_restarted_server_keeps_its_data() {
    let mut zk = ZooKeeper::start().unwrap();
    let client = Client::connect(&zk.connect_string()).await.unwrap();
    client.create("/durable", b"kept", &persistent()).await.unwrap();
    drop(client);
    zk.stop();
    assert!(
        Client::connector()
            .with_connection_timeout(Duration::from_millis(500))
            .connect(&zk.connect_string())
            .await
            .is_err()
    );
    zk.restart().unwrap();
    let client = Client::connect(&zk.connect_string()).await.unwrap();
    assert_eq!(client.get_data("/durable").await.unwrap().0, b"kept");
}

#[tokio::test]
async fn an_ensemble_keeps_serving_when_its_leader_dies() {
    let mut ensemble = ZooKeeperEnsemble::start(3).unwrap();
    let client = Client::connect(&ensemble.connect_string()).await.unwrap();
    client.create("/before", b"", &persistent()).await.unwrap();

    let leader = ensemble.leader().expect("an ensemble has a leader");
    ensemble.stop_node(leader);
    ensemble.wait_for_quorum().unwrap();
    let connect = ensemble.connect_string();
    wait_until("a write succeeds after the leader died", Duration::from_secs(30), || {
        let connect = connect.clone();
        async move {
            match Client::connect(&connect).await {
                Ok(client) => {
                    client.create("/after", b"", &persistent()).await.is_ok()
                        || client.check_stat("/after").await.ok().flatten().is_some()
                }
                Err(_) => false,
            }
        }
    })
    .await
    .unwrap();
    let client2 = Client::connect(&connect).await.unwrap();
    assert!(client2.check_stat("/before").await.unwrap().is_some());

    ensemble.start_node(leader).unwrap();
    assert!(ensemble.leader().is_some());
}

#[test]
fn servers_die_with_a_panicking_test() {
    let handle = std::thread::spawn(|| {
        let zk = ZooKeeper::start().unwrap();
        let pid = zk.pid().unwrap();
        std::panic::panic_any(pid);
    });
    let pid = *handle.join().unwrap_err().downcast::<u32>().unwrap();
    assert!(!pid_alive(pid), "ZooKeeper (pid {pid}) outlived the panicking test");
}
