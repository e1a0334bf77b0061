//! The quickstart (`deploy/quickstart.sh`) as a user runs it, with the debug binaries this test command built, on free loopback ports and a temp state directory: up once it wrote its details, stopped with SIGTERM (its own clean stop) when dropped, so a failing test leaves nothing behind.

use std::path::PathBuf;
use std::process::{Command, ExitStatus};
use std::time::Duration;

use serde_json::Value;

use crate::process::{ChildProcess, workspace_binary};

/// Longest the quickstart may take to write its details.
const READY_TIMEOUT: Duration = Duration::from_secs(120);

/// A running quickstart.
pub struct Quickstart {
    process: ChildProcess,
    /// Holds the state directory and the quickstart's log; traversable by anyone (only the
    /// state directory's own mode keeps jobs out of it).
    pub parent: tempfile::TempDir,
    pub state: PathBuf,
    pub log: PathBuf,
    pub port: u16,
    pub admin_port: u16,
    pub nats_port: u16,
    /// `quickstart.json`.
    pub details: Value,
}

// === impl Quickstart ===

impl Quickstart {
    /// Starts the quickstart with `args` besides its ports, binaries and state directory, and
    /// waits until it wrote `quickstart.json` (its services may still be starting).
    pub async fn start(args: &[&str]) -> Quickstart {
        use std::os::unix::fs::PermissionsExt as _;
        crate::init_tracing();
        let parent = tempfile::Builder::new()
            .prefix("execmesh-quickstart-")
            .tempdir()
            .expect("temp dir");
        std::fs::set_permissions(parent.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod");
        let state = parent.path().join("state");
        let [port, admin_port, nats_port] = free_ports::<3>();
        let bin_dir = workspace_binary("execmesh-gateway")
            .parent()
            .expect("a bin dir")
            .to_path_buf();
        let mut command = Command::new("bash");
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("EXECMESH_") {
                command.env_remove(key);
            }
        }
        command
            .arg(crate::workspace_path("deploy/quickstart.sh"))
            .arg("--bin-dir")
            .arg(&bin_dir)
            .arg("--state-dir")
            .arg(&state)
            .args(["--port", &port.to_string()])
            .args(["--admin-port", &admin_port.to_string()])
            .args(["--nats-port", &nats_port.to_string()])
            .args(args);
        let log = parent.path().join("quickstart.log");
        let mut process =
            ChildProcess::spawn("quickstart", command, &log).expect("start the quickstart");
        let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
        let details = loop {
            if let Some(status) = process.exited() {
                panic!(
                    "the quickstart stopped ({status}):\n{}",
                    process.log_tail(80)
                );
            }
            let written = std::fs::read_to_string(state.join("quickstart.json"))
                .ok()
                .and_then(|text| serde_json::from_str::<Value>(&text).ok());
            if let Some(details) = written {
                break details;
            }
            if tokio::time::Instant::now() >= deadline {
                let tail = process.log_tail(80);
                terminate_now(&mut process);
                panic!("the quickstart did not come up within {READY_TIMEOUT:?}:\n{tail}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        Quickstart {
            process,
            parent,
            state,
            log,
            port,
            admin_port,
            nats_port,
            details,
        }
    }

    /// A string field of `quickstart.json`.
    pub fn detail(&self, key: &str) -> String {
        self.details[key]
            .as_str()
            .unwrap_or_else(|| panic!("no {key} in {}", self.details))
            .to_string()
    }

    /// The last lines of the quickstart's output.
    pub fn log_tail(&self, lines: usize) -> String {
        self.process.log_tail(lines)
    }

    /// SIGTERM, and its exit within `grace` (`Err` with what it is after the grace).
    pub async fn terminate(&mut self, grace: Duration) -> Result<ExitStatus, ExitStatus> {
        self.process.terminate(grace).await
    }
}

impl Drop for Quickstart {
    fn drop(&mut self) {
        terminate_now(&mut self.process);
    }
}

/// SIGTERM and a wait of at most 30 s, blocking (for drops and panics).
fn terminate_now(process: &mut ChildProcess) {
    if process.exited().is_none() {
        process.signal(nix::sys::signal::Signal::SIGTERM);
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while process.exited().is_none() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// `N` free loopback ports, chosen by the kernel (bound, read back, released).
pub fn free_ports<const N: usize>() -> [u16; N] {
    let listeners: Vec<std::net::TcpListener> = (0..N)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0"))
        .collect();
    let ports: Vec<u16> = listeners
        .iter()
        .map(|l| l.local_addr().expect("an address").port())
        .collect();
    ports.try_into().expect("N ports")
}
