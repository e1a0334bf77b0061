//! `FileStat` and `FileList` on an SSH target: `lstat` and directory walks over SFTP, sorted and capped as the agent's, never descending a directory that resolves outside the roots.

use std::path::Path;

use execmesh_proto::pb;

use super::paths::{self, Final, Parents};
use super::read::{mode_of, mtime_secs};
use crate::files::{
    Budget, DEFAULT_MAX_DEPTH, DEFAULT_MAX_ENTRIES, FileError, MAX_DEPTH, MAX_ENTRIES, Roots,
    kind_of_mode,
};
use crate::relay::sftp::RemoteFs;

/// Wire bytes of an entry besides its path and link target.
const ENTRY_OVERHEAD: usize = 48;

/// Answers a `FileStat`: `lstat` of the path, a symlink described and never followed. Owner
/// and group names are empty: SFTP sends only the numeric ids.
pub fn stat(
    fs: &RemoteFs,
    roots: &Roots,
    req: pb::FileStat,
) -> Result<pb::FileStatReply, FileError> {
    let place = paths::place(fs, roots, &req.path, Final::Keep, Parents::Existing)?;
    let path = place.path();
    let meta = fs
        .lstat(&path)?
        .ok_or_else(|| FileError::not_found(&req.path))?;
    let mode = mode_of(&meta);
    let symlink_target = if mode & libc::S_IFMT == libc::S_IFLNK {
        fs.read_link(&path)?.display().to_string()
    } else {
        String::new()
    };
    Ok(pb::FileStatReply {
        path: path.display().to_string(),
        kind: kind_of_mode(mode).into(),
        size: meta.len().unwrap_or(0),
        mode: mode & 0o7777,
        uid: meta.uid().unwrap_or(0),
        gid: meta.gid().unwrap_or(0),
        owner: String::new(),
        group: String::new(),
        mtime_ms: mtime_secs(&meta).saturating_mul(1000),
        symlink_target,
    })
}

/// Answers a `FileList`: one directory, or a tree to a depth, in name order (a directory's
/// entries right after it), symlinks listed and never descended into.
pub fn list(
    fs: &RemoteFs,
    roots: &Roots,
    req: pb::FileList,
    budget: &Budget,
) -> Result<pb::FileListReply, FileError> {
    let raw = req.path.as_str();
    let real = paths::existing(fs, roots, raw)?;
    let is_dir = fs
        .stat(&real)?
        .is_some_and(|m| mode_of(&m) & libc::S_IFMT == libc::S_IFDIR);
    if !is_dir {
        return Err(FileError::not_a_directory(raw));
    }
    let depth = if req.recursive {
        match req.max_depth {
            0 => DEFAULT_MAX_DEPTH,
            n => n.min(MAX_DEPTH),
        }
    } else {
        1
    };
    let mut walk = Walk {
        fs,
        roots,
        budget,
        hidden: req.hidden,
        recursive: req.recursive,
        depth,
        max_entries: match req.max_entries {
            0 => DEFAULT_MAX_ENTRIES,
            n => n.min(MAX_ENTRIES),
        } as usize,
        reply: pb::FileListReply {
            path: real.display().to_string(),
            ..Default::default()
        },
        bytes: 0,
        deeper: false,
    };
    walk.dir(&real, "", 1)?;
    let mut reply = walk.reply;
    if reply.truncated_reason.is_empty() && walk.deeper {
        reply.truncated_reason =
            format!("max_depth {depth} reached: deeper entries were not listed");
    }
    reply.truncated = !reply.truncated_reason.is_empty();
    Ok(reply)
}

/// A listing in progress.
struct Walk<'a> {
    fs: &'a RemoteFs,
    roots: &'a Roots,
    budget: &'a Budget,
    hidden: bool,
    recursive: bool,
    depth: u32,
    max_entries: usize,
    reply: pb::FileListReply,
    bytes: usize,
    /// A directory at the last depth has entries that were not listed.
    deeper: bool,
}

impl Walk<'_> {
    /// Lists `dir` (shown as `prefix`) at `level`; returns false once the listing is cut.
    fn dir(&mut self, dir: &Path, prefix: &str, level: u32) -> Result<bool, FileError> {
        let entries = match self.fs.read_dir(dir) {
            Ok(entries) => entries,
            // The listed directory itself must be readable; below it, unreadable ones are
            // passed over, as on an agent.
            Err(e) if level == 1 => return Err(e),
            Err(_) => return Ok(true),
        };
        for entry in entries {
            if !self.hidden && entry.name.starts_with('.') {
                continue;
            }
            if self.reply.entries.len() >= self.max_entries {
                self.reply.truncated_reason = format!("max_entries {} reached", self.max_entries);
                return Ok(false);
            }
            if self.budget.expired() {
                self.reply.truncated_reason = "the time limit was reached".into();
                return Ok(false);
            }
            let path = dir.join(&entry.name);
            let shown = if prefix.is_empty() {
                entry.name.clone()
            } else {
                format!("{prefix}/{}", entry.name)
            };
            let mode = mode_of(&entry.meta);
            let symlink_target = if mode & libc::S_IFMT == libc::S_IFLNK {
                self.fs
                    .read_link(&path)
                    .map(|t| t.display().to_string())
                    .unwrap_or_default()
            } else {
                String::new()
            };
            self.bytes += shown.len() + symlink_target.len() + ENTRY_OVERHEAD;
            if self.bytes > self.budget.reply_bytes {
                self.reply.truncated_reason = format!(
                    "the reply size limit ({} bytes) was reached",
                    self.budget.reply_bytes
                );
                return Ok(false);
            }
            self.reply.entries.push(pb::FileEntry {
                path: shown.clone(),
                kind: kind_of_mode(mode).into(),
                size: entry.meta.len().unwrap_or(0),
                mode: mode & 0o7777,
                mtime_ms: mtime_secs(&entry.meta).saturating_mul(1000),
                symlink_target,
            });
            let is_dir = mode & libc::S_IFMT == libc::S_IFDIR;
            if !(self.recursive && is_dir && self.stays_inside(&path)) {
                continue;
            }
            if level >= self.depth {
                self.deeper |= self.has_entries(&path);
            } else if !self.dir(&path, &shown, level + 1)? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Whether a directory still resolves inside the roots on the target.
    fn stays_inside(&self, dir: &Path) -> bool {
        self.fs
            .realpath(dir)
            .is_ok_and(|real| self.roots.contains(&real))
    }

    /// Whether a directory has an entry this listing would show.
    fn has_entries(&self, dir: &Path) -> bool {
        self.fs.read_dir(dir).is_ok_and(|entries| {
            entries
                .iter()
                .any(|e| self.hidden || !e.name.starts_with('.'))
        })
    }
}
