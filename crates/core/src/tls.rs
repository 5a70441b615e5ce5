//! TLS for pulled sources and pushes (`rtsps://`, `rtmps://`): the remote server's certificate
//! is checked against the Web PKI roots, as browsers do, or, when the path sets
//! `sourceFingerprint`, against that SHA-256 fingerprint alone (cameras and encoders with
//! self-signed certificates). rustls on the `aws-lc-rs` provider (the
//! workspace's one crypto provider, docs/design.md).

use std::sync::Arc;
use std::time::Duration;

use crate::CoreError;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

/// `sourceFingerprint` as written (hex, with or without colons, any case) to 32 bytes.
pub fn parse_fingerprint(s: &str) -> Result<[u8; 32], CoreError> {
    fingerprint_bytes(s).map_err(CoreError::Tls)
}

fn fingerprint_bytes(s: &str) -> Result<[u8; 32], String> {
    let hex: String = s.chars().filter(|c| *c != ':').collect();
    let wrong =
        || format!("{s:?} is not a SHA-256 fingerprint (64 hexadecimal digits, colons allowed)");
    if hex.len() != 64 || !hex.is_ascii() {
        return Err(wrong());
    }
    let mut out = [0u8; 32];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|_| wrong())?;
    }
    Ok(out)
}

/// The SHA-256 fingerprint of a DER certificate, as lowercase hex (what `sourceFingerprint`
/// takes and what errors show).
pub fn fingerprint_hex(der: &[u8]) -> String {
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Accepts exactly the certificate with this fingerprint (the handshake signature is still
/// verified, so the server must hold its key).
#[derive(Debug)]
struct Pinned {
    expected: [u8; 32],
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let got = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, end_entity.as_ref());
        if got.as_ref() == self.expected {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(format!(
                "the server's certificate has fingerprint {}, not the sourceFingerprint",
                fingerprint_hex(end_entity.as_ref())
            )))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A client configuration: Web PKI roots, or only the certificate `fingerprint` names when it
/// is not empty.
pub fn client_config(fingerprint: &str) -> Result<Arc<rustls::ClientConfig>, CoreError> {
    config(fingerprint).map_err(CoreError::Tls)
}

fn config(fingerprint: &str) -> Result<Arc<rustls::ClientConfig>, String> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let config = if fingerprint.is_empty() {
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        builder.with_root_certificates(roots).with_no_client_auth()
    } else {
        let expected = fingerprint_bytes(fingerprint)?;
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Pinned { expected, provider }))
            .with_no_client_auth()
    };
    Ok(Arc::new(config))
}

/// Opens TCP to `host:port` and runs the TLS handshake, each bounded by `limit`. Errors say
/// which step failed, and why (an unknown issuer, a fingerprint mismatch).
pub async fn connect(
    host: &str,
    port: u16,
    fingerprint: &str,
    limit: Duration,
) -> Result<TlsStream<TcpStream>, CoreError> {
    open(host, port, fingerprint, limit)
        .await
        .map_err(CoreError::Tls)
}

async fn open(
    host: &str,
    port: u16,
    fingerprint: &str,
    limit: Duration,
) -> Result<TlsStream<TcpStream>, String> {
    let config = config(fingerprint)?;
    let tcp = tokio::time::timeout(limit, TcpStream::connect((host, port)))
        .await
        .map_err(|_| "connect timed out".to_string())?
        .map_err(|e| format!("connect: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let name = ServerName::try_from(host.to_string())
        .map_err(|e| format!("bad server name {host:?}: {e}"))?;
    tokio::time::timeout(
        limit,
        tokio_rustls::TlsConnector::from(config).connect(name, tcp),
    )
    .await
    .map_err(|_| "handshake timed out".to_string())?
    .map_err(|e| format!("handshake: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_parse_in_both_spellings() {
        let plain = "8b87098a5dc2f333efc5b1f6843a3dd6a3e29c174ce7463b1bce8498dd8eaf7b";
        let colons = "8B:87:09:8A:5D:C2:F3:33:EF:C5:B1:F6:84:3A:3D:D6:A3:E2:9C:17:4C:E7:46:3B:1B:CE:84:98:DD:8E:AF:7B";
        assert_eq!(parse_fingerprint(plain), parse_fingerprint(colons));
        assert_eq!(parse_fingerprint(plain).map(|f| f[0]), Ok(0x8b));
        assert!(parse_fingerprint("8b87").is_err());
        assert!(parse_fingerprint(&"zz".repeat(32)).is_err());
        assert!(parse_fingerprint(&"é".repeat(32)).is_err());
    }

    #[test]
    fn a_bad_fingerprint_is_a_configuration_error() {
        assert!(client_config("abc").is_err());
        assert!(client_config("").is_ok());
    }
}
