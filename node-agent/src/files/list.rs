//! `FileList`: the entries of one directory, or of a tree to a depth, sorted, capped, never leaving the roots.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::sync::Arc;

use execmesh_proto::pb;
use ignore::{DirEntry, WalkBuilder};

use super::error::FileError;
use super::roots::Roots;
use super::stat::{kind_of_mode, mtime_ms};
use super::{Budget, Files};

/// Depth of a recursive listing when the request names none.
pub const DEFAULT_MAX_DEPTH: u32 = 3;
/// Deepest recursive listing.
pub const MAX_DEPTH: u32 = 32;
/// Entries of a listing when the request names no limit.
pub const DEFAULT_MAX_ENTRIES: u32 = 1000;
/// Most entries of one listing.
pub const MAX_ENTRIES: u32 = 100_000;
/// Wire bytes of an entry besides its path and link target.
const ENTRY_OVERHEAD: usize = 48;

/// Answers a `FileList`. Symlinks are listed (with their target) and never descended into; a
/// directory that no longer resolves inside the roots is not descended into either.
pub fn list(
    files: &Files,
    req: pb::FileList,
    budget: &Budget,
) -> Result<pb::FileListReply, FileError> {
    let raw = req.path.as_str();
    let real = files.roots.resolve(raw)?;
    let dir = files.roots.open_dir(&real, raw)?;
    let depth = if req.recursive {
        match req.max_depth {
            0 => DEFAULT_MAX_DEPTH,
            n => n.min(MAX_DEPTH),
        }
    } else {
        1
    };
    let max_entries = match req.max_entries {
        0 => DEFAULT_MAX_ENTRIES,
        n => n.min(MAX_ENTRIES),
    } as usize;

    let roots = Arc::new(files.roots.clone());
    let walker = WalkBuilder::new(&dir.path)
        .standard_filters(false)
        .hidden(!req.hidden)
        .follow_links(false)
        .max_depth(Some(depth as usize))
        .sort_by_file_name(|a, b| a.cmp(b))
        .filter_entry(move |entry| stays_inside(&roots, entry))
        .build();

    let mut reply = pb::FileListReply {
        path: dir.path.display().to_string(),
        ..Default::default()
    };
    let mut bytes = 0usize;
    let mut deeper = false;
    for entry in walker {
        let Ok(entry) = entry else {
            // Unreadable entries (permissions, vanished) are left out.
            continue;
        };
        if entry.depth() == 0 {
            continue;
        }
        if reply.entries.len() >= max_entries {
            reply.truncated_reason = format!("max_entries {max_entries} reached");
            break;
        }
        if budget.expired() {
            reply.truncated_reason = "the time limit was reached".into();
            break;
        }
        let Ok(meta) = entry.metadata() else {
            continue;
        };
        let symlink_target = if meta.file_type().is_symlink() {
            fs::read_link(entry.path())
                .map(|t| t.to_string_lossy().into_owned())
                .unwrap_or_default()
        } else {
            String::new()
        };
        let path = entry
            .path()
            .strip_prefix(&dir.path)
            .unwrap_or(entry.path())
            .to_string_lossy()
            .into_owned();
        bytes += path.len() + symlink_target.len() + ENTRY_OVERHEAD;
        if bytes > budget.reply_bytes {
            reply.truncated_reason = format!(
                "the reply size limit ({} bytes) was reached",
                budget.reply_bytes
            );
            break;
        }
        if req.recursive
            && entry.depth() == depth as usize
            && meta.is_dir()
            && has_entries(entry.path(), req.hidden)
        {
            deeper = true;
        }
        reply.entries.push(pb::FileEntry {
            path,
            kind: kind_of_mode(meta.mode()).into(),
            size: meta.len(),
            mode: meta.mode() & 0o7777,
            mtime_ms: mtime_ms(meta.mtime(), meta.mtime_nsec()),
            symlink_target,
        });
    }
    if reply.truncated_reason.is_empty() && deeper {
        reply.truncated_reason =
            format!("max_depth {depth} reached: deeper entries were not listed");
    }
    reply.truncated = !reply.truncated_reason.is_empty();
    Ok(reply)
}

/// Whether the walker may descend into `entry`: only real directories that still resolve
/// inside the roots (files are checked where they are opened).
pub fn stays_inside(roots: &Roots, entry: &DirEntry) -> bool {
    match entry.file_type() {
        Some(t) if t.is_dir() => fs::canonicalize(entry.path())
            .map(|real| roots.contains(&real))
            .unwrap_or(false),
        _ => true,
    }
}

/// Whether a directory has an entry a listing would show.
fn has_entries(dir: &std::path::Path, hidden: bool) -> bool {
    fs::read_dir(dir)
        .map(|mut it| {
            it.any(|e| {
                e.map(|e| hidden || !e.file_name().to_string_lossy().starts_with('.'))
                    .unwrap_or(false)
            })
        })
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::super::fixture::{Fixture, budget};
    use super::*;
    use std::os::unix::fs::symlink;

    fn names(reply: &pb::FileListReply) -> Vec<&str> {
        reply.entries.iter().map(|e| e.path.as_str()).collect()
    }

    fn tree() -> Fixture {
        let fx = Fixture::new();
        fx.write("b.txt", "bb");
        fx.write("a/x.log", "x");
        fx.write("a/deep/er/most.txt", "m");
        fx.write(".hidden", "h");
        fx.write("a/.dot/inner", "i");
        symlink("/etc", fx.abs("etc")).unwrap();
        fx
    }

    fn request(fx: &Fixture, recursive: bool) -> pb::FileList {
        pb::FileList {
            path: fx.path(""),
            recursive,
            ..Default::default()
        }
    }

    #[test]
    fn one_directory_sorted_without_hidden_files() {
        let fx = tree();
        let reply = list(&fx.files, request(&fx, false), &budget()).unwrap();
        assert_eq!(names(&reply), ["a", "b.txt", "etc"]);
        assert!(!reply.truncated);
        let b = &reply.entries[1];
        assert_eq!((b.kind.as_str(), b.size), ("file", 2));
        let etc = &reply.entries[2];
        assert_eq!(
            (etc.kind.as_str(), etc.symlink_target.as_str()),
            ("symlink", "/etc")
        );
        let mut req = request(&fx, false);
        req.hidden = true;
        let reply = list(&fx.files, req, &budget()).unwrap();
        assert_eq!(names(&reply), [".hidden", "a", "b.txt", "etc"]);
    }

    #[test]
    fn recursive_listing_stops_at_the_depth_and_says_so() {
        let fx = tree();
        let mut req = request(&fx, true);
        req.max_depth = 2;
        let reply = list(&fx.files, req, &budget()).unwrap();
        assert_eq!(names(&reply), ["a", "a/deep", "a/x.log", "b.txt", "etc"]);
        assert!(reply.truncated);
        assert!(
            reply.truncated_reason.contains("max_depth 2"),
            "{}",
            reply.truncated_reason
        );
        let reply = list(&fx.files, request(&fx, true), &budget()).unwrap();
        assert_eq!(
            names(&reply),
            ["a", "a/deep", "a/deep/er", "a/x.log", "b.txt", "etc"]
        );
        // a/deep/er holds a file at depth 4.
        assert!(reply.truncated);
    }

    #[test]
    fn symlinks_are_never_descended() {
        let fx = tree();
        let mut req = request(&fx, true);
        req.max_depth = 10;
        let reply = list(&fx.files, req, &budget()).unwrap();
        assert!(names(&reply).iter().all(|n| !n.starts_with("etc/")));
        assert!(!reply.truncated, "{}", reply.truncated_reason);
    }

    #[test]
    fn max_entries_cuts_the_listing() {
        let fx = Fixture::new();
        for i in 0..20 {
            fx.write(&format!("f{i:02}"), "");
        }
        let mut req = request(&fx, false);
        req.max_entries = 5;
        let reply = list(&fx.files, req, &budget()).unwrap();
        assert_eq!(names(&reply), ["f00", "f01", "f02", "f03", "f04"]);
        assert!(reply.truncated_reason.contains("max_entries 5"));
        let mut req = request(&fx, false);
        req.max_entries = 20;
        assert!(!list(&fx.files, req, &budget()).unwrap().truncated);
    }

    #[test]
    fn a_file_or_an_outside_path_is_refused() {
        let fx = tree();
        let mut req = request(&fx, false);
        req.path = fx.path("b.txt");
        assert!(matches!(
            list(&fx.files, req.clone(), &budget()),
            Err(FileError::NotADirectory { .. })
        ));
        req.path = fx.path("etc");
        assert!(matches!(
            list(&fx.files, req, &budget()),
            Err(FileError::OutsideRoots { .. })
        ));
    }
}
