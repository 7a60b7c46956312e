//! TLS for the gateway's own port (`tls_cert_file`, `tls_key_file`; feature `tls`): the server
//! configuration, loaded at start (a certificate or key that cannot be used stops the start)
//! and loaded again on request (`Gateway::reload_tls`, SIGHUP in `floodgate serve`). A reload
//! that fails keeps the configuration in use; connections already open keep the session they
//! have, and new ones get the new certificate.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ServerConfig, ServerConnection};

/// The largest certificate chain or key file read.
pub(crate) const MAX_PEM_FILE: u64 = 1 << 20;

/// The current server configuration, shared by every shard.
pub(crate) struct ServerTls {
    cert: PathBuf,
    key: PathBuf,
    /// Swapped whole on reload; read (an `Arc` clone) once per accepted connection.
    current: RwLock<Arc<ServerConfig>>,
}

impl ServerTls {
    /// Loads the certificate chain and key.
    pub(crate) fn open(cert: &Path, key: &Path) -> Result<ServerTls, String> {
        Ok(ServerTls {
            cert: cert.to_owned(),
            key: key.to_owned(),
            current: RwLock::new(load(cert, key)?),
        })
    }

    /// Loads the files again; on failure the configuration in use stays.
    pub(crate) fn reload(&self) -> Result<(), String> {
        let config = load(&self.cert, &self.key)?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = config;
        Ok(())
    }

    /// A server session for a connection just accepted.
    pub(crate) fn session(&self) -> std::io::Result<ServerConnection> {
        let config = self
            .current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        ServerConnection::new(config).map_err(std::io::Error::other)
    }
}

fn load(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, String> {
    let read = |path: &Path, what: &str| {
        crate::config::read_small_file(path, MAX_PEM_FILE)
            .map_err(|e| format!("{what} {}: {e}", path.display()))
    };
    let chain_pem = read(cert, "tls_cert_file")?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&chain_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("tls_cert_file {}: {e}", cert.display()))?;
    if chain.is_empty() {
        return Err(format!(
            "tls_cert_file {} holds no certificate",
            cert.display()
        ));
    }
    let key_pem = read(key, "tls_key_file")?;
    let private = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|e| format!("tls_key_file {}: no private key in it ({e})", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(chain, private)
        .map_err(|e| {
            format!(
                "tls_cert_file {} and tls_key_file {}: {e}",
                cert.display(),
                key.display()
            )
        })?;
    Ok(Arc::new(config))
}
