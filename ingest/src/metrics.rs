//! Worker metrics (Prometheus, on the worker's HTTP port) and health.
//!
//! Counters and histograms go through the `metrics` facade; the worker
//! installs a Prometheus recorder and serves its rendering at `/metrics`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::http::StatusCode;
use axum::routing::get;
use sluice_config::HttpConfig;

use crate::health::PartitionHealth;
use metrics_exporter_prometheus::PrometheusHandle;

pub const RECORDS_CONSUMED: &str = "sluice_records_consumed_total";
pub const BYTES_CONSUMED: &str = "sluice_bytes_consumed_total";
pub const BAD_RECORDS: &str = "sluice_bad_records_total";
pub const SEGMENTS_SEALED: &str = "sluice_segments_sealed_total";
pub const SEGMENTS_COMMITTED: &str = "sluice_segments_committed_total";
/// Rows in committed segments: what queries can see.
pub const ROWS_COMMITTED: &str = "sluice_rows_committed_total";
pub const SEAL_SECONDS: &str = "sluice_seal_seconds";
/// Time to write a sealed segment to the deep store, retries included.
pub const UPLOAD_SECONDS: &str = "sluice_upload_seconds";
pub const COMMIT_SECONDS: &str = "sluice_commit_seconds";
/// Committed checkpoints the consumer group did not take (advisory).
pub const OFFSET_MIRROR_FAILURES: &str = "sluice_offset_mirror_failures_total";
pub const CONSUMING_BYTES: &str = "sluice_consuming_segment_bytes";
pub const PARTITIONS_OWNED: &str = "sluice_partitions_owned";
pub const LAG: &str = "sluice_partition_lag";
pub const FENCED: &str = "sluice_fenced_total";
pub const COMMIT_RETRIES: &str = "sluice_commit_retries_total";
/// Jumps over offsets Kafka did not deliver, and the offsets jumped over.
pub const OFFSET_GAPS: &str = "sluice_offset_gaps_total";
pub const OFFSET_GAP_RECORDS: &str = "sluice_offset_gap_records_total";
/// Schema registry requests that got no answer (Avro in Confluent's wire
/// format); the record waits for the schema, it is never skipped.
pub const SCHEMA_REGISTRY_ERRORS: &str = "sluice_schema_registry_errors_total";
/// Partition tasks that ended other than by a stop, by `reason`.
pub const PARTITION_FAILURES: &str = "sluice_partition_failures_total";
/// Partitions assigned to this worker that stayed locked by another
/// session for longer than a session timeout should take to free them.
pub const PARTITION_LOCK_WAITS: &str = "sluice_partition_lock_waits_total";
/// Coordinator reads the worker gave up waiting for, by `operation`.
pub const COORDINATION_TIMEOUTS: &str = "sluice_worker_coordination_timeouts_total";
/// Partitions without progress while they have work (see `health`).
pub const PARTITIONS_STALLED: &str = "sluice_partitions_stalled";
/// Pipelines that cannot run: not started, or their source unreadable.
pub const PIPELINES_FAILING: &str = "sluice_pipelines_failing";

/// Binds the worker's HTTP port: `/health` (503 with the stalled
/// partitions and failing pipelines while there are any, see
/// [`crate::health`]) and
/// `/metrics`. Returns the bound address (the configured port may be 0).
pub async fn serve(
    config: &HttpConfig,
    worker: String,
    handle: PrometheusHandle,
    health: Arc<PartitionHealth>,
    stall_timeout: Duration,
) -> std::io::Result<SocketAddr> {
    let listener = sluice_http::bind(config).await?;
    let addr = listener.local_addr()?;
    let worker = Arc::new(worker);
    let app = Router::new()
        .route(
            "/health",
            get(move || async move {
                let stalled = health.stalled(stall_timeout);
                let failing = health.failing_pipelines(stall_timeout);
                let healthy = stalled.is_empty() && failing.is_empty();
                let status = if healthy { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
                let body = serde_json::json!({
                    "status": if healthy { "ok" } else { "unhealthy" },
                    "worker": *worker,
                    "stalled": stalled,
                    "failingPipelines": failing,
                });
                (status, axum::Json(body))
            }),
        )
        .route("/metrics", get(move || async move { handle.render() }))
        .fallback(|uri: axum::http::Uri| async move {
            sluice_http::json_error(StatusCode::NOT_FOUND, format!("no such endpoint: {}", uri.path()))
        })
        .method_not_allowed_fallback(|| async {
            sluice_http::json_error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
        });
    // The server lives as long as the process: a worker's shutdown ends
    // with the process.
    let (sender, never) = tokio::sync::watch::channel(false);
    std::mem::forget(sender);
    sluice_http::spawn(listener, app, config.clone(), never)?;
    Ok(addr)
}
