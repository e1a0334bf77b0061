//! The SFTP channel to an SSH target (a subsystem session over its master connection), as blocking calls for a file worker: each bounded by the request's deadline, each error the file tool's [`FileError`] naming the path.
//!
//! The file tool's and grep's code is synchronous (it runs on the blocking pool, one request per
//! worker), so a relay target's files are reached through the same code by calling the async
//! SFTP client with the runtime's `block_on` from that worker thread: a page, a search, a
//! listing are then the agent's own code over a remote [`Source`].

use std::cell::RefCell;
use std::future::Future;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use bytes::BytesMut;
use futures::StreamExt as _;
use openssh_sftp_client::error::SftpErrorKind;
use openssh_sftp_client::file::File;
use openssh_sftp_client::metadata::{MetaData, Permissions};
use openssh_sftp_client::{Error as SftpError, Sftp};
use tokio::io::AsyncSeekExt as _;
use tokio::runtime::Handle;

use crate::files::{FileError, Source};

/// Most bytes asked of the server in one read request.
const READ_REQUEST: u32 = 64 * 1024;

/// One entry of a remote directory (never `.` or `..`), with its `lstat` attributes.
pub struct Entry {
    pub name: String,
    pub meta: MetaData,
}

/// Blocking access to one target's files for one request.
pub struct RemoteFs {
    sftp: Arc<Sftp>,
    runtime: Handle,
    deadline: Instant,
    /// Set when the channel itself failed (not a file): the next request opens a new one.
    broken: Arc<AtomicBool>,
}

// === impl RemoteFs ===

impl RemoteFs {
    /// Calls through `sftp` from a worker thread of `runtime` until `deadline`.
    pub fn new(
        sftp: Arc<Sftp>,
        runtime: Handle,
        deadline: Instant,
        broken: Arc<AtomicBool>,
    ) -> Self {
        Self {
            sftp,
            runtime,
            deadline,
            broken,
        }
    }

    /// Whether the request's time is up.
    pub fn expired(&self) -> bool {
        Instant::now() >= self.deadline
    }

    /// Runs one SFTP call to completion on this (blocking) thread, within the deadline.
    fn call<T>(
        &self,
        path: &Path,
        op: &'static str,
        call: impl Future<Output = Result<T, SftpError>>,
    ) -> Result<T, FileError> {
        let deadline = tokio::time::Instant::from_std(self.deadline);
        match self
            .runtime
            .block_on(tokio::time::timeout_at(deadline, call))
        {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(self.failed(path, op, e)),
            Err(_) => Err(FileError::io(
                path,
                op,
                io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the request's time ran out waiting for the SSH target",
                ),
            )),
        }
    }

    /// The file tool's error for an SFTP failure on `path`.
    fn failed(&self, path: &Path, op: &'static str, e: SftpError) -> FileError {
        let kind = match &e {
            SftpError::SftpError(SftpErrorKind::NoSuchFile, _) => io::ErrorKind::NotFound,
            SftpError::SftpError(SftpErrorKind::PermDenied, _) => io::ErrorKind::PermissionDenied,
            SftpError::SftpError(_, _) => io::ErrorKind::Other,
            _ => {
                // Not an answer about a file: the channel (or the master under it) failed.
                self.broken.store(true, Ordering::Relaxed);
                io::ErrorKind::Other
            }
        };
        FileError::io(path, op, io::Error::new(kind, format!("SFTP: {e}")))
    }

    /// The server's `realpath`: symlinks resolved on the target. OpenSSH's server accepts a
    /// final component that does not exist (and resolves the rest).
    pub fn realpath(&self, path: &Path) -> Result<PathBuf, FileError> {
        let mut fs = self.sftp.fs();
        self.call(
            path,
            "resolving",
            async move { fs.canonicalize(path).await },
        )
    }

    /// `stat` (symlinks followed); `None` when nothing is there.
    pub fn stat(&self, path: &Path) -> Result<Option<MetaData>, FileError> {
        let mut fs = self.sftp.fs();
        missing_is_none(self.call(path, "reading the status", async move {
            fs.metadata(path).await
        }))
    }

    /// `lstat` (a symlink itself); `None` when nothing is there.
    pub fn lstat(&self, path: &Path) -> Result<Option<MetaData>, FileError> {
        let mut fs = self.sftp.fs();
        missing_is_none(self.call(path, "reading the status", async move {
            fs.symlink_metadata(path).await
        }))
    }

    /// Where a symlink points.
    pub fn read_link(&self, path: &Path) -> Result<PathBuf, FileError> {
        let mut fs = self.sftp.fs();
        self.call(
            path,
            "reading the link",
            async move { fs.read_link(path).await },
        )
    }

    /// A directory's entries (without `.` and `..`), sorted by name.
    pub fn read_dir(&self, path: &Path) -> Result<Vec<Entry>, FileError> {
        let mut fs = self.sftp.fs();
        let mut entries = self.call(path, "listing", async move {
            let dir = fs.open_dir(path).await?;
            let mut stream = std::pin::pin!(dir.read_dir());
            let mut entries = Vec::new();
            while let Some(entry) = stream.next().await {
                let entry = entry?;
                let name = entry.filename().to_string_lossy().into_owned();
                if name != "." && name != ".." {
                    entries.push(Entry {
                        name,
                        meta: entry.metadata(),
                    });
                }
            }
            Ok(entries)
        })?;
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(entries)
    }

    /// Opens a file for reading.
    pub fn open(&self, path: &Path) -> Result<RemoteFile<'_>, FileError> {
        let file = self.call(path, "opening", self.sftp.open(path))?;
        Ok(RemoteFile {
            fs: self,
            path: path.to_path_buf(),
            file: RefCell::new(file),
        })
    }

    /// Creates `path`, which must not exist, for writing.
    pub fn create_new(&self, path: &Path) -> Result<File, FileError> {
        let mut options = self.sftp.options();
        options.write(true).create_new(true);
        self.call(path, "creating a temp file", options.open(path))
    }

    /// Opens `path` for appending, creating it when missing.
    pub fn open_append(&self, path: &Path) -> Result<File, FileError> {
        let mut options = self.sftp.options();
        options.write(true).append(true).create(true);
        self.call(path, "opening", options.open(path))
    }

    /// Opens an existing `path` for writing in place (a copy's temp file).
    pub fn open_write(&self, path: &Path) -> Result<File, FileError> {
        let mut options = self.sftp.options();
        options.write(true);
        self.call(path, "opening", options.open(path))
    }

    /// Writes all of `data` at `offset` of `file`, then fsyncs it when the server can.
    pub fn write_at(
        &self,
        file: &mut File,
        path: &Path,
        offset: u64,
        data: &[u8],
    ) -> Result<(), FileError> {
        let fsync = self.sftp.support_fsync();
        self.call(path, "writing", async move {
            file.seek(io::SeekFrom::Start(offset))
                .await
                .map_err(SftpError::from)?;
            file.write_all(data).await?;
            if fsync {
                file.sync_all().await?;
            }
            Ok(())
        })
    }

    /// Sets a file's permission bits.
    pub fn chmod(&self, path: &Path, mode: u32) -> Result<(), FileError> {
        let mut fs = self.sftp.fs();
        let permissions = Permissions::from((mode & 0o7777) as u16);
        self.call(path, "setting the mode", async move {
            fs.set_permissions(path, permissions).await
        })
    }

    /// Renames `from` to `to`, replacing `to` (the server's `posix-rename` when it has it).
    pub fn rename(&self, from: &Path, to: &Path) -> Result<(), FileError> {
        let mut fs = self.sftp.fs();
        self.call(from, "renaming", async move { fs.rename(from, to).await })
    }

    /// Creates a directory (mode 0755).
    pub fn mkdir(&self, path: &Path) -> Result<(), FileError> {
        let mut fs = self.sftp.fs();
        self.call(path, "creating the directory", async move {
            fs.dir_builder()
                .permissions(Permissions::from(0o755))
                .create(path)
                .await
        })
    }

    /// Removes a file or symlink.
    pub fn remove_file(&self, path: &Path) -> Result<(), FileError> {
        let mut fs = self.sftp.fs();
        self.call(path, "deleting", async move { fs.remove_file(path).await })
    }

    /// Removes an empty directory.
    pub fn remove_dir(&self, path: &Path) -> Result<(), FileError> {
        let mut fs = self.sftp.fs();
        self.call(path, "deleting", async move { fs.remove_dir(path).await })
    }
}

/// `Ok(None)` for a file that is not there.
fn missing_is_none<T>(result: Result<T, FileError>) -> Result<Option<T>, FileError> {
    match result {
        Ok(value) => Ok(Some(value)),
        Err(FileError::NotFound { .. }) => Ok(None),
        Err(e) => Err(e),
    }
}

/// A remote file open for reading: read at offsets or streamed, each read one SFTP request
/// (at most [`READ_REQUEST`] bytes) within the request's deadline.
pub struct RemoteFile<'fs> {
    fs: &'fs RemoteFs,
    path: PathBuf,
    file: RefCell<File>,
}

// === impl RemoteFile ===

impl RemoteFile<'_> {
    /// Up to `len` bytes at `offset` in one request; empty at the end of the file.
    fn read_once(&self, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        let mut file = self.file.borrow_mut();
        let len = u32::try_from(len).unwrap_or(u32::MAX).min(READ_REQUEST);
        let read = self.fs.call(&self.path, "reading", async {
            file.seek(io::SeekFrom::Start(offset))
                .await
                .map_err(SftpError::from)?;
            file.read(len, BytesMut::with_capacity(len as usize)).await
        });
        match read {
            Ok(Some(bytes)) => Ok(bytes.to_vec()),
            Ok(None) => Ok(Vec::new()),
            Err(e) => Err(io::Error::other(e.to_string())),
        }
    }
}

impl Source for RemoteFile<'_> {
    fn bytes_at(&self, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        let mut data = Vec::with_capacity(len.min(1 << 20));
        while data.len() < len {
            let chunk = self.read_once(offset + data.len() as u64, len - data.len())?;
            if chunk.is_empty() {
                break;
            }
            data.extend_from_slice(&chunk);
        }
        Ok(data)
    }

    fn stream_from(&self, offset: u64) -> io::Result<impl Read + '_> {
        Ok(Stream {
            file: self,
            offset,
            spent: None,
        })
    }
}

/// A remote file as a [`Read`] from an offset.
struct Stream<'f, 'fs> {
    file: &'f RemoteFile<'fs>,
    offset: u64,
    /// Counts the bytes read against a budget, when there is one.
    spent: Option<&'f Budgeted>,
}

impl Read for Stream<'_, '_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let want = match self.spent {
            Some(budget) => budget.allowance(buf.len())?,
            None => buf.len(),
        };
        let chunk = self.file.read_once(self.offset, want)?;
        buf[..chunk.len()].copy_from_slice(&chunk);
        self.offset += chunk.len() as u64;
        if let Some(budget) = self.spent {
            budget.spend(chunk.len());
        }
        Ok(chunk.len())
    }
}

/// Bytes a remote search may still read from a target.
pub struct Budgeted {
    left: std::cell::Cell<u64>,
}

// === impl Budgeted ===

impl Budgeted {
    pub fn new(bytes: u64) -> Self {
        Self {
            left: std::cell::Cell::new(bytes),
        }
    }

    /// Whether nothing is left.
    pub fn spent(&self) -> bool {
        self.left.get() == 0
    }

    /// How much of `want` may be read; an error once nothing is left (the search of the file
    /// ends there, and the caller sees [`Budgeted::spent`]).
    fn allowance(&self, want: usize) -> io::Result<usize> {
        match self.left.get() {
            0 => Err(io::Error::other(
                "the byte budget for reading from the SSH target is spent",
            )),
            left => Ok(want.min(usize::try_from(left).unwrap_or(usize::MAX))),
        }
    }

    fn spend(&self, bytes: usize) {
        self.left.set(self.left.get().saturating_sub(bytes as u64));
    }

    /// The file's bytes from the start, counted against this budget.
    pub fn stream<'f, 'fs>(&'f self, file: &'f RemoteFile<'fs>) -> impl Read + 'f {
        Stream {
            file,
            offset: 0,
            spent: Some(self),
        }
    }
}
