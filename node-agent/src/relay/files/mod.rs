//! The `file` tool and grep on an SSH target: the agent's operations over SFTP on the target's master connection, inside the target's roots as the target resolves them.
//!
//! Requests run on the node's file workers (blocking threads) like an agent's, reaching the
//! target through [`RemoteFs`]; limits, reply shapes, paging, search and digest are the
//! agent's own code. The SFTP channel is opened once per master connection and reopened when
//! the master was replaced or the channel failed; the roots are resolved with it.

mod copy;
mod list;
mod paths;
mod read;
mod search;
mod write;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use execmesh_proto::pb::{self, file_reply, file_request};
use openssh::Session;
use openssh_sftp_client::{Sftp, SftpOptions};
use tracing::{info, warn};

use crate::files::{Budget, FileError, Files, Limits, Roots, operation};
use crate::grep::{GrepError, GrepLimits};
use crate::relay::sftp::RemoteFs;
use crate::relay::ssh::SshTarget;

pub use search::DEFAULT_GREP_MAX_BYTES;

/// One target's file tool.
pub struct RemoteFiles {
    target: Arc<SshTarget>,
    /// The roots as configured; resolved on the target with each channel.
    configured: Vec<PathBuf>,
    limits: Limits,
    /// Most bytes one grep reads from the target.
    grep_max_bytes: u64,
    channel: tokio::sync::Mutex<Option<Channel>>,
    /// Copies in progress to this target.
    transfers: Mutex<HashMap<String, copy::Transfer>>,
}

/// An open SFTP channel, the master it runs over, and the roots resolved through it.
#[derive(Clone)]
struct Channel {
    session: Arc<Session>,
    sftp: Arc<Sftp>,
    roots: Roots,
    broken: Arc<AtomicBool>,
}

// === impl RemoteFiles ===

impl RemoteFiles {
    pub fn new(
        target: Arc<SshTarget>,
        configured: Vec<PathBuf>,
        limits: Limits,
        grep_max_bytes: u64,
    ) -> Self {
        Self {
            target,
            configured,
            limits,
            grep_max_bytes,
            channel: tokio::sync::Mutex::new(None),
            transfers: Mutex::new(HashMap::new()),
        }
    }

    /// The channel over the current master, opened (and the roots resolved) when there is none
    /// yet, the master was replaced, or the last one failed.
    async fn channel(&self, deadline: Instant) -> Result<Channel, FileError> {
        let unreachable = |why: String| {
            FileError::io(
                "(the SSH target)",
                "reaching the target",
                std::io::Error::new(std::io::ErrorKind::NotConnected, why),
            )
        };
        let Some(session) = self.target.master() else {
            return Err(unreachable(format!(
                "the SSH connection is down ({}); the relay retries with backoff",
                self.target.state().describe()
            )));
        };
        let mut cached = self.channel.lock().await;
        if let Some(channel) = cached.as_ref()
            && Arc::ptr_eq(&channel.session, &session)
            && !channel.broken.load(Ordering::Relaxed)
        {
            return Ok(channel.clone());
        }
        let limit = self.target.spec.remote_timeout;
        let opened = tokio::time::timeout(
            limit,
            Sftp::from_clonable_session(Arc::clone(&session), SftpOptions::default()),
        )
        .await;
        let sftp = match opened {
            Ok(Ok(sftp)) => Arc::new(sftp),
            Ok(Err(e)) => {
                return Err(unreachable(format!("cannot start the SFTP subsystem: {e}")));
            }
            Err(_) => {
                return Err(unreachable(format!(
                    "the SFTP subsystem did not start within {}s",
                    limit.as_secs_f32()
                )));
            }
        };
        let broken = Arc::new(AtomicBool::new(false));
        let configured = self.configured.clone();
        let fs = RemoteFs::new(
            Arc::clone(&sftp),
            tokio::runtime::Handle::current(),
            deadline,
            Arc::clone(&broken),
        );
        let roots = tokio::task::spawn_blocking(move || resolve_roots(&fs, &configured))
            .await
            .map_err(|e| unreachable(format!("resolving the roots failed: {e}")))?;
        info!(target = %self.target.id(), roots = %roots.listed(), "SFTP channel open");
        let channel = Channel {
            session,
            sftp,
            roots,
            broken,
        };
        *cached = Some(channel.clone());
        Ok(channel)
    }

    /// Runs `work` on one of `files`' workers with blocking access to the target's files.
    async fn run<T: Send + 'static, E: From<FileError> + Send + 'static>(
        self: &Arc<Self>,
        files: &Arc<Files>,
        deadline: Instant,
        work: impl FnOnce(&RemoteFiles, &RemoteFs, &Roots) -> Result<T, E> + Send + 'static,
    ) -> Result<T, E> {
        let channel = self.channel(deadline).await?;
        let runtime = tokio::runtime::Handle::current();
        let this = Arc::clone(self);
        files
            .run_blocking(move |_| {
                let fs = RemoteFs::new(channel.sftp, runtime, deadline, channel.broken);
                work(&this, &fs, &channel.roots)
            })
            .await
            .unwrap_or_else(|e| {
                Err(E::from(FileError::io(
                    "(the SSH target)",
                    "the file task",
                    e,
                )))
            })
    }

    /// Answers one file request on the target.
    pub async fn handle(
        self: &Arc<Self>,
        files: &Arc<Files>,
        request: pb::FileRequest,
        budget: Budget,
    ) -> Result<pb::FileReply, FileError> {
        self.run(files, budget.deadline, move |this, fs, roots| {
            this.serve(fs, roots, request, &budget)
        })
        .await
    }

    /// Answers a grep on the target, within `deadline` and the target's byte budget.
    pub async fn grep(
        self: &Arc<Self>,
        files: &Arc<Files>,
        limits: GrepLimits,
        request: pb::GrepRequest,
        reply_bytes: usize,
        deadline: Instant,
    ) -> Result<pb::GrepReply, GrepError> {
        self.run(files, deadline, move |this, fs, roots| {
            search::grep(
                fs,
                roots,
                this.grep_max_bytes,
                &limits,
                request,
                reply_bytes,
                deadline,
            )
        })
        .await
    }

    /// One request, on this (blocking) thread.
    fn serve(
        &self,
        fs: &RemoteFs,
        roots: &Roots,
        request: pb::FileRequest,
        budget: &Budget,
    ) -> Result<pb::FileReply, FileError> {
        use file_reply::Result as Reply;
        use file_request::Op;
        let op = operation(request)?;
        let limits = &self.limits;
        let result = match op {
            Op::Read(req) => Reply::Read(read::read(fs, roots, limits, req, budget)?),
            Op::Stat(req) => Reply::Stat(list::stat(fs, roots, req)?),
            Op::List(req) => Reply::List(list::list(fs, roots, req, budget)?),
            Op::Write(req) => Reply::Write(write::write(fs, roots, limits, req)?),
            Op::Move(req) => Reply::Change(write::rename(fs, roots, req)?),
            Op::Delete(req) => Reply::Change(write::delete(fs, roots, req)?),
            Op::ChunkRead(req) => Reply::ChunkRead(read::chunk_read(fs, roots, req)?),
            Op::ChunkWrite(req) => {
                Reply::ChunkWrite(copy::chunk_write(fs, roots, limits, &self.transfers, req)?)
            }
        };
        Ok(pb::FileReply {
            result: Some(result),
        })
    }
}

/// The configured roots that exist on the target as directories, resolved by its `realpath`.
fn resolve_roots(fs: &RemoteFs, configured: &[PathBuf]) -> Roots {
    let mut resolved = Vec::new();
    for root in configured {
        match fs.realpath(root) {
            Ok(real)
                if fs
                    .stat(&real)
                    .ok()
                    .flatten()
                    .is_some_and(|m| m.file_type().is_some_and(|t| t.is_dir())) =>
            {
                resolved.push(real)
            }
            Ok(_) => {
                warn!(root = %root.display(), "file root is not a directory on the target; skipped")
            }
            Err(e) => {
                warn!(root = %root.display(), error = %e, "file root cannot be resolved on the target; skipped")
            }
        }
    }
    Roots::resolved(resolved)
}
