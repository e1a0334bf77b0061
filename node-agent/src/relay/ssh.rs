//! One SSH target of a relay: its multiplexed master connection (state, failure reason, reconnects), remote jobs in process groups of their own, and the fixed facts probe.
//!
//! The master is the system's `ssh` in ControlMaster mode, started through the `openssh`
//! crate with the relay user's own ssh config, agent and keys, `BatchMode` (never a prompt)
//! and strict host key checking unless the target's configuration accepts new keys. Every job
//! is one more session over that master: `sh -c <script>`, where the script reports its
//! process group and `exec`s the job's shell. sshd starts each session's command as a session
//! leader (setsid), so that group holds the login shell and everything the job starts; stopping
//! a job signals the group with `kill -- -<pgid>` over another session of the same master.

use std::io;
use std::os::unix::process::ExitStatusExt as _;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use execmesh_proto::{Token, pb};
use nix::sys::signal::Signal;
use openssh::{KnownHosts, Session, SessionBuilder};
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, BufReader};
use tokio::sync::{oneshot, watch};
use tracing::{info, warn};

use crate::output::Pipe;
use crate::process::{HOST_ENV, JOB_ENV, SpawnError, SpawnSpec};

/// Longest the TCP connect and the server's banner may take (ssh's own `ConnectTimeout`).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest a whole master connection may take (connect, key exchange, authentication): ssh's
/// `ConnectTimeout` does not cover a server or an agent that stalls after the banner.
const CONNECT_LIMIT: Duration = Duration::from_secs(30);
/// Keepalive of a master connection: a target that stops answering is noticed within ~3×.
const SERVER_ALIVE: Duration = Duration::from_secs(5);
/// Longest the master may take to answer `ssh -O check` (a local socket round trip).
const CHECK_LIMIT: Duration = Duration::from_secs(10);
/// Longest closing a master may take at shutdown.
const CLOSE_LIMIT: Duration = Duration::from_secs(5);
/// Lines a login may print on stderr before the pid report (banners, profile noise).
const START_NOISE_LINES: usize = 64;
/// Most bytes of probe output read.
const PROBE_MAX_BYTES: u64 = 256 * 1024;
/// The default of [`TargetSpec::remote_timeout`].
pub const DEFAULT_REMOTE_TIMEOUT: Duration = Duration::from_secs(20);

/// What the remote script prints on stderr before the job's shell starts.
const PID_MARK: &str = "execmesh-pid ";
/// What the remote script prints instead when the working directory cannot be entered.
const CWD_MARK: &str = "execmesh-cwd-failed";
/// Environment variable marking every process a relay's job starts on a target:
/// `<user>.<target>.<relay id>`, so that what a relay's jobs left on a target can be found.
pub const RELAY_ENV: &str = "EXECMESH_RELAY";

/// How one target is configured.
#[derive(Debug, Clone, PartialEq)]
pub struct TargetSpec {
    /// The target's host id in the mesh.
    pub id: Token,
    /// What `ssh` connects to: `user@host`, `host`, or an alias of the ssh config.
    pub destination: String,
    /// An ssh config file instead of `~/.ssh/config`.
    pub ssh_config: Option<PathBuf>,
    /// Accept (and record) an unknown host key on first connection. Off: strict checking
    /// against known_hosts; a changed key is refused either way.
    pub accept_new_host_key: bool,
    /// The remote shell that runs each command as `<shell> -c <cmd>`.
    pub shell: String,
    /// Longest each remote operation of the relay's own may take: a job's session until its
    /// shell reported its pid (the login shell and its startup files run first), the facts
    /// probe, a signal. Nothing the relay sends waits longer.
    pub remote_timeout: Duration,
}

/// Why a target is not reachable, as reported per target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OfflineReason {
    /// Not connected yet.
    Connecting,
    /// The network or the sshd did not answer (refused, timed out, no route, unknown name).
    Unreachable,
    /// The server refused every key offered (user, key or agent wrong).
    AuthFailed,
    /// The server's host key does not match known_hosts, or is unknown under strict checking.
    HostKeyMismatch,
    /// The master connection ended after it was up.
    Disconnected,
    /// Anything else; the detail says what ssh said.
    Failed,
}

// === impl OfflineReason ===

impl OfflineReason {
    pub fn as_str(self) -> &'static str {
        match self {
            OfflineReason::Connecting => "connecting",
            OfflineReason::Unreachable => "unreachable",
            OfflineReason::AuthFailed => "auth failed",
            OfflineReason::HostKeyMismatch => "host key mismatch",
            OfflineReason::Disconnected => "disconnected",
            OfflineReason::Failed => "ssh failed",
        }
    }

    /// Classifies what `ssh` printed when the master could not connect.
    pub fn of_ssh_error(text: &str) -> Self {
        let t = text.to_ascii_lowercase();
        if t.contains("host key verification failed")
            || t.contains("remote host identification has changed")
            || t.contains("no matching host key")
        {
            OfflineReason::HostKeyMismatch
        } else if t.contains("permission denied") || t.contains("too many authentication") {
            OfflineReason::AuthFailed
        } else if t.contains("connection refused")
            || t.contains("timed out")
            || t.contains("no route to host")
            || t.contains("network is unreachable")
            || t.contains("could not resolve")
            || t.contains("connection closed")
            || t.contains("connection reset")
        {
            OfflineReason::Unreachable
        } else {
            OfflineReason::Failed
        }
    }
}

/// The state of a target's master connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetState {
    Online,
    Offline {
        reason: OfflineReason,
        detail: String,
    },
}

// === impl TargetState ===

impl TargetState {
    /// `host key mismatch: Host key verification failed.`; empty when online.
    pub fn describe(&self) -> String {
        match self {
            TargetState::Online => String::new(),
            TargetState::Offline { reason, detail } if detail.is_empty() => {
                reason.as_str().to_string()
            }
            TargetState::Offline { reason, detail } => format!("{}: {detail}", reason.as_str()),
        }
    }
}

/// One SSH target and its master connection.
pub struct SshTarget {
    pub spec: TargetSpec,
    /// The user whose relay this is (recorded in the target's fact pack).
    pub relay_user: Token,
    /// Which of that user's relays (`RelayConfig::relay_id`).
    relay_id: String,
    /// Where the master's control socket lives (the relay's own directory).
    control_dir: PathBuf,
    /// The master connection while it is up.
    session: Mutex<Option<Arc<Session>>>,
    /// Online, or offline with the reason.
    state: watch::Sender<TargetState>,
}

// === impl SshTarget ===

impl SshTarget {
    pub fn new(
        spec: TargetSpec,
        relay_user: Token,
        relay_id: String,
        control_dir: PathBuf,
    ) -> Self {
        let (state, _) = watch::channel(TargetState::Offline {
            reason: OfflineReason::Connecting,
            detail: String::new(),
        });
        Self {
            spec,
            relay_user,
            relay_id,
            control_dir,
            session: Mutex::new(None),
            state,
        }
    }

    pub fn id(&self) -> &Token {
        &self.spec.id
    }

    pub fn state(&self) -> TargetState {
        self.state.borrow().clone()
    }

    /// The master connection while it is up (the SFTP channel runs over it too).
    pub fn master(&self) -> Option<Arc<Session>> {
        self.session()
    }

    fn session(&self) -> Option<Arc<Session>> {
        self.session
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn set_session(&self, session: Option<Arc<Session>>) {
        *self.session.lock().unwrap_or_else(|p| p.into_inner()) = session;
    }

    /// Starts the master connection; on failure the target is offline with the reason.
    pub async fn connect(&self) -> Result<(), TargetState> {
        let mut builder = SessionBuilder::default();
        builder
            .known_hosts_check(if self.spec.accept_new_host_key {
                KnownHosts::Add
            } else {
                KnownHosts::Strict
            })
            .connect_timeout(CONNECT_TIMEOUT)
            .server_alive_interval(SERVER_ALIVE)
            .control_directory(&self.control_dir);
        if let Some(config) = &self.spec.ssh_config {
            builder.config_file(config);
        }
        let connected = tokio::time::timeout(CONNECT_LIMIT, builder.connect(&self.spec.destination))
            .await
            .unwrap_or_else(|_| {
                Err(openssh::Error::Connect(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "connection timed out: no session within {}s (key exchange or authentication stalled)",
                        CONNECT_LIMIT.as_secs()
                    ),
                )))
            });
        match connected {
            Ok(session) => {
                self.set_session(Some(Arc::new(session)));
                self.state.send_replace(TargetState::Online);
                info!(target = %self.id(), destination = %self.spec.destination,
                      "SSH master connection up");
                Ok(())
            }
            Err(e) => {
                let text = error_text(&e);
                let state = TargetState::Offline {
                    reason: OfflineReason::of_ssh_error(&text),
                    detail: last_line(&text),
                };
                warn!(target = %self.id(), destination = %self.spec.destination,
                      reason = %state.describe(), "SSH connection failed");
                self.state.send_replace(state.clone());
                Err(state)
            }
        }
    }

    /// `<user>.<target>.<relay id>`: the value of [`RELAY_ENV`] in this relay's jobs on this
    /// target.
    fn marker(&self) -> String {
        format!("{}.{}.{}", self.relay_user, self.id(), self.relay_id)
    }

    /// A receiver of the target's state changes.
    pub fn subscribe(&self) -> watch::Receiver<TargetState> {
        self.state.subscribe()
    }

    /// Whether the master connection is still alive; marks the target offline when not (also
    /// when the master does not answer within [`CHECK_LIMIT`]: a stalled master serves nothing).
    pub async fn check(&self) -> bool {
        let Some(session) = self.session() else {
            return false;
        };
        let detail = match tokio::time::timeout(CHECK_LIMIT, session.check()).await {
            Ok(Ok(())) => return true,
            Ok(Err(e)) => last_line(&error_text(&e)),
            Err(_) => format!(
                "the master connection did not answer a check within {}s",
                CHECK_LIMIT.as_secs()
            ),
        };
        let state = TargetState::Offline {
            reason: OfflineReason::Disconnected,
            detail,
        };
        warn!(target = %self.id(), reason = %state.describe(), "SSH master connection lost");
        self.set_session(None);
        retire(session);
        self.state.send_replace(state);
        false
    }

    /// Closes the master connection (at shutdown), waiting at most [`CLOSE_LIMIT`].
    pub async fn close(&self) {
        let session = self
            .session
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        let Some(session) = session else { return };
        match Arc::try_unwrap(session) {
            Ok(session) => match tokio::time::timeout(CLOSE_LIMIT, session.close()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    warn!(target = %self.id(), error = %e, "closing the SSH master connection failed")
                }
                Err(_) => warn!(target = %self.id(), "closing the SSH master connection timed out"),
            },
            // A job's session still holds it: it closes when the last holder lets go.
            Err(shared) => retire(shared),
        }
    }

    /// The refusal for a target whose master is down.
    fn offline(&self) -> SpawnError {
        SpawnError::Remote {
            target: self.id().to_string(),
            reason: format!(
                "the SSH connection is down ({}); the relay retries with backoff",
                self.state().describe()
            ),
        }
    }

    /// Starts the job of `spec` on the target and waits (at most the target's remote timeout)
    /// until its shell reported its pid.
    pub async fn spawn(self: &Arc<Self>, spec: &SpawnSpec<'_>) -> Result<RemoteJob, SpawnError> {
        let limit = self.spec.remote_timeout;
        match tokio::time::timeout(limit, self.start(spec)).await {
            Ok(started) => started,
            // The local end of the session is dropped (its ssh client killed), which closes the
            // channel; what the login shell was stuck on is the target's to end.
            Err(_) => Err(SpawnError::Remote {
                target: self.id().to_string(),
                reason: format!(
                    "the remote shell did not start within {}s (the SSH connection is up; the \
                     login shell or its startup files, e.g. ~/.bashrc, may be blocking)",
                    limit.as_secs_f32()
                ),
            }),
        }
    }

    async fn start(self: &Arc<Self>, spec: &SpawnSpec<'_>) -> Result<RemoteJob, SpawnError> {
        let session = self.session().ok_or_else(|| self.offline())?;
        let script = remote_script(spec, &self.spec.shell, &self.marker());
        let remote = |reason: String| SpawnError::Remote {
            target: self.id().to_string(),
            reason,
        };
        let mut child = Session::to_command(Arc::clone(&session), "sh")
            .arg("-c")
            .arg(script)
            .stdin(openssh::Stdio::null())
            .stdout(openssh::Stdio::piped())
            .stderr(openssh::Stdio::piped())
            .spawn()
            .await
            .map_err(|e| remote(format!("cannot start a session: {}", error_text(&e))))?;
        let stdout = child.stdout().take();
        let Some(stderr) = child.stderr().take() else {
            return Err(remote("the session has no stderr".into()));
        };
        let mut stderr = BufReader::new(stderr);
        let pid = match read_pid(&mut stderr).await {
            Ok(Start::Pid(pid)) => pid,
            Ok(Start::CwdFailed) => {
                let cwd = spec.cwd.map(PathBuf::from).unwrap_or_default();
                return Err(SpawnError::Cwd {
                    cwd,
                    source: io::Error::new(
                        io::ErrorKind::NotFound,
                        format!("not an accessible directory on {}", self.id()),
                    ),
                });
            }
            Ok(Start::Ended) => {
                return Err(remote(
                    "the remote shell ended before the job started".into(),
                ));
            }
            Err(e) => return Err(remote(format!("reading the session failed: {e}"))),
        };
        let (exit_tx, exit_rx) = oneshot::channel();
        let target = self.id().clone();
        tokio::spawn(async move {
            let status = match child.wait().await {
                Ok(status) => status,
                // ssh exits 255 when the remote shell died of a signal or the connection broke.
                Err(openssh::Error::RemoteProcessTerminated) => ExitStatus::from_raw(255 << 8),
                Err(openssh::Error::Remote(e)) if e.kind() == io::ErrorKind::NotFound => {
                    ExitStatus::from_raw(127 << 8)
                }
                Err(e) => {
                    warn!(target = %target, error = %e, "waiting for the remote job failed");
                    ExitStatus::from_raw(255 << 8)
                }
            };
            let _ = exit_tx.send(status);
        });
        Ok(RemoteJob {
            pid,
            target: Arc::clone(self),
            stdout: stdout.map(|p| Box::new(p) as Pipe),
            stderr: Some(Box::new(stderr) as Pipe),
            exit: exit_rx,
            exited: None,
        })
    }

    /// Runs `argv` (each word quoted by openssh) over the master and returns its stdout, at
    /// most `max` bytes; gives up after the target's remote timeout.
    async fn output(&self, argv: &[&str], max: u64) -> Result<String, String> {
        let limit = self.spec.remote_timeout;
        tokio::time::timeout(limit, self.run_fixed(argv, max))
            .await
            .unwrap_or_else(|_| {
                Err(format!(
                    "no answer within {}s (the login shell or its startup files may be blocking)",
                    limit.as_secs_f32()
                ))
            })
    }

    async fn run_fixed(&self, argv: &[&str], max: u64) -> Result<String, String> {
        let session = self.session().ok_or_else(|| self.state().describe())?;
        let Some((program, args)) = argv.split_first() else {
            return Ok(String::new());
        };
        let mut child = session
            .command(*program)
            .args(args.iter().copied())
            .stdin(openssh::Stdio::null())
            .stdout(openssh::Stdio::piped())
            .stderr(openssh::Stdio::null())
            .spawn()
            .await
            .map_err(|e| error_text(&e))?;
        let mut out = Vec::new();
        if let Some(stdout) = child.stdout().take() {
            stdout
                .take(max)
                .read_to_end(&mut out)
                .await
                .map_err(|e| e.to_string())?;
        }
        let _ = child.wait().await;
        Ok(String::from_utf8_lossy(&out).into_owned())
    }

    /// Signals the remote process group `pgid` over another session of the master.
    async fn signal(&self, pgid: u32, signal: Signal) -> Result<(), String> {
        if pgid <= 1 {
            return Ok(());
        }
        let name = signal.as_str().trim_start_matches("SIG");
        let group = format!("-{pgid}");
        self.output(&["kill", "-s", name, "--", &group], 0)
            .await
            .map(|_| ())
    }

    /// The pack the relay knows without asking the target: `identity`, the relay's user, and
    /// while the target is offline, the reason.
    pub fn identity_pack(&self, identity: pb::HostFacts) -> pb::HostFacts {
        let state = self.state();
        pb::HostFacts {
            relay_user: self.relay_user.to_string(),
            relay_offline_reason: state.describe(),
            collected_at_ms: execmesh_proto::now_ms(),
            ..identity
        }
    }

    /// The target's fact pack from a fixed, read-only probe (uname, os-release, CPUs, memory)
    /// on top of [`Self::identity_pack`]; offline, the identity pack alone. Fails when the
    /// probe does not answer within the target's remote timeout.
    pub async fn facts(&self, identity: pb::HostFacts) -> Result<pb::HostFacts, String> {
        let mut facts = self.identity_pack(identity);
        if !facts.relay_offline_reason.is_empty() {
            return Ok(facts);
        }
        let text = self
            .output(&["sh", "-c", PROBE], PROBE_MAX_BYTES)
            .await
            .map_err(|e| format!("the facts probe on {} failed: {e}", self.id()))?;
        crate::relay::probe::parse(&text, &mut facts);
        Ok(facts)
    }
}

/// The fixed facts probe: reads only, prints sections the parser knows.
const PROBE: &str = "echo '== uname'; uname -n -r -m; echo '== os-release'; cat /etc/os-release 2>/dev/null; \
echo '== cpus'; getconf _NPROCESSORS_ONLN 2>/dev/null || nproc 2>/dev/null; \
echo '== meminfo'; cat /proc/meminfo 2>/dev/null; echo '== uptime'; cat /proc/uptime 2>/dev/null; \
echo '== loadavg'; cat /proc/loadavg 2>/dev/null";

/// How the remote script started.
enum Start {
    Pid(u32),
    CwdFailed,
    Ended,
}

/// Reads stderr up to the pid report (skipping login noise before it).
async fn read_pid<R: tokio::io::AsyncBufRead + Unpin>(stderr: &mut R) -> io::Result<Start> {
    let mut line = String::new();
    for _ in 0..START_NOISE_LINES {
        line.clear();
        if stderr.read_line(&mut line).await? == 0 {
            return Ok(Start::Ended);
        }
        let text = line.trim_end();
        if let Some(pid) = text.strip_prefix(PID_MARK) {
            return Ok(pid.trim().parse().map_or(Start::Ended, Start::Pid));
        }
        if text == CWD_MARK {
            return Ok(Start::CwdFailed);
        }
    }
    Ok(Start::Ended)
}

/// The script the remote login shell runs for a job: enter the working directory, report the
/// session's process group, set the job's environment, and become the job's shell.
/// Every value is single-quoted; environment names that are not shell names are left out.
pub fn remote_script(spec: &SpawnSpec<'_>, shell: &str, relay: &str) -> String {
    let mut script = String::new();
    if let Some(cwd) = spec.cwd {
        script.push_str(&format!(
            "cd -- {} 2>/dev/null || {{ echo {CWD_MARK} >&2; exit 126; }}\n",
            quote(&cwd.to_string_lossy())
        ));
    }
    // The group sshd made for the session (its leader is the login shell, which may or may not
    // have exec'd this one): from /proc where there is one, else from ps, else this shell's pid.
    script.push_str(&format!(
        "pg=$$; if [ -r /proc/$$/stat ]; then read -r _ _ _ _ pg _ < /proc/$$/stat; \
         else pg=$(ps -o pgid= -p $$ 2>/dev/null | tr -d ' '); fi\n\
         echo \"{PID_MARK}${{pg:-$$}}\" >&2\n"
    ));
    script.push_str(&format!(
        "export {JOB_ENV}={} {HOST_ENV}={} {RELAY_ENV}={}",
        quote(spec.job.as_str()),
        quote(spec.host.as_str()),
        quote(relay)
    ));
    let mut names: Vec<&String> = spec.env.keys().filter(|k| is_shell_name(k)).collect();
    names.sort();
    for name in names {
        script.push_str(&format!(" {name}={}", quote(&spec.env[name])));
    }
    script.push('\n');
    // A runbook's argv is executed as it is, each word quoted: the remote shell never parses
    // a value (as `process::spawn` execs it locally).
    let words: Vec<String> = if spec.argv.is_empty() {
        vec![quote(shell), "-c".to_string(), quote(spec.cmd)]
    } else {
        spec.argv.iter().map(|w| quote(w)).collect()
    };
    script.push_str(&format!("exec {} </dev/null\n", words.join(" ")));
    script
}

fn is_shell_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// `'text'`, with each `'` written as `'\''`.
fn quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', "'\\''"))
}

/// Lets go of a master connection off the async threads: dropping openssh's `Session` runs
/// `ssh -O exit` and waits for it.
fn retire(session: Arc<Session>) {
    tokio::task::spawn_blocking(move || drop(session));
}

fn error_text(e: &openssh::Error) -> String {
    use std::error::Error as _;
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

fn last_line(text: &str) -> String {
    text.lines()
        .map(str::trim)
        .rfind(|l| !l.is_empty())
        .unwrap_or_default()
        .chars()
        .take(300)
        .collect()
}

/// A job's shell on a target.
pub struct RemoteJob {
    pid: u32,
    target: Arc<SshTarget>,
    stdout: Option<Pipe>,
    stderr: Option<Pipe>,
    exit: oneshot::Receiver<ExitStatus>,
    exited: Option<ExitStatus>,
}

// === impl RemoteJob ===

impl RemoteJob {
    pub fn pid(&self) -> u32 {
        self.pid
    }

    pub fn take_output(&mut self) -> (Option<Pipe>, Option<Pipe>) {
        (self.stdout.take(), self.stderr.take())
    }

    /// Waits for the remote shell's session to end. Cancel-safe.
    pub async fn wait(&mut self) -> io::Result<ExitStatus> {
        if let Some(status) = self.exited {
            return Ok(status);
        }
        let status = (&mut self.exit)
            .await
            .map_err(|_| io::Error::other("the session's watcher ended"))?;
        self.exited = Some(status);
        Ok(status)
    }

    /// Signals the job's remote process group; says so in the log when it could not.
    pub fn signal_group(&self, signal: Signal) -> impl Future<Output = ()> + Send + 'static {
        // Owned, not borrowed: the job's output pipes (held by `self`) are not `Sync`.
        let (target, pgid) = (Arc::clone(&self.target), self.pid);
        async move {
            if let Err(e) = target.signal(pgid, signal).await {
                warn!(target = %target.id(), pgid, signal = signal.as_str(), error = %e,
                      "could not signal the job's remote process group");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::path::Path;

    #[test]
    fn ssh_failures_are_classified() {
        let r = OfflineReason::of_ssh_error;
        assert_eq!(
            r("Host key verification failed."),
            OfflineReason::HostKeyMismatch
        );
        assert_eq!(
            r("alice@127.0.0.1: Permission denied (publickey)."),
            OfflineReason::AuthFailed
        );
        assert_eq!(
            r("ssh: connect to host 127.0.0.1 port 1: Connection refused"),
            OfflineReason::Unreachable
        );
        assert_eq!(r("something else"), OfflineReason::Failed);
    }

    #[test]
    fn the_remote_script_quotes_every_value() {
        let job = Token::parse("job id", "j-1").expect("token");
        let host = Token::parse("host id", "h-1").expect("token");
        let env = HashMap::from([
            ("GREETING".to_string(), "it's $HOME".to_string()),
            ("bad name".to_string(), "x".to_string()),
        ]);
        let spec = SpawnSpec {
            shell: Path::new("/bin/sh"),
            cmd: "echo 'a' $(id)",
            argv: &[],
            cwd: Some(Path::new("/tmp/o'k")),
            env: &env,
            job: &job,
            host: &host,
            account: None,
        };
        let script = remote_script(&spec, "/bin/bash", "alice.h-1");
        assert!(script.contains("EXECMESH_RELAY='alice.h-1'"), "{script}");
        assert!(script.contains("cd -- '/tmp/o'\\''k'"), "{script}");
        assert!(script.contains("GREETING='it'\\''s $HOME'"), "{script}");
        assert!(!script.contains("bad name"), "{script}");
        assert!(
            script.ends_with("exec '/bin/bash' -c 'echo '\\''a'\\'' $(id)' </dev/null\n"),
            "{script}"
        );
        let argv = [
            "printf".to_string(),
            "%s\\n".to_string(),
            "$(id); rm -rf /".to_string(),
        ];
        let script = remote_script(
            &SpawnSpec {
                argv: &argv,
                ..spec
            },
            "/bin/bash",
            "alice.h-1",
        );
        assert!(
            script.ends_with("exec 'printf' '%s\\n' '$(id); rm -rf /' </dev/null\n"),
            "{script}"
        );
    }
}
