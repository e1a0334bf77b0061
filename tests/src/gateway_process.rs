//! The real `execmesh-gateway` binary as one more replica of a test's gateway: spawned with the same keys, audience and policy, so it accepts the same tokens, and killable by its pid.

use std::time::Duration;

use tempfile::TempDir;

use crate::process::{ServiceProcess, service_command};
use crate::{Nats, RunningGateway};

/// Name of the gateway binary in the cargo target directory.
pub const GATEWAY_BINARY: &str = "execmesh-gateway";
/// How long the binary may take from spawn until it says where it serves MCP.
const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// The line the gateway logs once it serves, followed by its MCP URL.
const SERVING: &str = "serving MCP at ";

/// A gateway process started by [`RunningGateway::spawn_replica`]; killed on drop. Its temp dir
/// (working directory and log) goes too, unless the test is failing: then it is kept and named.
pub struct GatewayProcess {
    /// The process.
    process: ServiceProcess,
    /// The MCP endpoint it serves, read from its log.
    url: String,
    /// Working directory and home of its log.
    dir: TempDir,
}

// === impl RunningGateway ===

impl RunningGateway {
    /// Starts the real gateway binary as another replica of this gateway on `nats` (the same
    /// token key, public URL, policy file and exec signing key, the test mesh's gateway
    /// identity) on a free loopback port, and waits until it serves.
    pub async fn spawn_replica(&self, nats: &Nats) -> GatewayProcess {
        self.spawn_replica_with(nats, &[]).await
    }

    /// [`spawn_replica`](Self::spawn_replica) with `args` added to its command line.
    pub async fn spawn_replica_with(&self, nats: &Nats, args: &[&str]) -> GatewayProcess {
        crate::init_tracing();
        let dir = tempfile::Builder::new()
            .prefix("execmesh-gateway-process-")
            .tempdir()
            .expect("create a temp dir for the gateway process");
        let mut command = service_command(GATEWAY_BINARY, dir.path());
        command
            .arg("--nats-url")
            .arg(nats.url())
            .arg("--listen")
            .arg("127.0.0.1:0")
            // Its default admin port is fixed (8421): scenarios side by side would collide.
            .arg("--admin-addr")
            .arg("off")
            .arg("--key-file")
            .arg(self.key_file())
            .arg("--public-url")
            .arg(&self.audience().resource)
            .arg("--exec-signing-key")
            .arg(nats.mesh_signing_key())
            .arg("--nats-nkey-seed")
            .arg(nats.identities().seed_file("gateway"))
            .arg("--identities-file")
            .arg(nats.identities().identities_file());
        if let Some(tls) = nats.tls() {
            command.args(tls.flags());
        }
        if let Some(policy) = self.policy_path() {
            command.arg("--policy-file").arg(policy);
        }
        command.args(args);
        let log = dir.path().join("gateway.log");
        let mut process = ServiceProcess::new("execmesh-gateway replica");
        process.spawn(command, &log);

        let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
        let url = loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if let Some(url) = text
                .split_once(SERVING)
                .and_then(|(_, rest)| rest.split_whitespace().next())
            {
                break url.to_string();
            }
            process.assert_waiting(
                deadline,
                &log,
                format_args!("did not serve within {READY_TIMEOUT:?}"),
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        tracing::debug!(%url, "gateway process ready");
        GatewayProcess { process, url, dir }
    }
}

// === impl GatewayProcess ===

impl GatewayProcess {
    /// The MCP endpoint, `http://127.0.0.1:<port>/mcp`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The pid of the running gateway. Panics if it is stopped.
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// What the gateway has logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("gateway.log")).unwrap_or_default()
    }

    /// SIGKILL and reap: no drain, no goodbye.
    pub async fn kill_hard(&mut self) {
        self.process.kill_hard().await;
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        self.process.discard_keeping_logs(&mut self.dir);
    }
}
