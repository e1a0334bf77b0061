//! The `file` tool on this host: reads, stat, listings, writes, moves, deletes and chunked copies, all inside the allowed roots (and the roots and workers a grep uses).
//!
//! Every operation is blocking file-system work: [`Files::serve`] runs it on the blocking pool,
//! a few at a time, so a flood of searches cannot take every thread. Every path goes through
//! [`Roots`] first.

pub(crate) mod clamp;
mod copy;
mod error;
mod list;
mod read;
mod roots;
pub(crate) mod search;
mod stat;
mod write;

use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use execmesh_proto::pb::{self, file_reply, file_request};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::runas::{Account, FsCredentials};

pub use copy::{IDLE_TRANSFER, MAX_CHUNK_BYTES, Transfers};
pub(crate) use copy::{check_chunk_write, check_sha256, chunk_len, unknown as unknown_transfer};
pub use error::FileError;
pub(crate) use list::stays_inside;
pub(crate) use list::{DEFAULT_MAX_DEPTH, DEFAULT_MAX_ENTRIES, MAX_DEPTH, MAX_ENTRIES};
pub(crate) use read::{Source, page_bytes, page_reply};
pub use roots::{DEFAULT_ROOTS, Final, Parents, Roots, normalize};
pub(crate) use stat::kind_of_mode;
pub(crate) use write::{DEFAULT_MODE, change, check_write, temp_name, unmoved};

/// The operation `request` names, or an invalid-request error when it names none.
pub(crate) fn operation(request: pb::FileRequest) -> Result<file_request::Op, FileError> {
    request
        .op
        .ok_or_else(|| FileError::invalid("(no path)", "the file request names no operation"))
}

/// File operations running at once; more wait for a turn.
pub const FILE_WORKERS: usize = 8;
/// Reply room kept free under the server's max payload for the envelope and field overhead.
const REPLY_HEADROOM: usize = 128 * 1024;
/// Smallest reply budget, whatever the server says.
const MIN_REPLY_BYTES: usize = 16 * 1024;
/// Longest a listing or search may walk before it returns what it found.
const MAX_WALK_TIME: Duration = Duration::from_secs(60);
/// How often abandoned copies are looked for.
const SWEEP_INTERVAL: Duration = Duration::from_secs(10);

/// The host's file-operation limits, from the configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most bytes one read page (text or raw) returns.
    pub max_read_bytes: u64,
    /// Most bytes one write or append carries.
    pub max_write_bytes: u64,
    /// Most bytes one chunked copy may write.
    pub max_copy_bytes: u64,
}

/// What one request may spend: reply bytes (under the NATS max payload) and time.
#[derive(Debug, Clone, Copy)]
pub struct Budget {
    /// Most bytes of data (lines, entries, matches) the reply may carry.
    pub reply_bytes: usize,
    /// When listings and searches stop walking and return what they have.
    pub deadline: Instant,
}

/// The file tool's state: the roots, the limits, the copies in progress.
pub struct Files {
    roots: Roots,
    pub(crate) limits: Limits,
    /// Copies in progress on this host (the destination side).
    transfers: Transfers,
    /// Bounds concurrent file operations on the blocking pool.
    permits: Arc<Semaphore>,
}

// === impl Budget ===

impl Budget {
    /// The budget for a reply on a server with `max_payload`, until `deadline` (at most
    /// [`MAX_WALK_TIME`] from now).
    pub fn new(max_payload: usize, deadline: Instant) -> Budget {
        Budget {
            reply_bytes: max_payload
                .saturating_sub(REPLY_HEADROOM)
                .max(MIN_REPLY_BYTES),
            deadline: deadline.min(Instant::now() + MAX_WALK_TIME),
        }
    }

    /// The budget until a request's expiry (unix ms).
    pub fn until_expiry(max_payload: usize, expires_at_ms: u64) -> Budget {
        let left = expires_at_ms.saturating_sub(execmesh_proto::now_ms());
        Budget::new(max_payload, Instant::now() + Duration::from_millis(left))
    }

    pub(crate) fn expired(&self) -> bool {
        Instant::now() >= self.deadline
    }
}

// === impl Files ===

impl Files {
    /// The file tool over `roots` with `limits`.
    pub fn with(roots: Roots, limits: Limits) -> Files {
        Files {
            roots,
            limits,
            transfers: Transfers::default(),
            permits: Arc::new(Semaphore::new(FILE_WORKERS)),
        }
    }

    /// The allowed roots.
    pub fn roots(&self) -> &Roots {
        &self.roots
    }

    /// Runs `work` on a file worker ([`Files::run_blocking`]), acting as `account` when it is
    /// not the agent's own: the kernel checks access as the account and new files belong to it.
    /// Every request that touches files (file operations and greps) goes through here.
    pub async fn run_as<T, E>(
        self: &Arc<Self>,
        account: Option<Account>,
        work: impl FnOnce(&Files) -> Result<T, E> + Send + 'static,
    ) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<FileError> + Send + 'static,
    {
        let io_error = |op, source| {
            E::from(FileError::Io {
                path: String::new(),
                op,
                source,
            })
        };
        let account = account.filter(Account::switches);
        self.run_blocking(move |files| {
            let _as = match &account {
                Some(account) => Some(
                    FsCredentials::assume(account)
                        .map_err(|e| io_error("taking on the run-as account", e))?,
                ),
                None => None,
            };
            work(files)
        })
        .await
        .unwrap_or_else(|e| Err(io_error("the file task", e)))
    }

    /// Runs `work` on the blocking pool once one of the [`FILE_WORKERS`] permits is free, so
    /// file work (reads, searches) never takes every blocking thread from the jobs.
    pub async fn run_blocking<T: Send + 'static>(
        self: &Arc<Self>,
        work: impl FnOnce(&Files) -> T + Send + 'static,
    ) -> io::Result<T> {
        let permit = Arc::clone(&self.permits)
            .acquire_owned()
            .await
            .map_err(io::Error::other)?;
        let files = Arc::clone(self);
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            work(&files)
        })
        .await
        .map_err(io::Error::other)
    }

    /// Runs one request on this thread.
    pub fn handle(
        &self,
        request: pb::FileRequest,
        budget: &Budget,
    ) -> Result<pb::FileReply, FileError> {
        use file_reply::Result as Reply;
        use file_request::Op;
        let op = operation(request)?;
        let result = match op {
            Op::Read(req) => Reply::Read(read::read(self, req, budget)?),
            Op::Stat(req) => Reply::Stat(stat::stat(self, req)?),
            Op::List(req) => Reply::List(list::list(self, req, budget)?),
            Op::Write(req) => Reply::Write(write::write(self, req)?),
            Op::Move(req) => Reply::Change(write::rename(self, req)?),
            Op::Delete(req) => Reply::Change(write::delete(self, req)?),
            Op::ChunkRead(req) => Reply::ChunkRead(copy::chunk_read(self, req)?),
            Op::ChunkWrite(req) => Reply::ChunkWrite(copy::chunk_write(self, req)?),
        };
        Ok(pb::FileReply {
            result: Some(result),
        })
    }

    /// Removes copies that saw no chunk for [`IDLE_TRANSFER`], every [`SWEEP_INTERVAL`], until
    /// `stop`; then removes every copy still in progress (their temp files included).
    pub async fn sweep(self: Arc<Self>, stop: CancellationToken) {
        let mut tick = tokio::time::interval(SWEEP_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tick.tick() => {
                    let files = Arc::clone(&self);
                    let _ = tokio::task::spawn_blocking(move || {
                        files.transfers.sweep(Instant::now())
                    })
                    .await;
                }
            }
        }
        let files = Arc::clone(&self);
        let removed = tokio::task::spawn_blocking(move || files.transfers.abandon_all())
            .await
            .unwrap_or(0);
        if removed > 0 {
            debug!(removed, "removed unfinished copies at shutdown");
        }
    }
}

/// The main path a request names, for logs.
pub fn op_path(request: &pb::FileRequest) -> &str {
    use file_request::Op;
    match &request.op {
        Some(Op::Read(r)) => &r.path,
        Some(Op::Stat(r)) => &r.path,
        Some(Op::List(r)) => &r.path,
        Some(Op::Write(r)) => &r.path,
        Some(Op::Move(r)) => &r.from,
        Some(Op::Delete(r)) => &r.path,
        Some(Op::ChunkRead(r)) => &r.path,
        Some(Op::ChunkWrite(r)) => &r.path,
        None => "",
    }
}

/// Test fixtures shared by the operations' and grep's unit tests.
#[cfg(test)]
pub(crate) mod fixture {
    use std::path::{Path, PathBuf};

    use super::*;

    /// A file tool rooted in a fresh temp dir (canonical path in `root`).
    pub struct Fixture {
        pub files: Files,
        pub root: PathBuf,
        _dir: tempfile::TempDir,
    }

    pub fn limits() -> Limits {
        Limits {
            max_read_bytes: 1024 * 1024,
            max_write_bytes: 64 * 1024 * 1024,
            max_copy_bytes: 1024 * 1024 * 1024,
        }
    }

    pub fn budget() -> Budget {
        Budget::new(1024 * 1024, Instant::now() + Duration::from_secs(30))
    }

    impl Fixture {
        pub fn new() -> Fixture {
            Fixture::with_limits(limits())
        }

        pub fn with_limits(limits: Limits) -> Fixture {
            let dir = tempfile::tempdir().expect("temp dir");
            let root = std::fs::canonicalize(dir.path()).expect("canonical");
            Fixture {
                files: Files::with(Roots::new(std::slice::from_ref(&root)), limits),
                root,
                _dir: dir,
            }
        }

        /// `root/rel` as a string path for requests.
        pub fn path(&self, rel: &str) -> String {
            self.root.join(rel).display().to_string()
        }

        pub fn write(&self, rel: &str, content: impl AsRef<[u8]>) -> PathBuf {
            let path = self.root.join(rel);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).expect("mkdir");
            }
            std::fs::write(&path, content).expect("write");
            path
        }

        pub fn abs(&self, rel: &str) -> PathBuf {
            self.root.join(rel)
        }

        pub fn exists(&self, rel: &str) -> bool {
            Path::new(&self.abs(rel)).symlink_metadata().is_ok()
        }
    }
}
