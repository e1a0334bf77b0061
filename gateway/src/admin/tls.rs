//! TLS for the admin API: the certificate and key it serves with, and the CA that client
//! certificates must chain to when mTLS is on. Files are read at start, so a bad one stops the
//! gateway with a message naming the key instead of failing every handshake later.

use std::path::Path;
use std::time::Duration;

use tonic::transport::{Certificate, Identity, ServerTlsConfig};

use crate::config::TlsFiles;

/// How long a client may take to complete its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the admin API's TLS files cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum AdminTlsError {
    #[error("cannot read {key} {path}: {reason}")]
    Read {
        /// The configuration key naming the file.
        key: &'static str,
        path: String,
        reason: String,
    },
    #[error("{key} {path} holds no PEM {what}")]
    Empty {
        key: &'static str,
        path: String,
        what: &'static str,
    },
    #[error("the admin API's TLS certificate and key do not make a server configuration: {0}")]
    Config(String),
}

/// The server side of the admin API's TLS: `files` to serve with, and with `client_ca`,
/// client certificates required and verified against it.
pub fn server_tls(
    files: &TlsFiles,
    client_ca: Option<&Path>,
) -> Result<ServerTlsConfig, AdminTlsError> {
    // tonic builds its rustls configuration with the process-wide provider; make it ring, the
    // provider the rest of the gateway uses (a no-op if one is installed already).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cert = read_pem("admin_tls_cert", &files.cert, "CERTIFICATE", "certificate")?;
    let key = read_pem("admin_tls_key", &files.key, "PRIVATE KEY", "private key")?;
    let mut config = ServerTlsConfig::new()
        .identity(Identity::from_pem(cert, key))
        .timeout(HANDSHAKE_TIMEOUT);
    if let Some(ca) = client_ca {
        let ca = read_pem("admin_client_ca", ca, "CERTIFICATE", "certificate")?;
        config = config
            .client_ca_root(Certificate::from_pem(ca))
            .client_auth_optional(false);
    }
    Ok(config)
}

/// Reads a PEM file and checks it holds at least one block of the kind expected (`marker` is
/// matched in its `BEGIN` line, so `PRIVATE KEY` also accepts RSA and EC keys).
fn read_pem(
    key: &'static str,
    path: &Path,
    marker: &str,
    what: &'static str,
) -> Result<Vec<u8>, AdminTlsError> {
    let pem = std::fs::read(path).map_err(|e| AdminTlsError::Read {
        key,
        path: path.display().to_string(),
        reason: e.to_string(),
    })?;
    let text = String::from_utf8_lossy(&pem);
    let found = text
        .lines()
        .any(|line| line.starts_with("-----BEGIN ") && line.contains(marker));
    if !found {
        return Err(AdminTlsError::Empty {
            key,
            path: path.display().to_string(),
            what,
        });
    }
    Ok(pem)
}
