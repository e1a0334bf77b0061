//! The NATS connection every service opens, written once: authentication, TLS files read and checked before async-nats is given them (so a bad one is named), reconnects, and the logging of connection events, with the server's permission errors read back into an operation and a subject.

use std::path::{Path, PathBuf};

use async_nats::rustls::RootCertStore;
use async_nats::rustls::pki_types::pem::PemObject;
use async_nats::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use async_nats::{Client, ClientError, ConnectOptions, Event, ServerAddr, ServerError};
use tracing::{debug, info, warn};

/// Where NATS is and how a service authenticates to it and verifies it: the resolved NATS
/// settings of one service, borrowed from its configuration.
#[derive(Debug, Clone, Copy)]
pub struct NatsTarget<'a> {
    /// One server URL, or several separated by commas (tried in turn).
    pub url: &'a str,
    /// `.creds` file (user JWT and nkey seed).
    pub creds: Option<&'a Path>,
    /// File holding an nkey seed.
    pub nkey_seed: Option<&'a Path>,
    /// CA certificate that verifies the server; setting it turns TLS on.
    pub tls_ca: Option<&'a Path>,
    /// Certificate and key presented to a server that verifies clients.
    pub tls_client: Option<(&'a Path, &'a Path)>,
    /// Refuse a server that does not speak TLS.
    pub tls_required: bool,
}

/// What differs between the services that connect: how the server shows the connection, where
/// its replies arrive, and how its log lines name it.
#[derive(Debug, Clone)]
pub struct ConnectAs {
    /// The connection name the server shows (`execmesh-gateway`, `execmesh-node-agent web-1`).
    pub name: String,
    /// The prefix replies (JetStream API answers, request replies) arrive under: the only inbox
    /// the service's NATS permissions let it read.
    pub inbox_prefix: String,
    /// Logged as `host` with every connection event (an agent's host id).
    pub host: Option<String>,
    /// Whose permissions refused an operation, in the log line that reports it
    /// (`the gateway's NATS user`).
    pub user: &'static str,
}

/// Why the first connection was not made, naming the URL or the file and the reason.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// A URL does not parse, or no server answered (or it refused the credentials).
    #[error("cannot connect to NATS at {url}: {source}")]
    Connect {
        url: String,
        source: async_nats::ConnectError,
    },
    /// The creds or nkey seed file cannot be read.
    #[error("cannot read NATS credentials from {}: {source}", path.display())]
    Credentials {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A TLS file cannot be used.
    #[error(transparent)]
    Tls(#[from] NatsTlsError),
}

/// Connects once, failing fast with the URL or the file in the error: a wrong address or
/// credential should stop a service at start, not leave it retrying quietly. After that first
/// connection the client reconnects forever, logging each connection event.
pub async fn connect(target: &NatsTarget<'_>, who: ConnectAs) -> Result<Client, ConnectError> {
    let url = target.url.to_string();
    let addrs = url
        .split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(|u| u.parse::<ServerAddr>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ConnectError::Connect {
            url: url.clone(),
            source: async_nats::ConnectError::with_source(
                async_nats::ConnectErrorKind::ServerParse,
                e,
            ),
        })?;
    let credentials = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ConnectError::Credentials { path, source }
    };
    let mut options = match target.creds {
        Some(path) => ConnectOptions::with_credentials_file(path)
            .await
            .map_err(credentials(path))?,
        None => ConnectOptions::new(),
    };
    if let Some(path) = target.nkey_seed {
        let seed = std::fs::read_to_string(path).map_err(credentials(path))?;
        options = options.nkey(seed.trim().to_string());
    }
    options = apply_tls(options, target.tls_ca, target.tls_client)?;
    if target.tls_required {
        options = options.require_tls(true);
    }
    let ConnectAs {
        name,
        inbox_prefix,
        host,
        user,
    } = who;
    options
        .name(name)
        .custom_inbox_prefix(inbox_prefix)
        .max_reconnects(None)
        .event_callback(move |event| {
            let host = host.clone();
            async move { log_event(host.as_deref(), user, event) }
        })
        .connect(addrs)
        .await
        .map_err(|source| ConnectError::Connect { url, source })
}

/// Logs one connection event. A publish or subscription refused for permissions reaches the
/// client only here, so it is logged loudly with the subject: otherwise a misconfigured NATS
/// account would look like a service that does not answer.
fn log_event(host: Option<&str>, user: &str, event: Event) {
    match event {
        Event::Connected => info!(host, "connected to NATS"),
        Event::Disconnected => {
            crate::metrics::NATS_RECONNECTS.inc();
            warn!(host, "disconnected from NATS; reconnecting")
        }
        Event::ServerError(ServerError::Other(msg)) => match permission_violation(&msg) {
            Some((operation, subject)) => warn!(
                host,
                operation,
                subject,
                error = %msg,
                "NATS refused an operation for permissions ({user} does not allow it)"
            ),
            None => warn!(host, error = %msg, "NATS server error"),
        },
        Event::ServerError(e) => warn!(host, error = %e, "NATS server error"),
        // async-nats reports each failed connection attempt this way, once per attempt.
        Event::ClientError(ClientError::Other(e)) => {
            warn!(host, error = %e, "NATS reconnect attempt failed")
        }
        Event::ClientError(e) => warn!(host, error = %e, "NATS client error"),
        Event::SlowConsumer(sid) => warn!(host, sid, "NATS slow consumer: messages were dropped"),
        Event::LameDuckMode => warn!(host, "NATS server entered lame duck mode"),
        Event::Draining => debug!(host, "NATS connection draining"),
        Event::Closed => info!(host, "NATS connection closed"),
    }
}

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
