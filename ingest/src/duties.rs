//! Cluster-wide duties of the workers, run by the elected leader only: time-based retention
//! and collection of orphaned deep-store files.
//!
//! Retention removes the catalog entry first and the file second: a crash in
//! between leaves an orphan file, which orphan collection removes later —
//! never a catalog entry pointing at nothing. Orphan collection only touches
//! files older than a grace period, so an upload whose commit is still in
//! flight is never taken for an orphan.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sluice_config::{PipelineConfig, ProcessEnv, TimeUnit};
use sluice_storage::{DeepStore, Resolver};

use sluice_coordinator::{CoordError, Coordinator};

fn to_millis(value: i64, unit: TimeUnit) -> i64 {
    match unit {
        TimeUnit::Seconds => value.saturating_mul(1000),
        TimeUnit::Milliseconds => value,
        TimeUnit::Microseconds => value / 1000,
        TimeUnit::Nanoseconds => value / 1_000_000,
    }
}

fn millis_since_epoch(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// Deletes the segments of `table` whose newest row (time column, in `unit`)
/// is older than `retention` at `now`. Returns the deleted segment names.
pub async fn enforce_retention(
    coordinator: &dyn Coordinator,
    resolver: &Resolver,
    table: &str,
    retention: Duration,
    unit: TimeUnit,
    now: SystemTime,
) -> Result<Vec<String>, CoordError> {
    let cutoff = millis_since_epoch(now) - retention.as_millis() as i64;
    let (segments, _) = coordinator.segments(table).await?;
    let mut deleted = Vec::new();
    for segment in segments {
        let Some((_, newest)) = segment.time_range else { continue };
        if to_millis(newest, unit) >= cutoff {
            continue;
        }
        coordinator.delete_segment(table, &segment.name).await?;
        if let Err(e) = resolver.delete(&segment.uri).await {
            tracing::warn!(segment = %segment.name, error = %e, "retention: file left for orphan collection");
        }
        tracing::info!(table, segment = %segment.name, "retention: deleted");
        deleted.push(segment.name);
    }
    Ok(deleted)
}

/// Deletes objects in `table`'s deep-store directory that no catalog entry
/// points to and that are older than `grace`. Returns the removed URIs.
pub async fn collect_orphans(
    coordinator: &dyn Coordinator,
    table: &str,
    store: &DeepStore,
    grace: Duration,
    now: SystemTime,
) -> Result<Vec<String>, CoordError> {
    let unexpected = |reason: String| CoordError::Unexpected { operation: "collect orphans".into(), reason };
    let (segments, _) = coordinator.segments(table).await?;
    // By URI, not by name: a zombie's upload has a committed segment's
    // name but its own object, and is an orphan.
    let cataloged: HashSet<&str> = segments.iter().map(|s| s.uri.as_str()).collect();
    let mut removed = Vec::new();
    for object in store.list(table).await.map_err(|e| unexpected(e.to_string()))? {
        let orphan = !cataloged.contains(object.uri.as_str());
        let old_enough = now.duration_since(object.modified).is_ok_and(|age| age >= grace);
        if orphan && old_enough {
            store.delete(table, &object.name).await.map_err(|e| unexpected(e.to_string()))?;
            tracing::info!(table, uri = %object.uri, "orphan collection: deleted");
            removed.push(object.uri);
        }
    }
    Ok(removed)
}

/// How the leader runs its duties.
#[derive(Debug, Clone)]
pub struct Duties {
    pub node: String,
    pub interval: Duration,
    pub orphan_grace: Duration,
    /// Deep store of pipelines that name none (`<data_dir>/deep-store`).
    pub default_deep_store: DeepStore,
    /// Reaches the pipelines' deep stores with the node's options.
    pub resolver: Resolver,
    /// Pipelines this node runs from files, in addition to those applied to
    /// the coordinator.
    pub local_pipelines: Vec<PipelineConfig>,
}

impl Duties {
    /// One pass over every known pipeline.
    pub async fn run_once(&self, coordinator: &dyn Coordinator, now: SystemTime) -> Result<(), CoordError> {
        let (applied, _) = coordinator.pipelines().await?;
        let mut pipelines = self.local_pipelines.clone();
        for (name, text) in applied {
            match sluice_config::parse_pipeline(&text, std::path::Path::new(&name), &ProcessEnv) {
                Ok(p) if !pipelines.iter().any(|l| l.table == p.table) => pipelines.push(p),
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(pipeline = %name, error = %e, "duties: skipping a pipeline that does not validate here")
                }
            }
        }
        for pipeline in &pipelines {
            if let Some(retention) = pipeline.retention {
                let unit =
                    pipeline.schema.column(&pipeline.schema.time_column).map(|c| c.time_unit()).unwrap_or_default();
                enforce_retention(coordinator, &self.resolver, &pipeline.table, retention, unit, now).await?;
            }
            let store = match &pipeline.deep_store.uri {
                Some(uri) => self.resolver.deep_store(uri).map_err(|e| CoordError::Unexpected {
                    operation: "collect orphans".into(),
                    reason: e.to_string(),
                })?,
                None => self.default_deep_store.clone(),
            };
            collect_orphans(coordinator, &pipeline.table, &store, self.orphan_grace, now).await?;
        }
        Ok(())
    }

    /// Campaigns for leadership and, while leader, runs the duties every
    /// `interval`; after losing leadership, campaigns again. Runs until the
    /// task is dropped.
    pub async fn run(self, coordinator: Arc<dyn Coordinator>) {
        loop {
            let mut leadership = match coordinator.campaign(&self.node).await {
                Ok(leadership) => leadership,
                Err(e) => {
                    tracing::warn!(error = %e, "campaign for leadership failed; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            tracing::info!(node = %self.node, "leader: running cluster duties");
            loop {
                if let Err(e) = self.run_once(coordinator.as_ref(), SystemTime::now()).await {
                    tracing::warn!(error = %e, "cluster duties failed; retrying next round");
                }
                tokio::select! {
                    _ = leadership.lost() => break,
                    _ = tokio::time::sleep(self.interval) => {}
                }
            }
            tracing::warn!(node = %self.node, "leadership lost");
        }
    }
}
