//! The real `execmesh-node-agent relay` as one user's SSH relay: its config file written from the test's targets, spawned, awaited until each target shows online (or offline with a reason), stopped or killed.
//!
//! ```no_run
//! # async fn scenario(nats: &execmesh_tests::Nats) {
//! # use execmesh_tests::{relay::Relay, sshd::Sshd};
//! let sshd = Sshd::start().await;
//! let relay = Relay::new(nats, "alice").target("box-1", &sshd).start(nats).await;
//! # }
//! ```

use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::Duration;

use async_nats::jetstream;
use execmesh_proto::pb;
use tempfile::TempDir;

use crate::Nats;
use crate::agent::AGENT_BINARY;
use crate::presence::read_presence;
use crate::process::{ServiceProcess, service_command};
use crate::sshd::Sshd;

/// How long a relay may take until its targets show online (or offline with a reason).
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// One target of a test relay.
#[derive(Clone)]
struct TargetEntry {
    id: String,
    destination: String,
    ssh_config: PathBuf,
    labels: Vec<(String, String)>,
    /// Extra lines of the target's table (`remote_timeout_ms = 2000`).
    extra: Vec<String>,
}

/// How to run one user's relay.
#[derive(Clone)]
pub struct Relay {
    nats_url: String,
    user: String,
    targets: Vec<TargetEntry>,
    gateway_key: String,
    seed: Option<PathBuf>,
    /// Extra top-level TOML lines (`max_tier = "readonly"`).
    extra: Vec<String>,
    /// Whether `start` waits for the targets to be online (else: for their offline reason).
    expect_online: bool,
}

/// A relay started by [`Relay::start`]; killed on drop.
pub struct RunningRelay {
    process: ServiceProcess,
    spec: Relay,
    dir: TempDir,
    js: jetstream::Context,
}

// === impl Relay ===

impl Relay {
    /// The relay of `user` on the test mesh, signing with the mesh's `relay-<user>` identity.
    pub fn new(nats: &Nats, user: &str) -> Self {
        Self {
            nats_url: nats.url(),
            user: user.to_string(),
            targets: Vec::new(),
            gateway_key: nats.mesh_public_key().to_string(),
            seed: None,
            extra: Vec::new(),
            expect_online: true,
        }
    }

    /// Serves `id` through `sshd` (its alias and ssh config).
    pub fn target(mut self, id: &str, sshd: &Sshd) -> Self {
        self.targets.push(TargetEntry {
            id: id.to_string(),
            destination: sshd.alias().to_string(),
            ssh_config: sshd.ssh_config(),
            labels: Vec::new(),
            extra: Vec::new(),
        });
        self
    }

    /// Adds a label to the last target.
    pub fn label(mut self, key: &str, value: &str) -> Self {
        if let Some(t) = self.targets.last_mut() {
            t.labels.push((key.to_string(), value.to_string()));
        }
        self
    }

    /// Adds a line to the last target's table (`remote_timeout_ms = 2000`).
    pub fn target_setting(mut self, line: &str) -> Self {
        if let Some(t) = self.targets.last_mut() {
            t.extra.push(line.to_string());
        }
        self
    }

    /// Adds a top-level line to the relay's file (`max_tier = "readonly"`).
    pub fn setting(mut self, line: &str) -> Self {
        self.extra.push(line.to_string());
        self
    }

    /// Connects and signs with this seed file instead of the mesh's `relay-<user>`.
    pub fn seed(mut self, path: PathBuf) -> Self {
        self.seed = Some(path);
        self
    }

    /// `start` waits until every target is offline with a reason, not online.
    pub fn expect_offline(mut self) -> Self {
        self.expect_online = false;
        self
    }

    fn config(&self, seed: &std::path::Path) -> String {
        let q = |s: &str| format!("{s:?}");
        let mut text = format!(
            "user = {}\nnats_url = {}\nnats_nkey_seed = {}\ngateway_keys = [{}]\nheartbeat_interval_ms = 500\n",
            q(&self.user),
            q(&self.nats_url),
            q(&seed.display().to_string()),
            q(&self.gateway_key),
        );
        for line in &self.extra {
            text.push_str(line);
            text.push('\n');
        }
        for t in &self.targets {
            text.push_str(&format!(
                "\n[[targets]]\nid = {}\ndestination = {}\nssh_config = {}\n",
                q(&t.id),
                q(&t.destination),
                q(&t.ssh_config.display().to_string())
            ));
            if !t.labels.is_empty() {
                let labels: Vec<String> = t
                    .labels
                    .iter()
                    .map(|(k, v)| format!("{k} = {}", q(v)))
                    .collect();
                text.push_str(&format!("labels = {{ {} }}\n", labels.join(", ")));
            }
            for line in &t.extra {
                text.push_str(line);
                text.push('\n');
            }
        }
        text
    }

    /// Writes the file, spawns the relay and waits until its targets show their state.
    pub async fn start(self, nats: &Nats) -> RunningRelay {
        crate::init_tracing();
        let dir = tempfile::Builder::new()
            .prefix(&format!("execmesh-relay-{}-", self.user))
            .tempdir()
            .expect("create a temp dir for the relay");
        let targets: Vec<&str> = self.targets.iter().map(|t| t.id.as_str()).collect();
        let seed = match &self.seed {
            Some(seed) => seed.clone(),
            None => nats.identities().relay_seed_file(&self.user, &targets),
        };
        let path = dir.path().join("relay.toml");
        std::fs::write(&path, self.config(&seed)).expect("write relay.toml");
        let js = jetstream::new(crate::nats::connect(&self.nats_url, None).await);
        let mut relay = RunningRelay {
            process: ServiceProcess::new(format!("relay {}", self.user)),
            spec: self,
            dir,
            js,
        };
        relay.launch().await;
        relay
    }
}

// === impl RunningRelay ===

impl RunningRelay {
    fn log_path(&self) -> PathBuf {
        self.dir.path().join("relay.log")
    }

    /// The last lines of the relay's log.
    pub fn log_tail(&self, lines: usize) -> String {
        crate::process::log_tail(&self.log_path(), lines)
    }

    async fn launch(&mut self) {
        let mut command = service_command(AGENT_BINARY, self.dir.path());
        command
            .arg("relay")
            .arg("--config")
            .arg(self.dir.path().join("relay.toml"));
        let ids: Vec<String> = self.spec.targets.iter().map(|t| t.id.clone()).collect();
        // A heartbeat of an earlier start may still be there (after a kill): readiness is one
        // from a new instance.
        let mut earlier = Vec::new();
        for id in &ids {
            earlier.push(read_presence(&self.js, id).await.map(|p| p.agent_instance));
        }
        let log = self.log_path();
        self.process.spawn(command, &log);
        let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
        loop {
            let mut ready = true;
            for (id, earlier) in ids.iter().zip(&earlier) {
                ready &= if self.spec.expect_online {
                    read_presence(&self.js, id)
                        .await
                        .is_some_and(|p| earlier.as_deref() != Some(p.agent_instance.as_str()))
                } else {
                    self.facts(id)
                        .await
                        .is_some_and(|f| !f.relay_offline_reason.is_empty())
                };
            }
            if ready {
                return;
            }
            self.process.assert_waiting(
                deadline,
                &log,
                format_args!("targets {ids:?} not ready within {READY_TIMEOUT:?}"),
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The fact pack the relay wrote for `target`.
    pub async fn facts(&self, target: &str) -> Option<pb::HostFacts> {
        use prost::Message as _;
        let kv = self
            .js
            .get_key_value(execmesh_proto::jetstream::FACTS_BUCKET)
            .await
            .ok()?;
        let key = format!("{}.{target}", execmesh_proto::subject::DEFAULT_TENANT);
        let value = kv.get(key).await.ok()??;
        pb::HostFacts::decode(value.as_ref()).ok()
    }

    /// The live heartbeat of `target`.
    pub async fn presence(&self, target: &str) -> Option<pb::Presence> {
        read_presence(&self.js, target).await
    }

    /// Starts the relay again with the same file (stopping it first if it runs) and waits until
    /// its targets show a heartbeat of the new instance.
    pub async fn restart(&mut self) {
        if self.process.is_running() {
            self.stop().await;
        }
        self.launch().await;
    }

    /// Kills the relay with SIGKILL.
    pub async fn kill_hard(&mut self) -> ExitStatus {
        self.process.kill_hard().await
    }

    /// SIGTERM, and waits for a graceful exit.
    pub async fn stop(&mut self) -> ExitStatus {
        let log = self.log_path();
        self.process.stop(&log).await
    }
}

impl Drop for RunningRelay {
    fn drop(&mut self) {
        self.process.discard_keeping_logs(&mut self.dir);
    }
}
