//! Fencing, ambiguity and assignment against a real ZooKeeper server.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use sluice_coordinator::{
    CommitOutcome, Coordinator, SegmentRecord, WorkerInfo, ZooKeeperAuth, ZooKeeperCoordinator, ZooKeeperOptions,
    assigned_partitions, fair_share,
};
use sluice_testkit::{TcpProxy, ZooKeeper, unique_name, wait_until};
use zookeeper_client::Client;

fn options(connect: String, root: &str) -> ZooKeeperOptions {
    ZooKeeperOptions::plain(connect, root, Duration::from_secs(4))
}

async fn node(zk: &ZooKeeper, root: &str) -> Arc<ZooKeeperCoordinator> {
    Arc::new(ZooKeeperCoordinator::connect(options(zk.connect_string(), root)).await.unwrap())
}

fn segment(seq: u64, start: i64, end: i64) -> SegmentRecord {
    SegmentRecord {
        name: SegmentRecord::segment_name("clicks", 0, seq, 1_764_000_000_000),
        partition: 0,
        seq,
        start_offset: start,
        end_offset: end,
        row_count: (end - start + 1) as u64,
        uri: "file:///deep/x.seg".into(),
        size_bytes: 1,
        crc32c: 7,
        time_range: None,
        created_at_ms: 1_764_000_000_000,
        offset_gaps: 0,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_contenders_never_hold_a_partition_at_once() {
    let zk = ZooKeeper::start().unwrap();
    let root = format!("/{}", unique_name("contenders"));
    let held = Arc::new(AtomicBool::new(false));
    let turns = Arc::new(AtomicU32::new(0));
    let mut tasks = Vec::new();
    for name in ["a", "b"] {
        let coordinator = node(&zk, &root).await;
        let (held, turns) = (held.clone(), turns.clone());
        tasks.push(tokio::spawn(async move {
            for _ in 0..40 {
                if let Some(lease) = coordinator.acquire("clicks", 0, name).await.unwrap() {
                    assert!(!held.swap(true, Ordering::SeqCst), "{name} acquired while the other held the lease");
                    turns.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(2)).await;
                    assert!(coordinator.still_owner(&lease).await.unwrap());
                    held.store(false, Ordering::SeqCst);
                    coordinator.release(lease).await.unwrap();
                }
                tokio::task::yield_now().await;
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    assert!(turns.load(Ordering::SeqCst) >= 2, "both contenders got turns");
}

/// The blueprint's pitfall: B's lock is a new ephemeral node at version 0,
/// exactly like A's was, so only the checkpoint version can fence A.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zombie_is_fenced_even_when_the_new_lock_is_at_version_zero() {
    let zk = ZooKeeper::start().unwrap();
    let root = format!("/{}", unique_name("zombie"));
    let (a, b) = (node(&zk, &root).await, node(&zk, &root).await);
    let mut lease_a = a.acquire("clicks", 0, "a").await.unwrap().unwrap();
    assert_eq!(a.commit(&mut lease_a, &segment(0, 0, 9)).await.unwrap(), CommitOutcome::Committed);

    // A's lock disappears while A's session lives on (what an expiry does to
    // the lock, without the expiry), and B takes the partition.
    let admin = Client::connect(&format!("{}{root}", zk.connect_string())).await.unwrap();
    admin.delete("/pipelines/clicks/partitions/0/lock", None).await.unwrap();
    let lease_b = b.acquire("clicks", 0, "b").await.unwrap().expect("the lock is free");
    let (_, lock_stat) = admin.get_data("/pipelines/clicks/partitions/0/lock").await.unwrap();
    assert_eq!(lock_stat.version, 0, "B's lock was re-created at version 0");

    assert_eq!(a.commit(&mut lease_a, &segment(1, 10, 19)).await.unwrap(), CommitOutcome::Fenced);
    let (segments, _) = b.segments("clicks").await.unwrap();
    assert_eq!(segments.iter().map(|s| s.seq).collect::<Vec<_>>(), vec![0], "the zombie left no segment");
    assert_eq!(b.checkpoint("clicks", 0).await.unwrap().unwrap(), lease_b.checkpoint, "nor moved the checkpoint");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ambiguous_commit_is_retried_without_committing_twice() {
    let zk = ZooKeeper::start().unwrap();
    let root = format!("/{}", unique_name("ambiguous"));
    let proxy = TcpProxy::start(format!("127.0.0.1:{}", zk.port()).parse().unwrap()).await.unwrap();
    let worker = ZooKeeperCoordinator::connect(options(proxy.addr().to_string(), &root)).await.unwrap();
    let mut lease = worker.acquire("clicks", 0, "w").await.unwrap().unwrap();
    let first = segment(0, 0, 99);

    // The multi reaches ZooKeeper and is applied; its answer is lost and the
    // connection breaks.
    proxy.lose_responses_for(Duration::from_millis(500));
    let outcome = worker.commit(&mut lease, &first).await.unwrap();
    assert!(matches!(outcome, CommitOutcome::Transient(_)), "the worker cannot know: {outcome:?}");
    let mut attempts = 1;
    let outcome = loop {
        match worker.commit(&mut lease, &first).await.unwrap() {
            CommitOutcome::Transient(_) if attempts < 50 => {
                attempts += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            other => break other,
        }
    };
    assert_eq!(outcome, CommitOutcome::Committed, "the retry recognises its own landed commit");

    let observer = node(&zk, &root).await;
    let (segments, _) = observer.segments("clicks").await.unwrap();
    assert_eq!(segments, vec![first.clone()], "exactly one segment node");
    let checkpoint = observer.checkpoint("clicks", 0).await.unwrap().unwrap();
    assert_eq!((checkpoint.next_offset, checkpoint.next_seq), (Some(100), 1), "advanced once");
    // And the lease is usable for the next segment.
    assert_eq!(worker.commit(&mut lease, &segment(1, 100, 199)).await.unwrap(), CommitOutcome::Committed);
}

struct Worker {
    id: String,
    coordinator: Arc<ZooKeeperCoordinator>,
    held: Arc<tokio::sync::Mutex<BTreeMap<i32, sluice_coordinator::Lease>>>,
    task: tokio::task::JoinHandle<()>,
}

async fn start_worker(zk: &ZooKeeper, root: &str, id: &str, partitions: i32) -> Worker {
    let coordinator = node(zk, root).await;
    let info = WorkerInfo {
        id: id.into(),
        host: "localhost".into(),
        http_addr: "127.0.0.1:0".into(),
        started_at_ms: 0,
        ..WorkerInfo::default()
    };
    coordinator.register_worker(&info).await.unwrap();
    let held = Arc::new(tokio::sync::Mutex::new(BTreeMap::new()));
    let (c, h, me) = (coordinator.clone(), held.clone(), id.to_string());
    let task = tokio::spawn(async move {
        // What the ingest supervisor does, minus the ingestion: release what
        // is no longer ours, acquire what newly is, on every membership change.
        loop {
            let (mine, changed) = assigned_partitions(c.as_ref(), "clicks", partitions, &me).await.unwrap();
            let mut held = h.lock().await;
            let surplus: Vec<i32> = held.keys().copied().filter(|p| !mine.contains(p)).collect();
            for p in surplus {
                c.release(held.remove(&p).unwrap()).await.unwrap();
            }
            let mut waiting = false;
            for p in mine {
                if let std::collections::btree_map::Entry::Vacant(slot) = held.entry(p) {
                    match c.acquire("clicks", p, &me).await.unwrap() {
                        Some(lease) => {
                            slot.insert(lease);
                        }
                        None => waiting = true,
                    }
                }
            }
            drop(held);
            if waiting {
                let _ = tokio::time::timeout(Duration::from_millis(200), changed).await;
            } else {
                changed.await;
            }
        }
    });
    Worker { id: id.into(), coordinator, held, task }
}

/// Every partition owned by exactly one live worker, none holding more than
/// its fair share, as ZooKeeper itself reports it.
async fn balanced(observer: &ZooKeeperCoordinator, workers: &[&Worker], partitions: i32) -> bool {
    let owners = observer.partition_owners("clicks").await.unwrap();
    let live: BTreeSet<&str> = workers.iter().map(|w| w.id.as_str()).collect();
    let owned: BTreeSet<i32> = owners.iter().map(|(p, _)| *p).collect();
    if owned != (0..partitions).collect() || !owners.iter().all(|(_, o)| live.contains(o.as_str())) {
        return false;
    }
    let cap = fair_share(partitions as usize, workers.len());
    for worker in workers {
        let held = worker.held.lock().await;
        if held.len() > cap || owners.iter().filter(|(_, o)| *o == worker.id).count() != held.len() {
            return false;
        }
    }
    true
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitions_rebalance_as_workers_join_and_leave() {
    let zk = ZooKeeper::start().unwrap();
    let root = format!("/{}", unique_name("assignment"));
    let observer = node(&zk, &root).await;
    const P: i32 = 12;
    let timeout = Duration::from_secs(30);

    let w1 = start_worker(&zk, &root, "w1", P).await;
    let one = [&w1];
    wait_until("w1 owns all 12", timeout, || balanced(&observer, &one, P)).await.unwrap();

    let w2 = start_worker(&zk, &root, "w2", P).await;
    let w3 = start_worker(&zk, &root, "w3", P).await;
    let three = [&w1, &w2, &w3];
    wait_until("3 workers hold 4 each", timeout, || balanced(&observer, &three, P)).await.unwrap();

    // w2 leaves: its task stops and its session closes.
    w2.task.abort();
    drop(w2.coordinator);
    let two = [&w1, &w3];
    wait_until("2 workers hold 6 each", timeout, || balanced(&observer, &two, P)).await.unwrap();
    for w in [&w1, &w3] {
        assert_eq!(w.held.lock().await.len(), 6);
    }
    w1.task.abort();
    w3.task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_session_expiry_a_worker_reconnects_and_registers_again() {
    let zk = ZooKeeper::start().unwrap();
    let root = format!("/{}", unique_name("expiry"));
    let proxy = TcpProxy::start(format!("127.0.0.1:{}", zk.port()).parse().unwrap()).await.unwrap();
    let options = ZooKeeperOptions::plain(proxy.addr().to_string(), &root, Duration::from_secs(2));
    let worker = Arc::new(ZooKeeperCoordinator::connect(options).await.unwrap());
    let info = WorkerInfo {
        id: "w1".into(),
        host: "h".into(),
        http_addr: "127.0.0.1:9100".into(),
        started_at_ms: 1,
        ..WorkerInfo::default()
    };
    worker.register_worker(&info).await.unwrap();
    let mut lease = worker.acquire("clicks", 0, "w1").await.unwrap().unwrap();
    let observer = node(&zk, &root).await;
    assert_eq!(observer.workers().await.unwrap().0, vec![info.clone()]);

    let session = worker.session_id();
    proxy.blackhole();
    let gone = || async { observer.workers().await.unwrap().0.is_empty() };
    wait_until("ZooKeeper expires the partitioned worker's session", Duration::from_secs(20), gone).await.unwrap();
    proxy.restore();
    let new_session = || async { worker.session_id() != session };
    wait_until("the worker opens a new session", Duration::from_secs(20), new_session).await.unwrap();
    let back = || async { observer.workers().await.unwrap().0 == vec![info.clone()] };
    wait_until("the worker is registered again", Duration::from_secs(20), back).await.unwrap();

    // Nothing is ever committed under the expired session's lease...
    assert_eq!(worker.commit(&mut lease, &segment(0, 0, 9)).await.unwrap(), CommitOutcome::Fenced);
    assert!(observer.segments("clicks").await.unwrap().0.is_empty());
    // ...and the new session acquires afresh, with a new epoch.
    let fresh = worker.acquire("clicks", 0, "w1").await.unwrap().expect("the old lock died with the old session");
    assert!(fresh.epoch() > lease.epoch());
}

/// With credentials, sluice's nodes carry ACLs: anyone may read them, only
/// sluice's identity may create, change or delete; a client with the wrong
/// password is refused like an anonymous one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_credentials_only_sluice_can_change_its_nodes() {
    use zookeeper_client::{Acls, CreateMode, Error as ZkError};
    let zk = ZooKeeper::start().unwrap();
    let root = format!("/{}", unique_name("acl"));
    let secured = |password: &str| ZooKeeperOptions {
        auth: Some(ZooKeeperAuth { username: "sluice".into(), password: password.into(), world_readable: true }),
        ..options(zk.connect_string(), &root)
    };
    let sluice = ZooKeeperCoordinator::connect(secured("the right password")).await.unwrap();
    sluice.apply_pipeline("events", "table = \"events\"").await.unwrap();

    let anonymous = Client::connect(&zk.connect_string()).await.unwrap();
    let (data, _) = anonymous.get_data(&format!("{root}/pipelines/events/config")).await.unwrap();
    assert_eq!(data, b"table = \"events\"", "world-readable");
    let config = format!("{root}/pipelines/events/config");
    assert_eq!(anonymous.set_data(&config, b"table = \"evil\"", None).await.unwrap_err(), ZkError::NoAuth);
    assert_eq!(anonymous.delete(&config, None).await.unwrap_err(), ZkError::NoAuth);
    let intruder = anonymous
        .create(&format!("{root}/pipelines/intruder"), b"x", &CreateMode::Persistent.with_acls(Acls::anyone_all()))
        .await;
    assert_eq!(intruder.unwrap_err(), ZkError::NoAuth);

    let Err(wrong) = ZooKeeperCoordinator::connect(secured("a wrong password")).await else {
        panic!("a wrong password was let in")
    };
    assert!(wrong.to_string().contains("coordinator.auth"), "{wrong}");
    sluice.apply_pipeline("events", "table = \"events\" # v2").await.unwrap();
    assert!(sluice.acquire("events", 0, "w").await.unwrap().is_some());
}
