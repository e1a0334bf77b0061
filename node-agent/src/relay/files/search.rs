//! Grep on an SSH target: the agent's grep (same regex engine, globs, binary detection, caps and digest) over files streamed from the target over SFTP, within the request's time and the target's byte budget.
//!
//! Streaming the files to the relay was chosen over running a search command on the target:
//! no pattern or path ever reaches a remote shell, the results (regex dialect, context, digest
//! groups, binary skipping) are exactly an agent's, and the target needs nothing but an SFTP
//! server. The cost is the bytes read: a search stops at `grep_max_bytes` (and at its time
//! limit) and says so in `truncated_reason`.

use std::path::{Path, PathBuf};
use std::time::Instant;

use execmesh_proto::pb;
use ignore::Match;
use ignore::overrides::Override;

use super::paths;
use super::read::mode_of;
use crate::files::search::{Hits, Search, Walked, globs_under};
use crate::files::{FileError, Roots};
use crate::grep::{GrepError, GrepLimits, Tree, grep_in};
use crate::relay::sftp::{Budgeted, RemoteFs};

/// Bytes one grep may read from a target when its configuration names no limit.
pub const DEFAULT_GREP_MAX_BYTES: u64 = 256 * 1024 * 1024;
/// Deepest directory a search descends.
const MAX_WALK_DEPTH: usize = 64;

/// Runs one grep on the target, on this (blocking) thread.
pub fn grep(
    fs: &RemoteFs,
    roots: &Roots,
    max_bytes: u64,
    limits: &GrepLimits,
    req: pb::GrepRequest,
    reply_bytes: usize,
    deadline: Instant,
) -> Result<pb::GrepReply, GrepError> {
    let mut tree = Remote {
        fs,
        roots,
        budget: Budgeted::new(max_bytes),
    };
    grep_in(&mut tree, limits, req, reply_bytes, deadline)
}

/// The target's files, searched through SFTP.
struct Remote<'a> {
    fs: &'a RemoteFs,
    roots: &'a Roots,
    budget: Budgeted,
}

impl Tree for Remote<'_> {
    fn roots(&self) -> &Roots {
        self.roots
    }

    fn resolve(&mut self, raw: &str) -> Result<PathBuf, FileError> {
        paths::existing(self.fs, self.roots, raw)
    }

    fn search(
        &mut self,
        search: &mut Search<'_>,
        real: &Path,
        raw: &str,
        hits: &mut impl Hits,
    ) -> Result<Walked, FileError> {
        let meta = self
            .fs
            .stat(real)?
            .ok_or_else(|| FileError::not_found(raw))?;
        if mode_of(&meta) & libc::S_IFMT != libc::S_IFDIR {
            return Ok(self.file(search, real, hits));
        }
        let globs = if search.globs().is_empty() {
            None
        } else {
            Some(globs_under(real, search.globs()).map_err(|e| FileError::invalid(raw, e))?)
        };
        self.walk(search, real, globs.as_ref(), 0, hits)
    }
}

impl Remote<'_> {
    /// Searches every regular file below `dir` in name order (a directory's files where its
    /// name sorts), skipping hidden entries unless asked, never following a symlink, never
    /// descending into a directory that resolves outside the roots.
    fn walk(
        &mut self,
        search: &mut Search<'_>,
        dir: &Path,
        globs: Option<&Override>,
        depth: usize,
        hits: &mut impl Hits,
    ) -> Result<Walked, FileError> {
        if depth > MAX_WALK_DEPTH {
            return Ok(Walked::Done);
        }
        let entries = match self.fs.read_dir(dir) {
            Ok(entries) => entries,
            Err(e) if depth == 0 => return Err(e),
            // Unreadable directories below the searched one are passed over, as on an agent.
            Err(_) => return Ok(Walked::Done),
        };
        for entry in entries {
            if !search.hidden() && entry.name.starts_with('.') {
                continue;
            }
            if search.expired() {
                return Ok(Walked::TimedOut);
            }
            let path = dir.join(&entry.name);
            let kind = mode_of(&entry.meta) & libc::S_IFMT;
            let walked = if kind == libc::S_IFDIR {
                if globs.is_some_and(|g| matches!(g.matched(&path, true), Match::Ignore(_)))
                    || !self
                        .fs
                        .realpath(&path)
                        .is_ok_and(|real| self.roots.contains(&real))
                {
                    continue;
                }
                self.walk(search, &path, globs, depth + 1, hits)?
            } else if kind == libc::S_IFREG {
                if globs.is_some_and(|g| matches!(g.matched(&path, false), Match::Ignore(_))) {
                    continue;
                }
                self.file(search, &path, hits)
            } else {
                continue;
            };
            if walked != Walked::Done {
                return Ok(walked);
            }
        }
        Ok(Walked::Done)
    }

    /// Searches one file streamed from the target (one that cannot be opened is passed over).
    fn file(&mut self, search: &mut Search<'_>, path: &Path, hits: &mut impl Hits) -> Walked {
        if self.budget.spent() {
            return Walked::BytesSpent;
        }
        let Ok(file) = self.fs.open(path) else {
            return Walked::Done;
        };
        let shown = path.display().to_string();
        let walked = search.reader(&shown, self.budget.stream(&file), hits);
        if walked == Walked::Done && self.budget.spent() {
            return Walked::BytesSpent;
        }
        walked
    }
}
