//! The query node's HTTP API, shaped like a Pinot broker's so existing Pinot
//! clients work: `POST /query/sql`, `GET /tables`, `GET /tables/{t}/schema`,
//! plus `GET /health` and `GET /metrics`.
//!
//! Every answer to `/query/sql` is a Pinot response body, errors included
//! (an `exceptions` entry with a Pinot error code and the reason), with the
//! status of [`crate::QueryError::status`]. A query runs in its own task, so
//! even a panic deep in a library becomes a 500 rather than a dropped
//! connection.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::{Value, json};
use tokio::sync::watch;

use crate::engine::QueryEngine;
use crate::response::{PinotResponse, pinot_type};

#[derive(Clone)]
struct AppState {
    engine: Arc<QueryEngine>,
    metrics: Option<PrometheusHandle>,
}

/// Binds `listen` and serves until `shutdown` turns true. Returns the bound
/// address (the configured port may be 0) and the server task.
pub async fn serve(
    listen: SocketAddr,
    engine: Arc<QueryEngine>,
    metrics: Option<PrometheusHandle>,
    mut shutdown: watch::Receiver<bool>,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    let app = Router::new()
        .route("/query/sql", post(query_sql))
        .route("/tables", get(tables))
        .route("/tables/{table}/schema", get(schema))
        .route("/health", get(|| async { axum::Json(json!({"status": "ok"})) }))
        .route("/metrics", get(render_metrics))
        .with_state(AppState { engine, metrics });
    let task = tokio::spawn(async move {
        let stop = async move {
            let _ = shutdown.wait_for(|stop| *stop).await;
        };
        if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(stop).await {
            tracing::error!(error = %e, "query HTTP server stopped");
        }
    });
    Ok((addr, task))
}

fn pinot(status: u16, body: &PinotResponse) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, axum::Json(body)).into_response()
}

async fn query_sql(State(state): State<AppState>, body: Bytes) -> Response {
    let started = Instant::now();
    let sql = match serde_json::from_slice::<Value>(&body) {
        Ok(Value::Object(map)) => match map.get("sql") {
            Some(Value::String(sql)) => sql.clone(),
            _ => String::new(),
        },
        _ => String::new(),
    };
    if sql.trim().is_empty() {
        metrics::counter!("sluice_query_queries_total", "outcome" => "bad_request").increment(1);
        let message = "the request body must be a JSON object with a non-empty string field `sql`".to_string();
        return pinot(400, &PinotResponse::error(150, message, started.elapsed()));
    }
    let engine = state.engine.clone();
    match tokio::spawn(async move { engine.query(&sql).await }).await {
        Ok(Ok(response)) => pinot(200, &response),
        Ok(Err(e)) => {
            if e.status() >= 500 {
                tracing::warn!(error = %e, "query failed");
            }
            pinot(e.status(), &PinotResponse::error(e.pinot_code(), e.to_string(), started.elapsed()))
        }
        Err(join) => {
            tracing::error!(error = %join, "query task panicked");
            let message = format!("internal error: the query crashed ({join})");
            pinot(500, &PinotResponse::error(200, message, started.elapsed()))
        }
    }
}

async fn tables(State(state): State<AppState>) -> Response {
    let names: Vec<String> = state.engine.tables().iter().map(|t| t.name().to_string()).collect();
    axum::Json(json!({ "tables": names })).into_response()
}

/// Pinot's schema shape: timestamps as date-time fields, the rest as
/// dimensions (sluice has no metric/dimension distinction).
async fn schema(State(state): State<AppState>, Path(table): Path<String>) -> Response {
    let Some(t) = state.engine.table(&table) else {
        let body = json!({"code": 404, "error": format!("unknown table `{table}`")});
        return (StatusCode::NOT_FOUND, axum::Json(body)).into_response();
    };
    let schema = datafusion::datasource::TableProvider::schema(t.as_ref());
    let mut dimensions = Vec::new();
    let mut date_times = Vec::new();
    for field in schema.fields() {
        let data_type = pinot_type(field.data_type());
        if let arrow::datatypes::DataType::Timestamp(unit, _) = field.data_type() {
            let unit = match unit {
                arrow::datatypes::TimeUnit::Second => "SECONDS",
                arrow::datatypes::TimeUnit::Millisecond => "MILLISECONDS",
                arrow::datatypes::TimeUnit::Microsecond => "MICROSECONDS",
                arrow::datatypes::TimeUnit::Nanosecond => "NANOSECONDS",
            };
            date_times.push(json!({
                "name": field.name(), "dataType": data_type, "format": "TIMESTAMP", "granularity": format!("1:{unit}"),
            }));
        } else {
            dimensions.push(json!({"name": field.name(), "dataType": data_type}));
        }
    }
    axum::Json(json!({
        "schemaName": table,
        "dimensionFieldSpecs": dimensions,
        "metricFieldSpecs": [],
        "dateTimeFieldSpecs": date_times,
    }))
    .into_response()
}

async fn render_metrics(State(state): State<AppState>) -> Response {
    match &state.metrics {
        Some(handle) => handle.render().into_response(),
        None => (StatusCode::NOT_FOUND, "metrics are not enabled").into_response(),
    }
}
