//! TLS server configuration from PEM files (RTMPS, RTSPS, HTTPS), with rustls on the `ring`
//! provider (builds with a C compiler alone, no cmake). The certificate is served through a
//! resolver that a reload swaps ([`CertStore::reload`]): new connections get the new
//! certificate, connections already up keep theirs, no listener restarts.

use std::sync::{Arc, RwLock};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio_rustls::TlsAcceptor;

/// One listener's certificate and key files and what was last loaded from them.
#[derive(Debug)]
pub struct CertStore {
    files: RwLock<(String, String)>,
    current: RwLock<Arc<CertifiedKey>>,
}

impl CertStore {
    fn load(key_path: &str, cert_path: &str) -> Result<Arc<CertifiedKey>, String> {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert_path)
            .map_err(|e| format!("cannot read certificate {cert_path}: {e}"))?
            .collect::<Result<_, _>>()
            .map_err(|e| format!("bad certificate {cert_path}: {e}"))?;
        if certs.is_empty() {
            return Err(format!("no certificate in {cert_path}"));
        }
        let key = PrivateKeyDer::from_pem_file(key_path)
            .map_err(|e| format!("cannot read private key {key_path}: {e}"))?;
        let provider = rustls::crypto::aws_lc_rs::default_provider();
        let signer = provider
            .key_provider
            .load_private_key(key)
            .map_err(|e| format!("{key_path}: {e}"))?;
        let ck = CertifiedKey::new(certs, signer);
        ck.keys_match()
            .map_err(|e| format!("{cert_path} / {key_path}: {e}"))?;
        Ok(Arc::new(ck))
    }

    /// Reads the files (now `key_path` and `cert_path`) again. On an error the certificate in
    /// use stays and the error is returned.
    pub fn reload(&self, key_path: &str, cert_path: &str) -> Result<bool, String> {
        let ck = Self::load(key_path, cert_path)?;
        let changed = {
            let cur = self.current.read().unwrap_or_else(|e| e.into_inner());
            cur.cert != ck.cert
        };
        *self.files.write().unwrap_or_else(|e| e.into_inner()) =
            (key_path.to_string(), cert_path.to_string());
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = ck;
        Ok(changed)
    }

    /// The files it was loaded from: (key, certificate).
    pub fn files(&self) -> (String, String) {
        self.files.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        )
    }
}

/// Loads a certificate chain and key. The error names the file and what is wrong with it.
pub fn acceptor(key_path: &str, cert_path: &str) -> Result<(TlsAcceptor, Arc<CertStore>), String> {
    acceptor_with_alpn(key_path, cert_path, &[])
}

/// As [`acceptor`], offering `alpn` protocols (e.g. `h2`, `http/1.1`) in preference order.
pub fn acceptor_with_alpn(
    key_path: &str,
    cert_path: &str,
    alpn: &[&[u8]],
) -> Result<(TlsAcceptor, Arc<CertStore>), String> {
    let store = Arc::new(CertStore {
        current: RwLock::new(CertStore::load(key_path, cert_path)?),
        files: RwLock::new((key_path.to_string(), cert_path.to_string())),
    });
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_cert_resolver(store.clone());
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok((TlsAcceptor::from(Arc::new(config)), store))
}
