//! sluice's HTTP serving: every endpoint of a node (a query node's SQL API, a
//! worker's `/health` and `/metrics`) is an axum `Router` served by
//! [`spawn`], which bounds what a client can hold of the node.
//!
//! Invariants:
//! - A connection must deliver each request's header within
//!   `header_read_timeout` and may sit without a request in progress for at
//!   most `idle_timeout`; after that it is closed. Neither a slow client
//!   nor a crowd of half-open connections can pin the node's sockets.
//! - At most `max_connections` connections are served at once. At the cap a
//!   new connection closes the oldest *idle* one (no request in progress), so
//!   idle connections can never lock out a client that sends a request; when
//!   every connection is busy, the new one waits in the listen backlog.
//! - Running out of file descriptors while accepting is logged and retried,
//!   never fatal to the listener.
//! - Request bodies are read by [`read_body`], under a size cap checked
//!   against `Content-Length` before anything is read and a read deadline.
//! - With `http.auth`, no request reaches a router without credentials,
//!   except `/health` (and `/metrics` unless protected): a 401 with a
//!   challenge is answered here, before any handler runs.
//! - With `http.tls`, a connection that does not complete its TLS handshake
//!   within `header_read_timeout` is closed; nothing is served in clear.
//! - An address that keeps sending wrong credentials waits before they are
//!   checked again ([`LoginThrottle`]): 429 with `Retry-After`.
//! - A request from another site's page, or naming a host the node does not
//!   answer for on loopback, is refused before the router runs
//!   ([`origin`]).

mod auth;
mod origin;
mod recorder;
mod throttle;
mod tls;

pub use auth::constant_time_eq;
pub use recorder::install_recorder;
pub use throttle::{LoginThrottle, refusal as login_refusal};

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, Request, StatusCode, header};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use sluice_config::HttpConfig;
use tokio::net::TcpListener;
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;
use tower_service::Service;

/// Binds the configured address (port 0 picks a free one).
pub async fn bind(config: &HttpConfig) -> std::io::Result<TcpListener> {
    TcpListener::bind(config.listen).await
}

/// Serves `app` on `listener` under `config`'s limits until `shutdown`
/// turns true; connections then finish their request in progress.
/// Fails when the TLS certificate or key cannot be used (the error names
/// the file).
pub fn spawn(
    listener: TcpListener,
    app: Router,
    config: HttpConfig,
    shutdown: watch::Receiver<bool>,
) -> std::io::Result<JoinHandle<()>> {
    let tls = config.tls.as_ref().map(tls::acceptor).transpose()?;
    let credentials = config.auth.as_ref().map(auth::Credentials::new);
    let origins = origin::Origins::new(&config);
    let guards = Guards { tls, credentials, origins, throttle: LoginThrottle::new() };
    Ok(tokio::spawn(accept_loop(listener, app, config, guards, shutdown)))
}

/// What a connection passes before its requests reach the router.
#[derive(Clone)]
struct Guards {
    tls: Option<tokio_rustls::TlsAcceptor>,
    credentials: Option<auth::Credentials>,
    origins: origin::Origins,
    throttle: LoginThrottle,
}

/// One served connection, as the accept loop sees it.
struct Conn {
    /// Requests in progress on the connection.
    busy: AtomicUsize,
    /// Set when the connection was chosen to make room; it no longer counts.
    closing: AtomicBool,
    close: Notify,
    /// Milliseconds since the registry's epoch when the connection last
    /// finished a request (or opened).
    last_active_ms: AtomicU64,
}

#[derive(Default)]
struct Registry {
    conns: Mutex<BTreeMap<u64, Arc<Conn>>>,
    gone: Notify,
}

impl Registry {
    fn open(&self) -> usize {
        let conns = self.conns.lock().unwrap_or_else(|e| e.into_inner());
        conns.values().filter(|c| !c.closing.load(Ordering::Relaxed)).count()
    }

    /// Asks the oldest connection without a request in progress to close.
    fn evict_oldest_idle(&self) -> bool {
        let conns = self.conns.lock().unwrap_or_else(|e| e.into_inner());
        let victim = conns
            .values()
            .filter(|c| !c.closing.load(Ordering::Relaxed) && c.busy.load(Ordering::Relaxed) == 0)
            .min_by_key(|c| c.last_active_ms.load(Ordering::Relaxed));
        match victim {
            Some(conn) => {
                conn.closing.store(true, Ordering::Relaxed);
                conn.close.notify_one();
                true
            }
            None => false,
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    app: Router,
    config: HttpConfig,
    guards: Guards,
    mut shutdown: watch::Receiver<bool>,
) {
    let registry = Arc::new(Registry::default());
    let epoch = Instant::now();
    let max = config.max_connections.max(1) as usize;
    let mut next_id = 0u64;
    loop {
        // Make room before accepting: close the oldest idle connection, or
        // wait until one ends when all are busy.
        while registry.open() >= max {
            if registry.evict_oldest_idle() {
                metrics::counter!("sluice_http_connections_evicted_total").increment(1);
                break;
            }
            let gone = registry.gone.notified();
            tokio::select! {
                _ = gone => {}
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                _ = shutdown.wait_for(|stop| *stop) => return,
            }
        }
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.wait_for(|stop| *stop) => return,
        };
        let (stream, peer) = match accepted {
            Ok((stream, peer)) => (stream, peer.ip()),
            Err(e) => {
                // EMFILE and friends: the listener stays; connections that
                // end free descriptors.
                metrics::counter!("sluice_http_accept_errors_total").increment(1);
                tracing::warn!(error = %e, "accepting a connection failed; retrying");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        next_id += 1;
        let conn = Arc::new(Conn {
            busy: AtomicUsize::new(0),
            closing: AtomicBool::new(false),
            close: Notify::new(),
            last_active_ms: AtomicU64::new(epoch.elapsed().as_millis() as u64),
        });
        registry.conns.lock().unwrap_or_else(|e| e.into_inner()).insert(next_id, conn.clone());
        metrics::gauge!("sluice_http_connections").increment(1.0);
        let (registry, app, config, shutdown, id, guards) =
            (registry.clone(), app.clone(), config.clone(), shutdown.clone(), next_id, guards.clone());
        tokio::spawn(async move {
            let client = Client { peer, conn, epoch };
            match &guards.tls {
                None => serve_connection(stream, app, &config, guards.clone(), client, shutdown).await,
                Some(acceptor) => match tokio::time::timeout(config.header_read_timeout, acceptor.accept(stream)).await
                {
                    Ok(Ok(tls)) => serve_connection(tls, app, &config, guards.clone(), client, shutdown).await,
                    Ok(Err(e)) => {
                        metrics::counter!("sluice_http_tls_handshake_failures_total").increment(1);
                        tracing::debug!(error = %e, "TLS handshake failed");
                    }
                    Err(_) => {
                        metrics::counter!("sluice_http_tls_handshake_failures_total").increment(1);
                    }
                },
            }
            registry.conns.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
            registry.gone.notify_waiters();
            metrics::gauge!("sluice_http_connections").decrement(1.0);
        });
    }
}

/// Who is on the other end of a connection.
struct Client {
    peer: std::net::IpAddr,
    conn: Arc<Conn>,
    epoch: Instant,
}

/// What happens to a request before the router: the checks of
/// [`origin`], then credentials under the login backoff.
fn admit(guards: &Guards, peer: std::net::IpAddr, request: &Request<Incoming>) -> Option<axum::response::Response> {
    if let Some(reason) = guards.origins.refuse(request.method(), request.headers()) {
        return Some(auth::refusal(StatusCode::FORBIDDEN, &reason, None));
    }
    let credentials = guards.credentials.as_ref()?;
    let path = request.uri().path();
    if credentials.is_open(path) {
        return None;
    }
    if let Some(wait) = guards.throttle.blocked(peer) {
        return Some(auth::refusal(StatusCode::TOO_MANY_REQUESTS, &throttle::refusal(wait), Some(wait)));
    }
    if credentials.allows(path, request.headers()) {
        guards.throttle.succeeded(peer);
        return None;
    }
    // A request without credentials is no guess; a wrong one is.
    if request.headers().contains_key(header::AUTHORIZATION) {
        guards.throttle.failed(peer);
    }
    metrics::counter!("sluice_http_unauthorized_total").increment(1);
    Some(auth::unauthorized())
}

async fn serve_connection<S>(
    stream: S,
    app: Router,
    config: &HttpConfig,
    guards: Guards,
    client: Client,
    mut shutdown: watch::Receiver<bool>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let Client { peer, conn, epoch } = client;
    let tracked = conn.clone();
    let service = hyper::service::service_fn(move |request: Request<Incoming>| {
        let mut app = app.clone();
        let conn = tracked.clone();
        conn.busy.fetch_add(1, Ordering::Relaxed);
        let refused = admit(&guards, peer, &request);
        async move {
            let response = match refused {
                None => app.call(request.map(Body::new)).await.unwrap_or_else(|never| match never {}),
                Some(refusal) => refusal,
            };
            conn.last_active_ms.store(epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
            conn.busy.fetch_sub(1, Ordering::Relaxed);
            Ok::<_, Infallible>(response)
        }
    });
    let http = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(config.header_read_timeout)
        .serve_connection(TokioIo::new(stream), service);
    tokio::pin!(http);
    let idle_limit = config.idle_timeout.as_millis() as u64;
    let check = (config.idle_timeout / 4).clamp(Duration::from_millis(50), Duration::from_secs(5));
    let mut draining = false;
    loop {
        tokio::select! {
            result = http.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(error = %e, "HTTP connection ended with an error");
                }
                return;
            }
            _ = conn.close.notified() => return,
            _ = shutdown.wait_for(|stop| *stop), if !draining => {
                draining = true;
                http.as_mut().graceful_shutdown();
            }
            _ = tokio::time::sleep(check) => {
                let idle_for = (epoch.elapsed().as_millis() as u64)
                    .saturating_sub(conn.last_active_ms.load(Ordering::Relaxed));
                if conn.busy.load(Ordering::Relaxed) == 0 && idle_for >= idle_limit {
                    return;
                }
            }
        }
    }
}

/// Why [`read_body`] gave up.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BodyError {
    #[error("the request body is larger than {limit} bytes")]
    TooLarge { limit: u64 },
    #[error("the request body did not arrive within {timeout:?}")]
    Timeout { timeout: Duration },
    #[error("reading the request body failed: {message}")]
    Read { message: String },
}

impl BodyError {
    pub fn status(&self) -> StatusCode {
        match self {
            BodyError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            BodyError::Timeout { .. } => StatusCode::REQUEST_TIMEOUT,
            BodyError::Read { .. } => StatusCode::BAD_REQUEST,
        }
    }
}

/// Reads a whole request body of at most `config.max_body_size` bytes
/// within `config.body_read_timeout`. A `Content-Length` above the cap is
/// refused before a byte is read.
pub async fn read_body(headers: &HeaderMap, body: Body, config: &HttpConfig) -> Result<Bytes, BodyError> {
    let limit = config.max_body_size.as_u64();
    let declared = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(BodyError::TooLarge { limit });
    }
    let timeout = config.body_read_timeout;
    match tokio::time::timeout(timeout, axum::body::to_bytes(body, limit as usize)).await {
        Ok(Ok(bytes)) => Ok(bytes),
        Ok(Err(e)) => {
            let length_limit = std::error::Error::source(&e)
                .is_some_and(|s| s.downcast_ref::<http_body_util::LengthLimitError>().is_some());
            if length_limit {
                Err(BodyError::TooLarge { limit })
            } else {
                Err(BodyError::Read { message: e.to_string() })
            }
        }
        Err(_) => Err(BodyError::Timeout { timeout }),
    }
}

/// The JSON error body of sluice's non-query endpoints.
pub fn json_error(status: StatusCode, message: impl Into<String>) -> axum::response::Response {
    use axum::response::IntoResponse;
    let body = serde_json::json!({"code": status.as_u16(), "error": message.into()});
    (status, axum::Json(body)).into_response()
}
