//! The query node's HTTP API, shaped like a Pinot broker's so existing Pinot
//! clients work: `POST /query/sql`, `GET /tables`, `GET /tables/{t}/schema`,
//! plus `GET /health`, `GET /metrics` and the web console at `/`
//! ([`crate::frontends::console`]).
//!
//! Every answer to `/query/sql` is a Pinot response body, errors included
//! (an `exceptions` entry with a Pinot error code and the reason), with the
//! status of [`crate::QueryError::status`]. A query runs in its own task, so
//! even a panic deep in a library becomes a 500 rather than a dropped
//! connection. Every other error (unknown path 404, wrong method 405, body
//! too large 413, body too slow 408) is a Pinot response body too.
//!
//! Connections are served by [`sluice_http`]: header, body and idle
//! timeouts and a connection cap, from the node's `[http]` settings.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::{Value, json};
use sluice_config::HttpConfig;
use tokio::sync::watch;

use crate::engine::QueryEngine;
use crate::response::{PinotResponse, pinot_type};

#[derive(Clone)]
struct AppState {
    engine: Arc<QueryEngine>,
    metrics: Option<PrometheusHandle>,
    http: Arc<HttpConfig>,
    health: Arc<crate::catalog::NodeHealth>,
}

/// Binds `config.listen` and serves until `shutdown` turns true. Returns
/// the bound address (the configured port may be 0) and the server task.
pub async fn serve(
    config: &HttpConfig,
    engine: Arc<QueryEngine>,
    metrics: Option<PrometheusHandle>,
    health: Arc<crate::catalog::NodeHealth>,
    shutdown: watch::Receiver<bool>,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = sluice_http::bind(config).await?;
    let addr = listener.local_addr()?;
    let app = Router::new()
        .route("/", get(crate::frontends::console::index))
        .route("/console.js", get(crate::frontends::console::script))
        .route("/console.css", get(crate::frontends::console::style))
        .route("/query/sql", post(query_sql))
        .route("/tables", get(tables))
        .route("/tables/{table}/schema", get(schema))
        .route("/health", get(health_check))
        .route("/metrics", get(render_metrics))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(AppState { engine, metrics, http: Arc::new(config.clone()), health });
    Ok((addr, sluice_http::spawn(listener, app, config.clone(), shutdown)?))
}

/// Whether a request says its body is JSON (`application/json`, with
/// parameters such as `; charset=utf-8`).
fn is_json(headers: &HeaderMap) -> bool {
    let Some(value) = headers.get(axum::http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    value.split(';').next().is_some_and(|media| media.trim().eq_ignore_ascii_case("application/json"))
}

/// Corrupt segments the node refused are listed (they are not served, the
/// rest is). A tail consumer that is failing makes the node unhealthy
/// (503): its answers are no longer fresh.
async fn health_check(State(state): State<AppState>) -> Response {
    let corrupt = state.health.corrupt();
    let tails = state.health.tails();
    let consumers = state.health.tail_consumers();
    let failing = consumers.iter().any(|c| c.state != "running");
    let (status, word) = if failing { (StatusCode::SERVICE_UNAVAILABLE, "unhealthy") } else { (StatusCode::OK, "ok") };
    // What this node serves, committed segments and tail chunks alike.
    let (mut segments, mut bytes) = (0usize, 0usize);
    for table in state.engine.tables() {
        let snapshot = table.snapshot();
        segments += snapshot.len();
        bytes += snapshot.iter().map(|s| s.size_bytes()).sum::<usize>();
    }
    let body = json!({
        "status": word,
        "served": {"segments": segments, "bytes": bytes},
        "corruptSegments": corrupt,
        "tailConsumers": consumers,
        "tails": tails,
    });
    (status, axum::Json(body)).into_response()
}

async fn not_found(uri: axum::http::Uri) -> Response {
    let started = Instant::now();
    pinot(404, &PinotResponse::error(404, format!("no such endpoint: {}", uri.path()), started.elapsed()))
}

async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> Response {
    let started = Instant::now();
    let message = format!("{method} is not allowed on {}", uri.path());
    pinot(405, &PinotResponse::error(405, message, started.elapsed()))
}

fn pinot(status: u16, body: &PinotResponse) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, axum::Json(body)).into_response()
}

async fn query_sql(State(state): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    let started = Instant::now();
    // JSON only, as Pinot's clients send it: a page on another site can
    // post a form or `text/plain` without asking the browser first, never
    // `application/json`.
    if !is_json(&headers) {
        metrics::counter!("sluice_query_queries_total", "outcome" => "bad_request").increment(1);
        let message = "the request's Content-Type must be application/json".to_string();
        return pinot(415, &PinotResponse::error(415, message, started.elapsed()));
    }
    let body = match sluice_http::read_body(&headers, body, &state.http).await {
        Ok(body) => body,
        Err(e) => {
            metrics::counter!("sluice_query_queries_total", "outcome" => "bad_request").increment(1);
            let status = e.status().as_u16();
            return pinot(status, &PinotResponse::error(i32::from(status), e.to_string(), started.elapsed()));
        }
    };
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
        // A large result is megabytes of JSON: written off the threads
        // that serve other requests.
        Ok(Ok(response)) => match tokio::task::spawn_blocking(move || serde_json::to_vec(&response)).await {
            Ok(Ok(body)) => ([(axum::http::header::CONTENT_TYPE, "application/json")], body).into_response(),
            failed => {
                tracing::error!(failure = ?failed, "a query's response could not be written");
                let message = "internal error: the response could not be written; the node logged the cause";
                pinot(500, &PinotResponse::error(200, message.to_string(), started.elapsed()))
            }
        },
        Ok(Err(e)) => {
            if e.status() >= 500 {
                tracing::warn!(error = %e, "query failed");
            }
            pinot(e.status(), &PinotResponse::error(e.pinot_code(), e.to_string(), started.elapsed()))
        }
        Err(join) => {
            let e = crate::error::crashed(&join.to_string());
            pinot(e.status(), &PinotResponse::error(e.pinot_code(), e.to_string(), started.elapsed()))
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
        return sluice_http::json_error(StatusCode::NOT_FOUND, format!("unknown table `{table}`"));
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
        None => sluice_http::json_error(StatusCode::NOT_FOUND, "metrics are not enabled"),
    }
}
