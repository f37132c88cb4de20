//! Which partitions are this worker's share right now.

use crate::{Change, CoordError, Coordinator, fair_assignment};

/// This worker's fair share of `pipeline`'s `partitions` among the live
/// workers, and a watch that fires when the worker list changes. The caller
/// (the ingest supervisor) releases what is no longer in the share — after
/// committing or abandoning its consuming segment — and acquires what is
/// newly in it; a partition still locked by its previous owner is retried
/// until that owner lets go.
pub async fn assigned_partitions(
    coordinator: &dyn Coordinator,
    pipeline: &str,
    partitions: i32,
    me: &str,
) -> Result<(Vec<i32>, Change), CoordError> {
    let (workers, changed) = coordinator.workers().await?;
    let ids: Vec<String> = workers.into_iter().map(|w| w.id).collect();
    let mine = fair_assignment(pipeline, partitions, &ids).remove(me).unwrap_or_default();
    Ok((mine, changed))
}
