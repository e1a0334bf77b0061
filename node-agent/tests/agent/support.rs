//! The node-agent tests' harness: agents run in this process on a real nats-server (the shared `execmesh-nats-server`), request helpers.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use execmesh_node_agent::{Config, Ready};
use execmesh_proto::pb::{self, ErrorCode};
use execmesh_proto::signing::{self, SignedRequest, SigningKey};
use execmesh_proto::{Token, subject};
use prost::Message as _;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;

pub use execmesh_nats_server::{NatsServer as Nats, eventually};

/// How long a condition a test waits for may take to hold.
pub const WAIT: Duration = Duration::from_secs(5);

/// An agent running in this process (as `execmesh_node_agent::run` runs it in the binary).
pub struct Agent {
    pub host: Token,
    pub shutdown: CancellationToken,
    pub task: JoinHandle<Result<(), execmesh_node_agent::AgentError>>,
    pub ready: Ready,
}

/// Logs of the agents under test, when `EXECMESH_TEST_LOG` holds a filter.
pub fn init_logs() {
    if let Ok(filter) = std::env::var("EXECMESH_TEST_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_test_writer()
            .try_init();
    }
}

// === impl Agent ===

impl Agent {
    /// Starts the agent and waits until it reports ready (presence stored, subscriptions live).
    pub async fn start(config: Config) -> Agent {
        init_logs();
        let shutdown = CancellationToken::new();
        let (tx, rx) = oneshot::channel();
        let host = config.host_id.clone();
        let launch = execmesh_node_agent::Launch {
            ready: Some(tx),
            ..Default::default()
        };
        let task = tokio::spawn(execmesh_node_agent::run_with(
            config,
            shutdown.clone(),
            launch,
        ));
        let ready = timeout(Duration::from_secs(10), rx)
            .await
            .expect("agent ready in time")
            .expect("agent reports ready");
        Agent {
            host,
            shutdown,
            task,
            ready,
        }
    }

    /// Starts an agent for `host` on `nats` with the test [`config`] changed by `change`.
    pub async fn start_with(nats: &Nats, host: &str, change: impl FnOnce(&mut Config)) -> Agent {
        let mut config = config(nats, host);
        change(&mut config);
        Agent::start(config).await
    }

    /// Cancels the agent and waits for a clean stop.
    pub async fn stop(self) {
        self.shutdown.cancel();
        timeout(Duration::from_secs(30), self.task)
            .await
            .expect("agent stops in time")
            .expect("agent task")
            .expect("agent run");
    }
}

/// An agent whose only file root is a fresh temp dir, and a client of its server: what the
/// file and grep scenarios run against.
pub struct RootedAgent {
    pub agent: Agent,
    /// The file root, as a canonical path.
    pub root: PathBuf,
    /// Removes the root when the scenario ends.
    _root_dir: tempfile::TempDir,
    pub client: async_nats::Client,
}

// === impl RootedAgent ===

impl RootedAgent {
    /// Starts the agent `host` on `nats` with a fresh file root, its test [`config`] changed
    /// further by `change`.
    pub async fn start_with(nats: &Nats, host: &str, change: impl FnOnce(&mut Config)) -> Self {
        let (root_dir, root) = temp_root();
        let agent = Agent::start_with(nats, host, |c| {
            c.file_roots = vec![root.clone()];
            change(c);
        })
        .await;
        RootedAgent {
            agent,
            root,
            _root_dir: root_dir,
            client: nats.client().await,
        }
    }

    /// `root/rel` as a request path.
    pub fn path(&self, rel: &str) -> String {
        self.root.join(rel).display().to_string()
    }

    /// Stops the agent cleanly.
    pub async fn stop(self) {
        self.agent.stop().await;
    }
}

/// A fresh nats-server, the agent `host` on it with the test [`config`], and a client of the
/// server: the setup most scenarios start from.
pub async fn start_node(host: &str) -> (Nats, Agent, async_nats::Client) {
    start_node_with(host, |_| {}).await
}

/// [`start_node`] with the agent's configuration changed by `change`.
pub async fn start_node_with(
    host: &str,
    change: impl FnOnce(&mut Config),
) -> (Nats, Agent, async_nats::Client) {
    let nats = Nats::start().await;
    let agent = Agent::start_with(&nats, host, change).await;
    let client = nats.client().await;
    (nats, agent, client)
}

/// A test configuration: short heartbeats and grace periods; trusts the test gateway key.
pub fn config(nats: &Nats, host: &str) -> Config {
    Config {
        heartbeat_interval_ms: 500,
        kill_grace_ms: 300,
        shutdown_grace_ms: 500,
        gateway_keys: vec![gateway_public_key()],
        ..Config::new(&nats.url(), host).expect("config")
    }
}

/// The key the tests sign requests with, as a gateway would.
pub fn gateway_key() -> SigningKey {
    SigningKey::from_bytes(&[42; 32])
}

/// [`gateway_key`]'s public half, as an agent's `gateway_keys` entry.
pub fn gateway_public_key() -> String {
    signing::public_key_to_base64(&gateway_key().verifying_key())
}

/// `req` with a fresh nonce, encoded and signed with [`gateway_key`].
pub fn sign<R: SignedRequest>(mut req: R) -> Vec<u8> {
    req.set_nonce(rand::random::<[u8; 16]>().to_vec());
    signing::encode_signed(req, &gateway_key())
}

/// A directory for an agent's file root, with its canonical path.
pub fn temp_root() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("temp dir");
    let root = std::fs::canonicalize(dir.path()).expect("canonical root");
    (dir, root)
}

pub fn tenant() -> Token {
    Token::parse("tenant", "default").expect("token")
}

pub fn tok(kind: &'static str, s: &str) -> Token {
    Token::parse(kind, s).expect("token")
}

/// An ExecRequest for `host` by `alice`, valid for 30 s.
pub fn request(host: &Token, job: &str, body: pb::exec_request::Body) -> pb::ExecRequest {
    pb::ExecRequest {
        tenant: "default".into(),
        host: host.to_string(),
        job_id: job.into(),
        user: "alice".into(),
        expires_at_ms: execmesh_proto::now_ms() + 30_000,
        trace_id: "4bf92f3577b34da6a3ce929d0e0e4736".into(),
        tier: pb::Tier::Dangerous as i32,
        body: Some(body),
        ..Default::default()
    }
}

/// Sends `payload` on `host`'s exec subject for `user` and decodes the reply.
pub async fn exec_raw(
    client: &async_nats::Client,
    host: &Token,
    user: &str,
    payload: Vec<u8>,
) -> pb::ExecReply {
    let subject = subject::exec(&tenant(), host, &tok("user", user));
    let msg = timeout(
        Duration::from_secs(30),
        client.request(subject, payload.into()),
    )
    .await
    .expect("reply in time")
    .expect("request");
    pb::ExecReply::decode(msg.payload.as_ref()).expect("ExecReply")
}

/// Signs `req` and sends it on the subject of its host and user.
pub async fn exec(client: &async_nats::Client, req: pb::ExecRequest) -> pb::ExecReply {
    let host = tok("host id", &req.host);
    let user = req.user.clone();
    exec_raw(client, &host, &user, sign(req)).await
}

pub fn error_reply(reply: pb::ExecReply) -> pb::ExecError {
    match reply.body {
        Some(pb::exec_reply::Body::Error(e)) => e,
        other => panic!("expected an error reply, got {other:?}"),
    }
}

pub fn code(e: &pb::ExecError) -> ErrorCode {
    ErrorCode::try_from(e.code).expect("known code")
}

/// Pids of processes whose environment names `job`.
pub fn processes_of(job: &str) -> Vec<u32> {
    processes_with_env(&format!("EXECMESH_JOB={job}"))
}

/// Pids of processes whose environment holds `needle` (`KEY=value`) as one entry.
pub fn processes_with_env(needle: &str) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            let env = std::fs::read(e.path().join("environ")).ok()?;
            env.split(|&b| b == 0)
                .any(|v| v == needle.as_bytes())
                .then_some(pid)
        })
        .collect()
}

/// Unwraps one enum variant or panics naming it.
#[macro_export]
macro_rules! expect {
    ($value:expr, $variant:path) => {
        match $value {
            $variant(inner) => inner,
            other => panic!("expected {}, got {other:?}", stringify!($variant)),
        }
    };
}
