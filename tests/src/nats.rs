//! A real nats-server with JetStream for one test: started on a free port with a temp store (and, if asked, TLS with a test CA), killed and cleaned up on drop.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_nats::jetstream;
use execmesh_gateway::core::signer::Signer;
use tempfile::TempDir;
use tokio::sync::Mutex;

use crate::certificates::{PemFiles, TestCa};
use crate::identities::MeshIdentities;
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
/// The log line that names the monitoring port (`-m -1` picks a free one).
const MONITORING: &str = "Starting http monitor on ";
/// How long a client may take to complete its TLS handshake with the server, in seconds. The
/// server's default (0.5 s) is too short for a loaded test machine.
const TLS_TIMEOUT_SECS: u32 = 5;
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
    /// In TLS mode, what clients need to connect; every client is then required to use TLS.
    tls: Option<NatsTls>,
    /// Serve the monitoring endpoint (`-m`), on `monitor_port` once the first start chose it.
    monitor: bool,
    monitor_port: Option<u16>,
    /// The test mesh's identities: the seeds its services sign records with and the file its
    /// gateways and sinks check records against.
    identities: MeshIdentities,
}

/// What a client needs to reach a server in TLS mode ([`NatsBuilder::tls`]): the test CA that
/// signed the server's certificate and, when the server verifies clients, a client certificate.
#[derive(Debug, Clone)]
pub struct NatsTls {
    /// The test CA's certificate (PEM), which signed the server's certificate.
    pub ca: PathBuf,
    /// A client certificate the CA signed; `Some` only when the server verifies clients.
    pub client: Option<PemFiles>,
}

/// Options for a [`Nats`] server beyond the defaults.
#[derive(Default)]
pub struct NatsBuilder {
    /// Contents of a server config file (accounts, permissions, limits), passed with `-c`.
    config: Option<String>,
    /// Extra command-line arguments.
    args: Vec<String>,
    /// TLS mode: `Some(verify_clients)`.
    tls: Option<bool>,
    /// Serve the monitoring endpoint.
    monitor: bool,
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

    /// Accepts only TLS connections, with a server certificate for 127.0.0.1 and localhost
    /// signed by a CA made for this server (see [`Nats::tls`]). The harness's own connections and
    /// the agents, gateways and sinks started on this server use it by themselves. Combines with
    /// [`NatsBuilder::config`]: the `tls` block is appended to the given text.
    pub fn tls(mut self) -> Self {
        self.tls = Some(self.tls.unwrap_or(false));
        self
    }

    /// TLS mode in which the server also requires a client certificate signed by its CA
    /// (`verify: true`); the harness gives its services one ([`NatsTls::client`]).
    pub fn tls_verify_clients(mut self) -> Self {
        self.tls = Some(true);
        self
    }

    /// Serves the monitoring endpoint (`/varz`, `/connz`, …) on a free loopback port
    /// ([`Nats::monitor_url`]).
    pub fn monitor(mut self) -> Self {
        self.monitor = true;
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
        let tls = self.tls.map(|verify| make_tls(dir.path(), verify));
        let config = match (self.config, &tls) {
            (config, Some((_, block))) => Some(format!("{}\n{block}", config.unwrap_or_default())),
            (config, None) => config,
        };
        if let Some(text) = config {
            let path = dir.path().join("nats.conf");
            std::fs::write(&path, text).expect("write nats.conf");
            args.push("-c".into());
            args.push(path.display().to_string());
        }
        // One command key per test mesh, made before anything starts: agents must trust it
        // before the first gateway signs with it.
        let signer = Signer::load_or_create(&dir.path().join(MESH_SIGNING_KEY))
            .expect("create the mesh's exec signing key");
        let identities = MeshIdentities::create(&dir.path().join("identities"));
        let mut nats = Nats {
            port: 0,
            dir,
            server: Mutex::new(None),
            starts: AtomicUsize::new(0),
            args,
            mesh_public_key: signer.public_key_base64(),
            tls: tls.map(|(client, _)| client),
            monitor: self.monitor,
            monitor_port: None,
            identities,
        };
        let (child, ports) = nats.spawn(None).await;
        nats.port = ports.client;
        nats.monitor_port = ports.monitor;
        *nats.server.get_mut() = Some(child);
        tracing::debug!(
            port = nats.port,
            tls = nats.tls.is_some(),
            "nats-server ready"
        );
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

    /// `nats://127.0.0.1:<port>` (also in TLS mode: clients given the CA upgrade to TLS).
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The client port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// In TLS mode, the files clients need; `None` for a plain-text server.
    pub fn tls(&self) -> Option<&NatsTls> {
        self.tls.as_ref()
    }

    /// In TLS mode, the CA (PEM file) that signed the server's certificate.
    pub fn tls_ca(&self) -> Option<&Path> {
        self.tls.as_ref().map(|tls| tls.ca.as_path())
    }

    /// When the server verifies clients, a client certificate and key it accepts.
    pub fn tls_client_cert(&self) -> Option<&PemFiles> {
        self.tls.as_ref().and_then(|tls| tls.client.as_ref())
    }

    /// With [`NatsBuilder::monitor`], `http://127.0.0.1:<port>` of the monitoring endpoint.
    pub fn monitor_url(&self) -> Option<String> {
        self.monitor_port
            .map(|port| format!("http://127.0.0.1:{port}"))
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

    /// The test mesh's identities (seeds and the identities file): the harness's agents,
    /// gateways and sinks use them unless a test gives them others.
    pub fn identities(&self) -> &MeshIdentities {
        &self.identities
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

    /// A new client connection (over TLS in TLS mode). It reconnects quickly (at most 250 ms
    /// apart) after a restart.
    pub async fn client(&self) -> async_nats::Client {
        connect(&self.url(), self.tls.as_ref()).await
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
        let ports = Ports {
            client: self.port,
            monitor: self.monitor_port,
        };
        let (child, _) = self.spawn(Some(ports)).await;
        *server = Some(child);
    }

    fn log_file(&self, start: usize) -> PathBuf {
        self.dir.path().join(format!("nats-{start}.log"))
    }

    /// Spawns the server (on `ports`, or free ports) and waits for it to report readiness.
    async fn spawn(&self, ports: Option<Ports>) -> (ChildProcess, Ports) {
        let start = self.starts.fetch_add(1, Ordering::SeqCst) + 1;
        let log = self.log_file(start);
        let port_arg = |port: Option<u16>| port.map_or_else(|| "-1".to_string(), |p| p.to_string());
        let mut command = Command::new(nats_server_binary());
        command
            .args(["-a", "127.0.0.1", "-p", &port_arg(ports.map(|p| p.client))])
            .args(["-js", "-sd"])
            .arg(self.store_dir())
            .args(&self.args);
        if self.monitor {
            command
                .arg("-m")
                .arg(port_arg(ports.and_then(|p| p.monitor)));
        }
        let mut child = ChildProcess::spawn("nats-server", command, &log)
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", nats_server_binary().display()));
        let bound = wait_ready(&mut child).await;
        if let Some(ports) = ports {
            assert_eq!(bound, ports, "nats-server came back on other ports");
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

/// The ports a server listens on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Ports {
    client: u16,
    monitor: Option<u16>,
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
fn make_tls(dir: &Path, verify: bool) -> (NatsTls, String) {
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

/// Connects to `url` (with `tls` when the server is in TLS mode) with a reconnect delay short
/// enough for restart tests.
pub(crate) async fn connect(url: &str, tls: Option<&NatsTls>) -> async_nats::Client {
    let options = async_nats::ConnectOptions::new();
    let options = match tls {
        Some(tls) => tls.options(options),
        None => options,
    };
    options
        .name("execmesh-tests")
        .reconnect_delay_callback(|attempts| Duration::from_millis((attempts as u64 * 25).min(250)))
        .connect(url)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to {url}: {e}"))
}

/// Waits for the "Listening for client connections" and "Server is ready" log lines and returns
/// the ports.
async fn wait_ready(child: &mut ChildProcess) -> Ports {
    let deadline = tokio::time::Instant::now() + START_TIMEOUT;
    loop {
        let text = std::fs::read_to_string(child.log_path()).unwrap_or_default();
        let port_after = |marker: &str| {
            text.lines().find_map(|line| {
                let (_, addr) = line.split_once(marker)?;
                addr.trim().rsplit_once(':')?.1.parse::<u16>().ok()
            })
        };
        if let Some(client) = port_after(LISTENING)
            && text.contains(READY)
        {
            return Ports {
                client,
                monitor: port_after(MONITORING),
            };
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
