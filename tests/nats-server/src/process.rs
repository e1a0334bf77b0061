//! Child processes the harness starts: spawning with a log file, signalling, reaping under a timeout.

use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;

/// How often a waiting harness looks at a child again.
const REAP_POLL: Duration = Duration::from_millis(10);

/// A child process whose stdout and stderr go to a log file, and which is killed (SIGKILL) and
/// reaped when dropped, so a failing test never leaves a server or an agent behind.
///
/// On Linux the child also gets SIGKILL from the kernel if the test process itself dies (a
/// killed `cargo test`), through `PR_SET_PDEATHSIG`.
pub struct ChildProcess {
    /// A short name for messages ("nats-server", "node-agent web-1").
    name: String,
    /// The running (or exited but not yet dropped) child.
    child: Child,
    /// Where the child's stdout and stderr go.
    log: PathBuf,
    /// The exit status, once reaped.
    status: Option<ExitStatus>,
}

impl ChildProcess {
    /// Spawns `command` with stdin closed and stdout and stderr appended to `log`.
    pub fn spawn(name: impl Into<String>, mut command: Command, log: &Path) -> io::Result<Self> {
        let out = open_log(log)?;
        let err = out.try_clone()?;
        command
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err));
        die_with_parent(&mut command);
        let child = command.spawn()?;
        Ok(Self {
            name: name.into(),
            child,
            log: log.to_path_buf(),
            status: None,
        })
    }

    /// Panics with the tail of the log when the process has exited, or `deadline` has passed,
    /// while a caller waits for it to be ready (`timeout` says how long it was given).
    pub fn check_starting(&mut self, deadline: tokio::time::Instant, timeout: Duration) {
        if let Some(status) = self.exited() {
            panic!(
                "{} exited ({status}) before it was ready; log {}:\n{}",
                self.name,
                self.log.display(),
                self.log_tail(40)
            );
        }
        if tokio::time::Instant::now() >= deadline {
            panic!(
                "{} not ready within {timeout:?}; log {}:\n{}",
                self.name,
                self.log.display(),
                self.log_tail(40)
            );
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The log file the child writes to.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The last `lines` lines of the log, for failure messages.
    pub fn log_tail(&self, lines: usize) -> String {
        log_tail(&self.log, lines)
    }

    /// The exit status if the child has exited; reaps it.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().ok().flatten();
        }
        self.status
    }

    /// Sends `signal` to the child (nothing if it has already been reaped).
    pub fn signal(&mut self, signal: Signal) {
        if self.exited().is_some() {
            return;
        }
        let Ok(pid) = i32::try_from(self.child.id()) else {
            return;
        };
        // ESRCH (already gone) is fine: the caller waits for the exit next.
        let _ = signal::kill(Pid::from_raw(pid), signal);
    }

    /// Waits up to `timeout` for the child to exit.
    pub async fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(status) = self.exited() {
                return Some(status);
            }
            if tokio::time::Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(REAP_POLL).await;
        }
    }

    /// SIGKILL and reap.
    pub async fn kill(&mut self) -> ExitStatus {
        self.signal(Signal::SIGKILL);
        match self.wait_timeout(Duration::from_secs(10)).await {
            Some(status) => status,
            None => panic!(
                "{} (pid {}) survived SIGKILL for 10 s",
                self.name,
                self.pid()
            ),
        }
    }

    /// SIGTERM, then up to `grace` for a graceful exit. Returns the exit status, or `Err` with
    /// the status after a SIGKILL when the child did not exit in time.
    pub async fn terminate(&mut self, grace: Duration) -> Result<ExitStatus, ExitStatus> {
        self.signal(Signal::SIGTERM);
        match self.wait_timeout(grace).await {
            Some(status) => Ok(status),
            None => Err(self.kill().await),
        }
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        if self.exited().is_none() {
            self.signal(Signal::SIGKILL);
            // SIGKILL cannot be caught, so this wait is short; it keeps the child from lingering
            // as a zombie and lets the caller remove its files afterwards.
            let _ = self.child.wait();
        }
    }
}

/// The last `lines` lines of a log file (or a note that it could not be read).
pub fn log_tail(path: &Path, lines: usize) -> String {
    match std::fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(e) => format!("(cannot read {}: {e})", path.display()),
    }
}

fn open_log(path: &Path) -> io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

#[cfg(target_os = "linux")]
fn die_with_parent(command: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs between fork and exec and only calls prctl(2), which is
    // async-signal-safe; it touches no memory shared with the parent.
    unsafe {
        command.pre_exec(|| {
            nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(io::Error::from)?;
            Ok(())
        });
    }
}

#[cfg(not(target_os = "linux"))]
fn die_with_parent(_command: &mut Command) {}
