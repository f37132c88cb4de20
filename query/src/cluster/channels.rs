//! Channels to other nodes' Flight ports: one per address, reused by every
//! call, stamped with the cluster's token.
//!
//! DataFusion Distributed's default resolver connects with tonic's default
//! HTTP/2 settings, where a frame carries at most 16 KiB. A task's answer
//! of a few hundred KiB then leaves the worker as one write per 16 KiB, and
//! each write wakes the reader on the other node: on a machine of few cores
//! the two processes take turns, a context switch per frame. Here both ends
//! allow frames as large as HTTP/2 does ([`MAX_FRAME`]), so a batch crosses
//! in one frame and one write.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use datafusion::error::DataFusionError;
use datafusion_distributed::grpc::{BoxCloneSyncChannel, create_worker_client};
use datafusion_distributed::{ChannelResolver, WorkerChannel};
use futures::future::{BoxFuture, FutureExt, Shared};
use tonic::codegen::http::{HeaderValue, Request, header::AUTHORIZATION};
use tonic::transport::{Channel, Endpoint};
use tower::ServiceExt;
use url::Url;

use crate::cluster::auth::ClusterToken;

/// The largest HTTP/2 frame (2^24 - 1 bytes, RFC 9113 §4.2), which each
/// end of a Flight connection lets the other send.
pub(crate) const MAX_FRAME: u32 = (1 << 24) - 1;

/// A channel unused this long is dropped (its node may be gone for good);
/// the next call to that address connects again.
const IDLE: Duration = Duration::from_secs(5 * 60);

/// How long a connection may take to open. A node whose address drops
/// packets would otherwise hold each query for the kernel's connect
/// retries (minutes) instead of failing it over to a replica.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

type Connecting = Shared<BoxFuture<'static, Result<Channel, Arc<DataFusionError>>>>;

struct Cached {
    channel: Connecting,
    used: Instant,
}

/// Channels to other nodes, each call stamped with the token when there is
/// one.
#[derive(Clone)]
pub(crate) struct TokenChannels {
    channels: Arc<Mutex<HashMap<Url, Cached>>>,
    header: Option<HeaderValue>,
}

impl TokenChannels {
    pub(crate) fn new(token: Option<&ClusterToken>) -> Self {
        // A token holds no control characters (config validation), so it
        // is a valid header value.
        let header = token.and_then(|t| HeaderValue::from_str(t.header()).ok()).map(|mut h| {
            h.set_sensitive(true);
            h
        });
        TokenChannels { channels: Arc::default(), header }
    }

    /// The channel to `url`: the cached one, or a new connection that
    /// concurrent callers share. A failed connection is forgotten, so the
    /// next call tries again.
    async fn channel(&self, url: &Url) -> Result<Channel, DataFusionError> {
        let connecting = {
            let mut channels = self.channels.lock().unwrap_or_else(|e| e.into_inner());
            let now = Instant::now();
            channels.retain(|_, c| now.duration_since(c.used) < IDLE);
            let cached = channels.entry(url.clone()).or_insert_with(|| Cached { channel: connect(url), used: now });
            cached.used = now;
            cached.channel.clone()
        };
        match connecting.await {
            Ok(channel) => Ok(channel),
            Err(e) => {
                let mut channels = self.channels.lock().unwrap_or_else(|e| e.into_inner());
                // Unless another caller already replaced the failed one.
                if channels.get(url).is_some_and(|c| c.channel.peek().is_some_and(Result::is_err)) {
                    channels.remove(url);
                }
                Err(DataFusionError::Shared(e))
            }
        }
    }
}

/// Connects to `url` with frames up to [`MAX_FRAME`]. The error names the
/// address, so a query that fails on it knows which node to suspect.
fn connect(url: &Url) -> Connecting {
    let url = url.to_string();
    async move {
        let endpoint = Endpoint::from_shared(url.clone())
            .map_err(|e| Arc::new(DataFusionError::Configuration(format!("invalid Flight address `{url}`: {e}"))))?
            .max_frame_size(MAX_FRAME)
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true);
        endpoint.connect().await.map_err(|e| {
            Arc::new(DataFusionError::Execution(format!("cannot connect to the query node at `{url}`: {}", causes(&e))))
        })
    }
    .boxed()
    .shared()
}

/// An error and its sources, outermost first: tonic's own message is only
/// "transport error".
fn causes(error: &dyn std::error::Error) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}

#[async_trait]
impl ChannelResolver for TokenChannels {
    async fn get_worker_client_for_url(&self, url: &Url) -> Result<Box<dyn WorkerChannel>, DataFusionError> {
        let channel = self.channel(url).await?;
        let Some(header) = self.header.clone() else {
            return Ok(create_worker_client(BoxCloneSyncChannel::new(channel)));
        };
        let stamped = channel.map_request(move |mut request: Request<tonic::body::Body>| {
            request.headers_mut().insert(AUTHORIZATION, header.clone());
            request
        });
        Ok(create_worker_client(BoxCloneSyncChannel::new(stamped)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion_distributed::{GetWorkerInfoRequest, Worker};

    /// The served Flight port, over TCP: a caller without the token or with
    /// another one is refused before any request reaches the worker; the
    /// cluster's own channels get through, on one connection per address.
    #[tokio::test]
    async fn the_flight_port_refuses_callers_without_the_token() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = Url::parse(&format!("http://{}", listener.local_addr().unwrap())).unwrap();
        let token = ClusterToken::new("the-cluster-secret-0123456789");
        let (stop, shutdown) = tokio::sync::watch::channel(false);
        let server =
            tokio::spawn(crate::cluster::worker::serve(listener, Worker::default(), Some(token.clone()), shutdown));
        let info = |channels: TokenChannels| {
            let url = url.clone();
            async move {
                let mut client = channels.get_worker_client_for_url(&url).await?;
                client.get_worker_info(GetWorkerInfoRequest {}).await
            }
        };
        let intruder = ClusterToken::new("not-the-cluster-secret-0123456");
        for channels in [TokenChannels::new(None), TokenChannels::new(Some(&intruder))] {
            let refused = info(channels).await.err().expect("refused").to_string();
            assert!(refused.contains("flight_token"), "{refused}");
        }
        let cluster = TokenChannels::new(Some(&token));
        for _ in 0..2 {
            assert!(info(cluster.clone()).await.is_ok(), "the cluster's own channel");
        }
        assert_eq!(cluster.channels.lock().unwrap().len(), 1, "one channel per address");
        stop.send(true).unwrap();
        server.await.unwrap();
    }

    /// A node that cannot be reached fails the call with its address and a
    /// message the planner reads as "unreachable"; the failed connection is
    /// not kept, so the next call connects again.
    #[tokio::test]
    async fn an_unreachable_node_is_named_and_not_cached() {
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().port()
        };
        let url = Url::parse(&format!("http://127.0.0.1:{port}")).unwrap();
        let channels = TokenChannels::new(None);
        let failed = channels.get_worker_client_for_url(&url).await.err().expect("nothing listens").to_string();
        assert!(failed.contains(&format!("127.0.0.1:{port}")), "{failed}");
        // What the planner's retry recognizes as an unreachable node.
        assert!(failed.contains("transport error") && failed.contains("onnection refused"), "{failed}");
        assert!(channels.channels.lock().unwrap().is_empty());
    }
}
