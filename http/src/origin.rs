//! Where a request may come from: the browser-side defences of a node.
//!
//! - **Cross-site requests.** A page on any site can make a visitor's
//!   browser POST to the node (a form, or `fetch` in `no-cors` mode), with
//!   the visitor's cached basic credentials. Browsers name the page's
//!   origin in `Origin` on every such request, so a request other than
//!   GET/HEAD/OPTIONS whose `Origin` is neither the node's own (the
//!   authority the request was sent to) nor one of `http.allowed_origins`
//!   is refused (403). Clients that are not browsers send no `Origin`.
//! - **DNS rebinding.** A page whose name is rebound to 127.0.0.1 is
//!   same-origin with itself while it talks to a node on the visitor's
//!   loopback; only the `Host` header tells. On a loopback address the node
//!   answers only `Host: localhost`, `127.0.0.1`, `::1` or one of
//!   `http.allowed_hosts` (as Jupyter and Grafana do).

use axum::http::{HeaderMap, Method, header};
use sluice_config::HttpConfig;

/// The checks of this module, prepared from the node's settings.
#[derive(Clone)]
pub(crate) struct Origins {
    /// Set when the node listens on a loopback address.
    loopback_hosts: Option<Vec<String>>,
    allowed_origins: Vec<String>,
}

impl Origins {
    pub(crate) fn new(config: &HttpConfig) -> Self {
        let loopback_hosts = config.listen.ip().is_loopback().then(|| {
            let mut hosts: Vec<String> = ["localhost", "127.0.0.1", "::1"].map(String::from).to_vec();
            hosts.extend(config.allowed_hosts.iter().map(|h| h.to_ascii_lowercase()));
            hosts
        });
        let allowed_origins = config.allowed_origins.iter().map(|o| o.to_ascii_lowercase()).collect();
        Origins { loopback_hosts, allowed_origins }
    }

    /// Why a request may not proceed, if it may not.
    pub(crate) fn refuse(&self, method: &Method, headers: &HeaderMap) -> Option<String> {
        let host = headers.get(header::HOST).and_then(|h| h.to_str().ok()).map(str::to_ascii_lowercase);
        if let (Some(allowed), Some(host)) = (&self.loopback_hosts, &host) {
            let name = host_name(host);
            if !allowed.iter().any(|a| a == name) {
                metrics::counter!("sluice_http_refused_total", "reason" => "host").increment(1);
                return Some(format!(
                    "the node listens on a loopback address and does not answer for host `{name}` (add it to \
                     http.allowed_hosts)"
                ));
            }
        }
        if matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS) {
            return None;
        }
        let origin = headers.get(header::ORIGIN)?;
        let origin = origin.to_str().unwrap_or("").to_ascii_lowercase();
        let own = origin
            .strip_prefix("http://")
            .or_else(|| origin.strip_prefix("https://"))
            .is_some_and(|authority| host.as_deref() == Some(authority));
        if own || self.allowed_origins.contains(&origin) {
            return None;
        }
        metrics::counter!("sluice_http_refused_total", "reason" => "origin").increment(1);
        Some(format!(
            "requests from pages of origin `{origin}` are not allowed (add it to http.allowed_origins to allow them)"
        ))
    }
}

/// The name in a `Host` value, without its port (`[::1]:8099` → `::1`).
fn host_name(host: &str) -> &str {
    if let Some(bracketed) = host.strip_prefix('[') {
        return bracketed.split(']').next().unwrap_or(bracketed);
    }
    match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(header::HeaderName, &str)]) -> HeaderMap {
        pairs.iter().map(|(k, v)| (k.clone(), v.parse().unwrap())).collect()
    }

    #[test]
    fn cross_site_requests_and_rebound_names_are_refused() {
        let mut config = HttpConfig::on("127.0.0.1:8099".parse().unwrap());
        config.allowed_origins = vec!["https://grafana.example.com".into()];
        config.allowed_hosts = vec!["sluice.internal".into()];
        let o = Origins::new(&config);
        let post = Method::POST;
        let h = |host: &str, origin: Option<&str>| {
            let mut pairs = vec![(header::HOST, host)];
            pairs.extend(origin.map(|o| (header::ORIGIN, o)));
            headers(&pairs)
        };
        assert!(o.refuse(&post, &h("127.0.0.1:8099", None)).is_none());
        assert!(o.refuse(&post, &h("localhost:8099", Some("http://localhost:8099"))).is_none());
        assert!(o.refuse(&post, &h("[::1]:8099", None)).is_none());
        assert!(o.refuse(&post, &h("sluice.internal:8099", None)).is_none());
        assert!(o.refuse(&post, &h("127.0.0.1:8099", Some("https://grafana.example.com"))).is_none());
        // Another site's page, a sandboxed one, a rebound name.
        assert!(o.refuse(&post, &h("127.0.0.1:8099", Some("https://evil.example"))).unwrap().contains("origin"));
        assert!(o.refuse(&post, &h("127.0.0.1:8099", Some("null"))).is_some());
        assert!(o.refuse(&Method::GET, &h("evil.example:8099", None)).unwrap().contains("host"));
        // GETs from other origins pass (the browser does not let the page
        // read the answer).
        assert!(o.refuse(&Method::GET, &h("127.0.0.1:8099", Some("https://evil.example"))).is_none());
        // On other addresses any Host is answered, and origins still count.
        let o = Origins::new(&HttpConfig::on("0.0.0.0:8099".parse().unwrap()));
        assert!(o.refuse(&post, &h("sluice.example.com", None)).is_none());
        assert!(o.refuse(&post, &h("sluice.example.com", Some("https://sluice.example.com"))).is_none());
        assert!(o.refuse(&post, &h("sluice.example.com", Some("https://evil.example"))).is_some());
    }
}
