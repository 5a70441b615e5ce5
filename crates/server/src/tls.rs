//! TLS server configuration from PEM files (RTMPS now; RTSPS and HTTPS later), with rustls
//! on the `ring` provider (builds with a C compiler alone, no cmake).

use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

/// Loads a certificate chain and key. The error names the file and what is wrong with it.
pub fn acceptor(key_path: &str, cert_path: &str) -> Result<TlsAcceptor, String> {
    acceptor_with_alpn(key_path, cert_path, &[])
}

/// As [`acceptor`], offering `alpn` protocols (e.g. `h2`, `http/1.1`) in preference order.
pub fn acceptor_with_alpn(
    key_path: &str,
    cert_path: &str,
    alpn: &[&[u8]],
) -> Result<TlsAcceptor, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert_path)
        .map_err(|e| format!("cannot read certificate {cert_path}: {e}"))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("bad certificate {cert_path}: {e}"))?;
    if certs.is_empty() {
        return Err(format!("no certificate in {cert_path}"));
    }
    let key = PrivateKeyDer::from_pem_file(key_path)
        .map_err(|e| format!("cannot read private key {key_path}: {e}"))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("{cert_path} / {key_path}: {e}"))?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(TlsAcceptor::from(Arc::new(config)))
}
