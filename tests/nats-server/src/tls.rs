//! TLS mode: the test CA and certificates a server is started with, and what clients need to reach it.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::certificates::{PemFiles, TestCa};

/// How long a client may take to complete its TLS handshake with the server, in seconds. The
/// server's default (0.5 s) is too short for a loaded test machine.
const TLS_TIMEOUT_SECS: u32 = 5;

/// What a client needs to reach a server in TLS mode ([`crate::NatsServerBuilder::tls`]): the
/// test CA that signed the server's certificate and, when the server verifies clients, a client
/// certificate.
#[derive(Debug, Clone)]
pub struct NatsTls {
    /// The test CA's certificate (PEM), which signed the server's certificate.
    pub ca: PathBuf,
    /// A client certificate the CA signed; `Some` only when the server verifies clients.
    pub client: Option<PemFiles>,
}

// === impl NatsTls ===

impl NatsTls {
    /// `options` with this CA trusted, the client certificate (if any) presented, and TLS
    /// required.
    pub fn options(&self, options: async_nats::ConnectOptions) -> async_nats::ConnectOptions {
        let options = options
            .add_root_certificates(self.ca.clone())
            .require_tls(true);
        match &self.client {
            Some(client) => options.add_client_certificate(client.cert.clone(), client.key.clone()),
            None => options,
        }
    }

    /// The flags the agent and audit-sink binaries take for these files (`--nats-tls-ca`, and
    /// `--nats-tls-cert` / `--nats-tls-key` with a client certificate).
    pub fn flags(&self) -> Vec<OsString> {
        let mut flags = vec!["--nats-tls-ca".into(), self.ca.clone().into_os_string()];
        if let Some(client) = &self.client {
            flags.extend([
                "--nats-tls-cert".into(),
                client.cert.clone().into_os_string(),
                "--nats-tls-key".into(),
                client.key.clone().into_os_string(),
            ]);
        }
        flags
    }
}

/// Makes the test CA, the server's certificate (and a client certificate when `verify`) under
/// `<dir>/tls`, and returns what clients need with the server's `tls` config block.
pub(crate) fn make_tls(dir: &Path, verify: bool) -> (NatsTls, String) {
    let tls_dir = dir.join("tls");
    std::fs::create_dir(&tls_dir).expect("create the TLS dir of nats-server");
    let ca = TestCa::new("execmesh test NATS CA");
    let ca_file = ca.write(&tls_dir, "ca");
    let server = ca
        .server(&["127.0.0.1", "localhost"])
        .write(&tls_dir, "server");
    let client = verify.then(|| ca.client("execmesh-tests").write(&tls_dir, "client"));
    let block = format!(
        "tls {{\n  cert_file: \"{}\"\n  key_file: \"{}\"\n  ca_file: \"{}\"\n  verify: {verify}\n  timeout: {TLS_TIMEOUT_SECS}\n}}\n",
        server.cert.display(),
        server.key.display(),
        ca_file.display(),
    );
    let tls = NatsTls {
        ca: ca_file,
        client,
    };
    (tls, block)
}

/// How long the first connection may take; the client's default (5 s) is too short for a
/// loaded test machine that starts many agents at once.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);

/// Connects to `url` (several comma separated: a cluster's nodes; with `tls` when the server is
/// in TLS mode) with a reconnect delay short enough for restart tests.
pub async fn connect(url: &str, tls: Option<&NatsTls>) -> async_nats::Client {
    let servers: Vec<async_nats::ServerAddr> = url
        .split(',')
        .map(|u| {
            u.trim()
                .parse()
                .unwrap_or_else(|e| panic!("bad NATS URL {u}: {e}"))
        })
        .collect();
    let options = async_nats::ConnectOptions::new();
    let options = match tls {
        Some(tls) => tls.options(options),
        None => options,
    };
    options
        .name("execmesh-tests")
        .connection_timeout(CONNECT_TIMEOUT)
        .reconnect_delay_callback(|attempts| Duration::from_millis((attempts as u64 * 25).min(250)))
        .connect(servers)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to {url}: {e}"))
}
