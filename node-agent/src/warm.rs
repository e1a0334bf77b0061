//! Keeps a few job shells started ahead of time, so a short command does not wait for the shell to start.
//!
//! A warm shell is `<shell> -c BOOT`, started like any job shell (its own process group, stdin
//! from /dev/null, stdout and stderr piped, `PR_SET_PDEATHSIG`) with one more pipe on fd 3, on
//! which it waits. A job takes an idle shell and writes it a script — the working directory, the
//! job's environment, the command in `BASH_EXECUTION_STRING` — then closes the pipe. BOOT sources
//! that script, closes fd 3 and `eval`s the command at top level, which parses and runs it the
//! way `bash -c` does: same exit codes (`exit N`, 2 for a syntax error), `$$` is the group
//! leader, `return` outside a function is the same error. Idle shells are not jobs: they hold no
//! job permit and have no status in `mesh_jobs`.

use std::ffi::OsStr;
use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use execmesh_proto::Token;
use nix::sys::signal::Signal;
use nix::unistd::{AccessFlags, access};
use tokio::io::AsyncWriteExt as _;
use tokio::net::unix::pipe;
use tokio::sync::Notify;
use tokio::time::{sleep, timeout};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::process::{
    HOST_ENV, JOB_ENV, SpawnError, SpawnSpec, check_cwd, inherited_env, signal_group,
};
use crate::runas::Account;
use crate::vfork;

/// Marks a warm shell with the instance id of the agent that started it. `/proc/<pid>/environ`
/// shows a process's environment *at exec*, and a warm shell only exports `EXECMESH_JOB` once it
/// is given a job; recovery recognises the shell of a leftover job by this marker together with
/// the pid and agent instance its status recorded. The job's command does not see it.
pub const WARM_ENV: &str = "EXECMESH_WARM";

/// What a warm shell runs: source the script from fd 3 (read to EOF in large blocks, unlike
/// `read`, which takes pipes one byte per syscall), close fd 3 so the job does not inherit it,
/// and run the command. An empty script (the agent closed the pipe to retire the shell) leaves
/// `EXECMESH_JOB` unset, and the shell exits without running anything.
const BOOT: &str = concat!(
    ". /dev/fd/3 || exit 1; exec 3<&-; ",
    "[ -n \"${EXECMESH_JOB+x}\" ] || exit 1; ",
    "eval \"$BASH_EXECUTION_STRING\""
);

/// Largest script handed to a warm shell. Larger commands start a shell of their own: a warm
/// shell parses its script twice (as a quoted string, then the command), which costs more than
/// the start it saves once scripts are long.
const MAX_SCRIPT_BYTES: usize = 16 * 1024;

/// Longest wait for a warm shell to take its script. It reads at once; a shell that does not
/// is broken and the job starts a shell of its own.
const SCRIPT_WRITE_LIMIT: Duration = Duration::from_secs(1);

/// Wait before trying again when a warm shell could not be started.
const RESPAWN_BACKOFF: Duration = Duration::from_secs(1);

/// Variables a shell treats specially at start or keeps to itself (read-only, dynamic, or read
/// only from the environment it started with). Setting them after start would not have the
/// effect they have in a fresh shell's environment, so a request naming one gets a fresh shell.
const SPECIAL_NAMES: &[&str] = &[
    "ENV",
    "SHELLOPTS",
    "POSIXLY_CORRECT",
    "SHLVL",
    "UID",
    "EUID",
    "PPID",
    "IFS",
    "PS4",
    "PWD",
    "OLDPWD",
    "RANDOM",
    "SRANDOM",
    "SECONDS",
    "LINENO",
    "HISTCMD",
    "GROUPS",
    "FUNCNAME",
    "EPOCHSECONDS",
    "EPOCHREALTIME",
    "PIPESTATUS",
    "DIRSTACK",
    "OPTIND",
    "OPTERR",
    "COMP_WORDBREAKS",
    "_",
];

/// Idle warm shells, refilled in the background up to the configured size.
pub struct WarmPool {
    shell: PathBuf,
    host: Token,
    /// This agent run's instance id, the value of [`WARM_ENV`].
    instance: String,
    /// How many idle shells to keep; 0 disables the pool.
    size: usize,
    /// The account the shells run as, and the directory they start in (its default one), when
    /// it is not the agent's own: the account most users are mapped to (see [`WarmPool::new`]).
    account: Option<(Account, PathBuf)>,
    idle: Mutex<Vec<WarmShell>>,
    /// Wakes the refill task when a shell was taken.
    wake: Notify,
    /// Fired at shutdown: no more shells are handed out or started.
    closed: CancellationToken,
}

/// How long a stopping agent waits for its idle shells to exit once killed.
const RETIRE_WAIT: Duration = Duration::from_secs(2);

/// An idle shell waiting on fd 3 for its script. Dropping it kills its process group.
pub struct WarmShell {
    /// `None` once the shell was handed its job.
    child: Option<vfork::Child>,
    /// The write end of the shell's fd 3.
    script: Option<pipe::Sender>,
}

// === impl WarmPool ===

impl WarmPool {
    /// A pool of `size` shells that run as `account` (another account than the agent's, which
    /// then starts them in its default directory), or as the agent.
    pub fn new(
        shell: &Path,
        host: Token,
        instance: String,
        size: usize,
        account: Option<Account>,
    ) -> Self {
        Self {
            shell: shell.to_path_buf(),
            host,
            instance,
            size,
            account: account.map(|account| {
                let cwd = account.default_cwd();
                (account, cwd)
            }),
            idle: Mutex::new(Vec::new()),
            wake: Notify::new(),
            closed: CancellationToken::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<WarmShell>> {
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Keeps the pool full until [`WarmPool::close`]. Must run as a task on a runtime worker
    /// thread, not on a blocking-pool thread: `PR_SET_PDEATHSIG` fires when the *thread* that
    /// forked the shell ends, and blocking-pool threads end when idle.
    pub async fn run(self: Arc<Self>) {
        // Without pidfds (an older kernel) every job forks a fresh shell.
        if self.size == 0 || !vfork::supported() {
            self.closed.cancel();
            return;
        }
        loop {
            while !self.closed.is_cancelled() && self.lock().len() < self.size {
                match WarmShell::spawn(&self) {
                    Ok(shell) => {
                        debug!(pid = shell.pid(), "warm shell started");
                        // A shell put back while this one started may have filled the slot;
                        // then the new one is dropped (killed) so the pool keeps its size.
                        let mut idle = self.lock();
                        if idle.len() < self.size {
                            idle.push(shell);
                        }
                    }
                    Err(e) => {
                        warn!(shell = %self.shell.display(), error = %e,
                              "cannot start a warm shell; jobs start their own meanwhile");
                        tokio::select! {
                            _ = sleep(RESPAWN_BACKOFF) => {}
                            _ = self.closed.cancelled() => {}
                        }
                    }
                }
            }
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = self.closed.cancelled() => break,
            }
        }
        self.retire_idle().await;
    }

    /// An idle shell that can run `spec` as `<shell> -c` would, with the script to give it;
    /// `None` when the request needs a shell of its own or none is idle. Asks for a
    /// replacement. The shells run as one account: a job for another (run-as) starts a fresh
    /// shell, which takes on that account's ids before exec; so does a job of the pool's
    /// account (when that is not the agent's) in another directory than the account's default,
    /// since only a fresh shell can enter it as the account before it runs and refuse the job
    /// when it cannot.
    pub fn take(&self, spec: &SpawnSpec<'_>) -> Option<(WarmShell, String)> {
        let same_account = match (spec.switches_to(), &self.account) {
            (None, None) => true,
            (Some(account), Some((ours, cwd))) => account == ours && spec.cwd == Some(cwd),
            _ => false,
        };
        if self.size == 0
            || self.closed.is_cancelled()
            || spec.shell != self.shell
            || !same_account
            || !spec.argv.is_empty()
        {
            return None;
        }
        let script = script(spec)?;
        let taken = {
            let mut idle = self.lock();
            let mut found = None;
            while let Some(mut shell) = idle.pop() {
                if shell.is_alive() {
                    found = Some(shell);
                    break;
                }
                // Died while idle (killed from outside): dropping it reaps it.
            }
            if idle.is_empty() {
                // Nothing left for the next job: refill now rather than after this job ends.
                self.wake.notify_one();
            }
            found
        };
        taken.map(|shell| (shell, script))
    }

    /// Starts replacements for the shells taken. Called when a job has ended and replied, so
    /// that the fork and the new shell's start (a millisecond of CPU, and a fork stalls the
    /// agent's other threads on the address space) do not compete with a job's critical path.
    pub fn replenish(&self) {
        if self.size > 0 && self.lock().len() < self.size {
            self.wake.notify_one();
        }
    }

    /// Returns a shell that was taken but not given a job. The refill task may have replaced it
    /// meanwhile; a pool that is full again drops it (which kills it) rather than grow.
    pub fn put_back(&self, shell: WarmShell) {
        if self.closed.is_cancelled() || shell.script.is_none() {
            return;
        }
        let mut idle = self.lock();
        if idle.len() < self.size {
            idle.push(shell);
        }
    }

    /// Stops handing out and starting shells; [`WarmPool::run`] then kills the idle ones and
    /// waits for them to exit.
    pub fn close(&self) {
        self.closed.cancel();
    }

    /// Kills the idle shells and waits (at most [`RETIRE_WAIT`]) until they have exited, so that
    /// none outlives an agent that stops.
    async fn retire_idle(&self) {
        let idle = std::mem::take(&mut *self.lock());
        let killed: Vec<vfork::Child> = idle.into_iter().filter_map(WarmShell::kill).collect();
        let exited = async {
            for mut child in killed {
                let _ = child.wait().await;
            }
        };
        if tokio::time::timeout(RETIRE_WAIT, exited).await.is_err() {
            warn!(wait = ?RETIRE_WAIT, "idle warm shells did not exit after SIGKILL");
        }
    }
}

// === impl WarmShell ===

impl WarmShell {
    /// Starts `<shell> -c BOOT` of `pool` with its script pipe on fd 3, as a fresh job shell
    /// starts (see `process::spawn`): for another account with its ids, in its default
    /// directory and with the clean environment such a job gets.
    fn spawn(pool: &WarmPool) -> io::Result<Self> {
        let (reader, writer) = io::pipe()?;
        if let Some((account, _)) = &pool.account {
            // BOOT opens `/dev/fd/3` anew, which the kernel checks against the pipe's owner.
            std::os::unix::fs::fchown(&reader, Some(account.uid), Some(account.gid))?;
        }
        let mut env = inherited_env(pool.account.is_some());
        env.push((HOST_ENV.into(), pool.host.as_str().into()));
        env.push((WARM_ENV.into(), pool.instance.as_str().into()));
        let child = vfork::spawn(vfork::Command {
            program: &pool.shell,
            args: &[OsStr::new("-c"), OsStr::new(BOOT)],
            env,
            cwd: pool.account.as_ref().map(|(_, cwd)| cwd.as_path()),
            ids: pool.account.as_ref().map(|(account, _)| account.ids()),
            // The shell holds its own copy now; ours is closed by the spawn, or it would keep
            // the pipe open after the writer closes and the shell would never see its end.
            fd3: Some(reader.into()),
        })?;
        let script = pipe::Sender::from_owned_fd(OwnedFd::from(writer))?;
        Ok(Self {
            child: Some(child),
            script: Some(script),
        })
    }

    /// The shell's pid, which is also its process group id and will be the job's.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().and_then(vfork::Child::id).unwrap_or(0)
    }

    fn is_alive(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|child| matches!(child.try_wait(), Ok(None)))
    }

    /// Gives the shell its job: writes `script` and closes the pipe, after which the shell runs
    /// it. Returns the shell's child handle, from then on the job's shell.
    pub async fn start(mut self, script: &str) -> io::Result<vfork::Child> {
        let mut pipe = self
            .script
            .take()
            .ok_or_else(|| io::Error::other("the warm shell was already started"))?;
        let write = async {
            pipe.write_all(script.as_bytes()).await?;
            pipe.flush().await
        };
        match timeout(SCRIPT_WRITE_LIMIT, write).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e),
            Err(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the warm shell did not read its script",
                ));
            }
        }
        drop(pipe);
        self.child
            .take()
            .ok_or_else(|| io::Error::other("the warm shell has no child"))
    }
}

impl WarmShell {
    /// Kills the shell's group; the child, to wait for.
    fn kill(mut self) -> Option<vfork::Child> {
        let child = self.child.take()?;
        kill_group(&child);
        Some(child)
    }
}

impl Drop for WarmShell {
    fn drop(&mut self) {
        if let Some(child) = &self.child {
            kill_group(child);
        }
    }
}

/// Kills the group of an idle (or half-started) shell while the unreaped child still holds the
/// pid, so the signal cannot reach a process that reused it.
fn kill_group(child: &vfork::Child) {
    if let Some(pid) = child.id()
        && let Err(e) = signal_group(pid, Signal::SIGKILL)
    {
        warn!(pid, error = %e, "killing an idle warm shell failed");
    }
}

/// Refuses a working directory a shell could not change into: missing, not a directory, or not
/// searchable. Checked before the script is written, because a failing `cd` in a warm shell
/// could only end the job, not refuse it.
pub fn check_usable_cwd(cwd: &Path) -> Result<(), SpawnError> {
    check_cwd(cwd)?;
    access(cwd, AccessFlags::X_OK).map_err(|errno| SpawnError::Cwd {
        cwd: cwd.to_path_buf(),
        source: io::Error::from(errno),
    })
}

/// The script that makes a warm shell run `spec` as `<shell> -c <cmd>` would, or `None` when
/// only a fresh shell can: a relative working directory (resolved by `cd` against `CDPATH`), an
/// environment variable that is not a plain shell name or that shells treat specially, or a
/// script too long to be worth it.
///
/// The working directory is changed first (before the request's variables, which could change
/// how `cd` behaves), with `-P` so that `PWD` is the physical path a fresh shell computes, and
/// `OLDPWD` kept as the shell started with it.
pub fn script(spec: &SpawnSpec<'_>) -> Option<String> {
    if spec.cwd.is_some_and(|cwd| !cwd.is_absolute()) {
        return None;
    }
    if !spec.env.keys().all(|name| plain_name(name)) {
        return None;
    }
    let mut s = String::with_capacity(256 + spec.cmd.len());
    s.push_str("unset ");
    s.push_str(WARM_ENV);
    s.push('\n');
    if let Some(cwd) = spec.cwd {
        let cwd = quote(cwd.to_str()?);
        s.push_str(&format!(
            "if [ \"${{OLDPWD+x}}\" ]; then __execmesh_oldpwd=$OLDPWD; cd -P -- {cwd} || exit 1; \
             OLDPWD=$__execmesh_oldpwd; unset __execmesh_oldpwd; \
             else cd -P -- {cwd} || exit 1; unset OLDPWD; fi\n"
        ));
    }
    let mut names: Vec<&String> = spec.env.keys().collect();
    names.sort();
    for name in names {
        s.push_str(&format!("export {name}={}\n", quote(&spec.env[name])));
    }
    s.push_str(&format!(
        "export {JOB_ENV}={} {HOST_ENV}={}\n",
        quote(spec.job.as_str()),
        quote(spec.host.as_str())
    ));
    s.push_str("BASH_EXECUTION_STRING=");
    s.push_str(&quote(spec.cmd));
    s.push('\n');
    (s.len() <= MAX_SCRIPT_BYTES).then_some(s)
}

/// `[A-Za-z_][A-Za-z0-9_]*`, not a name the shell treats specially.
fn plain_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    let first_ok = bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_');
    first_ok
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
        && !name.starts_with("BASH")
        && !name.starts_with("__execmesh")
        && !SPECIAL_NAMES.contains(&name)
}

/// Single-quotes `s` for the shell: the only character to escape is `'` itself.
fn quote(s: &str) -> String {
    let mut q = String::with_capacity(s.len() + 2);
    q.push('\'');
    for c in s.chars() {
        if c == '\'' {
            q.push_str("'\\''");
        } else {
            q.push(c);
        }
    }
    q.push('\'');
    q
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn spec<'a>(
        cmd: &'a str,
        cwd: Option<&'a Path>,
        env: &'a HashMap<String, String>,
        ids: &'a (Token, Token),
    ) -> SpawnSpec<'a> {
        SpawnSpec {
            shell: Path::new("/bin/bash"),
            cmd,
            argv: &[],
            cwd,
            env,
            job: &ids.0,
            host: &ids.1,
            account: None,
        }
    }

    fn ids() -> (Token, Token) {
        (
            Token::parse("job id", "j-1").expect("token"),
            Token::parse("host id", "h-1").expect("token"),
        )
    }

    #[test]
    fn quoting_survives_quotes() {
        assert_eq!(quote("it's"), "'it'\\''s'");
        assert_eq!(quote(""), "''");
    }

    #[test]
    fn special_or_odd_names_need_a_fresh_shell() {
        let ids = ids();
        for name in [
            "BASH_ENV",
            "SHELLOPTS",
            "IFS",
            "a-b",
            "1X",
            "",
            "BASH_FUNC_f%%",
        ] {
            let env = HashMap::from([(name.to_string(), "x".to_string())]);
            assert!(script(&spec("true", None, &env, &ids)).is_none(), "{name}");
        }
        let env = HashMap::from([("GREETING".to_string(), "hi".to_string())]);
        assert!(script(&spec("true", None, &env, &ids)).is_some());
        assert!(script(&spec("true", Some(Path::new("rel")), &env, &ids)).is_none());
        let long = "x".repeat(MAX_SCRIPT_BYTES);
        assert!(script(&spec(&long, None, &env, &ids)).is_none());
    }
}
