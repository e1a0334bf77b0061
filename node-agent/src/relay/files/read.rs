//! `FileRead` and `FileChunkRead` on an SSH target: the agent's paging over a remote file.

use std::path::PathBuf;

use execmesh_proto::pb;
use openssh_sftp_client::metadata::MetaData;

use super::paths;
use crate::files::{
    Budget, FileError, Limits, Roots, Source as _, chunk_len, kind_of_mode, page_bytes, page_reply,
};
use crate::relay::sftp::{RemoteFile, RemoteFs};

/// Answers a `FileRead`: a page of lines from a line start, or raw bytes.
pub fn read(
    fs: &RemoteFs,
    roots: &Roots,
    limits: &Limits,
    req: pb::FileRead,
    budget: &Budget,
) -> Result<pb::FileReadReply, FileError> {
    let raw = req.path.as_str();
    let (real, meta) = regular(fs, roots, raw)?;
    let file = fs.open(&real)?;
    let size = meta.len().unwrap_or(0);
    let max_bytes = page_bytes(&req, limits, budget);
    page_reply(&file, &req, &real, identity(&meta), size, max_bytes)
}

/// Answers a `FileChunkRead`: raw bytes at an offset, for a copy to another host.
pub fn chunk_read(
    fs: &RemoteFs,
    roots: &Roots,
    req: pb::FileChunkRead,
) -> Result<pb::FileChunkReadReply, FileError> {
    let raw = req.path.as_str();
    let len = chunk_len(req.len);
    let (real, meta) = regular(fs, roots, raw)?;
    let file: RemoteFile<'_> = fs.open(&real)?;
    let data = file
        .bytes_at(req.offset, len)
        .map_err(|e| FileError::io(raw, "reading", e))?;
    Ok(pb::FileChunkReadReply {
        path: real.display().to_string(),
        eof: req.offset + data.len() as u64 >= meta.len().unwrap_or(0),
        data,
        identity: Some(identity(&meta)),
    })
}

/// The real path and status of `raw`, which must be a regular file inside the roots. The type
/// is checked before anything is opened (a FIFO would block the server's open).
pub fn regular(fs: &RemoteFs, roots: &Roots, raw: &str) -> Result<(PathBuf, MetaData), FileError> {
    let real = paths::resolve(fs, roots, raw)?;
    let meta = fs.stat(&real)?.ok_or_else(|| FileError::not_found(raw))?;
    let mode = mode_of(&meta);
    if mode & libc::S_IFMT == libc::S_IFDIR {
        return Err(FileError::is_a_directory(raw, "; list it instead"));
    }
    if mode & libc::S_IFMT != libc::S_IFREG {
        return Err(FileError::invalid(
            raw,
            format!("is a {}, not a regular file", kind_of_mode(mode)),
        ));
    }
    Ok((real, meta))
}

/// What SFTP tells of a file's version: its size and mtime (whole seconds). The target's
/// device and inode are not sent over SFTP, so they are 0.
pub fn identity(meta: &MetaData) -> pb::FileIdentity {
    pb::FileIdentity {
        dev: 0,
        ino: 0,
        size: meta.len().unwrap_or(0),
        mtime_ns: mtime_secs(meta).saturating_mul(1_000_000_000),
    }
}

/// The modification time in unix seconds.
pub fn mtime_secs(meta: &MetaData) -> u64 {
    meta.modified()
        .map(|t| t.as_duration().as_secs())
        .unwrap_or(0)
}

/// `st_mode` from SFTP attributes: the file type's bits and the permission bits.
pub fn mode_of(meta: &MetaData) -> u32 {
    let kind = match meta.file_type() {
        Some(t) if t.is_dir() => libc::S_IFDIR,
        Some(t) if t.is_file() => libc::S_IFREG,
        Some(t) if t.is_symlink() => libc::S_IFLNK,
        Some(t) if t.is_fifo() => libc::S_IFIFO,
        Some(t) if t.is_socket() => libc::S_IFSOCK,
        Some(t) if t.is_block_device() => libc::S_IFBLK,
        Some(t) if t.is_char_device() => libc::S_IFCHR,
        _ => 0,
    };
    let permissions = meta.permissions().map_or(0, |p| p.as_raw().bits()) & 0o7777;
    kind | permissions
}
