//! The shared secret of a cluster's Flight port.
//!
//! The Flight port runs any plan it is sent, so a node accepts a call only
//! with the cluster's token, and presents it on every call it makes: the
//! planner to the workers, and workers to each other. Without a configured
//! token (only on a loopback address, config validation sees to it) calls
//! are neither checked nor stamped.

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::error::DataFusionError;
use datafusion_distributed::grpc::{BoxCloneSyncChannel, DefaultChannelResolver, create_worker_client};
use datafusion_distributed::{ChannelResolver, WorkerChannel};
use tonic::codegen::http::{HeaderValue, Request, header::AUTHORIZATION};
use tonic::{Status, metadata::MetadataValue};
use tower::ServiceExt;
use url::Url;

/// `Bearer <token>`, as sent and expected.
#[derive(Clone)]
pub struct ClusterToken(Arc<str>);

impl std::fmt::Debug for ClusterToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClusterToken(..)")
    }
}

impl ClusterToken {
    pub fn new(token: &str) -> Self {
        ClusterToken(format!("Bearer {token}").into())
    }

    /// The server side: refuses a call without the token, in time
    /// independent of where a wrong one differs.
    pub fn check(&self, request: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        let presented = request.metadata().get(AUTHORIZATION.as_str()).map(MetadataValue::as_bytes).unwrap_or_default();
        if constant_time_eq(presented, self.0.as_bytes()) {
            Ok(request)
        } else {
            metrics::counter!("sluice_query_flight_refused_total").increment(1);
            Err(Status::unauthenticated("this Flight port needs the cluster's token (`flight_token`)"))
        }
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |diff, (x, y)| diff | (x ^ y)) == 0
}

/// Channels to other nodes (cached by the default resolver), each call
/// stamped with the token.
#[derive(Clone)]
pub(crate) struct TokenChannels {
    inner: DefaultChannelResolver,
    header: Option<HeaderValue>,
}

impl TokenChannels {
    pub(crate) fn new(token: Option<&ClusterToken>) -> Self {
        // A token holds no control characters (config validation), so it
        // is a valid header value.
        let header = token.and_then(|t| HeaderValue::from_str(&t.0).ok()).map(|mut h| {
            h.set_sensitive(true);
            h
        });
        TokenChannels { inner: DefaultChannelResolver::default(), header }
    }
}

#[async_trait]
impl ChannelResolver for TokenChannels {
    async fn get_worker_client_for_url(&self, url: &Url) -> Result<Box<dyn WorkerChannel>, DataFusionError> {
        let channel = self.inner.get_channel(url).await?;
        let Some(header) = self.header.clone() else {
            return Ok(create_worker_client(channel));
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

    fn call(authorization: Option<&str>) -> tonic::Request<()> {
        let mut request = tonic::Request::new(());
        if let Some(value) = authorization {
            request.metadata_mut().insert("authorization", value.parse().unwrap());
        }
        request
    }

    #[test]
    fn only_the_cluster_token_passes() {
        let token = ClusterToken::new("a-secret-of-32-characters-------");
        assert!(token.check(call(Some("Bearer a-secret-of-32-characters-------"))).is_ok());
        for wrong in [None, Some("Bearer a-secret-of-32-characters------x"), Some("Bearer "), Some("a-secret")] {
            let refused = token.check(call(wrong)).unwrap_err();
            assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{wrong:?}");
        }
        assert!(!format!("{token:?}").contains("secret"));
    }

    /// The served Flight port, over TCP: a caller without the token or with
    /// another one is refused before any request reaches the worker; the
    /// cluster's own channels get through.
    #[tokio::test]
    async fn the_flight_port_refuses_callers_without_the_token() {
        use datafusion_distributed::{GetWorkerInfoRequest, Worker};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = Url::parse(&format!("http://{}", listener.local_addr().unwrap())).unwrap();
        let token = ClusterToken::new("the-cluster-secret-0123456789");
        let (stop, shutdown) = tokio::sync::watch::channel(false);
        let server =
            tokio::spawn(crate::distributed::serve(listener, Worker::default(), Some(token.clone()), shutdown));
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
        assert!(info(TokenChannels::new(Some(&token))).await.is_ok(), "the cluster's own channel");
        stop.send(true).unwrap();
        server.await.unwrap();
    }
}
