//! Worker metrics (Prometheus, on the worker's HTTP port) and health.
//!
//! Counters and histograms go through the `metrics` facade; the worker
//! installs a Prometheus recorder and serves its rendering at `/metrics`.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

pub const RECORDS_CONSUMED: &str = "sluice_records_consumed_total";
pub const BYTES_CONSUMED: &str = "sluice_bytes_consumed_total";
pub const BAD_RECORDS: &str = "sluice_bad_records_total";
pub const SEGMENTS_SEALED: &str = "sluice_segments_sealed_total";
pub const SEGMENTS_COMMITTED: &str = "sluice_segments_committed_total";
/// Rows in committed segments: what queries can see.
pub const ROWS_COMMITTED: &str = "sluice_rows_committed_total";
pub const SEAL_SECONDS: &str = "sluice_seal_seconds";
pub const COMMIT_SECONDS: &str = "sluice_commit_seconds";
pub const CONSUMING_BYTES: &str = "sluice_consuming_segment_bytes";
pub const PARTITIONS_OWNED: &str = "sluice_partitions_owned";
pub const LAG: &str = "sluice_partition_lag";
pub const FENCED: &str = "sluice_fenced_total";
pub const COMMIT_RETRIES: &str = "sluice_commit_retries_total";

/// Installs the process-wide Prometheus recorder (once) and returns its handle.
pub fn install_recorder() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let handle = PrometheusBuilder::new()
                .set_buckets(&[0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0])
                .expect("static buckets are valid")
                .install_recorder()
                .unwrap_or_else(|_| PrometheusBuilder::new().build_recorder().handle());
            let upkeep = handle.clone();
            // Histograms are drained on render; upkeep keeps idle ones bounded.
            std::thread::spawn(move || {
                loop {
                    std::thread::sleep(Duration::from_secs(5));
                    upkeep.run_upkeep();
                }
            });
            handle
        })
        .clone()
}

/// Binds the worker's HTTP port: `/health` and `/metrics`. Returns the bound
/// address (the configured port may be 0).
pub async fn serve(listen: SocketAddr, worker: String, handle: PrometheusHandle) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    let worker = Arc::new(worker);
    let app = Router::new()
        .route(
            "/health",
            get(move || async move { axum::Json(serde_json::json!({"status": "ok", "worker": *worker})) }),
        )
        .route("/metrics", get(move || async move { handle.render() }));
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "HTTP server stopped");
        }
    });
    Ok(addr)
}
