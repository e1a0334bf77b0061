//! Starts a job's shell in a process group of its own, and signals that group.

use std::collections::{BTreeMap, HashMap};
use std::ffi::{OsStr, OsString};
use std::io;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};

use execmesh_proto::Token;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::{Pid, getpgrp};
use tokio::process::{Child, Command};

use crate::runas::Account;
use crate::vfork;

/// Environment variable naming the job in every process it starts; recovery finds leftovers by it.
pub const JOB_ENV: &str = "EXECMESH_JOB";
/// Environment variable naming the host id.
pub const HOST_ENV: &str = "EXECMESH_HOST";

/// What to start.
#[derive(Debug)]
pub struct SpawnSpec<'a> {
    pub shell: &'a Path,
    pub cmd: &'a str,
    /// When not empty, the program and arguments to execute directly instead of
    /// `<shell> -c <cmd>` (a runbook's argv: no shell ever parses its values).
    pub argv: &'a [String],
    pub cwd: Option<&'a Path>,
    pub env: &'a HashMap<String, String>,
    pub job: &'a Token,
    pub host: &'a Token,
    /// The account to run as; `None` or the agent's own: no change of ids.
    pub account: Option<&'a Account>,
}

impl SpawnSpec<'_> {
    /// The account, when the child must change its ids to it.
    pub fn switches_to(&self) -> Option<&Account> {
        self.account.filter(|a| a.switches())
    }
}

/// Why the child could not be started.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error("working directory {} is not usable: {source}", cwd.display())]
    Cwd { cwd: PathBuf, source: io::Error },
    #[error("cannot start {}: {source}", shell.display())]
    Exec { shell: PathBuf, source: io::Error },
    /// A relay could not start the job's shell on its SSH target.
    #[error("SSH target {target}: {reason}")]
    Remote { target: String, reason: String },
}

/// Starts `<shell> -c <cmd>` as the leader of a new process group (pgid = pid), stdin from
/// /dev/null, stdout and stderr piped. The agent's own `EXECMESH_*` settings are not passed on.
///
/// For another account the child changes its groups, gid and uid before exec, and only then its
/// working directory (so the directory is checked as the account); it starts from a clean
/// environment (`PATH`, locale, `TZ` of the agent) instead of the agent's.
pub fn spawn(spec: &SpawnSpec<'_>) -> Result<LocalChild, SpawnError> {
    start(spec, vfork::supported())
}

/// [`spawn`], the shell form without a fork when `clone` says so.
fn start(spec: &SpawnSpec<'_>, clone: bool) -> Result<LocalChild, SpawnError> {
    let switch = spec.switches_to();
    if let Some(cwd) = spec.cwd
        && switch.is_none()
    {
        check_cwd(cwd)?;
    }
    let env = job_env(spec, switch.is_some());
    let shell_args = [OsStr::new("-c"), OsStr::new(spec.cmd)];
    let (program, args): (&Path, Vec<&OsStr>) = match spec.argv.split_first() {
        Some((program, args)) => (Path::new(program), args.iter().map(OsStr::new).collect()),
        None => (spec.shell, shell_args.to_vec()),
    };
    if spec.argv.is_empty() && clone {
        // `<shell> -c <cmd>`, the shell an absolute path: started without a fork.
        return vfork::spawn(vfork::Command {
            program,
            args: &args,
            env,
            cwd: spec.cwd,
            ids: switch.map(Account::ids),
            fd3: None,
        })
        .map(LocalChild::Cloned)
        .map_err(|failed| match (failed.step, spec.cwd) {
            (vfork::Step::Cwd, Some(cwd)) => SpawnError::Cwd {
                cwd: cwd.to_path_buf(),
                source: failed.source,
            },
            _ => SpawnError::Exec {
                shell: program.to_path_buf(),
                source: failed.source,
            },
        });
    }

    // A runbook's argv (its program may be a bare name, found on `PATH` as `execvp` does), or
    // any shell on a kernel without pidfds: a fork.
    let mut command = shell_command(program);
    command.args(args).env_clear().envs(env);
    let credentials = match switch {
        Some(account) => {
            Some(
                account
                    .child_credentials(spec.cwd)
                    .map_err(|source| SpawnError::Exec {
                        shell: program.to_path_buf(),
                        source,
                    })?,
            )
        }
        None => {
            if let Some(cwd) = spec.cwd {
                command.current_dir(cwd);
            }
            None
        }
    };

    let agent = std::process::id();
    // SAFETY: the closure runs in the forked child before exec, where only async-signal-safe
    // functions may be called: `apply` makes setgroups/setgid/setuid/chdir calls on memory
    // prepared before the fork, `die_with_agent` calls prctl and getppid; neither allocates.
    // The parent-death signal is set after the ids change, which would clear it.
    unsafe {
        command.pre_exec(move || {
            if let Some(credentials) = &credentials {
                credentials.apply()?;
            }
            vfork::die_with_agent(agent)
        });
    }
    command
        .spawn()
        .map(LocalChild::Forked)
        .map_err(|source| match spec.cwd {
            Some(cwd) if source.kind() == io::ErrorKind::NotFound && !cwd.is_dir() => {
                SpawnError::Cwd {
                    cwd: cwd.to_path_buf(),
                    source,
                }
            }
            // The child's chdir, as the account, failed.
            Some(cwd)
                if switch.is_some()
                    && matches!(
                        source.kind(),
                        io::ErrorKind::PermissionDenied
                            | io::ErrorKind::NotFound
                            | io::ErrorKind::NotADirectory
                    ) =>
            {
                SpawnError::Cwd {
                    cwd: cwd.to_path_buf(),
                    source,
                }
            }
            _ => SpawnError::Exec {
                shell: program.to_path_buf(),
                source,
            },
        })
}

/// A started local job shell: forked (a runbook's argv), or cloned without a fork.
#[derive(Debug)]
pub enum LocalChild {
    Forked(Child),
    Cloned(vfork::Child),
}

/// The environment of a job's shell: the agent's without its own `EXECMESH_*` settings (or, for
/// another account, a clean one: `PATH`, locale, `TZ` of the agent), the request's variables,
/// and the job's and host's ids.
fn job_env(spec: &SpawnSpec<'_>, switched: bool) -> Vec<(OsString, OsString)> {
    let mut env: BTreeMap<OsString, OsString> = inherited_env(switched).into_iter().collect();
    env.extend(spec.env.iter().map(|(k, v)| (k.into(), v.into())));
    env.insert(JOB_ENV.into(), spec.job.as_str().into());
    env.insert(HOST_ENV.into(), spec.host.as_str().into());
    env.into_iter().collect()
}

/// What a job shell keeps of the agent's environment: all but the agent's own `EXECMESH_*`
/// settings, or for another account only `PATH`, locale and `TZ`.
pub fn inherited_env(switched: bool) -> Vec<(OsString, OsString)> {
    if switched {
        Account::kept_env()
            .into_iter()
            .map(|(k, v)| (k.into(), v.into()))
            .collect()
    } else {
        std::env::vars_os()
            .filter(|(key, _)| !key.as_encoded_bytes().starts_with(b"EXECMESH_"))
            .collect()
    }
}

/// `<program>` as a forked job shell starts: its own process group, stdin from /dev/null,
/// stdout and stderr piped, not killed when dropped (its environment is set by the caller).
fn shell_command(program: &Path) -> Command {
    let mut command = Command::new(program);
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(false);
    command
}

/// Refuses a working directory that is missing or not a directory, naming it.
pub fn check_cwd(cwd: &Path) -> Result<(), SpawnError> {
    match std::fs::metadata(cwd) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(SpawnError::Cwd {
            cwd: cwd.to_path_buf(),
            source: io::Error::new(io::ErrorKind::NotADirectory, "not a directory"),
        }),
        Err(source) => Err(SpawnError::Cwd {
            cwd: cwd.to_path_buf(),
            source,
        }),
    }
}

/// Sends `signal` to process group `pgid`. Refuses group ids that could hit the agent or
/// everything (0, 1, the agent's own group). A group that is gone already is fine.
pub fn signal_group(pgid: u32, signal: Signal) -> nix::Result<()> {
    let Ok(raw) = i32::try_from(pgid) else {
        return Ok(());
    };
    if raw <= 1 || Pid::from_raw(raw) == getpgrp() {
        return Ok(());
    }
    match killpg(Pid::from_raw(raw), signal) {
        Err(nix::errno::Errno::ESRCH) => Ok(()),
        other => other,
    }
}

/// Name of the signal that ended a process (`SIGKILL`), if one did.
pub fn signal_name(status: &ExitStatus) -> Option<String> {
    let raw = status.signal()?;
    Some(match Signal::try_from(raw) {
        Ok(signal) => signal.as_str().to_string(),
        Err(_) => format!("SIG{raw}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_to_signal_its_own_group_or_init() {
        let own = getpgrp().as_raw() as u32;
        assert!(
            signal_group(own, Signal::SIGKILL).is_ok(),
            "must be a no-op, not a suicide"
        );
        assert!(signal_group(0, Signal::SIGKILL).is_ok());
        assert!(signal_group(1, Signal::SIGKILL).is_ok());
    }

    #[tokio::test]
    async fn child_runs_in_its_own_group_with_the_job_env() {
        let job = Token::parse("job id", "t-1").expect("token");
        let host = Token::parse("host id", "h-1").expect("token");
        let env = HashMap::from([("GREETING".to_string(), "hi".to_string())]);
        let spec = SpawnSpec {
            shell: Path::new("/bin/sh"),
            cmd: "echo \"$GREETING $EXECMESH_JOB $EXECMESH_HOST $(ps -o pgid= -p $$ | tr -d ' ') $$\"",
            argv: &[],
            cwd: Some(Path::new("/")),
            env: &env,
            job: &job,
            host: &host,
            account: None,
        };
        // Cloned, and forked as on a kernel without pidfds: the same shell.
        for clone in [true, false] {
            let child = start(&spec, clone).expect("spawns");
            assert_eq!(matches!(child, LocalChild::Cloned(_)), clone);
            let (text, _) = output(child).await;
            let fields: Vec<&str> = text.split_whitespace().collect();
            assert_eq!(&fields[..3], ["hi", "t-1", "h-1"]);
            if fields.len() == 5 {
                assert_eq!(fields[3], fields[4], "pgid equals pid");
            }
        }
    }

    #[tokio::test]
    async fn an_argv_runs_without_a_shell() {
        let job = Token::parse("job id", "t-1").expect("token");
        let host = Token::parse("host id", "h-1").expect("token");
        let env = HashMap::new();
        let argv = ["echo".to_string(), "a; echo $(id) `x`\nb".to_string()];
        let spec = SpawnSpec {
            shell: Path::new("/bin/sh"),
            cmd: "ignored",
            argv: &argv,
            cwd: None,
            env: &env,
            job: &job,
            host: &host,
            account: None,
        };
        let (out, status) = output(spawn(&spec).expect("spawns")).await;
        assert_eq!(out, "a; echo $(id) `x`\nb\n");
        assert!(status.success());
    }

    /// A child's stdout and exit status.
    async fn output(child: LocalChild) -> (String, ExitStatus) {
        use tokio::io::AsyncReadExt as _;
        let mut out = String::new();
        let status = match child {
            LocalChild::Forked(child) => {
                let o = child.wait_with_output().await.expect("waits");
                out = String::from_utf8(o.stdout).expect("utf8");
                o.status
            }
            LocalChild::Cloned(mut child) => {
                if let Some(mut stdout) = child.stdout.take() {
                    stdout.read_to_string(&mut out).await.expect("reads");
                }
                child.wait().await.expect("waits")
            }
        };
        (out, status)
    }

    #[tokio::test]
    async fn a_missing_cwd_is_named() {
        let job = Token::parse("job id", "t-1").expect("token");
        let env = HashMap::new();
        let spec = SpawnSpec {
            shell: Path::new("/bin/sh"),
            cmd: "true",
            argv: &[],
            cwd: Some(Path::new("/nonexistent/dir")),
            env: &env,
            job: &job,
            host: &job,
            account: None,
        };
        for clone in [true, false] {
            let err = start(&spec, clone).unwrap_err().to_string();
            assert!(err.contains("/nonexistent/dir"), "{err}");
        }
    }
}
