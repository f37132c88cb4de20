//! One partition owned under its lease: consumed until stopped, fenced or
//! failed, a panic turned into a failure, the lease released in every case.

use std::sync::Arc;

use futures::FutureExt;
use sluice_coordinator::Lease;
use tokio::sync::watch;

use super::consume::consume_partition;
use super::context::PipelineContext;
use super::exit::{Exit, FailReason};

/// Ingests one partition under `lease` until `stop` turns true (then commits
/// what was consumed), the lease is fenced or ingestion fails. The lease is
/// released in every case.
pub async fn ingest_partition(ctx: Arc<PipelineContext>, lease: Lease, stop: watch::Receiver<bool>) -> Exit {
    let coordinator = ctx.coordinator.clone();
    let (table, partition) = (ctx.config.table.clone(), lease.partition);
    let mut held = Some(lease);
    // A panic (a bug) fails the partition like any failure: the lease is
    // still released and the worker retries.
    let exit = match std::panic::AssertUnwindSafe(consume_partition(ctx, &mut held, stop)).catch_unwind().await {
        Ok(exit) => exit,
        Err(panic) => {
            let detail = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".to_string());
            Exit::failed(FailReason::Panic, detail)
        }
    };
    // Released on every exit, not only on a stop: a partition whose task
    // ended with its lock still held could not be acquired again until the
    // session ended (in-process: never).
    if let Some(lease) = held.take()
        && let Err(e) = coordinator.release(lease).await
    {
        tracing::warn!(%table, partition, error = %e, "releasing the lease failed; it ends with the session");
    }
    exit
}
