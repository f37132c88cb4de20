//! The query nodes of a cluster, as this node sees them through ZooKeeper:
//! who is live, where each one's Flight endpoint is, which segments each
//! serves (Pinot's external view, published in the nodes' own records), and
//! which segments this node should serve (rendezvous hashing over the live
//! nodes: Pinot's ideal state, computed by every node alike, no controller).
//!
//! Invariants:
//! - Routing follows what nodes *serve*, never what they are assigned: a
//!   task goes only to a node whose published record lists its segments.
//! - A node that failed a task is suspected for [`SUSPECT_FOR`]: routing
//!   skips it while a replica serves its segments, so a retried query does
//!   not wait for the dead node's session to expire.
//! - What this node serves is published after each catalog pass, and its
//!   registration is restored after a session loss ([`publish`]).
//! - The real-time tail of each partition is assigned like a segment, by
//!   rendezvous hashing on the partition; a node publishes a tail once it
//!   has caught up, and is sent tail tasks only for published tails.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use datafusion::error::DataFusionError;
use datafusion_distributed::WorkerResolver;
use sluice_coordinator::{Coordinator, NodeInfo};
use tokio::sync::{Notify, watch};
use url::Url;

/// Partition numbers a published tail may carry (Kafka caps a whole
/// cluster at a few hundred thousand partitions).
const MAX_PARTITIONS: i32 = 1_000_000;

/// How long a node that failed a task is left out of routing.
pub const SUSPECT_FOR: Duration = Duration::from_secs(30);

/// The live query nodes and what each serves.
pub struct Cluster {
    self_id: String,
    self_url: Url,
    replication: Option<u32>,
    view: RwLock<Arc<View>>,
    suspects: Mutex<HashMap<String, Instant>>,
    /// Wakes the catalog follower when membership or serving changes.
    pub(crate) changed: Notify,
}

/// One reading of `/query-nodes`.
#[derive(Default)]
struct View {
    nodes: Vec<NodeInfo>,
    urls: HashMap<String, Url>,
    /// table → segment → ids of the nodes serving it.
    serving: HashMap<String, HashMap<String, Vec<String>>>,
    /// table → partition → ids of the nodes serving its tail, caught up.
    tails: HashMap<String, HashMap<i32, Vec<String>>>,
}

/// A node that can run a task: its id and Flight URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub id: String,
    pub url: Url,
}

impl Cluster {
    pub fn new(self_id: String, self_url: Url, replication: Option<u32>) -> Arc<Self> {
        Arc::new(Cluster {
            self_id,
            self_url,
            replication,
            view: RwLock::default(),
            suspects: Mutex::default(),
            changed: Notify::new(),
        })
    }

    pub fn self_id(&self) -> &str {
        &self.self_id
    }

    pub fn self_url(&self) -> &Url {
        &self.self_url
    }

    fn view(&self) -> Arc<View> {
        self.view.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Ids of the live nodes, this one included even before its own
    /// registration shows, sorted.
    pub fn node_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.view().nodes.iter().map(|n| n.id.clone()).collect();
        if !ids.contains(&self.self_id) {
            ids.push(self.self_id.clone());
        }
        ids.sort();
        ids
    }

    /// Copies of each segment: configured, else 1 for a lone node and 2
    /// once there are more; never more than the live nodes.
    pub fn replication(&self) -> usize {
        self.replication_of(None)
    }

    /// Copies of a table's segments and tails: the table's own
    /// `replication` when set, else the nodes'; never more than the live
    /// nodes.
    pub fn replication_of(&self, table: Option<u32>) -> usize {
        let nodes = self.node_ids().len();
        let wanted = table.or(self.replication).map_or(if nodes > 1 { 2 } else { 1 }, |r| r as usize);
        wanted.clamp(1, nodes)
    }

    /// Whether every live node assigned `segment` (but this one) serves it:
    /// then this node may drop it (load before drop).
    pub fn served_by_assignees(&self, table: &str, segment: &str, assignees: &[String]) -> bool {
        self.assignees_serve(self.view().serving.get(table).and_then(|t| t.get(segment)), assignees)
    }

    /// Whether `assignees` is not empty and each of them but this node is
    /// among `serving`.
    fn assignees_serve(&self, serving: Option<&Vec<String>>, assignees: &[String]) -> bool {
        !assignees.is_empty()
            && assignees
                .iter()
                .filter(|id| **id != self.self_id)
                .all(|id| serving.is_some_and(|holders| holders.contains(id)))
    }

    /// The live, unsuspected nodes among `ids`, this one left out.
    fn others(&self, view: &View, ids: Option<&Vec<String>>) -> Vec<Member> {
        let Some(ids) = ids else { return Vec::new() };
        let suspects = self.live_suspects();
        ids.iter()
            .filter(|id| **id != self.self_id && !suspects.contains(*id))
            .filter_map(|id| view.urls.get(id).map(|url| Member { id: id.clone(), url: url.clone() }))
            .collect()
    }

    /// The assignees of each of `segments` of `table` (`replication`: the
    /// table's own, if set).
    pub fn assignment(
        &self,
        table: &str,
        segments: &[String],
        replication: Option<u32>,
    ) -> BTreeMap<String, Vec<String>> {
        sluice_coordinator::replica_assignment(table, segments, &self.node_ids(), self.replication_of(replication))
    }

    /// The assignees of the tail of each partition `0..partitions` of
    /// `table`: rendezvous hashing on the partition, as segments are
    /// assigned, with the same replication.
    pub fn tail_assignment(
        &self,
        table: &str,
        partitions: i32,
        replication: Option<u32>,
    ) -> BTreeMap<i32, Vec<String>> {
        let keys: Vec<String> = (0..partitions).map(|p| p.to_string()).collect();
        let replication = self.replication_of(replication);
        sluice_coordinator::replica_assignment(&format!("{table}/tail"), &keys, &self.node_ids(), replication)
            .into_iter()
            .filter_map(|(key, nodes)| Some((key.parse().ok()?, nodes)))
            .collect()
    }

    /// Whether every live node assigned the tail of `partition` (but this
    /// one) serves it caught up: then this node may stop following it.
    pub fn tail_served_by_assignees(&self, table: &str, partition: i32, assignees: &[String]) -> bool {
        self.assignees_serve(self.view().tails.get(table).and_then(|t| t.get(&partition)), assignees)
    }

    /// The other live, unsuspected nodes serving the tail of `partition` of
    /// `table` caught up, in a fixed order: a planner sends the partition's
    /// tail task to the first, the same one query after query, so its
    /// answers do not step back to a replica that read less.
    pub fn tail_holders(&self, table: &str, partition: i32) -> Vec<Member> {
        let view = self.view();
        let mut holders = self.others(&view, view.tails.get(table).and_then(|t| t.get(&partition)));
        holders.sort_by(|a, b| a.id.cmp(&b.id));
        holders
    }

    /// How many partitions of `table` have a tail some node serves (the
    /// highest one's number plus one).
    pub fn tail_partitions(&self, table: &str) -> i32 {
        self.view().tails.get(table).and_then(|t| t.keys().max()).map_or(0, |p| p + 1)
    }

    /// The other live, unsuspected nodes that serve `segment` of `table`.
    pub fn holders(&self, table: &str, segment: &str) -> Vec<Member> {
        let view = self.view();
        self.others(&view, view.serving.get(table).and_then(|t| t.get(segment)))
    }

    /// The node behind a Flight URL.
    pub fn member_at(&self, url: &Url) -> Option<String> {
        if url == &self.self_url {
            return Some(self.self_id.clone());
        }
        self.view().urls.iter().find(|(_, u)| *u == url).map(|(id, _)| id.clone())
    }

    /// Leaves `id` out of routing for [`SUSPECT_FOR`].
    pub fn suspect(&self, id: &str) {
        if id != self.self_id {
            tracing::warn!(node = %id, "a query node failed a task; routing around it");
            self.suspects.lock().unwrap_or_else(|e| e.into_inner()).insert(id.to_string(), Instant::now());
            metrics::counter!("sluice_query_node_suspected_total").increment(1);
            self.changed.notify_one();
        }
    }

    fn live_suspects(&self) -> Vec<String> {
        let mut suspects = self.suspects.lock().unwrap_or_else(|e| e.into_inner());
        suspects.retain(|_, at| at.elapsed() < SUSPECT_FOR);
        suspects.keys().cloned().collect()
    }

    /// Flight URLs of every live, unsuspected node, this one first.
    pub fn urls(&self) -> Vec<Url> {
        let view = self.view();
        let suspects = self.live_suspects();
        let mut urls = vec![self.self_url.clone()];
        let mut others: Vec<(&String, &Url)> =
            view.urls.iter().filter(|(id, _)| **id != self.self_id && !suspects.contains(*id)).collect();
        others.sort();
        urls.extend(others.into_iter().map(|(_, u)| u.clone()));
        urls
    }

    fn set_nodes(&self, nodes: Vec<NodeInfo>) {
        let mut view = View::default();
        for node in &nodes {
            let Some(addr) = node.reachable_flight_addr() else { continue };
            match Url::parse(&format!("http://{addr}")) {
                Ok(url) => {
                    view.urls.insert(node.id.clone(), url);
                }
                Err(e) => {
                    tracing::warn!(node = %node.id, %addr, error = %e, "unusable Flight address; node left out");
                    continue;
                }
            }
            for (table, partitions) in &node.tails {
                let by_partition = view.tails.entry(table.clone()).or_default();
                // A record is another process's word: a partition number no
                // topic has must not size what this node plans per partition.
                for partition in partitions.iter().filter(|p| (0..MAX_PARTITIONS).contains(*p)) {
                    by_partition.entry(*partition).or_default().push(node.id.clone());
                }
                if partitions.iter().any(|p| !(0..MAX_PARTITIONS).contains(p)) {
                    tracing::warn!(node = %node.id, %table, "a query node record lists impossible partitions; ignored");
                }
            }
            for (table, segments) in &node.serving {
                let by_segment = view.serving.entry(table.clone()).or_default();
                for segment in segments {
                    by_segment.entry(segment.clone()).or_default().push(node.id.clone());
                }
            }
        }
        // Only nodes taking part in distributed queries count as members.
        view.nodes = nodes.into_iter().filter(|n| view.urls.contains_key(&n.id)).collect();
        metrics::gauge!("sluice_query_cluster_nodes").set(view.nodes.len() as f64);
        *self.view.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(view);
        self.changed.notify_one();
    }

    /// Follows `/query-nodes` until `shutdown`, retrying failures.
    pub async fn follow(self: Arc<Self>, coordinator: Arc<dyn Coordinator>, mut shutdown: watch::Receiver<bool>) {
        let mut backoff = Duration::from_millis(200);
        while !*shutdown.borrow() {
            let change = match coordinator.query_nodes().await {
                Ok((nodes, change)) => {
                    backoff = Duration::from_millis(200);
                    self.set_nodes(nodes);
                    change
                }
                Err(e) => {
                    tracing::warn!(error = %e, retry_in = ?backoff, "reading the query nodes failed");
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                    futures::FutureExt::boxed(tokio::time::sleep(backoff))
                }
            };
            tokio::select! {
                _ = change => {}
                // The suspects' time runs out without a ZooKeeper event.
                _ = tokio::time::sleep(SUSPECT_FOR) => {}
                _ = shutdown.changed() => {}
            }
        }
    }
}

/// The planner's view of the workers: every live query node's Flight URL.
pub struct ClusterResolver(pub Arc<Cluster>);

impl WorkerResolver for ClusterResolver {
    fn get_urls(&self) -> Result<Vec<Url>, DataFusionError> {
        Ok(self.0.urls())
    }
}

/// Keeps this node's registration equal to the latest `info` (what it
/// serves changes it), in the background: serving never waits for it. A
/// previous incarnation's registration is waited out until its session
/// expires; other failures are retried with backoff. The coordinator
/// restores the registration after a session loss by itself. Once `info`'s
/// sender is gone (a node outside a cluster), it returns after registering.
pub async fn publish(
    coordinator: Arc<dyn Coordinator>,
    mut info: watch::Receiver<NodeInfo>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut backoff = Duration::from_millis(500);
    let mut registered = false;
    while !*shutdown.borrow() {
        let current = info.borrow_and_update().clone();
        match coordinator.register_query_node(&current).await {
            Ok(()) => {
                if !registered {
                    tracing::info!(node = %current.id, "registered as a query node");
                    registered = true;
                }
                backoff = Duration::from_millis(500);
                tokio::select! {
                    changed = info.changed() => if changed.is_err() { return },
                    changed = shutdown.changed() => if changed.is_err() { return },
                }
                continue;
            }
            Err(sluice_coordinator::CoordError::QueryNodeIdTaken { .. }) => {
                tracing::info!(node = %current.id, "waiting for the previous session of this query node id to expire");
            }
            Err(e) => {
                tracing::warn!(node = %current.id, error = %e, retry_in = ?backoff, "registering the query node");
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            changed = shutdown.changed() => if changed.is_err() { return },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A corrupt or hostile record cannot make this node plan a tail task
    /// per impossible partition (two billion of them, say).
    #[test]
    fn impossible_tail_partitions_in_a_record_are_ignored() {
        let cluster = Cluster::new("q1".into(), Url::parse("http://127.0.0.1:1").unwrap(), None);
        let node = |id: &str, tails: Vec<i32>| NodeInfo {
            id: id.into(),
            flight_addr: Some("127.0.0.1:2".into()),
            tails: [("events".to_string(), tails)].into(),
            ..NodeInfo::default()
        };
        cluster.set_nodes(vec![node("q2", vec![0, 1, -1, i32::MAX]), node("q3", vec![1])]);
        assert_eq!(cluster.tail_partitions("events"), 2);
        assert_eq!(cluster.tail_holders("events", 1).len(), 2);
    }
}
