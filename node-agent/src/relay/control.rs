//! The relay's own directory of ssh control sockets, and the reaping at start of the master connections a killed relay left in it.
//!
//! Each master is an `ssh -M -f` with `ControlPersist=yes`: it runs in the background until it
//! is told to exit. A relay that stops normally closes its masters; one that is killed (SIGKILL,
//! OOM, power cut of its session) leaves them running, holding a TCP connection and a login on
//! each target. Every relay therefore keeps its sockets in a directory of its own — named for its
//! user and relay id (machine and configuration file) — and, when it starts, asks every master
//! still listening there to exit (`ssh -O exit`) before removing what is left.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tracing::{info, warn};

/// Longest one `ssh -O exit` of a stale master may take.
const EXIT_LIMIT: Duration = Duration::from_secs(5);
/// The prefix of the directories the `openssh` crate makes for each master.
const CONNECTION_PREFIX: &str = ".ssh-connection";

/// The control directory of the relay `relay_id` of `user`: under `$XDG_RUNTIME_DIR` when set
/// (private to the user, cleared at logout), else the system's temp directory.
pub fn directory(user: &str, relay_id: &str) -> PathBuf {
    let base = std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .filter(|p| p.is_dir())
        .unwrap_or_else(std::env::temp_dir);
    base.join(format!("execmesh-relay-{user}-{relay_id}"))
}

/// Creates `dir` (mode 0700), first stopping every master an earlier run left in it. Returns
/// how many were stopped.
pub async fn prepare(dir: &Path) -> std::io::Result<usize> {
    let mut stopped = 0;
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            let name = entry.file_name();
            if !name.to_string_lossy().starts_with(CONNECTION_PREFIX) {
                continue;
            }
            let socket = entry.path().join("master");
            if socket.exists() && exit_master(&socket).await {
                stopped += 1;
            }
            if let Err(e) = std::fs::remove_dir_all(entry.path()) {
                warn!(dir = %entry.path().display(), error = %e,
                      "cannot remove a stale control directory");
            }
        }
    }
    {
        use std::os::unix::fs::DirBuilderExt as _;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
    }
    if stopped > 0 {
        info!(stopped, dir = %dir.display(),
              "stopped SSH master connections an earlier run of this relay left behind");
    }
    Ok(stopped)
}

/// Asks the master listening on `socket` to exit; whether it did.
async fn exit_master(socket: &Path) -> bool {
    let mut command = tokio::process::Command::new("ssh");
    command
        .arg("-S")
        .arg(socket)
        .args(["-F", "/dev/null", "-o", "BatchMode=yes", "-O", "exit"])
        .arg("execmesh-stale-master")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true);
    match tokio::time::timeout(EXIT_LIMIT, command.status()).await {
        Ok(Ok(status)) => status.success(),
        Ok(Err(e)) => {
            warn!(socket = %socket.display(), error = %e, "cannot run ssh -O exit");
            false
        }
        Err(_) => {
            warn!(socket = %socket.display(), "ssh -O exit did not answer in time");
            false
        }
    }
}
