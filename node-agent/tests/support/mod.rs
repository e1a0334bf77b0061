//! The node-agent tests' harness: a real nats-server in a temp store, agents run in this process, request helpers.
//!
//! The server binary is taken from `NATS_SERVER_BIN`, the workspace's `.tools/nats/bin` (where
//! `tests/run.sh` installs it) or `PATH`; without one the tests fail and say how to install it.
//! Each test binary uses part of it.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use execmesh_node_agent::{Config, Ready};
use execmesh_proto::pb::{self, ErrorCode};
use execmesh_proto::signing::{self, SignedRequest, SigningKey};
use execmesh_proto::{Token, subject};
use prost::Message as _;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;

/// A nats-server with JetStream in a temp store, killed (and the store removed) on drop.
pub struct Nats {
    child: Child,
    pub port: u16,
    store: tempfile::TempDir,
    bin: PathBuf,
}

fn server_binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("NATS_SERVER_BIN") {
        return Some(p.into());
    }
    // Where `tests/run.sh` installs it.
    let local = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.tools/nats/bin/nats-server");
    if local.is_file() {
        return Some(local);
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("nats-server"))
            .find(|p| p.is_file())
    })
}

// === impl Nats ===

impl Nats {
    /// Starts a server on a free loopback port. A missing server is a broken setup, not a
    /// reason to skip: run tests/run.sh, which installs it.
    pub async fn start() -> Nats {
        let bin = server_binary()
            .expect("nats-server not found: run tests/run.sh (installs it into .tools/nats)");
        let store = tempfile::tempdir().expect("temp dir");
        let (child, port) = Self::spawn(&bin, &store, None)
            .await
            .expect("nats-server starts");
        Nats {
            child,
            port,
            store,
            bin,
        }
    }

    async fn spawn(
        bin: &PathBuf,
        store: &tempfile::TempDir,
        port: Option<u16>,
    ) -> Result<(Child, u16)> {
        let ports = tempfile::tempdir()?;
        let port_arg = port.map_or("-1".to_string(), |p| p.to_string());
        let child = Command::new(bin)
            .args(["-a", "127.0.0.1", "-p", &port_arg, "-js", "-sd"])
            .arg(store.path().join("js"))
            .arg("--ports_file_dir")
            .arg(ports.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let file = ports
            .path()
            .join(format!("nats-server_{}.ports", child.id()));
        for _ in 0..400 {
            // The server may be caught halfway through writing the file: read it again then.
            if let Ok(text) = std::fs::read_to_string(&file)
                && let Ok(v) = serde_json::from_str::<serde_json::Value>(&text)
                && let Some(url) = v["nats"][0].as_str()
            {
                let port = url.rsplit(':').next().context("port")?.parse()?;
                return Ok((child, port));
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        bail!("nats-server wrote no ports file")
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Stops the server, waits `down`, and starts it again on the same port and store.
    pub async fn restart(&mut self, down: Duration) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        tokio::time::sleep(down).await;
        let (child, _) = Self::spawn(&self.bin, &self.store, Some(self.port))
            .await
            .expect("nats-server restarts");
        self.child = child;
    }

    pub async fn client(&self) -> async_nats::Client {
        async_nats::connect(self.url())
            .await
            .expect("client connects")
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

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
        let task = tokio::spawn(execmesh_node_agent::run_with_ready(
            config,
            shutdown.clone(),
            Some(tx),
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

/// Polls `check` every 25 ms for up to 5 s.
pub async fn eventually<F: FnMut() -> bool>(what: &str, mut check: F) {
    for _ in 0..200 {
        if check() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("{what} did not happen within 5 s");
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
