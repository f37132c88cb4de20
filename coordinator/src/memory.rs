//! The in-process coordinator: the same contract as ZooKeeper, for a single
//! process (the quickstart) and for unit tests. Sessions model ZooKeeper
//! sessions: each handle from [`InProcessCoordinator::new_session`] owns its
//! ephemeral state (worker registration, partition locks, election
//! candidacy), which disappears when the session [expires](InProcessCoordinator::expire).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use futures::FutureExt;
use tokio::sync::watch;

use crate::{
    Change, Checkpoint, CommitOutcome, CoordError, Coordinator, Leadership, Lease, NodeInfo, Position, SegmentRecord,
    WorkerInfo,
};

#[derive(Default)]
struct State {
    live_sessions: HashSet<u64>,
    workers: BTreeMap<String, (u64, WorkerInfo)>,
    query_nodes: BTreeMap<String, (u64, NodeInfo)>,
    locks: HashMap<(String, i32), (u64, String)>,
    checkpoints: HashMap<(String, i32), (Checkpoint, i64)>,
    segments: BTreeMap<String, BTreeMap<String, SegmentRecord>>,
    pipelines: BTreeMap<String, String>,
    candidates: BTreeMap<u64, (u64, String)>,
    next_candidate: u64,
}

struct Cluster {
    state: Mutex<State>,
    next_session: AtomicU64,
    /// Bumped on every change; watchers wake and re-read.
    changes: watch::Sender<u64>,
}

/// A session on an in-process coordination "cluster".
#[derive(Clone)]
pub struct InProcessCoordinator {
    cluster: Arc<Cluster>,
    session: u64,
}

impl Default for InProcessCoordinator {
    fn default() -> Self {
        Self::new()
    }
}

impl InProcessCoordinator {
    /// A new cluster with one session.
    pub fn new() -> Self {
        let cluster = Arc::new(Cluster {
            state: Mutex::new(State::default()),
            next_session: AtomicU64::new(1),
            changes: watch::channel(0).0,
        });
        Self::session_on(cluster)
    }

    fn session_on(cluster: Arc<Cluster>) -> Self {
        let session = cluster.next_session.fetch_add(1, Ordering::Relaxed);
        cluster.state.lock().expect("coordinator state poisoned").live_sessions.insert(session);
        Self { cluster, session }
    }

    /// Another session on the same cluster (another node).
    pub fn new_session(&self) -> Self {
        Self::session_on(self.cluster.clone())
    }

    /// Ends this session: its worker registration, locks and candidacy vanish,
    /// and its leases are dead.
    pub fn expire(&self) {
        let mut state = self.lock();
        state.live_sessions.remove(&self.session);
        state.workers.retain(|_, (s, _)| *s != self.session);
        state.query_nodes.retain(|_, (s, _)| *s != self.session);
        state.locks.retain(|_, (s, _)| *s != self.session);
        state.candidates.retain(|_, (s, _)| *s != self.session);
        self.notify();
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.cluster.state.lock().expect("coordinator state poisoned")
    }

    fn notify(&self) {
        self.cluster.changes.send_modify(|v| *v += 1);
    }

    /// A watch armed now: resolves at the next change.
    fn change(&self) -> Change {
        let mut rx = self.cluster.changes.subscribe();
        rx.borrow_and_update();
        async move {
            let _ = rx.changed().await;
        }
        .boxed()
    }

    fn live(&self, state: &State, operation: &str) -> Result<(), CoordError> {
        if state.live_sessions.contains(&self.session) {
            Ok(())
        } else {
            Err(CoordError::SessionExpired { operation: operation.to_string() })
        }
    }

    fn lease_in_force(&self, state: &State, lease: &Lease) -> bool {
        let key = (lease.pipeline.clone(), lease.partition);
        lease.session == self.session
            && state.live_sessions.contains(&lease.session)
            && state.locks.get(&key).is_some_and(|(s, o)| *s == lease.session && *o == lease.owner)
            && state.checkpoints.get(&key).is_some_and(|(_, v)| *v == lease.token)
    }
}

#[async_trait]
impl Coordinator for InProcessCoordinator {
    fn session_id(&self) -> u64 {
        self.session
    }

    async fn register_worker(&self, worker: &WorkerInfo) -> Result<(), CoordError> {
        let mut state = self.lock();
        self.live(&state, "register worker")?;
        state.workers.insert(worker.id.clone(), (self.session, worker.clone()));
        self.notify();
        Ok(())
    }

    async fn workers(&self) -> Result<(Vec<WorkerInfo>, Change), CoordError> {
        let state = self.lock();
        self.live(&state, "list workers")?;
        Ok((state.workers.values().map(|(_, w)| w.clone()).collect(), self.change()))
    }

    async fn register_query_node(&self, node: &NodeInfo) -> Result<(), CoordError> {
        let mut state = self.lock();
        self.live(&state, "register query node")?;
        state.query_nodes.insert(node.id.clone(), (self.session, node.clone()));
        self.notify();
        Ok(())
    }

    async fn query_nodes(&self) -> Result<(Vec<NodeInfo>, Change), CoordError> {
        let state = self.lock();
        self.live(&state, "list query nodes")?;
        Ok((state.query_nodes.values().map(|(_, n)| n.clone()).collect(), self.change()))
    }

    async fn acquire(&self, pipeline: &str, partition: i32, owner: &str) -> Result<Option<Lease>, CoordError> {
        let mut state = self.lock();
        self.live(&state, "acquire")?;
        let key = (pipeline.to_string(), partition);
        if state.locks.contains_key(&key) {
            return Ok(None);
        }
        state.locks.insert(key.clone(), (self.session, owner.to_string()));
        let (checkpoint, version) = state.checkpoints.entry(key).or_insert((Checkpoint::initial(), 0));
        checkpoint.epoch += 1;
        *version += 1;
        let lease = Lease {
            pipeline: pipeline.to_string(),
            partition,
            owner: owner.to_string(),
            checkpoint: checkpoint.clone(),
            session: self.session,
            token: *version,
        };
        self.notify();
        Ok(Some(lease))
    }

    async fn release(&self, lease: Lease) -> Result<(), CoordError> {
        let mut state = self.lock();
        let key = (lease.pipeline.clone(), lease.partition);
        if state.locks.get(&key).is_some_and(|(s, o)| *s == lease.session && *o == lease.owner) {
            state.locks.remove(&key);
            self.notify();
        }
        Ok(())
    }

    async fn still_owner(&self, lease: &Lease) -> Result<bool, CoordError> {
        Ok(self.lease_in_force(&self.lock(), lease))
    }

    async fn commit(&self, lease: &mut Lease, segment: &SegmentRecord) -> Result<CommitOutcome, CoordError> {
        let mut state = self.lock();
        if let Some(expected) = lease.checkpoint.next_offset
            && segment.start_offset != expected
        {
            return Ok(CommitOutcome::Discontinuous { expected, found: segment.start_offset });
        }
        if !self.lease_in_force(&state, lease) {
            return Ok(CommitOutcome::Fenced);
        }
        let segments = state.segments.entry(lease.pipeline.clone()).or_default();
        if segments.contains_key(&segment.name) {
            return Ok(CommitOutcome::Fenced);
        }
        segments.insert(segment.name.clone(), segment.clone());
        let next = lease.checkpoint.after(segment);
        let entry = state.checkpoints.get_mut(&(lease.pipeline.clone(), lease.partition)).expect("checked in force");
        entry.0 = next.clone();
        entry.1 += 1;
        lease.token = entry.1;
        lease.checkpoint = next;
        self.notify();
        Ok(CommitOutcome::Committed)
    }

    async fn checkpoint(&self, pipeline: &str, partition: i32) -> Result<Option<Checkpoint>, CoordError> {
        Ok(self.lock().checkpoints.get(&(pipeline.to_string(), partition)).map(|(c, _)| c.clone()))
    }

    async fn reset_offset(&self, pipeline: &str, partition: i32, to: Position) -> Result<Checkpoint, CoordError> {
        let mut state = self.lock();
        self.live(&state, "reset offset")?;
        let entry = state.checkpoints.entry((pipeline.to_string(), partition)).or_insert((Checkpoint::initial(), 0));
        entry.0 = entry.0.reset(to);
        entry.1 += 1;
        let checkpoint = entry.0.clone();
        self.notify();
        Ok(checkpoint)
    }

    async fn checkpoints(&self, pipeline: &str) -> Result<Vec<(i32, Checkpoint)>, CoordError> {
        let state = self.lock();
        let mut out: Vec<(i32, Checkpoint)> = state
            .checkpoints
            .iter()
            .filter(|((p, _), _)| p == pipeline)
            .map(|((_, n), (c, _))| (*n, c.clone()))
            .collect();
        out.sort_by_key(|(n, _)| *n);
        Ok(out)
    }

    async fn partition_owners(&self, pipeline: &str) -> Result<Vec<(i32, String)>, CoordError> {
        let state = self.lock();
        let mut owners: Vec<(i32, String)> =
            state.locks.iter().filter(|((p, _), _)| p == pipeline).map(|((_, n), (_, o))| (*n, o.clone())).collect();
        owners.sort();
        Ok(owners)
    }

    async fn segments(&self, pipeline: &str) -> Result<(Vec<SegmentRecord>, Change), CoordError> {
        let state = self.lock();
        let list = state.segments.get(pipeline).map(|s| s.values().cloned().collect()).unwrap_or_default();
        Ok((list, self.change()))
    }

    async fn delete_segment(&self, pipeline: &str, name: &str) -> Result<(), CoordError> {
        let mut state = self.lock();
        if let Some(segments) = state.segments.get_mut(pipeline) {
            segments.remove(name);
        }
        self.notify();
        Ok(())
    }

    async fn apply_pipeline(&self, pipeline: &str, config: &str) -> Result<(), CoordError> {
        let mut state = self.lock();
        self.live(&state, "apply pipeline")?;
        state.pipelines.insert(pipeline.to_string(), config.to_string());
        self.notify();
        Ok(())
    }

    async fn delete_pipeline(&self, pipeline: &str) -> Result<(), CoordError> {
        let mut state = self.lock();
        state.pipelines.remove(pipeline);
        self.notify();
        Ok(())
    }

    async fn known_pipelines(&self) -> Result<Vec<String>, CoordError> {
        let state = self.lock();
        let names: std::collections::BTreeSet<String> = state
            .pipelines
            .keys()
            .chain(state.segments.keys())
            .chain(state.checkpoints.keys().map(|(p, _)| p))
            .cloned()
            .collect();
        Ok(names.into_iter().collect())
    }

    async fn pipelines(&self) -> Result<(Vec<(String, String)>, Change), CoordError> {
        let state = self.lock();
        Ok((state.pipelines.iter().map(|(k, v)| (k.clone(), v.clone())).collect(), self.change()))
    }

    async fn campaign(&self, node: &str) -> Result<Leadership, CoordError> {
        let seq = {
            let mut state = self.lock();
            self.live(&state, "campaign")?;
            let seq = state.next_candidate;
            state.next_candidate += 1;
            state.candidates.insert(seq, (self.session, node.to_string()));
            self.notify();
            seq
        };
        loop {
            let change = {
                let state = self.lock();
                if !state.candidates.contains_key(&seq) {
                    return Err(CoordError::SessionExpired { operation: "campaign".into() });
                }
                if state.candidates.keys().next() == Some(&seq) {
                    break;
                }
                self.change()
            };
            change.await;
        }
        let watcher = self.clone();
        let lost = async move {
            loop {
                let change = {
                    let state = watcher.lock();
                    if !state.candidates.contains_key(&seq) {
                        return;
                    }
                    watcher.change()
                };
                change.await;
            }
        }
        .boxed();
        let resigner = self.clone();
        let resign = async move {
            resigner.lock().candidates.remove(&seq);
            resigner.notify();
        }
        .boxed();
        Ok(Leadership::new(lost, resign))
    }
}
