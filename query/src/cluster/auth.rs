//! The shared secret of a cluster's Flight port.
//!
//! The Flight port runs any plan it is sent, so a node accepts a call only
//! with the cluster's token, and presents it on every call it makes: the
//! planner to the workers, and workers to each other. Without a configured
//! token (only on a loopback address, config validation sees to it) calls
//! are neither checked nor stamped. The stamping is in `channels`.

use std::sync::Arc;

use tonic::codegen::http::header::AUTHORIZATION;
use tonic::{Status, metadata::MetadataValue};

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

    /// The `authorization` header's value.
    pub(crate) fn header(&self) -> &str {
        &self.0
    }

    /// The server side: refuses a call without the token, in time
    /// independent of where a wrong one differs.
    pub fn check(&self, request: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        let presented = request.metadata().get(AUTHORIZATION.as_str()).map(MetadataValue::as_bytes).unwrap_or_default();
        if sluice_http::constant_time_eq(presented, self.0.as_bytes()) {
            Ok(request)
        } else {
            metrics::counter!("sluice_query_flight_refused_total").increment(1);
            Err(Status::unauthenticated("this Flight port needs the cluster's token (`flight_token`)"))
        }
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
}
