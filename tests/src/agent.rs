//! The real `execmesh-node-agent` binary as a test's host: spawned, awaited until its presence is written, stopped or killed.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::time::Duration;

use async_nats::jetstream;
use execmesh_proto::pb;
use tempfile::TempDir;

use crate::Nats;
use crate::presence::read_presence;
use crate::process::{ServiceProcess, service_command};

/// Name of the agent binary in the cargo target directory.
pub const AGENT_BINARY: &str = "execmesh-node-agent";
/// Default time an agent may take from spawn to its first acknowledged heartbeat.
const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// How to run one node-agent: its host id, labels and extra flags.
///
/// ```no_run
/// # async fn scenario(nats: &execmesh_tests::Nats) {
/// # use execmesh_tests::NodeAgent;
/// let agent = NodeAgent::new(nats, "web-1").label("role", "web").start().await;
/// # }
/// ```
#[derive(Clone)]
pub struct NodeAgent {
    /// URL of the test's nats-server.
    nats_url: String,
    /// The server's TLS files, when it runs in TLS mode.
    nats_tls: Option<crate::NatsTls>,
    /// The host id (a subject token).
    host: String,
    /// `--label k=v`, in order.
    labels: Vec<(String, String)>,
    /// Further command-line arguments, in order.
    args: Vec<String>,
    /// Environment variables set for the agent (the harness removes every inherited `EXECMESH_*`).
    envs: Vec<(String, String)>,
    /// `--gateway-key` values: the test mesh's key unless a test says otherwise.
    gateway_keys: Vec<String>,
    /// `--nats-nkey-seed`: the seed the agent connects and signs its records with (the test
    /// mesh's identity of its host unless a test says otherwise); `None`: no seed.
    nkey_seed: Option<PathBuf>,
    /// How long [`NodeAgent::start`] waits for the first heartbeat.
    ready_timeout: Duration,
}

/// A node-agent process started by [`NodeAgent::start`]; killed on drop. Its temp dir (working
/// directory and logs) is removed then too, unless the test is failing: then it is kept and named.
pub struct RunningAgent {
    /// The process.
    process: ServiceProcess,
    /// How it was started, so a restart repeats it exactly.
    spec: NodeAgent,
    /// Working directory of the agent and home of its log files (one per start).
    dir: TempDir,
    /// Starts so far.
    starts: usize,
    /// The heartbeat that proved the current (or last) start ready.
    presence: pb::Presence,
    /// JetStream over the harness's own connection, for readiness and presence reads.
    js: jetstream::Context,
}

// === impl NodeAgent ===

impl NodeAgent {
    /// An agent for `host`, connected to `nats`.
    pub fn new(nats: &Nats, host: &str) -> Self {
        Self {
            nats_url: nats.url(),
            nats_tls: nats.tls().cloned(),
            host: host.to_string(),
            labels: Vec::new(),
            args: replicas_args(nats),
            envs: Vec::new(),
            gateway_keys: vec![nats.mesh_public_key().to_string()],
            nkey_seed: Some(nats.identities().seed_file(&format!("agent-{host}"))),
            ready_timeout: READY_TIMEOUT,
        }
    }

    /// Connects and signs with the seed at `path` instead of the test mesh's for this host.
    pub fn nkey_seed(mut self, path: impl Into<PathBuf>) -> Self {
        self.nkey_seed = Some(path.into());
        self
    }

    /// Connects to `url` only instead of every server of the test mesh (on a cluster: one node,
    /// to see the agent find the others by itself).
    pub fn nats_url(mut self, url: impl Into<String>) -> Self {
        self.nats_url = url.into();
        self
    }

    /// Runs without any NATS seed: the agent's records go out unsigned.
    pub fn unsigned(mut self) -> Self {
        self.nkey_seed = None;
        self
    }

    /// Trusts these gateway keys (base64 keys or key files) instead of the test mesh's; an
    /// empty list makes an agent that refuses every request.
    pub fn gateway_keys(mut self, keys: &[&str]) -> Self {
        self.gateway_keys = keys.iter().map(|k| k.to_string()).collect();
        self
    }

    /// Adds `--label key=value`.
    pub fn label(mut self, key: &str, value: &str) -> Self {
        self.labels.push((key.to_string(), value.to_string()));
        self
    }

    /// Adds `flag value` (for example `.arg("--config", path)`).
    pub fn arg(mut self, flag: &str, value: impl AsRef<std::ffi::OsStr>) -> Self {
        self.args.push(flag.to_string());
        self.args
            .push(value.as_ref().to_string_lossy().into_owned());
        self
    }

    /// Adds a flag that takes no value.
    pub fn flag(mut self, flag: &str) -> Self {
        self.args.push(flag.to_string());
        self
    }

    /// Sets an environment variable for the agent process.
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.envs.push((key.to_string(), value.to_string()));
        self
    }

    /// How long `start` waits for the first heartbeat (default 20 s).
    pub fn ready_timeout(mut self, timeout: Duration) -> Self {
        self.ready_timeout = timeout;
        self
    }

    /// Spawns the agent and waits until its presence is in `mesh_presence`, which the agent
    /// writes (acknowledged) before it subscribes for work.
    pub async fn start(self) -> RunningAgent {
        self.spawn().await.ready().await
    }

    /// Spawns the agent without waiting for it: for tests that watch it start (its log) before
    /// [`StartingAgent::ready`].
    pub async fn spawn(self) -> StartingAgent {
        crate::init_tracing();
        let dir = tempfile::Builder::new()
            .prefix(&format!("execmesh-agent-{}-", self.host))
            .tempdir()
            .expect("create a temp dir for the node-agent");
        let js = jetstream::new(crate::nats::connect(&self.nats_url, self.nats_tls.as_ref()).await);
        let mut agent = RunningAgent {
            process: ServiceProcess::new(format!("node-agent {}", self.host)),
            spec: self,
            dir,
            starts: 0,
            presence: pb::Presence::default(),
            js,
        };
        let previous = agent.spawn_process().await;
        StartingAgent { agent, previous }
    }

    fn command(&self, cwd: &Path) -> Command {
        let mut command = service_command(AGENT_BINARY, cwd);
        command
            .arg("--nats-url")
            .arg(&self.nats_url)
            .arg("--host-id")
            .arg(&self.host);
        if let Some(tls) = &self.nats_tls {
            command.args(tls.flags());
        }
        for (key, value) in &self.labels {
            command.arg("--label").arg(format!("{key}={value}"));
        }
        for key in &self.gateway_keys {
            command.arg("--gateway-key").arg(key);
        }
        if let Some(seed) = &self.nkey_seed {
            command.arg("--nats-nkey-seed").arg(seed);
        }
        command.args(&self.args);
        command.envs(self.envs.iter().map(|(k, v)| (k, v)));
        command
    }
}

// === impl RunningAgent ===

impl RunningAgent {
    /// The host id.
    pub fn host(&self) -> &str {
        &self.spec.host
    }

    /// The pid of the running agent. Panics if it is stopped.
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// Freezes the agent (SIGSTOP): it sends nothing, heartbeats included, until [`Self::thaw`];
    /// its jobs' processes run on. A frozen agent is still killed when dropped.
    pub fn freeze(&self) {
        self.signal(nix::sys::signal::Signal::SIGSTOP);
    }

    /// Lets a frozen agent go on (SIGCONT).
    pub fn thaw(&self) {
        self.signal(nix::sys::signal::Signal::SIGCONT);
    }

    fn signal(&self, signal: nix::sys::signal::Signal) {
        let pid = i32::try_from(self.pid()).expect("a pid fits an i32");
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal)
            .unwrap_or_else(|e| panic!("cannot send {signal} to the agent: {e}"));
    }

    /// The agent's working directory (a temp dir; a place for its config files).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The log file of the current (or last) start.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join(format!("agent-{}.log", self.starts))
    }

    /// The last `lines` lines of the current (or last) start's log.
    pub fn log_tail(&self, lines: usize) -> String {
        crate::process::log_tail(&self.log_path(), lines)
    }

    /// The `agent_instance` of the current (or last) start, from its first heartbeat.
    pub fn instance(&self) -> &str {
        &self.presence.agent_instance
    }

    /// The live heartbeat of this host, read now.
    pub async fn presence(&self) -> Option<pb::Presence> {
        read_presence(&self.js, &self.spec.host).await
    }

    /// The exit status if the agent has exited by itself (or was stopped).
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.process.exited()
    }

    /// Kills the agent with SIGKILL and reaps it. Its presence key stays until its TTL expires.
    pub async fn kill_hard(&mut self) -> ExitStatus {
        self.process.kill_hard().await
    }

    /// SIGTERM, and waits for a graceful exit. Panics (after a SIGKILL) if the agent does not
    /// exit within 10 s.
    pub async fn stop(&mut self) -> ExitStatus {
        self.process.stop(&self.log_path()).await
    }

    /// Starts the agent again with the same arguments (stopping it gracefully first if it runs)
    /// and waits until the new process has written its own heartbeat. That also works after
    /// [`RunningAgent::kill_hard`], when the old process's presence key is still there: readiness
    /// is a heartbeat with a new `agent_instance`.
    pub async fn restart(&mut self) {
        if self.process.is_running() {
            self.stop().await;
        }
        self.launch().await;
    }

    /// Spawns the agent and waits for a heartbeat from an instance other than any present before.
    async fn launch(&mut self) {
        let previous = self.spawn_process().await;
        self.wait_ready(previous).await;
    }

    /// Spawns the agent's process; returns the instance whose heartbeat was there before it.
    async fn spawn_process(&mut self) -> Option<String> {
        let previous = read_presence(&self.js, &self.spec.host)
            .await
            .map(|p| p.agent_instance);
        self.starts += 1;
        let log = self.log_path();
        let command = self.spec.command(self.dir.path());
        self.process.spawn(command, &log);
        previous
    }

    /// Waits for a heartbeat from an instance other than `previous`. Panics when the process
    /// exits first or none comes within the ready timeout.
    async fn wait_ready(&mut self, previous: Option<String>) {
        let host = self.spec.host.clone();
        let log = self.log_path();
        let deadline = tokio::time::Instant::now() + self.spec.ready_timeout;
        loop {
            if let Some(presence) = read_presence(&self.js, &host).await
                && previous.as_deref() != Some(presence.agent_instance.as_str())
            {
                tracing::debug!(%host, instance = %presence.agent_instance, "node-agent ready");
                self.presence = presence;
                return;
            }
            let timeout = self.spec.ready_timeout;
            self.process.assert_waiting(
                deadline,
                &log,
                format_args!("wrote no presence within {timeout:?}"),
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// An agent spawned by [`NodeAgent::spawn`], not yet known to be up.
pub struct StartingAgent {
    agent: RunningAgent,
    /// The instance whose heartbeat was there before this start.
    previous: Option<String>,
}

// === impl StartingAgent ===

impl StartingAgent {
    /// The log of this start.
    pub fn log_path(&self) -> PathBuf {
        self.agent.log_path()
    }

    /// Whether the process is still running (it has not exited, for whatever reason).
    pub fn is_running(&self) -> bool {
        self.agent.process.is_running()
    }

    /// Waits until the agent has written its heartbeat, as [`NodeAgent::start`] does. Panics
    /// when the process exits first or none comes within the ready timeout.
    pub async fn ready(mut self) -> RunningAgent {
        self.agent.wait_ready(self.previous.take()).await;
        self.agent
    }
}

impl Drop for RunningAgent {
    fn drop(&mut self) {
        self.process.discard_keeping_logs(&mut self.dir);
    }
}

/// `--replicas N` when `nats` is a cluster: what an agent or sink creates is replicated as an
/// operator configures a clustered mesh.
pub(crate) fn replicas_args(nats: &Nats) -> Vec<String> {
    match nats.replicas() {
        1 => Vec::new(),
        n => vec!["--replicas".to_string(), n.to_string()],
    }
}
