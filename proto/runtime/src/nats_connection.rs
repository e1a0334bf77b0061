//! What the gateway, the agents and the audit-sink share about their NATS connections: TLS files read and checked before async-nats is given them (so a bad one is named), and the server's permission errors read back into an operation and a subject.

use std::path::{Path, PathBuf};

use async_nats::ConnectOptions;
use async_nats::rustls::RootCertStore;
use async_nats::rustls::pki_types::pem::PemObject;
use async_nats::rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// A TLS file for NATS that cannot be used, named by its configuration key and path.
#[derive(Debug, thiserror::Error)]
#[error("cannot use {key} {}: {reason}", path.display())]
pub struct NatsTlsError {
    /// The configuration key that names the file (`nats_tls_ca`, `nats_tls_cert`, `nats_tls_key`).
    pub key: &'static str,
    pub path: PathBuf,
    pub reason: String,
}

/// Adds TLS to `options`: `ca` verifies the server, `client` (certificate, key) is presented to a
/// server that verifies clients; either one makes TLS required. async-nats reads the files only
/// when it connects and reports a bad one without its name (or as a failed handshake), so each
/// is read here first.
pub fn apply_tls(
    mut options: ConnectOptions,
    ca: Option<&Path>,
    client: Option<(&Path, &Path)>,
) -> Result<ConnectOptions, NatsTlsError> {
    if let Some(ca) = ca {
        check_ca(ca)?;
        options = options
            .add_root_certificates(ca.to_path_buf())
            .require_tls(true);
    }
    if let Some((cert, key)) = client {
        certificates("nats_tls_cert", cert)?;
        PrivateKeyDer::from_pem_file(key).map_err(|e| error("nats_tls_key", key, e.to_string()))?;
        options = options
            .add_client_certificate(cert.to_path_buf(), key.to_path_buf())
            .require_tls(true);
    }
    Ok(options)
}

fn error(key: &'static str, path: &Path, reason: String) -> NatsTlsError {
    NatsTlsError {
        key,
        path: path.to_path_buf(),
        reason,
    }
}

/// The PEM certificates in `path`: at least one, or the reason there is none.
fn certificates(
    key: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, NatsTlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| error(key, path, e.to_string()))?;
    if certs.is_empty() {
        return Err(error(key, path, "no PEM certificate in the file".into()));
    }
    Ok(certs)
}

/// Checks that every certificate in `path` can be a trust anchor.
fn check_ca(path: &Path) -> Result<(), NatsTlsError> {
    let mut roots = RootCertStore::empty();
    for cert in certificates("nats_tls_ca", path)? {
        roots.add(cert).map_err(|e| {
            error(
                "nats_tls_ca",
                path,
                format!("not a usable CA certificate: {e}"),
            )
        })?;
    }
    Ok(())
}

/// Reads the server's `Permissions Violation for Publish to "<subject>"` (or `Subscription to`)
/// as (`publish` | `subscribe`, subject). A publish refused for permissions reaches a client only
/// as this error on its event callback, so each process logs it with the subject.
pub fn permission_violation(msg: &str) -> Option<(&'static str, &str)> {
    let rest = msg.trim().strip_prefix("Permissions Violation for ")?;
    let (operation, rest) = if let Some(rest) = rest.strip_prefix("Publish to ") {
        ("publish", rest)
    } else if let Some(rest) = rest.strip_prefix("Subscription to ") {
        ("subscribe", rest)
    } else {
        ("other", rest)
    };
    let subject = rest.trim().trim_matches('"');
    Some((operation, subject.split('"').next().unwrap_or(subject)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unusable_tls_files_are_named_with_their_key_and_reason() {
        let dir = tempfile::tempdir().expect("temp dir");
        let garbage = dir.path().join("garbage.pem");
        std::fs::write(&garbage, "not a certificate\n").expect("write");
        let missing = dir.path().join("missing.pem");
        let options = ConnectOptions::new;

        let err = apply_tls(options(), Some(&garbage), None)
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            format!(
                "cannot use nats_tls_ca {}: no PEM certificate in the file",
                garbage.display()
            )
        );
        let err = apply_tls(options(), Some(&missing), None)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("nats_tls_ca")
                && err.contains("missing.pem")
                && err.contains("No such file"),
            "{err}"
        );
        let err = apply_tls(options(), None, Some((&missing, &garbage)))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("nats_tls_cert") && err.contains("missing.pem"),
            "{err}"
        );
    }

    #[test]
    fn permission_violations_name_the_operation_and_subject() {
        assert_eq!(
            permission_violation(
                r#"Permissions Violation for Publish to "mesh.v1.default.out.web-2.x""#
            ),
            Some(("publish", "mesh.v1.default.out.web-2.x"))
        );
        assert_eq!(
            permission_violation(
                r#"Permissions Violation for Subscription to "mesh.v1.default.host.web-2.>" using queue "q""#
            ),
            Some(("subscribe", "mesh.v1.default.host.web-2.>"))
        );
        assert_eq!(permission_violation("Stale Connection"), None);
    }
}
