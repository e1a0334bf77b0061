//! The server: started on free loopback ports with a temp JetStream store, restarted on the same ports and store, killed and cleaned up on drop.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_nats::jetstream;
use tempfile::TempDir;
use tokio::sync::Mutex;

use crate::binary::{minimum_nats_server_binary, nats_server_binary};
use crate::process::{ChildProcess, log_tail};
use crate::tls::{NatsTls, connect, make_tls};

/// How long a starting server may take to say it is ready.
const START_TIMEOUT: Duration = Duration::from_secs(15);
/// How often a starting server's ports file and log are looked at again.
const START_POLL: Duration = Duration::from_millis(10);
/// How long a graceful stop may take before the server is killed.
const STOP_GRACE: Duration = Duration::from_secs(10);
/// The log line written once everything, JetStream included, is up.
const READY: &str = "Server is ready";

/// A nats-server with JetStream, private to one test.
///
/// Its temp dir holds the store (`store/`), the optional config file, the ports files and one
/// log per start; the server is killed (and reaped) before the dir is removed.
pub struct NatsServer {
    /// The client port, fixed at the first start so restarts come back on the same address.
    port: u16,
    /// Holds the JetStream store, the optional config file, the ports files and the logs.
    dir: TempDir,
    /// The server process; `None` while stopped or killed.
    server: Mutex<Option<ChildProcess>>,
    /// Starts so far, to name each start's log file.
    starts: AtomicUsize,
    /// Extra command-line arguments, passed on every start.
    args: Vec<String>,
    /// In TLS mode, what clients need to connect; every client is then required to use TLS.
    tls: Option<NatsTls>,
    /// Serve the monitoring endpoint (`-m`), on `monitor_port` once the first start chose it.
    monitor: bool,
    monitor_port: Option<u16>,
    /// The nats-server binary this server runs (the current release unless a builder chose).
    binary: PathBuf,
    /// As a node of a cluster, its name and routes; `None` for a standalone server.
    cluster: Option<ClusterNode>,
}

/// What makes a server a node of a JetStream cluster on loopback.
#[derive(Debug, Clone)]
pub(crate) struct ClusterNode {
    /// The server's name (`server_name`), unique in the cluster; JetStream clustering needs it.
    pub(crate) name: String,
    /// The cluster's name, the same on every node.
    pub(crate) cluster: String,
    /// This node's route port, fixed for its lifetime so that its peers find it after restarts.
    pub(crate) port: u16,
    /// Every node's route port, this node's too (a server ignores a route to itself).
    pub(crate) routes: Vec<u16>,
}

/// Options for a [`NatsServer`] beyond the defaults.
#[derive(Default, Clone)]
pub struct NatsServerBuilder {
    /// Contents of a server config file (accounts, permissions, limits), passed with `-c`.
    config: Option<String>,
    /// Extra command-line arguments.
    args: Vec<String>,
    /// TLS mode: `Some(verify_clients)`.
    tls: Option<bool>,
    /// Serve the monitoring endpoint.
    monitor: bool,
    /// Run the minimum supported release instead of the current one.
    minimum: bool,
    /// As a node of a cluster.
    pub(crate) cluster: Option<ClusterNode>,
}

// === impl NatsServerBuilder ===

impl NatsServerBuilder {
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
    /// signed by a CA made for this server (see [`NatsServer::tls`]). Combines with
    /// [`NatsServerBuilder::config`]: the `tls` block is appended to the given text.
    pub fn tls(mut self) -> Self {
        self.tls = Some(self.tls.unwrap_or(false));
        self
    }

    /// TLS mode in which the server also requires a client certificate signed by its CA
    /// (`verify: true`); [`NatsTls::client`] is one.
    pub fn tls_verify_clients(mut self) -> Self {
        self.tls = Some(true);
        self
    }

    /// Serves the monitoring endpoint (`/varz`, `/connz`, …) on a free loopback port
    /// ([`NatsServer::monitor_url`]).
    pub fn monitor(mut self) -> Self {
        self.monitor = true;
        self
    }

    /// The TLS mode asked for: `Some(verify_clients)`.
    pub(crate) fn tls_mode(&self) -> Option<bool> {
        self.tls
    }

    /// Runs the minimum supported nats-server release ([`crate::minimum_nats_server_binary`])
    /// instead of the current one, for the scenarios the mesh must pass on both.
    pub fn minimum_version(mut self) -> Self {
        self.minimum = true;
        self
    }

    /// Starts the server and waits until it is ready.
    pub async fn start(self) -> NatsServer {
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
        let mut nats = NatsServer {
            port: 0,
            dir,
            server: Mutex::new(None),
            starts: AtomicUsize::new(0),
            args,
            tls: tls.map(|(client, _)| client),
            monitor: self.monitor,
            monitor_port: None,
            binary: match self.minimum {
                true => minimum_nats_server_binary().to_path_buf(),
                false => nats_server_binary().to_path_buf(),
            },
            cluster: self.cluster,
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

// === impl NatsServer ===

impl NatsServer {
    /// Starts a nats-server with JetStream on a free loopback port with a fresh store.
    pub async fn start() -> NatsServer {
        Self::builder().start().await
    }

    /// A server with extra configuration.
    pub fn builder() -> NatsServerBuilder {
        NatsServerBuilder::default()
    }

    /// `nats://127.0.0.1:<port>` (also in TLS mode: clients given the CA upgrade to TLS).
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The client port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's name in its cluster (`n1`, `n2`, …); `None` for a standalone server.
    pub fn name(&self) -> Option<&str> {
        self.cluster.as_ref().map(|node| node.name.as_str())
    }

    /// The nats-server binary this server runs.
    pub fn binary(&self) -> &Path {
        &self.binary
    }

    /// Whether the server process runs (it was not stopped or killed since its last start).
    pub async fn is_running(&self) -> bool {
        self.server.lock().await.is_some()
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
    pub fn tls_client_cert(&self) -> Option<&crate::certificates::PemFiles> {
        self.tls.as_ref().and_then(|tls| tls.client.as_ref())
    }

    /// With [`NatsServerBuilder::monitor`], `http://127.0.0.1:<port>` of the monitoring endpoint.
    pub fn monitor_url(&self) -> Option<String> {
        self.monitor_port
            .map(|port| format!("http://127.0.0.1:{port}"))
    }

    /// The server's temp dir: removed with the server, a place for files of the same lifetime.
    pub fn dir(&self) -> &Path {
        self.dir.path()
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
        if let Some(mut child) = server.take() {
            terminate(&mut child).await;
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
    /// After [`NatsServer::kill`] this is a hard restart.
    pub async fn restart(&self) {
        let mut server = self.server.lock().await;
        if let Some(mut child) = server.take() {
            terminate(&mut child).await;
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

    /// Where every start writes its ports file (`<name>_<pid>.ports`).
    fn ports_dir(&self) -> PathBuf {
        self.dir.path().join("ports")
    }

    /// Spawns the server (on `ports`, or free ports) and waits for it to report readiness.
    async fn spawn(&self, ports: Option<Ports>) -> (ChildProcess, Ports) {
        let start = self.starts.fetch_add(1, Ordering::SeqCst) + 1;
        let log = self.log_file(start);
        let ports_dir = self.ports_dir();
        std::fs::create_dir_all(&ports_dir).expect("create the ports dir of nats-server");
        let port_arg = |port: Option<u16>| port.map_or_else(|| "-1".to_string(), |p| p.to_string());
        let mut command = Command::new(&self.binary);
        command
            .args(["-a", "127.0.0.1", "-p", &port_arg(ports.map(|p| p.client))])
            .args(["-js", "-sd"])
            .arg(self.store_dir())
            .arg("--ports_file_dir")
            .arg(&ports_dir)
            .args(&self.args);
        if let Some(node) = &self.cluster {
            let routes: Vec<String> = node
                .routes
                .iter()
                .map(|port| format!("nats://127.0.0.1:{port}"))
                .collect();
            command
                .args(["--server_name", &node.name])
                .args(["--cluster_name", &node.cluster])
                .arg("--cluster")
                .arg(format!("nats://127.0.0.1:{}", node.port))
                .arg("--routes")
                .arg(routes.join(","));
        }
        if self.monitor {
            command
                .arg("-m")
                .arg(port_arg(ports.and_then(|p| p.monitor)));
        }
        let mut child = ChildProcess::spawn("nats-server", command, &log)
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", self.binary.display()));
        let bound = wait_ready(&mut child, &ports_dir, self.monitor).await;
        if let Some(ports) = ports {
            assert_eq!(bound, ports, "nats-server came back on other ports");
        }
        (child, bound)
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        // Kill (and reap) the server before the temp dir, and its store, are removed.
        drop(self.server.get_mut().take());
    }
}

/// SIGTERM, and SIGKILL when the server has not exited after [`STOP_GRACE`].
async fn terminate(child: &mut ChildProcess) {
    if child.terminate(STOP_GRACE).await.is_err() {
        tracing::warn!("nats-server ignored SIGTERM for {STOP_GRACE:?}; killed it");
    }
}

/// The ports a server listens on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Ports {
    client: u16,
    monitor: Option<u16>,
}

/// Waits until the server has written its ports file and logged "Server is ready" (JetStream
/// included), and returns the ports.
async fn wait_ready(child: &mut ChildProcess, ports_dir: &Path, monitor: bool) -> Ports {
    let deadline = tokio::time::Instant::now() + START_TIMEOUT;
    let suffix = format!("_{}.ports", child.pid());
    loop {
        let ready = std::fs::read_to_string(child.log_path()).is_ok_and(|log| log.contains(READY));
        if ready && let Some(ports) = read_ports_file(ports_dir, &suffix, monitor) {
            return ports;
        }
        child.check_starting(deadline, START_TIMEOUT);
        tokio::time::sleep(START_POLL).await;
    }
}

/// The ports in the ports file ending in `suffix` (`_<pid>.ports`), or `None` while the server has
/// not written it completely: it may be caught halfway through writing, so a file that does not
/// parse, or lacks a port that was asked for, is read again on the next poll.
fn read_ports_file(dir: &Path, suffix: &str, monitor: bool) -> Option<Ports> {
    // The file is named after the executable (`<name>_<pid>.ports`), which a custom
    // EXECMESH_NATS_SERVER may call differently; the pid names it alone.
    let path = std::fs::read_dir(dir)
        .ok()?
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .find(|path| {
            path.file_name()
                .and_then(|name| name.to_str())
                .is_some_and(|name| name.ends_with(suffix))
        })?;
    let text = std::fs::read_to_string(path).ok()?;
    let ports: serde_json::Value = serde_json::from_str(&text).ok()?;
    let port_of = |key: &str| -> Option<u16> {
        let url = ports[key].as_array()?.first()?.as_str()?;
        url.rsplit_once(':')?.1.parse().ok()
    };
    let client = port_of("nats")?;
    let monitor_port = match monitor {
        true => Some(port_of("monitoring")?),
        false => None,
    };
    Some(Ports {
        client,
        monitor: monitor_port,
    })
}

#[cfg(test)]
mod tests {
    use super::{Ports, read_ports_file};

    #[test]
    fn reads_a_ports_file_only_once_it_is_complete() {
        let dir = tempfile::tempdir().expect("temp dir");
        let suffix = "_42.ports";
        assert_eq!(
            read_ports_file(dir.path(), suffix, false),
            None,
            "no file yet"
        );
        let path = dir.path().join("nats-server_42.ports");
        let full = r#"{"nats":["nats://127.0.0.1:4222"],"monitoring":["http://127.0.0.1:8222"]}"#;
        std::fs::write(&path, &full[..20]).expect("write");
        assert_eq!(
            read_ports_file(dir.path(), suffix, false),
            None,
            "half written"
        );
        std::fs::write(&path, r#"{"nats":["nats://127.0.0.1:4222"]}"#).expect("write");
        assert_eq!(
            read_ports_file(dir.path(), suffix, true),
            None,
            "no monitoring port yet"
        );
        std::fs::write(&path, full).expect("write");
        assert_eq!(
            read_ports_file(dir.path(), suffix, true),
            Some(Ports {
                client: 4222,
                monitor: Some(8222)
            })
        );
        assert_eq!(
            read_ports_file(dir.path(), "_43.ports", true),
            None,
            "another pid's file"
        );
    }
}
