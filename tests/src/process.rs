//! The workspace's binaries the scenarios spawn, and the service process slot the agent and
//! sink wrappers share (start, graceful stop, hard kill); child processes themselves are the
//! nats-server package's.

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::time::Duration;

use tempfile::TempDir;

pub use execmesh_nats_server::process::{ChildProcess, log_tail};

/// How long a SIGTERM'd service may take to drain and exit.
const STOP_GRACE: Duration = Duration::from_secs(10);
/// Log lines shown when a service fails.
pub const TAIL: usize = 60;

/// A workspace binary run in `cwd`, with no inherited `EXECMESH_*`: every flag has an
/// environment twin, and a developer's shell must not leak in. The test's own log filter, if
/// any, is the service's too (its `--log` / `EXECMESH_LOG`).
pub fn service_command(binary: &str, cwd: &Path) -> Command {
    let mut command = Command::new(workspace_binary(binary));
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("EXECMESH_") {
            command.env_remove(key);
        }
    }
    if let Ok(filter) = std::env::var("EXECMESH_TEST_LOG") {
        command.env("EXECMESH_LOG", filter);
    }
    command.current_dir(cwd);
    command
}

/// The process of one service a scenario runs (`node-agent web-1`, `audit-sink`): `None`
/// after stop or kill; killed on drop.
pub struct ServiceProcess {
    /// The service as messages name it.
    name: String,
    process: Option<ChildProcess>,
}

impl ServiceProcess {
    /// A slot for `name`, not started yet.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            process: None,
        }
    }

    /// Spawns `command` logging to `log`. Panics if it cannot start.
    pub fn spawn(&mut self, command: Command, log: &Path) {
        let process = ChildProcess::spawn(self.name.clone(), command, log)
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", self.name));
        self.process = Some(process);
    }

    /// Whether a process is there (started and neither stopped nor killed).
    pub fn is_running(&self) -> bool {
        self.process.is_some()
    }

    /// The pid of the running process. Panics if it is stopped.
    pub fn pid(&self) -> u32 {
        self.running().pid()
    }

    /// The exit status if the process has exited by itself (or was stopped).
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.process.as_mut().and_then(ChildProcess::exited)
    }

    /// Panics with the tail of `log` if the process, still starting, has exited already.
    pub fn assert_alive(&mut self, log: &Path) {
        let name = self.name.clone();
        let process = self.process.as_mut().expect("just started");
        if let Some(status) = process.exited() {
            panic!(
                "{name} exited ({status}) before it was ready; log {}:\n{}",
                log.display(),
                process.log_tail(TAIL)
            );
        }
    }

    /// Panics: the process did not become ready, as `why` says; with the tail of `log`.
    pub fn not_ready(&self, why: fmt::Arguments<'_>, log: &Path) -> ! {
        panic!(
            "{} {why}; log {}:\n{}",
            self.name,
            log.display(),
            self.running().log_tail(TAIL)
        )
    }

    /// Between two tries of a readiness check: panics with the tail of `log` if the process has
    /// exited, or as `why` says once `deadline` has passed.
    pub fn assert_waiting(
        &mut self,
        deadline: tokio::time::Instant,
        log: &Path,
        why: fmt::Arguments<'_>,
    ) {
        self.assert_alive(log);
        if tokio::time::Instant::now() >= deadline {
            self.not_ready(why, log);
        }
    }

    /// SIGKILL and reap.
    pub async fn kill_hard(&mut self) -> ExitStatus {
        self.take().kill().await
    }

    /// SIGTERM, and waits for a graceful exit. Panics (after a SIGKILL) with the tail of `log`
    /// if the process does not exit within 10 s.
    pub async fn stop(&mut self, log: &Path) -> ExitStatus {
        let mut process = self.take();
        match process.terminate(STOP_GRACE).await {
            Ok(status) => status,
            Err(_) => panic!(
                "{} did not exit within {STOP_GRACE:?} of SIGTERM; log {}:\n{}",
                self.name,
                log.display(),
                log_tail(log, TAIL)
            ),
        }
    }

    /// Kills the process now (as dropping it would), if it runs.
    pub fn discard(&mut self) {
        drop(self.process.take());
    }

    /// What the service's owner does when it is dropped: kills the process and, while a test
    /// is failing, keeps `dir` (the service's logs and files) for inspection and says where.
    pub fn discard_keeping_logs(&mut self, dir: &mut TempDir) {
        self.discard();
        if std::thread::panicking() {
            dir.disable_cleanup(true);
            eprintln!("{}: logs kept in {}", self.name, dir.path().display());
        }
    }

    fn running(&self) -> &ChildProcess {
        self.process
            .as_ref()
            .unwrap_or_else(|| panic!("{} is not running", self.name))
    }

    fn take(&mut self) -> ChildProcess {
        self.process
            .take()
            .unwrap_or_else(|| panic!("{} is not running", self.name))
    }
}

/// The pids of every live process started for `job`: those carrying `EXECMESH_JOB=<job>` in
/// their environment, which the agent sets for a job's command and which its children inherit,
/// also those that left the job's process group (`setsid`).
pub fn job_processes(job: &str) -> Vec<u32> {
    let needle = format!("EXECMESH_JOB={job}");
    processes()
        .filter_map(|(pid, dir)| {
            // A process that exits meanwhile (or is not ours to read) is not counted.
            let environ = std::fs::read(dir.join("environ")).ok()?;
            environ
                .split(|b| *b == 0)
                .any(|kv| kv == needle.as_bytes())
                .then_some(pid)
        })
        .collect()
}

/// The jobs (their `EXECMESH_JOB`) of every live process whose command line or environment
/// contains `marker` (a command run by a warm shell has it in neither its argv: pass it in the
/// call's `env`): how a test finds the job behind a command it started, before any result names
/// it.
pub fn jobs_running(marker: &str) -> Vec<String> {
    let mut jobs: Vec<String> = processes()
        .filter_map(|(_, dir)| {
            let cmdline = std::fs::read(dir.join("cmdline")).ok()?;
            let environ = std::fs::read(dir.join("environ")).ok()?;
            let marked = |bytes: &[u8]| String::from_utf8_lossy(bytes).contains(marker);
            if !marked(&cmdline) && !marked(&environ) {
                return None;
            }
            environ.split(|b| *b == 0).find_map(|kv| {
                let kv = String::from_utf8_lossy(kv);
                kv.strip_prefix("EXECMESH_JOB=").map(str::to_string)
            })
        })
        .collect();
    jobs.sort();
    jobs.dedup();
    jobs
}

/// The live children of `parent`, from /proc.
pub fn children_of(parent: u32) -> Vec<u32> {
    processes()
        .filter_map(|(pid, dir)| {
            let stat = std::fs::read_to_string(dir.join("stat")).ok()?;
            // Fields after the command's closing parenthesis: state ppid …
            let ppid: u32 = stat
                .rsplit_once(')')?
                .1
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()?;
            (ppid == parent).then_some(pid)
        })
        .collect()
}

/// Every live process: its pid and its directory under /proc (none if /proc cannot be read).
fn processes() -> impl Iterator<Item = (u32, PathBuf)> {
    let entries = std::fs::read_dir("/proc").into_iter().flatten().flatten();
    entries.filter_map(|entry| {
        let pid = entry.file_name().to_str()?.parse().ok()?;
        Some((pid, entry.path()))
    })
}

/// Path of a workspace binary (`execmesh-node-agent`, …) built by `cargo build --workspace --bins`.
///
/// `EXECMESH_BIN_DIR` wins when set; otherwise the binary sits next to the running test
/// executable's profile directory (`target/debug/deps/<test>` → `target/debug/<name>`).
pub fn workspace_binary(name: &str) -> PathBuf {
    let dir = match std::env::var_os("EXECMESH_BIN_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => {
            let exe = std::env::current_exe().expect("the test executable's path");
            let mut dir = exe
                .parent()
                .expect("the test executable has a parent directory")
                .to_path_buf();
            if dir.file_name().is_some_and(|n| n == "deps") {
                dir.pop();
            }
            dir
        }
    };
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "{} is missing: build the workspace binaries first (`cargo build --workspace --bins`; \
         `tests/run.sh` does it), or point EXECMESH_BIN_DIR at the directory holding them",
        path.display()
    );
    path
}
