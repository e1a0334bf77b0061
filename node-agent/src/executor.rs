//! Where a job's shell runs — a local child in a process group of its own, or a remote shell over SSH — and the one handle the job pipeline drives either through.

use std::io;
use std::process::ExitStatus;
use std::sync::Arc;

use nix::sys::signal::Signal;
use tokio::process::Child;
use tracing::warn;

use crate::output::Pipe;
use crate::process::{self, LocalChild, SpawnError, SpawnSpec, signal_group};
use crate::relay::files::RemoteFiles;
use crate::relay::ssh::{RemoteJob, SshTarget};
use crate::vfork;

/// How a node starts its jobs.
#[derive(Clone)]
pub enum Executor {
    /// A child of the agent on this machine (the node-agent).
    Local,
    /// A shell on an SSH target, through the relay's master connection to it, and the
    /// target's files over SFTP on the same connection.
    Ssh(Arc<SshTarget>, Arc<RemoteFiles>),
}

// === impl Executor ===

impl Executor {
    /// Starts `spec` where this executor runs jobs.
    pub async fn spawn(&self, spec: &SpawnSpec<'_>) -> Result<JobChild, SpawnError> {
        match self {
            Executor::Local => process::spawn(spec).map(|child| match child {
                LocalChild::Forked(child) => JobChild::local(child),
                LocalChild::Cloned(child) => JobChild::cloned(child),
            }),
            Executor::Ssh(target, _) => target.spawn(spec).await.map(JobChild::Remote),
        }
    }

    /// Whether this node acts for `user`'s jobs: an agent for everyone's, a relay for its
    /// own user's only.
    pub fn serves_user(&self, user: &str) -> bool {
        match self {
            Executor::Local => true,
            Executor::Ssh(target, _) => target.relay_user.as_str() == user,
        }
    }

    /// Whether jobs run on this machine (warm shells, local leftovers and files apply).
    pub fn is_local(&self) -> bool {
        matches!(self, Executor::Local)
    }

    /// The SSH target's files, when jobs run on one.
    pub fn remote_files(&self) -> Option<&Arc<RemoteFiles>> {
        match self {
            Executor::Local => None,
            Executor::Ssh(_, files) => Some(files),
        }
    }
}

/// A started job's shell, wherever it runs.
pub enum JobChild {
    /// The leader of a local process group, and its pid (kept: a reaped child has none, and
    /// its group may live on).
    Local(Child, u32),
    /// The same, started without a fork (a warm shell given its job, or a fresh `<shell> -c`).
    Cloned(vfork::Child, u32),
    /// The leader of a remote process group, reached over SSH.
    Remote(RemoteJob),
}

// === impl JobChild ===

impl JobChild {
    /// A local child (spawned as a group leader).
    pub fn local(child: Child) -> Self {
        let pid = child.id().unwrap_or(0);
        JobChild::Local(child, pid)
    }

    /// A local child started without a fork.
    pub fn cloned(child: vfork::Child) -> Self {
        let pid = child.id().unwrap_or(0);
        JobChild::Cloned(child, pid)
    }

    /// The shell's pid, which is also its process group id (local or remote).
    pub fn pid(&self) -> u32 {
        match self {
            JobChild::Local(_, pid) | JobChild::Cloned(_, pid) => *pid,
            JobChild::Remote(job) => job.pid(),
        }
    }

    /// The shell's stdout and stderr, once.
    pub fn take_output(&mut self) -> (Option<Pipe>, Option<Pipe>) {
        match self {
            JobChild::Local(child, _) => (
                child.stdout.take().map(|p| Box::new(p) as Pipe),
                child.stderr.take().map(|p| Box::new(p) as Pipe),
            ),
            JobChild::Cloned(child, _) => (
                child.stdout.take().map(|p| Box::new(p) as Pipe),
                child.stderr.take().map(|p| Box::new(p) as Pipe),
            ),
            JobChild::Remote(job) => job.take_output(),
        }
    }

    /// Waits for the shell to exit. Cancel-safe.
    pub async fn wait(&mut self) -> io::Result<ExitStatus> {
        match self {
            JobChild::Local(child, _) => child.wait().await,
            JobChild::Cloned(child, _) => child.wait().await,
            JobChild::Remote(job) => job.wait().await,
        }
    }

    /// Sends `signal` to the shell's whole process group; failures are logged (a group that is
    /// gone already is fine). A local group is signalled at once; a remote one when the
    /// returned future runs (it owns what it needs: the job's pipes are not `Sync`).
    pub fn signal_group(&self, signal: Signal) -> impl Future<Output = ()> + Send + 'static {
        let remote = match self {
            JobChild::Local(_, pgid) | JobChild::Cloned(_, pgid) => {
                if let Err(e) = signal_group(*pgid, signal) {
                    warn!(pgid = *pgid, signal = signal.as_str(), error = %e,
                          "signalling the job's process group failed");
                }
                None
            }
            JobChild::Remote(job) => Some(job.signal_group(signal)),
        };
        async move {
            if let Some(remote) = remote {
                remote.await;
            }
        }
    }
}
