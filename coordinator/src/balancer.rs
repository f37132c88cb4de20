//! Keeps one worker's share of one pipeline's partitions.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use crate::{CoordError, Coordinator, Lease, fair_assignment};

/// What one balancing round did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Rebalance {
    pub acquired: Vec<i32>,
    pub released: Vec<i32>,
    /// Partitions that are this worker's but still locked by their previous
    /// owner (it releases them once it has handed them over).
    pub waiting: Vec<i32>,
}

impl Rebalance {
    pub fn converged(&self) -> bool {
        self.waiting.is_empty()
    }
}

/// One round: computes the fair assignment over the live workers, hands over
/// (via `handover`, which must commit or abandon the partition's consuming
/// segment) and releases what is no longer this worker's, and acquires what
/// newly is. `held` is updated in place.
pub async fn rebalance<F, Fut>(
    coordinator: &dyn Coordinator,
    pipeline: &str,
    partitions: i32,
    me: &str,
    held: &mut BTreeMap<i32, Lease>,
    mut handover: F,
) -> Result<Rebalance, CoordError>
where
    F: FnMut(i32) -> Fut,
    Fut: Future<Output = ()>,
{
    let (workers, _) = coordinator.workers().await?;
    let ids: Vec<String> = workers.into_iter().map(|w| w.id).collect();
    let mine: Vec<i32> = fair_assignment(pipeline, partitions, &ids).remove(me).unwrap_or_default();
    let mut round = Rebalance::default();
    let surplus: Vec<i32> = held.keys().copied().filter(|p| !mine.contains(p)).collect();
    for partition in surplus {
        handover(partition).await;
        if let Some(lease) = held.remove(&partition) {
            coordinator.release(lease).await?;
        }
        round.released.push(partition);
    }
    for partition in mine {
        if held.contains_key(&partition) {
            continue;
        }
        match coordinator.acquire(pipeline, partition, me).await? {
            Some(lease) => {
                held.insert(partition, lease);
                round.acquired.push(partition);
            }
            None => round.waiting.push(partition),
        }
    }
    Ok(round)
}

/// Runs [`rebalance`] whenever the worker list changes, and every `retry`
/// while partitions are still waiting for their previous owner. Returns only
/// on a coordination error; the caller decides whether to restart it.
pub async fn keep_balanced<F, Fut>(
    coordinator: &dyn Coordinator,
    pipeline: &str,
    partitions: i32,
    me: &str,
    held: &tokio::sync::Mutex<BTreeMap<i32, Lease>>,
    retry: Duration,
    mut handover: F,
) -> Result<(), CoordError>
where
    F: FnMut(i32) -> Fut,
    Fut: Future<Output = ()>,
{
    loop {
        let (_, changed) = coordinator.workers().await?;
        let round = {
            let mut held = held.lock().await;
            // Leases fenced or lost with a session are dropped first.
            let mut dead = Vec::new();
            for (partition, lease) in held.iter() {
                if !coordinator.still_owner(lease).await? {
                    dead.push(*partition);
                }
            }
            for partition in dead {
                held.remove(&partition);
            }
            rebalance(coordinator, pipeline, partitions, me, &mut held, &mut handover).await?
        };
        if round.converged() {
            changed.await;
        } else {
            let _ = tokio::time::timeout(retry, changed).await;
        }
    }
}
