//! One contract, two implementations: every test runs against the
//! in-process coordinator and against ZooKeeper (a real server from the test
//! kit, each node connected through its own fault-injecting proxy).

use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use futures::future::BoxFuture;
use sluice_coordinator::{
    CommitOutcome, Coordinator, InProcessCoordinator, NodeInfo, Position, SegmentRecord, WorkerInfo,
    ZooKeeperCoordinator, ZooKeeperOptions,
};
use sluice_testkit::{TcpProxy, ZooKeeper, unique_name, wait_until};

/// A cluster node: a coordinator session and a way to end that session as a
/// crash or partition would.
struct Node {
    coordinator: Arc<dyn Coordinator>,
    end_session: Box<dyn Fn() -> BoxFuture<'static, ()> + Send + Sync>,
}

impl std::ops::Deref for Node {
    type Target = dyn Coordinator;
    fn deref(&self) -> &Self::Target {
        self.coordinator.as_ref()
    }
}

trait Cluster {
    fn node(&self) -> BoxFuture<'_, Node>;
}

struct InProcess(InProcessCoordinator);

impl Cluster for InProcess {
    fn node(&self) -> BoxFuture<'_, Node> {
        async move {
            let session = self.0.new_session();
            let ender = session.clone();
            Node {
                coordinator: Arc::new(session),
                end_session: Box::new(move || {
                    let ender = ender.clone();
                    async move { ender.expire() }.boxed()
                }),
            }
        }
        .boxed()
    }
}

const SESSION_TIMEOUT: Duration = Duration::from_millis(2_000);

struct Zk {
    server: ZooKeeper,
    root: String,
}

impl Zk {
    fn start() -> Self {
        Zk { server: ZooKeeper::start().unwrap(), root: format!("/{}", unique_name("contract")) }
    }
}

impl Cluster for Zk {
    fn node(&self) -> BoxFuture<'_, Node> {
        async move {
            let upstream = format!("127.0.0.1:{}", self.server.port()).parse().unwrap();
            let proxy = Arc::new(TcpProxy::start(upstream).await.unwrap());
            let options = ZooKeeperOptions::plain(proxy.addr().to_string(), &self.root, SESSION_TIMEOUT);
            let coordinator: Arc<dyn Coordinator> = Arc::new(ZooKeeperCoordinator::connect(options).await.unwrap());
            let watched = coordinator.clone();
            Node {
                coordinator,
                end_session: Box::new(move || {
                    let proxy = proxy.clone();
                    let watched = watched.clone();
                    async move {
                        // A partition longer than the session timeout: the
                        // server expires the session and drops its ephemerals.
                        let before = watched.session_id();
                        proxy.blackhole();
                        tokio::time::sleep(SESSION_TIMEOUT * 2).await;
                        proxy.restore();
                        wait_until("the node notices its session ended", Duration::from_secs(20), || {
                            let watched = watched.clone();
                            async move { watched.session_id() != before }
                        })
                        .await
                        .unwrap();
                    }
                    .boxed()
                }),
            }
        }
        .boxed()
    }
}

fn segment(partition: i32, seq: u64, start: i64, end: i64) -> SegmentRecord {
    SegmentRecord {
        name: SegmentRecord::segment_name("clicks", partition, seq, 1_764_000_000_000),
        partition,
        seq,
        start_offset: start,
        end_offset: end,
        row_count: (end - start + 1) as u64,
        uri: format!("file:///deep/clicks/{partition}/{seq}.seg"),
        size_bytes: 1234,
        crc32c: 42,
        time_range: Some((1, 2)),
        created_at_ms: 1_764_000_000_000,
        offset_gaps: 0,
    }
}

async fn leases_are_exclusive_and_epochs_grow(cluster: &dyn Cluster) {
    let (a, b) = (cluster.node().await, cluster.node().await);
    let mut lease_a = a.acquire("clicks", 0, "a").await.unwrap().expect("free partition");
    assert!(b.acquire("clicks", 0, "b").await.unwrap().is_none(), "held by a");
    assert!(a.acquire("clicks", 0, "a").await.unwrap().is_none(), "a lock is not re-entrant");
    assert!(a.still_owner(&lease_a).await.unwrap());
    assert_eq!(a.partition_owners("clicks").await.unwrap(), vec![(0, "a".to_string())]);

    a.release(lease_a.clone()).await.unwrap();
    let lease_b = b.acquire("clicks", 0, "b").await.unwrap().expect("released");
    assert!(lease_b.epoch() > lease_a.epoch());
    assert!(!a.still_owner(&lease_a).await.unwrap());
    assert_eq!(a.commit(&mut lease_a, &segment(0, 0, 0, 9)).await.unwrap(), CommitOutcome::Fenced);
    assert!(a.segments("clicks").await.unwrap().0.is_empty(), "a fenced commit leaves no trace");
}

async fn commits_advance_the_checkpoint_atomically(cluster: &dyn Cluster) {
    let node = cluster.node().await;
    let mut lease = node.acquire("clicks", 3, "w").await.unwrap().unwrap();
    assert_eq!(lease.checkpoint.next_offset, None);
    assert_eq!(node.commit(&mut lease, &segment(3, 0, 0, 99)).await.unwrap(), CommitOutcome::Committed);
    let checkpoint = node.checkpoint("clicks", 3).await.unwrap().unwrap();
    assert_eq!((checkpoint.next_offset, checkpoint.next_seq), (Some(100), 1));
    assert_eq!(lease.checkpoint, checkpoint);

    assert_eq!(
        node.commit(&mut lease, &segment(3, 1, 150, 199)).await.unwrap(),
        CommitOutcome::Discontinuous { expected: 100, found: 150 }
    );
    assert_eq!(node.commit(&mut lease, &segment(3, 1, 100, 199)).await.unwrap(), CommitOutcome::Committed);
    let (segments, _) = node.segments("clicks").await.unwrap();
    assert_eq!(segments, vec![segment(3, 0, 0, 99), segment(3, 1, 100, 199)]);
    assert_eq!(node.checkpoint("clicks", 3).await.unwrap().unwrap().next_offset, Some(200));
    assert_eq!(node.known_pipelines().await.unwrap(), vec!["clicks".to_string()]);
    let listed = node.checkpoints("clicks").await.unwrap();
    assert_eq!(listed.iter().map(|(p, c)| (*p, c.next_offset)).collect::<Vec<_>>(), vec![(3, Some(200))]);

    // The checkpoint survives the owner: the next owner continues from it.
    node.release(lease).await.unwrap();
    let other = cluster.node().await;
    let lease = other.acquire("clicks", 3, "v").await.unwrap().unwrap();
    assert_eq!((lease.checkpoint.next_offset, lease.checkpoint.next_seq), (Some(200), 2));
}

async fn an_operator_reset_fences_the_owner(cluster: &dyn Cluster) {
    let (worker, operator) = (cluster.node().await, cluster.node().await);
    let mut lease = worker.acquire("clicks", 1, "w").await.unwrap().unwrap();
    worker.commit(&mut lease, &segment(1, 0, 0, 9)).await.unwrap();
    let reset = operator.reset_offset("clicks", 1, Position::Offset(5)).await.unwrap();
    assert_eq!(reset.next_offset, Some(5));
    assert!(!worker.still_owner(&lease).await.unwrap());
    assert_eq!(worker.commit(&mut lease, &segment(1, 1, 10, 19)).await.unwrap(), CommitOutcome::Fenced);
    let reset = operator.reset_offset("clicks", 1, Position::Earliest).await.unwrap();
    assert_eq!((reset.next_offset, reset.reset_to), (None, Some(Position::Earliest)));
}

async fn a_session_end_kills_its_leases_and_registrations(cluster: &dyn Cluster) {
    let (a, b) = (cluster.node().await, cluster.node().await);
    let info = WorkerInfo {
        id: "a".into(),
        host: "h".into(),
        http_addr: "127.0.0.1:1".into(),
        started_at_ms: 0,
        ..WorkerInfo::default()
    };
    a.register_worker(&info).await.unwrap();
    let (workers, workers_changed) = b.workers().await.unwrap();
    assert_eq!(workers, vec![info.clone()]);
    let mut lease = a.acquire("clicks", 2, "a").await.unwrap().unwrap();

    (a.end_session)().await;
    assert_eq!(a.commit(&mut lease, &segment(2, 0, 0, 9)).await.unwrap(), CommitOutcome::Fenced);
    assert!(!a.still_owner(&lease).await.unwrap());
    tokio::time::timeout(Duration::from_secs(10), workers_changed).await.expect("the worker list watch fires");
    let lease_b = b.acquire("clicks", 2, "b").await.unwrap().expect("the lock died with the session");
    assert!(lease_b.epoch() > lease.epoch());
    assert!(b.segments("clicks").await.unwrap().0.is_empty());
}

async fn query_nodes_register_for_their_session(cluster: &dyn Cluster) {
    let (a, b) = (cluster.node().await, cluster.node().await);
    let node = |id: &str| NodeInfo {
        id: id.into(),
        host: "h".into(),
        http_addr: "127.0.0.1:8099".into(),
        started_at_ms: 1,
        ..NodeInfo::default()
    };
    let (none, changed) = b.query_nodes().await.unwrap();
    assert!(none.is_empty());
    b.register_query_node(&node("q2")).await.unwrap();
    a.register_query_node(&node("q1")).await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), changed).await.expect("the query-node list watch fires");
    let (nodes, changed) = b.query_nodes().await.unwrap();
    assert_eq!(nodes, vec![node("q1"), node("q2")], "sorted by id");
    assert!(b.workers().await.unwrap().0.is_empty(), "query nodes are not workers");
    // A node publishes what it serves by registering again; the others see it.
    let mut serving = node("q1");
    serving.flight_addr = Some("127.0.0.1:9099".into());
    serving.serving.insert("clicks".into(), vec!["clicks__0__0".into()]);
    a.register_query_node(&serving).await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), changed).await.expect("a changed record fires the watch");
    let (nodes, changed) = b.query_nodes().await.unwrap();
    assert_eq!(nodes, vec![serving, node("q2")]);
    (a.end_session)().await;
    tokio::time::timeout(Duration::from_secs(10), changed).await.expect("the list changes with the session");
}

async fn the_catalog_is_watched_and_pruned(cluster: &dyn Cluster) {
    let (writer, reader) = (cluster.node().await, cluster.node().await);
    let (empty, changed) = reader.segments("clicks").await.unwrap();
    assert!(empty.is_empty());
    let mut lease = writer.acquire("clicks", 0, "w").await.unwrap().unwrap();
    writer.commit(&mut lease, &segment(0, 0, 0, 9)).await.unwrap();
    tokio::time::timeout(Duration::from_secs(1), changed).await.expect("a commit wakes catalog watchers within 1 s");
    let (listed, changed) = reader.segments("clicks").await.unwrap();
    assert_eq!(listed.len(), 1);
    reader.delete_segment("clicks", &listed[0].name).await.unwrap();
    tokio::time::timeout(Duration::from_secs(1), changed).await.expect("a deletion wakes catalog watchers");
    assert!(reader.segments("clicks").await.unwrap().0.is_empty());
    assert_eq!(
        reader.checkpoint("clicks", 0).await.unwrap().unwrap().next_offset,
        Some(10),
        "retention keeps checkpoints"
    );
}

async fn pipeline_configs_are_stored_and_watched(cluster: &dyn Cluster) {
    let (operator, worker) = (cluster.node().await, cluster.node().await);
    let (none, changed) = worker.pipelines().await.unwrap();
    assert!(none.is_empty());
    operator.apply_pipeline("clicks", "table = \"clicks\"").await.unwrap();
    tokio::time::timeout(Duration::from_secs(2), changed).await.expect("a new pipeline wakes watchers");
    let (configs, changed) = worker.pipelines().await.unwrap();
    assert_eq!(configs, vec![("clicks".to_string(), "table = \"clicks\"".to_string())]);
    operator.apply_pipeline("clicks", "table = \"clicks\"\nretention = \"1d\"").await.unwrap();
    tokio::time::timeout(Duration::from_secs(2), changed).await.expect("a changed config wakes watchers");
    let (_, changed) = worker.pipelines().await.unwrap();
    operator.delete_pipeline("clicks").await.unwrap();
    tokio::time::timeout(Duration::from_secs(2), changed).await.expect("a deleted config wakes watchers");
    assert!(worker.pipelines().await.unwrap().0.is_empty());
}

async fn exactly_one_leader_and_failover(cluster: &dyn Cluster) {
    let (a, b) = (cluster.node().await, cluster.node().await);
    let mut leader_a = a.campaign("a").await.unwrap();
    let b_coordinator = b.coordinator.clone();
    let mut b_campaign = tokio::spawn(async move { b_coordinator.campaign("b").await.map(|_| ()) });
    assert!(
        tokio::time::timeout(Duration::from_millis(500), &mut b_campaign).await.is_err(),
        "b must wait while a leads"
    );
    (a.end_session)().await;
    tokio::time::timeout(Duration::from_secs(1), leader_a.lost()).await.expect("a knows it lost leadership");
    tokio::time::timeout(SESSION_TIMEOUT, b_campaign)
        .await
        .expect("b takes over within the session timeout")
        .unwrap()
        .unwrap();
}

async fn a_resigning_leader_hands_over(cluster: &dyn Cluster) {
    let (a, b) = (cluster.node().await, cluster.node().await);
    let leader = a.campaign("a").await.unwrap();
    let b_coordinator = b.coordinator.clone();
    let b_campaign = tokio::spawn(async move { b_coordinator.campaign("b").await.map(|_| ()) });
    tokio::time::sleep(Duration::from_millis(200)).await;
    leader.resign().await;
    tokio::time::timeout(Duration::from_secs(2), b_campaign).await.expect("b leads after a resigns").unwrap().unwrap();
}

macro_rules! contract {
    ($($name:ident),* $(,)?) => {
        mod in_process {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name(&super::InProcess(super::InProcessCoordinator::new())).await
                }
            )*
        }
        mod zookeeper {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(&super::Zk::start()).await
                }
            )*
        }
    };
}

contract!(
    leases_are_exclusive_and_epochs_grow,
    commits_advance_the_checkpoint_atomically,
    an_operator_reset_fences_the_owner,
    a_session_end_kills_its_leases_and_registrations,
    query_nodes_register_for_their_session,
    the_catalog_is_watched_and_pruned,
    pipeline_configs_are_stored_and_watched,
    exactly_one_leader_and_failover,
    a_resigning_leader_hands_over,
);
