//! The relay in front of `pgwire`: what a client may hold of the node
//! before and after it logs in.
//!
//! `pgwire` buffers a message whole (up to 1 GiB) and keeps a connection's
//! prepared statements and portals until they are closed, and it has no
//! startup deadline of its own. So each connection is relayed through a
//! socket pair, and the relay enforces:
//!
//! - **Message size.** Every message's length is checked against the
//!   statement limit (plus room for parameters) before a byte of it is
//!   passed on; a larger one closes the connection.
//! - **Startup.** From accept to its first `ReadyForQuery` (startup message
//!   and login) a connection has `pgwire.startup_timeout`; then it is closed
//!   (SQLSTATE 08P01). Connections in their startup are counted apart
//!   ([`Startups`], `pgwire.max_startups`): at the cap the oldest of them is
//!   closed to admit the new one, so stalled startups cannot lock a client
//!   out or hold descriptors for long. Only a logged-in connection takes one
//!   of `pgwire.max_connections` (SQLSTATE 53300 beyond).
//! - **Failed logins.** An address that keeps failing waits
//!   ([`sluice_http::LoginThrottle`]): its startups are refused (SQLSTATE
//!   28000) until its backoff ends.
//! - **Prepared statements and portals.** A connection may hold at most
//!   `pgwire.max_prepared_statements` named statements, as many portals,
//!   and `pgwire.max_prepared_bytes` of both (SQLSTATE 54000 beyond, and the
//!   connection is closed): tracked from the client's `Parse`, `Bind` and
//!   `Close` messages exactly as `pgwire` stores them.
//!
//! SSL and GSSAPI requests are declined here (`N`, as by a server without
//! them).

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sluice_config::PgWireConfig;
use sluice_http::LoginThrottle;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{Semaphore, oneshot};
use tokio::time::Instant;

/// What the relay of every connection shares.
pub(super) struct Admission {
    startups: Arc<Startups>,
    sessions: Arc<Semaphore>,
    throttle: LoginThrottle,
    max_message: usize,
    startup_timeout: Duration,
    max_prepared: usize,
    max_prepared_bytes: usize,
}

impl Admission {
    pub(super) fn new(config: &PgWireConfig, max_message: usize) -> Self {
        Admission {
            startups: Arc::new(Startups {
                max: config.max_startups.max(1) as usize,
                waiting: Mutex::default(),
                next: AtomicU64::new(0),
            }),
            sessions: Arc::new(Semaphore::new(config.max_connections.max(1) as usize)),
            throttle: LoginThrottle::new(),
            max_message,
            startup_timeout: config.startup_timeout,
            max_prepared: config.max_prepared_statements as usize,
            max_prepared_bytes: config.max_prepared_bytes.as_u64() as usize,
        }
    }

    /// Registers a connection's startup, closing the oldest one at the cap.
    pub(super) fn admit(&self) -> Startup {
        self.startups.admit()
    }
}

/// Connections in their startup, oldest first.
struct Startups {
    max: usize,
    waiting: Mutex<VecDeque<(u64, oneshot::Sender<()>)>>,
    next: AtomicU64,
}

impl Startups {
    fn admit(self: &Arc<Self>) -> Startup {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        let mut waiting = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
        while waiting.len() >= self.max {
            let Some((_, oldest)) = waiting.pop_front() else { break };
            metrics::counter!("sluice_query_pgwire_startups_evicted_total").increment(1);
            let _ = oldest.send(());
        }
        waiting.push_back((id, tx));
        metrics::gauge!("sluice_query_pgwire_startups").set(waiting.len() as f64);
        Startup { id, evicted: rx, startups: self.clone() }
    }
}

/// One connection's place among the startups; leaves when dropped.
pub(super) struct Startup {
    id: u64,
    evicted: oneshot::Receiver<()>,
    startups: Arc<Startups>,
}

impl Drop for Startup {
    fn drop(&mut self) {
        let mut waiting = self.startups.waiting.lock().unwrap_or_else(|e| e.into_inner());
        waiting.retain(|(id, _)| *id != self.id);
        metrics::gauge!("sluice_query_pgwire_startups").set(waiting.len() as f64);
    }
}

/// Why a connection ended early, with what the client is told.
#[derive(Debug)]
enum Ending {
    /// The client or the server closed the connection.
    Closed,
    Io(std::io::Error),
    /// A limit was reached: the client gets a FATAL error with `code`.
    Refused {
        code: &'static str,
        message: String,
    },
}

impl From<std::io::Error> for Ending {
    fn from(e: std::io::Error) -> Self {
        if e.kind() == std::io::ErrorKind::UnexpectedEof { Ending::Closed } else { Ending::Io(e) }
    }
}

fn refused(code: &'static str, message: impl Into<String>) -> Ending {
    Ending::Refused { code, message: message.into() }
}

/// Relays `client` (from `peer`) through a socket pair whose other end is
/// returned for `pgwire`, under the limits of `admission`.
pub(super) fn relay(
    client: tokio::net::TcpStream,
    peer: IpAddr,
    admission: Arc<Admission>,
    startup: Startup,
) -> std::io::Result<tokio::net::UnixStream> {
    let (ours, theirs) = tokio::net::UnixStream::pair()?;
    tokio::spawn(async move {
        let (mut from_client, mut to_client) = client.into_split();
        let (mut from_server, mut to_server) = ours.into_split();
        let ending =
            serve((&mut from_client, &mut to_client), (&mut from_server, &mut to_server), peer, &admission, startup)
                .await;
        match ending {
            Ending::Closed => {}
            Ending::Io(e) => tracing::debug!(error = %e, "pgwire relay ended"),
            Ending::Refused { code, message } => {
                metrics::counter!("sluice_query_pgwire_refused_total").increment(1);
                tracing::warn!(%peer, code, %message, "pgwire: connection closed");
                let _ = tokio::time::timeout(Duration::from_secs(1), async {
                    to_client.write_all(&fatal(code, &message)).await?;
                    to_client.shutdown().await
                })
                .await;
            }
        }
    });
    Ok(theirs)
}

async fn serve(
    (from_client, to_client): (&mut (impl AsyncRead + Unpin), &mut (impl AsyncWrite + Unpin)),
    (from_server, to_server): (&mut (impl AsyncRead + Unpin), &mut (impl AsyncWrite + Unpin)),
    peer: IpAddr,
    admission: &Admission,
    mut startup: Startup,
) -> Ending {
    let deadline = Instant::now() + admission.startup_timeout;
    let timed_out = || {
        metrics::counter!("sluice_query_pgwire_startup_timeouts_total").increment(1);
        refused("08P01", "the connection did not complete its startup in time (pgwire.startup_timeout)")
    };
    let max_message = admission.max_message;
    let first = tokio::select! {
        first = tokio::time::timeout_at(deadline, read_startup(from_client, to_client, max_message)) => match first {
            Err(_) => return timed_out(),
            Ok(Err(ending)) => return ending,
            Ok(Ok(first)) => first,
        },
        _ = &mut startup.evicted => return Ending::Closed,
    };
    // Refused once the client speaks plainly (after declining its SSL
    // request), so that it shows the reason.
    if let Some(wait) = admission.throttle.blocked(peer) {
        return refused("28000", sluice_http::login_refusal(wait));
    }
    if let Err(e) = to_server.write_all(&first).await {
        return e.into();
    }
    let mut held = Held::default();
    let upstream = forward_messages(from_client, to_server, admission, &mut held);
    tokio::pin!(upstream);
    tokio::select! {
        ending = &mut upstream => return ending,
        login = tokio::time::timeout_at(deadline, until_ready(from_server, to_client)) => match login {
            Err(_) => return timed_out(),
            Ok(Err(ending)) => return ending,
            Ok(Ok(Login::Failed)) => {
                admission.throttle.failed(peer);
                // The server's error is on its way to the client.
                return Ending::Closed;
            }
            Ok(Ok(Login::Ready)) => admission.throttle.succeeded(peer),
        },
        _ = &mut startup.evicted => return Ending::Closed,
    }
    drop(startup);
    let Ok(_session) = admission.sessions.clone().try_acquire_owned() else {
        return refused("53300", "sorry, too many clients already (pgwire.max_connections)");
    };
    tokio::select! {
        ending = upstream => ending,
        copied = tokio::io::copy(from_server, to_client) => match copied {
            Ok(_) => Ending::Closed,
            Err(e) => e.into(),
        },
    }
}

/// One message's body after its 4-byte length (which counts itself).
async fn body(from: &mut (impl AsyncRead + Unpin), length: [u8; 4], max_message: usize) -> Result<Vec<u8>, Ending> {
    let length = i32::from_be_bytes(length);
    let size = usize::try_from(length).ok().and_then(|l| l.checked_sub(4)).filter(|b| *b <= max_message);
    let Some(size) = size else {
        return Err(refused("08P01", format!("a message of {length} bytes (at most {max_message})")));
    };
    let mut bytes = vec![0u8; size];
    from.read_exact(&mut bytes).await?;
    Ok(bytes)
}

/// The untyped startup messages: SSL and GSSAPI requests are declined;
/// returns the startup (or cancel) message, its length first.
async fn read_startup(
    from: &mut (impl AsyncRead + Unpin),
    to_client: &mut (impl AsyncWrite + Unpin),
    max_message: usize,
) -> Result<Vec<u8>, Ending> {
    const SSL_REQUEST: i32 = 80_877_103;
    const GSSENC_REQUEST: i32 = 80_877_104;
    loop {
        let mut length = [0u8; 4];
        from.read_exact(&mut length).await?;
        let bytes = body(from, length, max_message).await?;
        let code = bytes.get(..4).map(|c| i32::from_be_bytes(c.try_into().expect("4 bytes")));
        if matches!(code, Some(SSL_REQUEST | GSSENC_REQUEST)) {
            to_client.write_all(b"N").await?;
            continue;
        }
        return Ok([length.as_slice(), &bytes].concat());
    }
}

/// How a login ended.
enum Login {
    /// The server is ready for queries.
    Ready,
    /// The server refused the password.
    Failed,
}

/// Passes the server's messages on until the first `ReadyForQuery`, or
/// until it refuses the login.
async fn until_ready(from: &mut (impl AsyncRead + Unpin), to: &mut (impl AsyncWrite + Unpin)) -> Result<Login, Ending> {
    let mut head = [0u8; 5];
    loop {
        from.read_exact(&mut head).await?;
        // The server's own messages: no size cap beyond its sanity.
        let bytes = body(from, head[1..].try_into().expect("4 bytes"), 1 << 30).await?;
        to.write_all(&head).await?;
        to.write_all(&bytes).await?;
        match head[0] {
            b'Z' => return Ok(Login::Ready),
            b'E' if error_code(&bytes).is_some_and(|c| c == b"28P01") => {
                to.flush().await?;
                return Ok(Login::Failed);
            }
            _ => {}
        }
    }
}

/// The SQLSTATE of an ErrorResponse body.
fn error_code(body: &[u8]) -> Option<&[u8]> {
    let mut fields = body;
    while let Some((&kind, rest)) = fields.split_first() {
        if kind == 0 {
            break;
        }
        let end = rest.iter().position(|b| *b == 0)?;
        if kind == b'C' {
            return Some(&rest[..end]);
        }
        fields = &rest[end + 1..];
    }
    None
}

/// The statements and portals a connection holds, by name, with their
/// message sizes: what `pgwire` keeps of them.
#[derive(Default)]
struct Held {
    statements: HashMap<Vec<u8>, usize>,
    portals: HashMap<Vec<u8>, usize>,
    bytes: usize,
}

impl Held {
    fn put(&mut self, portal: bool, name: &[u8], size: usize) {
        let map = if portal { &mut self.portals } else { &mut self.statements };
        if let Some(old) = map.insert(name.to_vec(), size) {
            self.bytes -= old;
        }
        self.bytes += size;
    }

    fn remove(&mut self, portal: bool, name: &[u8]) {
        let map = if portal { &mut self.portals } else { &mut self.statements };
        if let Some(old) = map.remove(name) {
            self.bytes -= old;
        }
    }

    /// Records a client message; refuses one that would hold too much.
    fn record(&mut self, tag: u8, body: &[u8], max: usize, max_bytes: usize) -> Result<(), Ending> {
        let name = |at: usize| body.get(at..).and_then(|b| b.iter().position(|c| *c == 0).map(|end| &b[..end]));
        match tag {
            // Parse: statement name first.
            b'P' => self.put(false, name(0).unwrap_or_default(), body.len()),
            // Bind: portal name first.
            b'B' => self.put(true, name(0).unwrap_or_default(), body.len()),
            // Close: 'S' statement or 'P' portal, then its name.
            b'C' => match body.first() {
                Some(b'S') => self.remove(false, name(1).unwrap_or_default()),
                Some(b'P') => self.remove(true, name(1).unwrap_or_default()),
                _ => {}
            },
            // Sync drops the unnamed portal.
            b'S' => self.remove(true, b""),
            _ => {}
        }
        if self.statements.len() > max || self.portals.len() > max {
            return Err(refused(
                "54000",
                format!(
                    "the connection holds {} prepared statements and {} portals, more than the {max} allowed \
                     (pgwire.max_prepared_statements); close those no longer used",
                    self.statements.len(),
                    self.portals.len()
                ),
            ));
        }
        if self.bytes > max_bytes {
            return Err(refused(
                "54000",
                format!(
                    "the connection's prepared statements and portals hold {} bytes, more than the {max_bytes} \
                     allowed (pgwire.max_prepared_bytes)",
                    self.bytes
                ),
            ));
        }
        Ok(())
    }
}

/// The typed messages after startup (tag, length, body), passed on whole.
async fn forward_messages(
    from: &mut (impl AsyncRead + Unpin),
    to: &mut (impl AsyncWrite + Unpin),
    admission: &Admission,
    held: &mut Held,
) -> Ending {
    let mut head = [0u8; 5];
    loop {
        if from.read_exact(&mut head).await.is_err() {
            return Ending::Closed;
        }
        let forwarded = async {
            let bytes = body(from, head[1..].try_into().expect("4 bytes"), admission.max_message).await?;
            held.record(head[0], &bytes, admission.max_prepared, admission.max_prepared_bytes)?;
            to.write_all(&head).await?;
            to.write_all(&bytes).await?;
            Ok::<_, Ending>(())
        };
        if let Err(ending) = forwarded.await {
            return ending;
        }
    }
}

/// A FATAL ErrorResponse.
fn fatal(code: &str, message: &str) -> Vec<u8> {
    let mut fields = Vec::new();
    for (kind, value) in [(b'S', "FATAL"), (b'V', "FATAL"), (b'C', code), (b'M', message)] {
        fields.push(kind);
        fields.extend_from_slice(value.as_bytes());
        fields.push(0);
    }
    fields.push(0);
    let mut message = vec![b'E'];
    message.extend_from_slice(&(fields.len() as i32 + 4).to_be_bytes());
    message.extend_from_slice(&fields);
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_and_portals_are_held_as_pgwire_holds_them() {
        let mut held = Held::default();
        let parse = |name: &str| [name.as_bytes(), b"\0SELECT 1\0\0\0"].concat();
        for i in 0..10 {
            held.record(b'P', &parse(&format!("s{i}")), 10, 1 << 20).unwrap();
        }
        // Replacing a name holds it once; the unnamed one is one more.
        held.record(b'P', &parse("s0"), 10, 1 << 20).unwrap();
        let e = held.record(b'P', &parse("s10"), 10, 1 << 20).unwrap_err();
        assert!(matches!(e, Ending::Refused { code: "54000", .. }), "{e:?}");
        held.record(b'C', b"Ss10\0", 10, 1 << 20).unwrap();
        held.record(b'C', b"Ss9\0", 10, 1 << 20).unwrap();
        assert_eq!(held.statements.len(), 9);
        // Bytes: one large statement is refused.
        let big = parse(&"x".repeat(2000));
        assert!(held.record(b'P', &big, 10, 1000).is_err());
        // The unnamed portal leaves at Sync.
        let mut held = Held::default();
        held.record(b'B', b"\0s1\0", 10, 1 << 20).unwrap();
        held.record(b'S', b"", 10, 1 << 20).unwrap();
        assert!(held.portals.is_empty() && held.bytes == 0);
    }

    #[test]
    fn fatal_errors_carry_their_code() {
        let message = fatal("53300", "sorry");
        assert_eq!(message[0], b'E');
        assert_eq!(i32::from_be_bytes(message[1..5].try_into().unwrap()) as usize, message.len() - 1);
        assert_eq!(error_code(&message[5..]), Some(&b"53300"[..]));
    }

    #[test]
    fn the_oldest_startup_makes_room() {
        let startups = Arc::new(Startups { max: 2, waiting: Mutex::default(), next: AtomicU64::new(0) });
        let mut first = startups.admit();
        let _second = startups.admit();
        let third = startups.admit();
        assert!(first.evicted.try_recv().is_ok(), "the oldest was told to close");
        drop(third);
        assert_eq!(startups.waiting.lock().unwrap().len(), 1);
    }
}
