//! A TLS and SASL front for the test-kit broker, so that tests reach a
//! broker that *requires* what managed Kafka requires (Confluent Cloud,
//! MSK, Aiven): TLS, and SASL PLAIN or SCRAM credentials.
//!
//! librdkafka's mock cluster speaks plaintext only. Each front listens on
//! its own port, terminates TLS (rustls) when configured, performs the
//! broker's half of Kafka's SASL exchange when configured, and from then on
//! forwards bytes to one mock broker, whose metadata advertises the front
//! (`sluice-mock-broker`'s `advertise`), so every connection a client opens
//! goes through a front. The client side under test is the real one:
//! librdkafka with OpenSSL and its SASL mechanisms.
//!
//! What the front does of the Kafka protocol, as a broker with
//! `sasl.enabled.mechanisms` does:
//! - `ApiVersions` is forwarded to the broker and its answer gains
//!   `SaslHandshake` (v0–1) and `SaslAuthenticate` (v0–1);
//! - `SaslHandshake` names the enabled mechanism, or refuses with
//!   UNSUPPORTED_SASL_MECHANISM;
//! - `SaslAuthenticate` checks PLAIN's password or runs SCRAM's two rounds
//!   (RFC 5802/7677); a wrong password is SASL_AUTHENTICATION_FAILED and the
//!   connection is closed, as Kafka does;
//! - any other request before authentication closes the connection.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, anyhow, bail};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use ring::{digest, hmac, pbkdf2};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

const API_VERSIONS: i16 = 18;
const SASL_HANDSHAKE: i16 = 17;
const SASL_AUTHENTICATE: i16 = 36;
const UNSUPPORTED_SASL_MECHANISM: i16 = 33;
const SASL_AUTHENTICATION_FAILED: i16 = 58;
/// Kafka refuses larger frames before authentication (its default
/// `sasl.server.max.receive.size` is 512 KiB).
const MAX_UNAUTHENTICATED_FRAME: usize = 512 * 1024;

/// A SASL mechanism a front accepts, with the one user it knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SaslMechanism {
    Plain,
    ScramSha256,
    ScramSha512,
}

impl SaslMechanism {
    /// The name clients put in `sasl.mechanism`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Plain => "PLAIN",
            Self::ScramSha256 => "SCRAM-SHA-256",
            Self::ScramSha512 => "SCRAM-SHA-512",
        }
    }
}

#[derive(Debug, Clone)]
pub struct SaslUser {
    pub mechanism: SaslMechanism,
    pub username: String,
    pub password: String,
}

/// What a front requires of its clients.
#[derive(Debug, Clone, Default)]
pub struct FrontSecurity {
    /// PEM certificate chain and key: clients must speak TLS.
    pub tls: Option<(std::path::PathBuf, std::path::PathBuf)>,
    /// Clients must authenticate as this user.
    pub sasl: Option<SaslUser>,
}

/// One front: a port that forwards to one broker.
pub struct KafkaFront {
    addr: SocketAddr,
    accept: JoinHandle<()>,
}

impl KafkaFront {
    /// Listens on a free loopback port and forwards what it accepts to
    /// `upstream`.
    pub async fn start(upstream: SocketAddr, security: FrontSecurity) -> anyhow::Result<Self> {
        let tls = security.tls.as_ref().map(|(cert, key)| acceptor(cert, key)).transpose()?;
        let sasl = security.sasl.map(Arc::new);
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let (tls, sasl) = (tls.clone(), sasl.clone());
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(upstream).await else { return };
                    match tls {
                        Some(tls) => {
                            if let Ok(client) = tls.accept(client).await {
                                serve(client, server, sasl).await;
                            }
                        }
                        None => serve(client, server, sasl).await,
                    }
                });
            }
        });
        Ok(Self { addr, accept })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for KafkaFront {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

fn acceptor(cert: &Path, key: &Path) -> anyhow::Result<TlsAcceptor> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("read {}", cert.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("parse {}", cert.display()))?;
    let key = PrivateKeyDer::from_pem_file(key).with_context(|| format!("read {}", key.display()))?;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Authenticates the client when SASL is required, then forwards both ways
/// until either side closes.
async fn serve<C>(mut client: C, mut server: TcpStream, sasl: Option<Arc<SaslUser>>)
where
    C: AsyncRead + AsyncWrite + Unpin,
{
    if let Some(user) = sasl
        && authenticate(&mut client, &mut server, &user).await.is_err()
    {
        let _ = client.shutdown().await;
        return;
    }
    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
}

/// The broker's side of the exchange up to a successful `SaslAuthenticate`.
/// An error closes the connection (after the answer that explains it).
async fn authenticate<C>(client: &mut C, server: &mut TcpStream, user: &SaslUser) -> anyhow::Result<()>
where
    C: AsyncRead + AsyncWrite + Unpin,
{
    let mut scram: Option<ScramServer> = None;
    loop {
        let frame = read_frame(client).await?;
        let header = RequestHeader::parse(&frame)?;
        match header.api_key {
            API_VERSIONS => {
                write_frame(server, &frame).await?;
                let answer = read_frame(server).await?;
                write_frame(client, &with_sasl_apis(&answer, header.api_version)?).await?;
            }
            SASL_HANDSHAKE => {
                let mut body = Reader::new(&frame[header.len..]);
                let asked = body.string()?;
                let error = if asked == user.mechanism.name() { 0 } else { UNSUPPORTED_SASL_MECHANISM };
                let mut answer = header.correlation_id.to_be_bytes().to_vec();
                answer.extend(error.to_be_bytes());
                answer.extend(1i32.to_be_bytes());
                put_string(&mut answer, Some(user.mechanism.name()));
                write_frame(client, &answer).await?;
                if error != 0 {
                    bail!("mechanism {asked} is not enabled");
                }
            }
            SASL_AUTHENTICATE => {
                let token = Reader::new(&frame[header.len..]).bytes()?;
                let step = match user.mechanism {
                    SaslMechanism::Plain => plain(token, user),
                    SaslMechanism::ScramSha256 | SaslMechanism::ScramSha512 => match scram.take() {
                        None => ScramServer::first(token, user).map(|(server, reply)| {
                            scram = Some(server);
                            Step::Continue(reply)
                        }),
                        Some(server) => server.last(token).map(Step::Done),
                    },
                };
                let (error, message, reply, done) = match step {
                    Ok(Step::Continue(reply)) => (0, None, reply, false),
                    Ok(Step::Done(reply)) => (0, None, reply, true),
                    Err(why) => (SASL_AUTHENTICATION_FAILED, Some(why), Vec::new(), false),
                };
                let mut answer = header.correlation_id.to_be_bytes().to_vec();
                answer.extend(error.to_be_bytes());
                put_string(&mut answer, message.as_deref());
                answer.extend((reply.len() as i32).to_be_bytes());
                answer.extend(&reply);
                if header.api_version >= 1 {
                    answer.extend(0i64.to_be_bytes()); // session_lifetime_ms: none
                }
                write_frame(client, &answer).await?;
                match (error, done) {
                    (0, true) => return Ok(()),
                    (0, false) => {}
                    _ => bail!("authentication failed"),
                }
            }
            other => bail!("request {other} before authentication"),
        }
    }
}

enum Step {
    Continue(Vec<u8>),
    Done(Vec<u8>),
}

/// PLAIN (RFC 4616): `[authzid] NUL authcid NUL passwd`.
fn plain(token: &[u8], user: &SaslUser) -> Result<Step, String> {
    let mut parts = token.split(|b| *b == 0);
    let (_authzid, username, password) = (parts.next(), parts.next(), parts.next());
    if username == Some(user.username.as_bytes()) && password == Some(user.password.as_bytes()) {
        Ok(Step::Done(Vec::new()))
    } else {
        Err("Authentication failed: Invalid username or password".into())
    }
}

/// SCRAM's server after the client's first message (RFC 5802 §3).
struct ScramServer {
    mechanism: SaslMechanism,
    salted: Vec<u8>,
    /// client-first-message-bare "," server-first-message
    transcript: String,
    nonce: String,
}

impl ScramServer {
    const ITERATIONS: u32 = 4096;

    fn algorithms(mechanism: SaslMechanism) -> (pbkdf2::Algorithm, hmac::Algorithm, &'static digest::Algorithm) {
        match mechanism {
            SaslMechanism::ScramSha512 => (pbkdf2::PBKDF2_HMAC_SHA512, hmac::HMAC_SHA512, &digest::SHA512),
            _ => (pbkdf2::PBKDF2_HMAC_SHA256, hmac::HMAC_SHA256, &digest::SHA256),
        }
    }

    fn first(token: &[u8], user: &SaslUser) -> Result<(Self, Vec<u8>), String> {
        let message = std::str::from_utf8(token).map_err(|_| "client-first-message is not UTF-8".to_string())?;
        // gs2 header ("n,," without channel binding), then the bare message.
        let bare = message.strip_prefix("n,,").ok_or("unsupported GS2 header")?;
        let field = |name: &str| bare.split(',').find_map(|f| f.strip_prefix(name)).map(str::to_string);
        let username = field("n=").ok_or("no username")?;
        let client_nonce = field("r=").ok_or("no nonce")?;
        if username != user.username {
            return Err(
                "Authentication failed during authentication due to invalid credentials with SASL mechanism".into()
            );
        }
        let salt = b"sluice-testkit-salt";
        let (kdf, _, digest) = Self::algorithms(user.mechanism);
        let mut salted = vec![0u8; digest.output_len()];
        let iterations = std::num::NonZeroU32::new(Self::ITERATIONS).expect("nonzero");
        pbkdf2::derive(kdf, iterations, salt, user.password.as_bytes(), &mut salted);
        let server_nonce =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        let nonce = format!("{client_nonce}{server_nonce:x}");
        let server_first = format!("r={nonce},s={},i={}", B64.encode(salt), Self::ITERATIONS);
        let transcript = format!("{bare},{server_first}");
        Ok((Self { mechanism: user.mechanism, salted, transcript, nonce }, server_first.into_bytes()))
    }

    fn last(self, token: &[u8]) -> Result<Vec<u8>, String> {
        let message = std::str::from_utf8(token).map_err(|_| "client-final-message is not UTF-8".to_string())?;
        let (without_proof, proof) = message.rsplit_once(",p=").ok_or("no proof")?;
        if !without_proof.split(',').any(|f| f.strip_prefix("r=") == Some(self.nonce.as_str())) {
            return Err("nonce mismatch".into());
        }
        let proof = B64.decode(proof).map_err(|_| "proof is not base64".to_string())?;
        let (_, mac, digest) = Self::algorithms(self.mechanism);
        let salted = hmac::Key::new(mac, &self.salted);
        let client_key = hmac::sign(&salted, b"Client Key");
        let stored_key = digest::digest(digest, client_key.as_ref());
        let auth_message = format!("{},{without_proof}", self.transcript);
        let signature = hmac::sign(&hmac::Key::new(mac, stored_key.as_ref()), auth_message.as_bytes());
        let expected: Vec<u8> = client_key.as_ref().iter().zip(signature.as_ref()).map(|(k, s)| k ^ s).collect();
        if proof != expected {
            return Err(
                "Authentication failed during authentication due to invalid credentials with SASL mechanism".into()
            );
        }
        let server_key = hmac::sign(&salted, b"Server Key");
        let server_signature = hmac::sign(&hmac::Key::new(mac, server_key.as_ref()), auth_message.as_bytes());
        Ok(format!("v={}", B64.encode(server_signature.as_ref())).into_bytes())
    }
}

/// The fields of a request header every version shares (v1 and v2: the
/// flexible v2 only adds tagged fields after the client id).
struct RequestHeader {
    api_key: i16,
    api_version: i16,
    correlation_id: i32,
    /// Bytes up to the body, for the non-flexible requests parsed here.
    len: usize,
}

impl RequestHeader {
    fn parse(frame: &[u8]) -> anyhow::Result<Self> {
        let mut reader = Reader::new(frame);
        let api_key = reader.i16()?;
        let api_version = reader.i16()?;
        let correlation_id = reader.i32()?;
        reader.string()?; // client id
        Ok(Self { api_key, api_version, correlation_id, len: reader.at })
    }
}

/// The broker's `ApiVersions` answer with the two SASL requests added (the
/// mock broker lists neither). Versions 0–2 are fixed-width; 3+ flexible.
fn with_sasl_apis(answer: &[u8], version: i16) -> anyhow::Result<Vec<u8>> {
    let added: [(i16, i16, i16); 2] = [(SASL_HANDSHAKE, 0, 1), (SASL_AUTHENTICATE, 0, 1)];
    let mut reader = Reader::new(answer);
    reader.i32()?; // correlation id (ApiVersions answers with header v0)
    let error = reader.i16()?;
    if error != 0 {
        // The client retries with the version the broker supports.
        return Ok(answer.to_vec());
    }
    let count_at = reader.at;
    let mut out = answer[..count_at].to_vec();
    if version >= 3 {
        let count = reader.uvarint()?.checked_sub(1).ok_or_else(|| anyhow!("null api_keys"))?;
        put_uvarint(&mut out, count + added.len() as u64 + 1);
        out.extend(&answer[reader.at..]);
        // Entries end with an empty tagged-field section; inserted right
        // after the count, before the broker's own.
        let mut entries = Vec::new();
        for (key, min, max) in added {
            entries.extend(key.to_be_bytes());
            entries.extend(min.to_be_bytes());
            entries.extend(max.to_be_bytes());
            entries.push(0);
        }
        let at = out.len() - (answer.len() - reader.at);
        out.splice(at..at, entries);
    } else {
        let count = reader.i32()?;
        out.extend((count + added.len() as i32).to_be_bytes());
        for (key, min, max) in added {
            out.extend(key.to_be_bytes());
            out.extend(min.to_be_bytes());
            out.extend(max.to_be_bytes());
        }
        out.extend(&answer[reader.at..]);
    }
    Ok(out)
}

async fn read_frame<S: AsyncRead + Unpin>(stream: &mut S) -> anyhow::Result<Vec<u8>> {
    let size = stream.read_i32().await?;
    let size = usize::try_from(size).map_err(|_| anyhow!("negative frame size"))?;
    anyhow::ensure!(size <= MAX_UNAUTHENTICATED_FRAME, "frame of {size} bytes before authentication");
    let mut frame = vec![0; size];
    stream.read_exact(&mut frame).await?;
    Ok(frame)
}

async fn write_frame<S: AsyncWrite + Unpin>(stream: &mut S, frame: &[u8]) -> anyhow::Result<()> {
    stream.write_all(&(frame.len() as i32).to_be_bytes()).await?;
    stream.write_all(frame).await?;
    stream.flush().await?;
    Ok(())
}

fn put_string(out: &mut Vec<u8>, value: Option<&str>) {
    match value {
        Some(s) => {
            out.extend((s.len() as i16).to_be_bytes());
            out.extend(s.as_bytes());
        }
        None => out.extend((-1i16).to_be_bytes()),
    }
}

fn put_uvarint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

struct Reader<'a> {
    data: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn new(data: &'a [u8]) -> Self {
        Self { data, at: 0 }
    }

    fn take(&mut self, n: usize) -> anyhow::Result<&'a [u8]> {
        let end = self.at.checked_add(n).filter(|end| *end <= self.data.len()).ok_or_else(|| anyhow!("short frame"))?;
        let taken = &self.data[self.at..end];
        self.at = end;
        Ok(taken)
    }

    fn i16(&mut self) -> anyhow::Result<i16> {
        Ok(i16::from_be_bytes(self.take(2)?.try_into()?))
    }

    fn i32(&mut self) -> anyhow::Result<i32> {
        Ok(i32::from_be_bytes(self.take(4)?.try_into()?))
    }

    fn uvarint(&mut self) -> anyhow::Result<u64> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = self.take(1)?[0];
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        bail!("varint too long")
    }

    /// A nullable string (null reads as empty).
    fn string(&mut self) -> anyhow::Result<&'a str> {
        let len = self.i16()?;
        if len < 0 {
            return Ok("");
        }
        Ok(std::str::from_utf8(self.take(len as usize)?)?)
    }

    fn bytes(&mut self) -> anyhow::Result<&'a [u8]> {
        let len = self.i32()?;
        self.take(usize::try_from(len).map_err(|_| anyhow!("null bytes"))?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_versions_gain_the_sasl_requests_in_both_encodings() {
        // v0: correlation, error, [key min max]
        let mut v0 = 7i32.to_be_bytes().to_vec();
        v0.extend(0i16.to_be_bytes());
        v0.extend(1i32.to_be_bytes());
        v0.extend([0, 3, 0, 0, 0, 9]); // Metadata 0..9
        let patched = with_sasl_apis(&v0, 0).unwrap();
        assert_eq!(&patched[6..10], &3i32.to_be_bytes());
        assert_eq!(patched.len(), v0.len() + 12);
        // v3: compact array (count + 1), entries with an empty tag section,
        // throttle time, tags.
        let mut v3 = 7i32.to_be_bytes().to_vec();
        v3.extend(0i16.to_be_bytes());
        v3.push(2);
        v3.extend([0, 3, 0, 0, 0, 9, 0]);
        v3.extend(0i32.to_be_bytes());
        v3.push(0);
        let patched = with_sasl_apis(&v3, 3).unwrap();
        assert_eq!(patched[6], 4);
        assert_eq!(&patched[7..9], &SASL_HANDSHAKE.to_be_bytes());
        assert_eq!(&patched[patched.len() - 12..], &v3[v3.len() - 12..], "the broker's entries and trailer follow");
        // An error answer is passed on for the client's retry.
        let mut refused = 7i32.to_be_bytes().to_vec();
        refused.extend(35i16.to_be_bytes());
        assert_eq!(with_sasl_apis(&refused, 3).unwrap(), refused);
    }

    #[test]
    fn plain_checks_the_password() {
        let user = SaslUser { mechanism: SaslMechanism::Plain, username: "u".into(), password: "p".into() };
        assert!(matches!(plain(b"\0u\0p", &user), Ok(Step::Done(_))));
        assert!(plain(b"\0u\0q", &user).is_err());
        assert!(plain(b"garbage", &user).is_err());
    }
}
