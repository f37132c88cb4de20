//! A minimal schema registry speaking the part of Confluent's REST API that
//! producers and sluice use: register a schema under a subject (`POST
//! /subjects/{subject}/versions`, the same schema gets the same id), look
//! one up (`POST /subjects/{subject}`), the latest version, and fetch a
//! schema by id (`GET /schemas/ids/{id}`, `404` with error code 40403 when
//! unknown).
//!
//! Confluent's registry is a JVM service that stores schemas in Kafka; none
//! installs here, so this stands in for it, over real HTTP on loopback, for
//! independent clients (confluent-kafka's `SchemaRegistryClient`) and for
//! sluice alike. It does no compatibility checks and keeps schemas in
//! memory. [`SchemaRegistry::set_down`] makes it answer `503` to everything,
//! as a registry in an outage does.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};

#[derive(Default)]
struct Registry {
    /// Schema text and type by id (ids from 1).
    schemas: Vec<(String, String)>,
    /// Each subject's versions: schema ids, oldest first.
    subjects: BTreeMap<String, Vec<u32>>,
}

#[derive(Clone, Default)]
struct Shared {
    registry: Arc<Mutex<Registry>>,
    down: Arc<AtomicBool>,
    requests: Arc<AtomicU64>,
    /// The `Authorization` header every request must carry, when set.
    authorization: Arc<Mutex<Option<String>>>,
}

/// The registry, served until dropped.
pub struct SchemaRegistry {
    addr: SocketAddr,
    shared: Shared,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl SchemaRegistry {
    /// Serves on a fresh loopback port, on a thread of its own (as a
    /// separate service would run).
    pub fn start() -> anyhow::Result<Self> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let shared = Shared::default();
        let app = Router::new()
            .route("/schemas/ids/{id}", get(schema_by_id))
            .route("/subjects", get(subjects))
            .route("/subjects/{subject}", post(lookup))
            .route("/subjects/{subject}/versions", post(register))
            .route("/subjects/{subject}/versions/latest", get(latest))
            .with_state(shared.clone());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new().name("schema-registry".into()).spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("a listener");
                let _ = axum::serve(listener, app)
                    .with_graceful_shutdown(async move {
                        let _ = stopped.await;
                    })
                    .await;
            });
        })?;
        Ok(Self { addr, shared, stop: Some(stop), thread: Some(thread) })
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// While down, every request is answered `503`.
    pub fn set_down(&self, down: bool) {
        self.shared.down.store(down, Ordering::SeqCst);
    }

    /// From now on, every request must carry these basic credentials
    /// (`401` otherwise), as a managed registry's API keys are.
    pub fn require_basic_auth(&self, user: &str, password: &str) {
        use base64::Engine;
        let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        *self.shared.authorization.lock().unwrap() = Some(format!("Basic {token}"));
    }

    /// Requests served so far (including refused ones).
    pub fn requests(&self) -> u64 {
        self.shared.requests.load(Ordering::SeqCst)
    }

    /// Registers `schema` (Avro JSON) under `subject`; its id.
    pub fn register(&self, subject: &str, schema: &str) -> u32 {
        self.shared.registry.lock().unwrap().register(subject, schema, "AVRO")
    }
}

impl Drop for SchemaRegistry {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Registry {
    fn register(&mut self, subject: &str, schema: &str, ty: &str) -> u32 {
        let id = match self.schemas.iter().position(|(s, t)| s == schema && t == ty) {
            Some(i) => i as u32 + 1,
            None => {
                self.schemas.push((schema.to_string(), ty.to_string()));
                self.schemas.len() as u32
            }
        };
        let versions = self.subjects.entry(subject.to_string()).or_default();
        if !versions.contains(&id) {
            versions.push(id);
        }
        id
    }

    fn version(&self, subject: &str, id: u32) -> Value {
        let versions = &self.subjects[subject];
        let version = versions.iter().position(|v| *v == id).map_or(0, |i| i + 1);
        let (schema, ty) = &self.schemas[id as usize - 1];
        json!({"subject": subject, "version": version, "id": id, "schema": schema, "schemaType": ty})
    }
}

fn answer(status: StatusCode, body: Value) -> Response {
    (status, [("content-type", "application/vnd.schemaregistry.v1+json")], body.to_string()).into_response()
}

fn not_found(code: u32, message: String) -> Response {
    answer(StatusCode::NOT_FOUND, json!({"error_code": code, "message": message}))
}

/// The outage switch, the credentials and the request count, before any
/// route.
fn admit(shared: &Shared, headers: &HeaderMap) -> Option<Response> {
    shared.requests.fetch_add(1, Ordering::SeqCst);
    if shared.down.load(Ordering::SeqCst) {
        return Some(answer(
            StatusCode::SERVICE_UNAVAILABLE,
            json!({"error_code": 50003, "message": "the registry is down"}),
        ));
    }
    let required = shared.authorization.lock().unwrap().clone()?;
    let given = headers.get("authorization").and_then(|v| v.to_str().ok());
    (given != Some(required.as_str()))
        .then(|| answer(StatusCode::UNAUTHORIZED, json!({"error_code": 401, "message": "Unauthorized"})))
}

/// The schema text and type of a registration or lookup body, once the
/// request is admitted.
fn admitted_body(shared: &Shared, headers: &HeaderMap, body: &str) -> Result<(String, String), Box<Response>> {
    if let Some(refused) = admit(shared, headers) {
        return Err(Box::new(refused));
    }
    parse_body(body)
}

/// The schema text and type of a registration or lookup body.
fn parse_body(body: &str) -> Result<(String, String), Box<Response>> {
    let unprocessable = |message: String| {
        Box::new(answer(StatusCode::UNPROCESSABLE_ENTITY, json!({"error_code": 42201, "message": message})))
    };
    let value: Value = serde_json::from_str(body).map_err(|e| unprocessable(e.to_string()))?;
    let schema = value["schema"].as_str().ok_or_else(|| unprocessable("no `schema`".into()))?;
    Ok((schema.to_string(), value["schemaType"].as_str().unwrap_or("AVRO").to_string()))
}

async fn schema_by_id(State(shared): State<Shared>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    if let Some(refused) = admit(&shared, &headers) {
        return refused;
    }
    let registry = shared.registry.lock().unwrap();
    let found = id.parse::<usize>().ok().and_then(|id| id.checked_sub(1)).and_then(|i| registry.schemas.get(i));
    match found {
        Some((schema, ty)) if ty == "AVRO" => answer(StatusCode::OK, json!({"schema": schema})),
        Some((schema, ty)) => answer(StatusCode::OK, json!({"schema": schema, "schemaType": ty})),
        None => not_found(40403, format!("Schema {id} not found")),
    }
}

async fn subjects(State(shared): State<Shared>, headers: HeaderMap) -> Response {
    if let Some(refused) = admit(&shared, &headers) {
        return refused;
    }
    let registry = shared.registry.lock().unwrap();
    answer(StatusCode::OK, json!(registry.subjects.keys().collect::<Vec<_>>()))
}

async fn register(
    State(shared): State<Shared>,
    headers: HeaderMap,
    Path(subject): Path<String>,
    body: String,
) -> Response {
    match admitted_body(&shared, &headers, &body) {
        Ok((schema, ty)) => {
            let id = shared.registry.lock().unwrap().register(&subject, &schema, &ty);
            answer(StatusCode::OK, json!({"id": id}))
        }
        Err(refused) => *refused,
    }
}

async fn lookup(
    State(shared): State<Shared>,
    headers: HeaderMap,
    Path(subject): Path<String>,
    body: String,
) -> Response {
    let (schema, ty) = match admitted_body(&shared, &headers, &body) {
        Ok(parsed) => parsed,
        Err(refused) => return *refused,
    };
    let registry = shared.registry.lock().unwrap();
    let Some(versions) = registry.subjects.get(&subject) else {
        return not_found(40401, format!("Subject '{subject}' not found."));
    };
    let found = versions.iter().find(|&&id| registry.schemas[id as usize - 1] == (schema.clone(), ty.clone()));
    match found {
        Some(&id) => answer(StatusCode::OK, registry.version(&subject, id)),
        None => not_found(40403, "Schema not found".into()),
    }
}

async fn latest(State(shared): State<Shared>, headers: HeaderMap, Path(subject): Path<String>) -> Response {
    if let Some(refused) = admit(&shared, &headers) {
        return refused;
    }
    let registry = shared.registry.lock().unwrap();
    match registry.subjects.get(&subject).and_then(|v| v.last()) {
        Some(&id) => answer(StatusCode::OK, registry.version(&subject, id)),
        None => not_found(40401, format!("Subject '{subject}' not found.")),
    }
}
