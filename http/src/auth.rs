//! Authentication of requests: HTTP basic (Pinot's broker scheme) and
//! bearer tokens, checked before a request reaches a node's router.

use axum::http::{HeaderMap, StatusCode, header};
use sluice_config::HttpAuth;

/// Paths that never ask for credentials: liveness must stay observable.
const OPEN: &[&str] = &["/health"];

/// The accepted `Authorization` values, precomputed.
#[derive(Clone)]
pub(crate) struct Credentials {
    accepted: Vec<Vec<u8>>,
    protect_metrics: bool,
}

impl Credentials {
    pub(crate) fn new(auth: &HttpAuth) -> Self {
        let mut accepted: Vec<Vec<u8>> = auth
            .users
            .iter()
            .map(|u| format!("basic {}", base64(format!("{}:{}", u.username, u.password).as_bytes())).into_bytes())
            .collect();
        accepted.extend(auth.tokens.iter().map(|t| format!("bearer {t}").into_bytes()));
        Credentials { accepted, protect_metrics: auth.protect_metrics }
    }

    /// Whether `path` is served without credentials.
    pub(crate) fn is_open(&self, path: &str) -> bool {
        OPEN.contains(&path) || (path == "/metrics" && !self.protect_metrics)
    }

    /// Whether a request for `path` with `headers` may proceed.
    pub(crate) fn allows(&self, path: &str, headers: &HeaderMap) -> bool {
        if self.is_open(path) {
            return true;
        }
        let Some(given) = headers.get(header::AUTHORIZATION) else { return false };
        let given = given.as_bytes();
        // The scheme is case-insensitive (RFC 9110); the credentials are not.
        let Some(space) = given.iter().position(|b| *b == b' ') else { return false };
        let mut normalized = given[..space].to_ascii_lowercase();
        normalized.extend_from_slice(&given[space..]);
        // Every accepted value is compared in full, so the time taken does
        // not tell how much of a guess was right.
        self.accepted.iter().fold(false, |found, a| found | constant_time_eq(a, &normalized))
    }
}

/// Whether `a` equals `b`, taking the same time whichever byte differs
/// (secrets compared against a guess). Shared by every port that checks one.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |diff, (x, y)| diff | (x ^ y)) == 0
}

/// Standard base64 with padding (RFC 4648).
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = (u32::from(chunk[0]) << 16)
            | (u32::from(*chunk.get(1).unwrap_or(&0)) << 8)
            | u32::from(*chunk.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// 401 with a challenge, in the shape of Pinot's broker errors (an
/// `exceptions` list) so Pinot clients show the reason.
pub(crate) fn unauthorized() -> axum::response::Response {
    let message = "authentication required: send HTTP basic credentials or a bearer token (http.auth)";
    let mut response = refusal(StatusCode::UNAUTHORIZED, message, None);
    response.headers_mut().insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Basic realm=\"sluice\""));
    response
}

/// A request refused before the router, in the shape of Pinot's broker
/// errors; `retry` becomes `Retry-After`.
pub(crate) fn refusal(
    status: StatusCode,
    message: &str,
    retry: Option<std::time::Duration>,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let code = status.as_u16();
    let body = serde_json::json!({
        "exceptions": [{"errorCode": code, "message": message}],
        "numServersQueried": 0,
        "numServersResponded": 0,
        "error": message,
        "code": code,
    });
    let mut response = (status, axum::Json(body)).into_response();
    if let Some(retry) = retry {
        let seconds = header::HeaderValue::from(retry.as_secs().max(1));
        response.headers_mut().insert(header::RETRY_AFTER, seconds);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_config::HttpUser;

    fn headers(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, value.parse().unwrap());
        h
    }

    #[test]
    fn basic_users_and_bearer_tokens_are_checked_and_health_stays_open() {
        let auth = HttpAuth {
            users: vec![HttpUser { username: "analyst".into(), password: "s3cret-pass".into() }],
            tokens: vec!["0123456789abcdef".into()],
            protect_metrics: false,
        };
        let c = Credentials::new(&auth);
        // base64("analyst:s3cret-pass")
        let good = format!("Basic {}", base64(b"analyst:s3cret-pass"));
        assert_eq!(base64(b"analyst:s3cret-pass"), "YW5hbHlzdDpzM2NyZXQtcGFzcw==");
        assert!(c.allows("/query/sql", &headers(&good)));
        assert!(c.allows("/query/sql", &headers(&good.replace("Basic", "BASIC"))));
        assert!(c.allows("/query/sql", &headers("Bearer 0123456789abcdef")));
        assert!(!c.allows("/query/sql", &headers(&format!("Basic {}", base64(b"analyst:wrong")))));
        assert!(!c.allows("/query/sql", &headers("Bearer 0123456789abcdeX")));
        assert!(!c.allows("/query/sql", &headers("garbage")));
        assert!(!c.allows("/query/sql", &HeaderMap::new()));
        assert!(c.allows("/health", &HeaderMap::new()));
        assert!(c.allows("/metrics", &HeaderMap::new()));
        let strict = Credentials::new(&HttpAuth { protect_metrics: true, ..auth });
        assert!(!strict.allows("/metrics", &HeaderMap::new()));
        for (input, encoded) in
            [(&b""[..], ""), (b"f", "Zg=="), (b"fo", "Zm8="), (b"foo", "Zm9v"), (b"foob", "Zm9vYg==")]
        {
            assert_eq!(base64(input), encoded);
        }
    }
}
