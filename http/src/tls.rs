//! HTTPS: a rustls acceptor from the configured PEM files.

use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sluice_config::TlsConfig;
use tokio_rustls::TlsAcceptor;

/// The acceptor for `tls`'s certificate chain and key; the error names the
/// file and what is wrong with it.
pub(crate) fn acceptor(tls: &TlsConfig) -> std::io::Result<TlsAcceptor> {
    let error = |path: &std::path::Path, what: String| std::io::Error::other(format!("{}: {what}", path.display()));
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&tls.cert)
        .map_err(|e| error(&tls.cert, format!("not a PEM certificate file ({e})")))?
        .collect::<Result<_, _>>()
        .map_err(|e| error(&tls.cert, format!("a malformed certificate ({e})")))?;
    if certs.is_empty() {
        return Err(error(&tls.cert, "no certificate in the file".into()));
    }
    let key = PrivateKeyDer::from_pem_file(&tls.key).map_err(|e| error(&tls.key, format!("no private key ({e})")))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| std::io::Error::other(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| error(&tls.key, format!("does not match the certificate ({e})")))?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}
