//! The ZooKeeper coordinator. Layout under the configured root:
//!
//! ```text
//! /workers/<id>                                   ephemeral: NodeInfo
//! /query-nodes/<id>                               ephemeral: NodeInfo
//! /leader/n-<seq>                                 ephemeral sequential: node id
//! /pipelines/<p>/config                           the pipeline config text
//! /pipelines/<p>/partitions/<n>/lock              ephemeral: {"owner", "session"}
//! /pipelines/<p>/partitions/<n>/checkpoint        Checkpoint; its version is the fencing token
//! /pipelines/<p>/segments/<name>                  SegmentRecord
//! ```
//!
//! When the session expires, every lease of it is dead (the generation
//! changes), a new session is opened and the node's registrations are
//! restored; the caller re-acquires what it still should own.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::Duration;

use async_trait::async_trait;
use futures::FutureExt;
use futures::future::{BoxFuture, select_all};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::watch;
use zookeeper_client::{
    Acl, Acls, Client, CreateMode, CreateOptions, Error as ZkError, MultiWriteError, MultiWriteResult, Permission,
};

use crate::{
    Change, Checkpoint, CommitOutcome, CoordError, Coordinator, Leadership, Lease, NodeInfo, Position, SegmentRecord,
    WorkerInfo,
};

#[derive(Debug, Clone)]
pub struct ZooKeeperOptions {
    /// `host:port,host:port`.
    pub connect: String,
    /// Chroot all nodes live under, e.g. `/sluice`.
    pub root: String,
    pub session_timeout: Duration,
    /// Digest credentials: every node this session creates is then writable
    /// only by that identity. None: world-writable nodes (a trusted network).
    pub auth: Option<ZooKeeperAuth>,
    /// TLS to the servers' secure client port: the CA to verify them with,
    /// and an optional client identity.
    pub tls: Option<sluice_config::ZooKeeperTlsConfig>,
}

/// ZooKeeper digest authentication and the ACLs it puts on sluice's nodes.
#[derive(Clone, PartialEq, Eq)]
pub struct ZooKeeperAuth {
    pub username: String,
    pub password: String,
    /// Others may read (`zkCli.sh`, monitoring) but never write.
    pub world_readable: bool,
}

impl std::fmt::Debug for ZooKeeperAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ZooKeeperAuth")
            .field("username", &self.username)
            .field("world_readable", &self.world_readable)
            .finish_non_exhaustive()
    }
}

impl ZooKeeperOptions {
    /// A session on `connect` under `root`, without TLS or authentication
    /// (a trusted network; tests and benchmarks).
    pub fn plain(connect: impl Into<String>, root: impl Into<String>, session_timeout: Duration) -> Self {
        ZooKeeperOptions { connect: connect.into(), root: root.into(), session_timeout, auth: None, tls: None }
    }

    /// The options a node file's `[coordinator]` section describes.
    pub fn from_config(config: &sluice_config::CoordinatorConfig) -> Self {
        ZooKeeperOptions {
            connect: config.connect.clone(),
            root: config.root.clone(),
            session_timeout: config.session_timeout,
            tls: config.tls.clone(),
            auth: config.auth.as_ref().map(|a| ZooKeeperAuth {
                username: a.username.clone(),
                password: a.password.clone(),
                world_readable: a.world_readable,
            }),
        }
    }
}

/// Full rights for the creating identity, reads for anyone.
static CREATOR_ALL_ANYONE_READ: [Acl; 2] =
    [Acl::new_const(Permission::ALL, "auth", ""), Acl::new_const(Permission::READ, "world", "anyone")];

/// The ACLs of every node a session with `options` creates.
fn acls(options: &ZooKeeperOptions) -> Acls<'static> {
    match &options.auth {
        None => Acls::anyone_all(),
        Some(auth) if auth.world_readable => Acls::new(&CREATOR_ALL_ANYONE_READ),
        Some(_) => Acls::creator_all(),
    }
}

pub struct ZooKeeperCoordinator {
    inner: Arc<Inner>,
}

struct Inner {
    options: ZooKeeperOptions,
    client: RwLock<Client>,
    /// Incremented each time a session is replaced; leases carry it.
    generation: AtomicU64,
    generation_tx: watch::Sender<u64>,
    registered: Mutex<Option<WorkerInfo>>,
    registered_query_node: Mutex<Option<NodeInfo>>,
}

fn persistent(acls: Acls<'static>) -> CreateOptions<'static> {
    CreateMode::Persistent.with_acls(acls)
}

fn ephemeral(acls: Acls<'static>) -> CreateOptions<'static> {
    CreateMode::Ephemeral.with_acls(acls)
}

fn err(operation: &str, e: ZkError) -> CoordError {
    let operation = operation.to_string();
    match e {
        ZkError::ConnectionLoss | ZkError::Timeout | ZkError::Throttled => {
            CoordError::Transient { operation, reason: e.to_string() }
        }
        ZkError::SessionExpired | ZkError::ClientClosed => CoordError::SessionExpired { operation },
        ZkError::NoAuth => CoordError::Unexpected {
            operation,
            reason: "not authorized: sluice's nodes are protected by ACLs; give `coordinator.auth` (or, for the \
                     command line, SLUICE_ZOOKEEPER_AUTH=user:password) the cluster's credentials"
                .into(),
        },
        other => CoordError::Unexpected { operation, reason: other.to_string() },
    }
}

fn to_json<T: Serialize>(value: &T) -> Vec<u8> {
    crate::record::encode(value)
}

fn from_json<T: DeserializeOwned>(operation: &str, path: &str, data: &[u8]) -> Result<T, CoordError> {
    crate::record::decode(data).map_err(|e| CoordError::Malformed {
        operation: operation.to_string(),
        path: path.to_string(),
        reason: e.to_string(),
    })
}

fn partition_dir(pipeline: &str, partition: i32) -> String {
    format!("/pipelines/{pipeline}/partitions/{partition}")
}

fn segments_dir(pipeline: &str) -> String {
    format!("/pipelines/{pipeline}/segments")
}

#[derive(serde::Serialize, serde::Deserialize)]
struct LockData {
    owner: String,
    session: u64,
}

impl ZooKeeperCoordinator {
    /// Connects, creates the root and the top-level nodes if missing, and
    /// starts following the session.
    pub async fn connect(options: ZooKeeperOptions) -> Result<Self, CoordError> {
        let client = open_session(&options).await?;
        let (generation_tx, _) = watch::channel(1);
        let inner = Arc::new(Inner {
            options,
            client: RwLock::new(client),
            generation: AtomicU64::new(1),
            generation_tx,
            registered: Mutex::new(None),
            registered_query_node: Mutex::new(None),
        });
        tokio::spawn(follow_session(Arc::downgrade(&inner)));
        Ok(Self { inner })
    }

    fn client(&self) -> Client {
        self.inner.client()
    }

    fn acls(&self) -> Acls<'static> {
        acls(&self.inner.options)
    }

    fn generation(&self) -> u64 {
        self.inner.generation.load(Ordering::SeqCst)
    }

    /// A watch that also fires when the session is replaced.
    fn change(&self, watcher: zookeeper_client::OneshotWatcher) -> Change {
        let session_end = self.session_end();
        async move {
            futures::future::select(watcher.changed().boxed(), session_end).await;
        }
        .boxed()
    }

    fn session_end(&self) -> BoxFuture<'static, ()> {
        let mut rx = self.inner.generation_tx.subscribe();
        rx.borrow_and_update();
        async move {
            let _ = rx.changed().await;
        }
        .boxed()
    }

    /// Creates `node`'s ephemeral registration in `dir`, or updates ours
    /// from this session (a retry, or a query node publishing what it now
    /// serves). False when another live session holds that id.
    async fn register_node(&self, dir: &str, operation: &str, node: &NodeInfo) -> Result<bool, CoordError> {
        let client = self.client();
        let path = format!("{dir}/{}", node.id);
        match client.create(&path, &to_json(node), &ephemeral(self.acls())).await {
            Ok(_) => Ok(true),
            Err(ZkError::NodeExists) => {
                let stat = client.check_stat(&path).await.map_err(|e| err(operation, e))?;
                match stat {
                    None => Ok(true),
                    Some(s) if s.ephemeral_owner == client.session_id().0 => {
                        client.set_data(&path, &to_json(node), Some(s.version)).await.map_err(|e| err(operation, e))?;
                        Ok(true)
                    }
                    Some(_) => Ok(false),
                }
            }
            Err(e) => Err(err(operation, e)),
        }
    }

    /// The JSON records in the children of `dir`, and a watch on the set
    /// and on each record (a query node's record changes with what it
    /// serves). A child deleted between the listing and its read is skipped.
    async fn list_json<T: DeserializeOwned>(
        &self,
        dir: &str,
        operation: &str,
        watch_records: bool,
    ) -> Result<(Vec<T>, Change), CoordError> {
        let client = self.client();
        let (names, _, watcher) = client.get_and_watch_children(dir).await.map_err(|e| err(operation, e))?;
        let mut records = Vec::with_capacity(names.len());
        let mut changes = vec![self.change(watcher)];
        for name in names {
            let path = format!("{dir}/{name}");
            let read = if watch_records {
                client.get_and_watch_data(&path).await.map(|(data, _, w)| {
                    changes.push(self.change(w));
                    data
                })
            } else {
                client.get_data(&path).await.map(|(data, _)| data)
            };
            match read {
                Ok(data) => records.push(from_json::<T>(operation, &path, &data)?),
                Err(ZkError::NoNode) => {}
                Err(e) => return Err(err(operation, e)),
            }
        }
        let change = async move {
            futures::future::select_all(changes).await;
        };
        Ok((records, change.boxed()))
    }

    async fn read_checkpoint(
        &self,
        client: &Client,
        pipeline: &str,
        partition: i32,
    ) -> Result<Option<(Checkpoint, i32)>, CoordError> {
        let path = format!("{}/checkpoint", partition_dir(pipeline, partition));
        match client.get_data(&path).await {
            Ok((data, stat)) => Ok(Some((from_json("read checkpoint", &path, &data)?, stat.version))),
            Err(ZkError::NoNode) => Ok(None),
            Err(e) => Err(err("read checkpoint", e)),
        }
    }

    /// Sets the checkpoint with `update`, retrying on concurrent writers;
    /// returns the new checkpoint and node version.
    async fn update_checkpoint(
        &self,
        client: &Client,
        pipeline: &str,
        partition: i32,
        update: impl Fn(&Checkpoint) -> Checkpoint + Send + Sync,
    ) -> Result<(Checkpoint, i32), CoordError> {
        let dir = partition_dir(pipeline, partition);
        let path = format!("{dir}/checkpoint");
        client.mkdir(&dir, &persistent(self.acls())).await.map_err(|e| err("create partition node", e))?;
        for _ in 0..16 {
            match self.read_checkpoint(client, pipeline, partition).await? {
                None => match client
                    .create(&path, &to_json(&update(&Checkpoint::initial())), &persistent(self.acls()))
                    .await
                {
                    Ok((stat, _)) => return Ok((update(&Checkpoint::initial()), stat.version)),
                    Err(ZkError::NodeExists) => continue,
                    Err(e) => return Err(err("create checkpoint", e)),
                },
                Some((current, version)) => {
                    let next = update(&current);
                    match client.set_data(&path, &to_json(&next), Some(version)).await {
                        Ok(stat) => return Ok((next, stat.version)),
                        Err(ZkError::BadVersion) => continue,
                        Err(e) => return Err(err("update checkpoint", e)),
                    }
                }
            }
        }
        Err(CoordError::Transient {
            operation: "update checkpoint".into(),
            reason: "too many concurrent writers".into(),
        })
    }

    /// After a failed or ambiguous commit: did *this* commit land? It did if
    /// the checkpoint is exactly what it would have written and the segment
    /// node holds exactly this segment.
    async fn commit_landed(
        &self,
        client: &Client,
        lease: &Lease,
        segment: &SegmentRecord,
    ) -> Result<Option<i32>, CoordError> {
        let Some((current, version)) = self.read_checkpoint(client, &lease.pipeline, lease.partition).await? else {
            return Ok(None);
        };
        if current != lease.checkpoint.after(segment) {
            return Ok(None);
        }
        let path = format!("{}/{}", segments_dir(&lease.pipeline), segment.name);
        match client.get_data(&path).await {
            Ok((data, _)) if from_json::<SegmentRecord>("verify commit", &path, &data)? == *segment => {
                Ok(Some(version))
            }
            Ok(_) | Err(ZkError::NoNode) => Ok(None),
            Err(e) => Err(err("verify commit", e)),
        }
    }

    /// The commit itself; transient errors are returned as errors here and
    /// turned into [`CommitOutcome::Transient`] by the caller. It sends
    /// nothing before the `multi`, so a lost answer is always the multi's.
    async fn try_commit(&self, lease: &mut Lease, segment: &SegmentRecord) -> Result<CommitOutcome, CoordError> {
        if let Some(expected) = lease.checkpoint.next_offset
            && segment.start_offset != expected
        {
            return Ok(CommitOutcome::Discontinuous { expected, found: segment.start_offset });
        }
        if lease.session != self.generation() {
            return Ok(CommitOutcome::Fenced);
        }
        let client = self.client();
        let dir = partition_dir(&lease.pipeline, lease.partition);
        let checkpoint_path = format!("{dir}/checkpoint");
        let segment_path = format!("{}/{}", segments_dir(&lease.pipeline), segment.name);
        let next = lease.checkpoint.after(segment);
        let token = i32::try_from(lease.token).unwrap_or(-2);
        let mut multi = client.new_multi_writer();
        let built = multi
            .add_check_version(&checkpoint_path, token)
            .and_then(|_| multi.add_create(&segment_path, &to_json(segment), &persistent(self.acls())))
            .and_then(|_| multi.add_set_data(&checkpoint_path, &to_json(&next), Some(token)));
        built.map_err(|e| err("commit", e))?;
        match multi.commit().await {
            Ok(results) => {
                let version = results.into_iter().find_map(|r| match r {
                    MultiWriteResult::SetData { stat } => Some(stat.version),
                    _ => None,
                });
                lease.token = i64::from(version.unwrap_or(token + 1));
                lease.checkpoint = next;
                Ok(CommitOutcome::Committed)
            }
            Err(MultiWriteError::OperationFailed { .. }) => {
                // Fenced, unless this is the retry of a commit that landed
                // before its answer was lost.
                match self.commit_landed(&client, lease, segment).await? {
                    Some(version) => {
                        lease.token = i64::from(version);
                        lease.checkpoint = next;
                        Ok(CommitOutcome::Committed)
                    }
                    None => Ok(CommitOutcome::Fenced),
                }
            }
            Err(MultiWriteError::RequestFailed { source }) => match err("commit", source) {
                CoordError::Transient { reason, .. } => Ok(CommitOutcome::Transient(reason)),
                CoordError::SessionExpired { .. } => Ok(CommitOutcome::Fenced),
                other => Err(other),
            },
        }
    }
}

impl Inner {
    fn client(&self) -> Client {
        self.client.read().expect("client lock poisoned").clone()
    }
}

async fn open_session(options: &ZooKeeperOptions) -> Result<Client, CoordError> {
    let mut connector = Client::connector()
        .with_session_timeout(options.session_timeout)
        .with_connection_timeout(options.session_timeout);
    if let Some(auth) = &options.auth {
        connector = connector.with_auth("digest", format!("{}:{}", auth.username, auth.password).as_bytes());
    }
    let connecting = match &options.tls {
        Some(tls) => connector.with_tls(tls_options(tls)?).secure_connect(&options.connect).await,
        None => connector.connect(&options.connect).await,
    };
    let root_client = connecting.map_err(|e| err(&format!("connect to ZooKeeper at {}", options.connect), e))?;
    let client = if options.root == "/" {
        root_client
    } else {
        root_client
            .mkdir(&options.root, &persistent(acls(options)))
            .await
            .map_err(|e| err("create the root node", e))?;
        root_client.chroot(options.root.clone()).map_err(|_| CoordError::Unexpected {
            operation: "chroot".into(),
            reason: format!("invalid root {}", options.root),
        })?
    };
    for dir in ["/workers", "/query-nodes", "/pipelines", "/leader"] {
        client.mkdir(dir, &persistent(acls(options))).await.map_err(|e| err("create top-level nodes", e))?;
    }
    Ok(client)
}

/// The client's TLS settings from `coordinator.tls`'s PEM files.
fn tls_options(tls: &sluice_config::ZooKeeperTlsConfig) -> Result<zookeeper_client::TlsOptions, CoordError> {
    let read = |path: &std::path::Path| {
        std::fs::read_to_string(path).map_err(|e| CoordError::Unexpected {
            operation: "coordinator.tls".into(),
            reason: format!("cannot read {}: {e}", path.display()),
        })
    };
    let invalid = |what: &str, e: zookeeper_client::Error| CoordError::Unexpected {
        operation: "coordinator.tls".into(),
        reason: format!("{what}: {e}"),
    };
    // The TLS client builds on rustls' process-wide provider: ring, the one
    // the rest of the process uses (a second one may be linked in).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut options = zookeeper_client::TlsOptions::new()
        .with_pem_ca(&read(&tls.ca)?)
        .map_err(|e| invalid(&format!("{} holds no usable CA certificate", tls.ca.display()), e))?;
    if let (Some(cert), Some(key)) = (&tls.cert, &tls.key) {
        options = options
            .with_pem_identity(&read(cert)?, &read(key)?)
            .map_err(|e| invalid(&format!("{} and {} are no certificate and key", cert.display(), key.display()), e))?;
    }
    Ok(options)
}

/// Replaces an ended session: bumps the generation (killing its leases),
/// reconnects, and restores the worker registration.
async fn follow_session(inner: Weak<Inner>) {
    loop {
        let mut states = match inner.upgrade() {
            Some(inner) => inner.client().state_watcher(),
            None => return,
        };
        loop {
            let state = states.changed().await;
            if state.is_terminated() {
                break;
            }
        }
        let Some(strong) = inner.upgrade() else { return };
        let generation = strong.generation.fetch_add(1, Ordering::SeqCst) + 1;
        strong.generation_tx.send_replace(generation);
        tracing::warn!(generation, "ZooKeeper session ended; every lease of it is lost; reconnecting");
        let options = strong.options.clone();
        drop(strong);
        let client = loop {
            match open_session(&options).await {
                Ok(client) => break client,
                Err(e) => {
                    tracing::warn!(error = %e, "reconnecting to ZooKeeper");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        };
        let Some(strong) = inner.upgrade() else { return };
        *strong.client.write().expect("client lock poisoned") = client.clone();
        let registered = strong.registered.lock().expect("registration lock poisoned").clone();
        let query_node = strong.registered_query_node.lock().expect("registration lock poisoned").clone();
        let node_acls = acls(&strong.options);
        drop(strong);
        if let Some(worker) = registered {
            reregister(&client, "/workers", &worker, node_acls).await;
        }
        if let Some(node) = query_node {
            reregister(&client, "/query-nodes", &node, node_acls).await;
        }
        let Some(strong) = inner.upgrade() else { return };
        strong.generation_tx.send_modify(|_| {});
    }
}

/// Registers `node` in `dir` under a new session. The previous session's
/// node can outlive it by up to a session timeout (a restarted server
/// restores its sessions before expiring them), so wait for that node to go
/// rather than give up: a worker missing from the list gets no partitions.
async fn reregister(client: &Client, dir: &str, worker: &NodeInfo, acls: Acls<'static>) {
    let path = format!("{dir}/{}", worker.id);
    loop {
        if client.state().is_terminated() {
            return; // this session ended too; the next one registers
        }
        match client.create(&path, &to_json(worker), &ephemeral(acls)).await {
            Ok(_) => {
                tracing::info!(node = %worker.id, %dir, "registered again under the new session");
                return;
            }
            Err(ZkError::NodeExists) => match client.check_and_watch_stat(&path).await {
                Ok((Some(stat), _)) if stat.ephemeral_owner == client.session_id().0 => return,
                Ok((Some(_), watcher)) => {
                    tracing::info!(node = %worker.id, "waiting for the previous session's registration to expire");
                    let _ = tokio::time::timeout(Duration::from_secs(5), watcher.changed()).await;
                }
                Ok((None, _)) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
            },
            Err(e) => {
                tracing::warn!(error = %e, %dir, "re-registering; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

#[async_trait]
impl Coordinator for ZooKeeperCoordinator {
    fn session_id(&self) -> u64 {
        self.generation()
    }

    async fn register_worker(&self, worker: &WorkerInfo) -> Result<(), CoordError> {
        if !self.register_node("/workers", "register worker", worker).await? {
            return Err(CoordError::WorkerIdTaken { id: worker.id.clone() });
        }
        *self.inner.registered.lock().expect("registration lock poisoned") = Some(worker.clone());
        Ok(())
    }

    async fn workers(&self) -> Result<(Vec<WorkerInfo>, Change), CoordError> {
        let (mut workers, change) = self.list_json::<WorkerInfo>("/workers", "list workers", false).await?;
        workers.sort_by(|a, b| a.id.cmp(&b.id));
        Ok((workers, change))
    }

    async fn register_query_node(&self, node: &NodeInfo) -> Result<(), CoordError> {
        if !self.register_node("/query-nodes", "register query node", node).await? {
            return Err(CoordError::QueryNodeIdTaken { id: node.id.clone() });
        }
        *self.inner.registered_query_node.lock().expect("registration lock poisoned") = Some(node.clone());
        Ok(())
    }

    async fn query_nodes(&self) -> Result<(Vec<NodeInfo>, Change), CoordError> {
        let (mut nodes, change) = self.list_json::<NodeInfo>("/query-nodes", "list query nodes", true).await?;
        nodes.sort_by(|a, b| a.id.cmp(&b.id));
        Ok((nodes, change))
    }

    async fn acquire(&self, pipeline: &str, partition: i32, owner: &str) -> Result<Option<Lease>, CoordError> {
        let client = self.client();
        let session = self.generation();
        let dir = partition_dir(pipeline, partition);
        client.mkdir(&dir, &persistent(self.acls())).await.map_err(|e| err("acquire", e))?;
        client.mkdir(&segments_dir(pipeline), &persistent(self.acls())).await.map_err(|e| err("acquire", e))?;
        let lock = format!("{dir}/lock");
        match client
            .create(&lock, &to_json(&LockData { owner: owner.to_string(), session }), &ephemeral(self.acls()))
            .await
        {
            Ok(_) => {}
            Err(ZkError::NodeExists) => return Ok(None),
            Err(e) => return Err(err("acquire", e)),
        }
        let bumped = self
            .update_checkpoint(&client, pipeline, partition, |c| Checkpoint { epoch: c.epoch + 1, ..c.clone() })
            .await;
        match bumped {
            Ok((checkpoint, version)) => Ok(Some(Lease {
                pipeline: pipeline.to_string(),
                partition,
                owner: owner.to_string(),
                checkpoint,
                session,
                token: i64::from(version),
            })),
            Err(e) => {
                // Do not hold a lock whose epoch we could not claim.
                let _ = client.delete(&lock, None).await;
                Err(e)
            }
        }
    }

    async fn release(&self, lease: Lease) -> Result<(), CoordError> {
        if lease.session != self.generation() {
            return Ok(()); // the session that held it is gone, and its lock with it
        }
        let client = self.client();
        let lock = format!("{}/lock", partition_dir(&lease.pipeline, lease.partition));
        match client.get_data(&lock).await {
            Ok((_, stat)) if stat.ephemeral_owner == client.session_id().0 => {
                match client.delete(&lock, Some(stat.version)).await {
                    Ok(()) | Err(ZkError::NoNode) => Ok(()),
                    Err(e) => Err(err("release", e)),
                }
            }
            Ok(_) | Err(ZkError::NoNode) => Ok(()),
            Err(e) => Err(err("release", e)),
        }
    }

    async fn still_owner(&self, lease: &Lease) -> Result<bool, CoordError> {
        if lease.session != self.generation() {
            return Ok(false);
        }
        let client = self.client();
        let lock = format!("{}/lock", partition_dir(&lease.pipeline, lease.partition));
        let owns_lock = match client.get_data(&lock).await {
            Ok((_, stat)) => stat.ephemeral_owner == client.session_id().0,
            Err(ZkError::NoNode) => false,
            Err(e) => return Err(err("check ownership", e)),
        };
        let token = self.read_checkpoint(&client, &lease.pipeline, lease.partition).await?.map(|(_, v)| i64::from(v));
        Ok(owns_lock && token == Some(lease.token))
    }

    async fn commit(&self, lease: &mut Lease, segment: &SegmentRecord) -> Result<CommitOutcome, CoordError> {
        match self.try_commit(lease, segment).await {
            Err(CoordError::Transient { reason, .. }) => Ok(CommitOutcome::Transient(reason)),
            other => other,
        }
    }

    async fn checkpoint(&self, pipeline: &str, partition: i32) -> Result<Option<Checkpoint>, CoordError> {
        Ok(self.read_checkpoint(&self.client(), pipeline, partition).await?.map(|(c, _)| c))
    }

    async fn reset_offset(&self, pipeline: &str, partition: i32, to: Position) -> Result<Checkpoint, CoordError> {
        Ok(self.update_checkpoint(&self.client(), pipeline, partition, |c| c.reset(to)).await?.0)
    }

    async fn checkpoints(&self, pipeline: &str) -> Result<Vec<(i32, Checkpoint)>, CoordError> {
        let client = self.client();
        let partitions = match client.list_children(&format!("/pipelines/{pipeline}/partitions")).await {
            Ok(p) => p,
            Err(ZkError::NoNode) => return Ok(Vec::new()),
            Err(e) => return Err(err("list checkpoints", e)),
        };
        let mut out = Vec::new();
        for partition in partitions.iter().filter_map(|p| p.parse::<i32>().ok()) {
            if let Some((checkpoint, _)) = self.read_checkpoint(&client, pipeline, partition).await? {
                out.push((partition, checkpoint));
            }
        }
        out.sort_by_key(|(n, _)| *n);
        Ok(out)
    }

    async fn partition_owners(&self, pipeline: &str) -> Result<Vec<(i32, String)>, CoordError> {
        let client = self.client();
        let dir = format!("/pipelines/{pipeline}/partitions");
        let partitions = match client.list_children(&dir).await {
            Ok(p) => p,
            Err(ZkError::NoNode) => return Ok(Vec::new()),
            Err(e) => return Err(err("list owners", e)),
        };
        let mut owners = Vec::new();
        for p in partitions {
            let Ok(partition) = p.parse::<i32>() else { continue };
            let path = format!("{dir}/{p}/lock");
            match client.get_data(&path).await {
                Ok((data, _)) => owners.push((partition, from_json::<LockData>("list owners", &path, &data)?.owner)),
                Err(ZkError::NoNode) => {}
                Err(e) => return Err(err("list owners", e)),
            }
        }
        owners.sort();
        Ok(owners)
    }

    async fn segments(&self, pipeline: &str) -> Result<(Vec<SegmentRecord>, Change), CoordError> {
        let dir = segments_dir(pipeline);
        self.client().mkdir(&dir, &persistent(self.acls())).await.map_err(|e| err("list segments", e))?;
        let (mut records, change) = self.list_json::<SegmentRecord>(&dir, "list segments", false).await?;
        records.sort_by(|a, b| a.name.cmp(&b.name));
        Ok((records, change))
    }

    async fn delete_segment(&self, pipeline: &str, name: &str) -> Result<(), CoordError> {
        match self.client().delete(&format!("{}/{name}", segments_dir(pipeline)), None).await {
            Ok(()) | Err(ZkError::NoNode) => Ok(()),
            Err(e) => Err(err("delete segment", e)),
        }
    }

    async fn apply_pipeline(&self, pipeline: &str, config: &str) -> Result<(), CoordError> {
        let client = self.client();
        let dir = format!("/pipelines/{pipeline}");
        client.mkdir(&dir, &persistent(self.acls())).await.map_err(|e| err("apply pipeline", e))?;
        let path = format!("{dir}/config");
        match client.create(&path, config.as_bytes(), &persistent(self.acls())).await {
            Ok(_) => Ok(()),
            Err(ZkError::NodeExists) => {
                client.set_data(&path, config.as_bytes(), None).await.map(|_| ()).map_err(|e| err("apply pipeline", e))
            }
            Err(e) => Err(err("apply pipeline", e)),
        }
    }

    async fn delete_pipeline(&self, pipeline: &str) -> Result<(), CoordError> {
        match self.client().delete(&format!("/pipelines/{pipeline}/config"), None).await {
            Ok(()) | Err(ZkError::NoNode) => Ok(()),
            Err(e) => Err(err("delete pipeline", e)),
        }
    }

    async fn known_pipelines(&self) -> Result<Vec<String>, CoordError> {
        let mut names = self.client().list_children("/pipelines").await.map_err(|e| err("list pipelines", e))?;
        names.sort();
        Ok(names)
    }

    async fn pipelines(&self) -> Result<(Vec<(String, String)>, Change), CoordError> {
        let client = self.client();
        let (names, _, children_watch) =
            client.get_and_watch_children("/pipelines").await.map_err(|e| err("list pipelines", e))?;
        let mut watches: Vec<BoxFuture<'static, ()>> = vec![self.change(children_watch)];
        let mut configs = Vec::new();
        for name in names {
            let path = format!("/pipelines/{name}/config");
            // Watch every config's content, and the creation of missing ones.
            match client.get_and_watch_data(&path).await {
                Ok((data, _, watcher)) => {
                    let text = String::from_utf8(data).map_err(|e| CoordError::Malformed {
                        operation: "list pipelines".into(),
                        path: path.clone(),
                        reason: e.to_string(),
                    })?;
                    configs.push((name, text));
                    watches.push(self.change(watcher));
                }
                Err(ZkError::NoNode) => {
                    let (_, watcher) =
                        client.check_and_watch_stat(&path).await.map_err(|e| err("list pipelines", e))?;
                    watches.push(self.change(watcher));
                }
                Err(e) => return Err(err("list pipelines", e)),
            }
        }
        configs.sort();
        let change = async move {
            select_all(watches).await;
        }
        .boxed();
        Ok((configs, change))
    }

    async fn campaign(&self, node: &str) -> Result<Leadership, CoordError> {
        let client = self.client();
        let generation = self.generation();
        let (_, sequence) = client
            .create("/leader/n-", node.as_bytes(), &CreateMode::EphemeralSequential.with_acls(self.acls()))
            .await
            .map_err(|e| err("campaign", e))?;
        let mine = format!("n-{sequence}");
        loop {
            if self.generation() != generation {
                return Err(CoordError::SessionExpired { operation: "campaign".into() });
            }
            let mut candidates = client.list_children("/leader").await.map_err(|e| err("campaign", e))?;
            candidates.sort();
            let position = candidates
                .iter()
                .position(|c| *c == mine)
                .ok_or(CoordError::SessionExpired { operation: "campaign".into() })?;
            if position == 0 {
                break;
            }
            // Watch only the predecessor: no herd when the leader goes.
            let predecessor = format!("/leader/{}", candidates[position - 1]);
            let (stat, watcher) = client.check_and_watch_stat(&predecessor).await.map_err(|e| err("campaign", e))?;
            if stat.is_some() {
                self.change(watcher).await;
            }
        }
        let path = format!("/leader/{mine}");
        let watcher_client = client.clone();
        let session_end = self.session_end();
        let watched_path = path.clone();
        let lost = async move {
            let node_gone = async move {
                loop {
                    match watcher_client.check_and_watch_stat(&watched_path).await {
                        Ok((Some(_), watcher)) => {
                            watcher.changed().await;
                        }
                        _ => return,
                    }
                }
            };
            futures::future::select(node_gone.boxed(), session_end).await;
        }
        .boxed();
        let resign = async move {
            let _ = client.delete(&path, None).await;
        }
        .boxed();
        Ok(Leadership::new(lost, resign))
    }
}
