//! A real nats-server with JetStream for one test: started on a free port with a temp store, killed and cleaned up on drop.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_nats::jetstream;
use execmesh_gateway::signer::Signer;
use tempfile::TempDir;
use tokio::sync::Mutex;

use crate::process::{ChildProcess, log_tail};

/// Oldest nats-server execmesh works with (per-message TTL, KV per-key TTL, batch direct get).
const MIN_VERSION: (u64, u64, u64) = (2, 12, 6);
/// How long a starting server may take to say it is ready.
const START_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a graceful stop may take before the server is killed.
const STOP_GRACE: Duration = Duration::from_secs(10);
/// The log line that names the client port (`-p -1` picks a free one).
const LISTENING: &str = "Listening for client connections on ";
/// The log line written once everything, JetStream included, is up.
const READY: &str = "Server is ready";
/// File name of the test mesh's exec signing key in the server's temp dir.
const MESH_SIGNING_KEY: &str = "mesh-signing.key";

/// A nats-server with JetStream, private to one test.
///
/// ```no_run
/// # async fn scenario() {
/// # use execmesh_tests::Nats;
/// let nats = Nats::start().await;
/// let js = nats.jetstream().await;
/// nats.restart().await; // same port, same store: clients reconnect, file-stored data survives
/// # }
/// ```
pub struct Nats {
    /// The client port, fixed at the first start so restarts come back on the same address.
    port: u16,
    /// Holds the JetStream store (`store/`), the optional config file and one log per start.
    dir: TempDir,
    /// The server process; `None` while stopped or killed.
    server: Mutex<Option<ChildProcess>>,
    /// Starts so far, to name each start's log file.
    starts: AtomicUsize,
    /// Extra command-line arguments, passed on every start.
    args: Vec<String>,
    /// The public half of [`Nats::mesh_signing_key`], as agents' `gateway_keys` take it.
    mesh_public_key: String,
}

/// Options for a [`Nats`] server beyond the defaults.
#[derive(Default)]
pub struct NatsBuilder {
    /// Contents of a server config file (accounts, permissions, limits), passed with `-c`.
    config: Option<String>,
    /// Extra command-line arguments.
    args: Vec<String>,
}

// === impl NatsBuilder ===

impl NatsBuilder {
    /// Runs the server with this configuration file text (`-c`). Command-line flags set by the
    /// harness (address, port, JetStream, store dir) take precedence over the file.
    pub fn config(mut self, text: impl Into<String>) -> Self {
        self.config = Some(text.into());
        self
    }

    /// Adds a command-line argument.
    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.args.push(arg.into());
        self
    }

    /// Starts the server and waits until it is ready.
    pub async fn start(self) -> Nats {
        crate::init_tracing();
        let dir = tempfile::Builder::new()
            .prefix("execmesh-nats-")
            .tempdir()
            .expect("create a temp dir for nats-server");
        let mut args = self.args;
        if let Some(text) = self.config {
            let path = dir.path().join("nats.conf");
            std::fs::write(&path, text).expect("write nats.conf");
            args.push("-c".into());
            args.push(path.display().to_string());
        }
        // One command key per test mesh, made before anything starts: agents must trust it
        // before the first gateway signs with it.
        let signer = Signer::load_or_create(&dir.path().join(MESH_SIGNING_KEY))
            .expect("create the mesh's exec signing key");
        let mut nats = Nats {
            port: 0,
            dir,
            server: Mutex::new(None),
            starts: AtomicUsize::new(0),
            args,
            mesh_public_key: signer.public_key_base64(),
        };
        let (child, port) = nats.spawn(None).await;
        nats.port = port;
        *nats.server.get_mut() = Some(child);
        tracing::debug!(port, "nats-server ready");
        nats
    }
}

// === impl Nats ===

impl Nats {
    /// Starts a nats-server with JetStream on a free loopback port with a fresh store.
    pub async fn start() -> Nats {
        Self::builder().start().await
    }

    /// A server with extra configuration.
    pub fn builder() -> NatsBuilder {
        NatsBuilder::default()
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The client port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The key file with which gateways of this test sign requests to agents (by default:
    /// [`crate::Gateway::new`] uses it and [`crate::NodeAgent::new`] trusts it).
    pub fn mesh_signing_key(&self) -> PathBuf {
        self.dir.path().join(MESH_SIGNING_KEY)
    }

    /// The public half of [`Nats::mesh_signing_key`] (base64), as an agent's `--gateway-key`.
    pub fn mesh_public_key(&self) -> &str {
        &self.mesh_public_key
    }

    /// The JetStream store directory; it outlives restarts.
    pub fn store_dir(&self) -> PathBuf {
        self.dir.path().join("store")
    }

    /// The log file of the current (or last) start.
    pub fn log_path(&self) -> PathBuf {
        self.log_file(self.starts.load(Ordering::SeqCst))
    }

    /// The last `lines` lines of the current (or last) start's log.
    pub fn log_tail(&self, lines: usize) -> String {
        log_tail(&self.log_path(), lines)
    }

    /// A new client connection. It reconnects quickly (at most 250 ms apart) after a restart.
    pub async fn client(&self) -> async_nats::Client {
        connect(&self.url()).await
    }

    /// A JetStream context over a new client connection.
    pub async fn jetstream(&self) -> jetstream::Context {
        jetstream::new(self.client().await)
    }

    /// The pid of the running server.
    pub async fn pid(&self) -> Option<u32> {
        self.server.lock().await.as_ref().map(ChildProcess::pid)
    }

    /// Stops the server gracefully (SIGTERM; SIGKILL after 10 s) and leaves it stopped.
    pub async fn stop(&self) {
        let mut server = self.server.lock().await;
        if let Some(mut child) = server.take()
            && child.terminate(STOP_GRACE).await.is_err()
        {
            tracing::warn!("nats-server ignored SIGTERM for {STOP_GRACE:?}; killed it");
        }
    }

    /// Kills the server with SIGKILL (no chance to flush or say goodbye) and leaves it stopped.
    pub async fn kill(&self) {
        let mut server = self.server.lock().await;
        if let Some(mut child) = server.take() {
            child.kill().await;
        }
    }

    /// Stops the server gracefully if it runs, then starts it again on the same port with the same
    /// store, and waits until it accepts connections. Existing clients reconnect by themselves.
    /// After [`Nats::kill`] this is a hard restart.
    pub async fn restart(&self) {
        let mut server = self.server.lock().await;
        if let Some(mut child) = server.take()
            && child.terminate(STOP_GRACE).await.is_err()
        {
            tracing::warn!("nats-server ignored SIGTERM for {STOP_GRACE:?}; killed it");
        }
        let (child, _) = self.spawn(Some(self.port)).await;
        *server = Some(child);
    }

    fn log_file(&self, start: usize) -> PathBuf {
        self.dir.path().join(format!("nats-{start}.log"))
    }

    /// Spawns the server (on `port`, or a free port) and waits for it to report readiness.
    async fn spawn(&self, port: Option<u16>) -> (ChildProcess, u16) {
        let start = self.starts.fetch_add(1, Ordering::SeqCst) + 1;
        let log = self.log_file(start);
        let port_arg = port.map_or_else(|| "-1".to_string(), |p| p.to_string());
        let mut command = Command::new(nats_server_binary());
        command
            .args(["-a", "127.0.0.1", "-p", &port_arg, "-js", "-sd"])
            .arg(self.store_dir())
            .args(&self.args);
        let mut child = ChildProcess::spawn("nats-server", command, &log)
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", nats_server_binary().display()));
        let bound = wait_ready(&mut child).await;
        if let Some(port) = port {
            assert_eq!(bound, port, "nats-server came back on another port");
        }
        (child, bound)
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        // Kill (and reap) the server before the temp dir, and its store, are removed.
        drop(self.server.get_mut().take());
    }
}

/// Connects to `url` with a reconnect delay short enough for restart tests.
pub(crate) async fn connect(url: &str) -> async_nats::Client {
    async_nats::ConnectOptions::new()
        .name("execmesh-tests")
        .reconnect_delay_callback(|attempts| Duration::from_millis((attempts as u64 * 25).min(250)))
        .connect(url)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to {url}: {e}"))
}

/// Waits for the "Listening for client connections" and "Server is ready" log lines and returns
/// the port.
async fn wait_ready(child: &mut ChildProcess) -> u16 {
    let deadline = tokio::time::Instant::now() + START_TIMEOUT;
    loop {
        let text = std::fs::read_to_string(child.log_path()).unwrap_or_default();
        let port = text.lines().find_map(|line| {
            let (_, addr) = line.split_once(LISTENING)?;
            addr.trim().rsplit_once(':')?.1.parse::<u16>().ok()
        });
        if let Some(port) = port
            && text.contains(READY)
        {
            return port;
        }
        if let Some(status) = child.exited() {
            panic!(
                "nats-server exited ({status}) before it was ready; log {}:\n{}",
                child.log_path().display(),
                child.log_tail(40)
            );
        }
        if tokio::time::Instant::now() >= deadline {
            panic!(
                "nats-server not ready within {START_TIMEOUT:?}; log {}:\n{}",
                child.log_path().display(),
                child.log_tail(40)
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The nats-server binary, found once per test process and checked to be new enough.
///
/// Order: `EXECMESH_NATS_SERVER`, `<workspace>/.tools/nats/bin/nats-server` (what `tests/run.sh`
/// installs), then `nats-server` on `PATH`.
pub fn nats_server_binary() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| {
        let path = find_nats_server().unwrap_or_else(|| {
            panic!(
                "nats-server not found (EXECMESH_NATS_SERVER, {}, PATH). Run the test command \
                 `tests/run.sh`, which installs nats-server {}.{}.{}+ into .tools/nats",
                project_local_nats_server().display(),
                MIN_VERSION.0,
                MIN_VERSION.1,
                MIN_VERSION.2
            )
        });
        check_version(&path);
        path
    })
}

fn project_local_nats_server() -> PathBuf {
    crate::workspace_root().join(".tools/nats/bin/nats-server")
}

fn find_nats_server() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("EXECMESH_NATS_SERVER") {
        return Some(PathBuf::from(path));
    }
    let local = project_local_nats_server();
    if local.is_file() {
        return Some(local);
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join("nats-server"))
        .find(|path| path.is_file())
}

fn check_version(path: &Path) {
    let output = Command::new(path)
        .arg("--version")
        .output()
        .unwrap_or_else(|e| panic!("cannot run {} --version: {e}", path.display()));
    let text = String::from_utf8_lossy(&output.stdout);
    let version = parse_version(&text).unwrap_or_else(|| {
        panic!(
            "cannot read the version of {} from {text:?}",
            path.display()
        )
    });
    assert!(
        version >= MIN_VERSION,
        "{} is version {}.{}.{}; execmesh needs nats-server {}.{}.{} or newer. Run `tests/run.sh`, \
         which installs a suitable one into .tools/nats",
        path.display(),
        version.0,
        version.1,
        version.2,
        MIN_VERSION.0,
        MIN_VERSION.1,
        MIN_VERSION.2
    );
}

/// Reads `nats-server: v2.12.8` (pre-release suffixes ignored).
fn parse_version(text: &str) -> Option<(u64, u64, u64)> {
    let (_, version) = text.trim().rsplit_once('v')?;
    let version = version.split(['-', '+', ' ']).next()?;
    let mut parts = version.split('.').map(|p| p.parse::<u64>().ok());
    Some((parts.next()??, parts.next()??, parts.next()??))
}

#[cfg(test)]
mod tests {
    use super::parse_version;

    #[test]
    fn reads_nats_server_versions() {
        assert_eq!(parse_version("nats-server: v2.12.8\n"), Some((2, 12, 8)));
        assert_eq!(parse_version("nats-server: v2.13.0-RC.1"), Some((2, 13, 0)));
        assert_eq!(parse_version("garbage"), None);
    }
}
