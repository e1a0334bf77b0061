//! `FileWrite`, `FileMove` and `FileDelete` on an SSH target: atomic replacement (a temp file beside the destination, fsync, rename), appends, moves and deletes over SFTP, inside the roots.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use execmesh_proto::pb;
use openssh_sftp_client::file::File;
use sha2::{Digest as _, Sha256};

use super::paths::{self, Final, Parents, Place, refuse_root};
use super::read::mode_of;
use crate::files::{
    DEFAULT_MODE, FileError, Limits, Roots, Source as _, change, check_write, kind_of_mode,
    temp_name, unmoved,
};
use crate::relay::sftp::RemoteFs;

/// Deepest directory tree a recursive delete descends.
const MAX_TREE_DEPTH: usize = 256;
/// Bytes hashed per read when a whole file's sha256 is taken.
const HASH_READ: usize = 256 * 1024;

/// Answers a `FileWrite`: replaces the file atomically, or appends to it.
pub fn write(
    fs: &RemoteFs,
    roots: &Roots,
    limits: &Limits,
    req: pb::FileWrite,
) -> Result<pb::FileWriteReply, FileError> {
    check_write(limits, &req)?;
    let place = paths::place(
        fs,
        roots,
        &req.path,
        Final::Follow,
        Parents::create_if(req.create_dirs),
    )?;
    let existing = fs.lstat(&place.path())?;
    let existing_mode = existing.as_ref().map(mode_of);
    if existing_mode.is_some_and(|m| m & libc::S_IFMT == libc::S_IFDIR) {
        return Err(FileError::is_a_directory(&place.shown, ""));
    }
    let created = existing.is_none();
    if req.append {
        return append(fs, limits, &place, &req, created);
    }
    // A replaced regular file keeps its mode; a dangling symlink here is replaced by the file.
    let mode = match existing_mode {
        Some(m) if m & libc::S_IFMT == libc::S_IFREG => m & 0o7777,
        _ => req.mode.unwrap_or(DEFAULT_MODE),
    };
    let (temp, mut file) = Temp::create(fs, &place)?;
    let filled = fs
        .write_at(&mut file, &temp.path, 0, &req.content)
        .and_then(|()| fs.chmod(&temp.path, mode));
    drop(file);
    match filled {
        Ok(()) => temp.commit(fs, &place.path())?,
        Err(e) => {
            temp.discard(fs);
            return Err(e);
        }
    }
    Ok(pb::FileWriteReply {
        path: place.path().display().to_string(),
        size: req.content.len() as u64,
        sha256: hex::encode(Sha256::digest(&req.content)),
        created,
    })
}

fn append(
    fs: &RemoteFs,
    limits: &Limits,
    place: &Place,
    req: &pb::FileWrite,
    created: bool,
) -> Result<pb::FileWriteReply, FileError> {
    let path = place.path();
    let mut file = fs.open_append(&path)?;
    let meta = fs
        .stat(&path)?
        .ok_or_else(|| FileError::not_found(&place.shown))?;
    if mode_of(&meta) & libc::S_IFMT != libc::S_IFREG {
        return Err(FileError::invalid(&place.shown, "is not a regular file"));
    }
    if created {
        fs.chmod(&path, req.mode.unwrap_or(DEFAULT_MODE))?;
    }
    let offset = meta.len().unwrap_or(0);
    fs.write_at(&mut file, &path, offset, &req.content)?;
    drop(file);
    let size = fs
        .stat(&path)?
        .and_then(|m| m.len())
        .unwrap_or(offset + req.content.len() as u64);
    // As on an agent: only files up to the write limit get a sha256.
    let sha256 = if size <= limits.max_write_bytes {
        sha256_of(fs, &path)?
    } else {
        String::new()
    };
    Ok(pb::FileWriteReply {
        path: path.display().to_string(),
        size,
        sha256,
        created,
    })
}

/// Answers a `FileMove`: a rename on the target (SFTP cannot move across file systems).
pub fn rename(
    fs: &RemoteFs,
    roots: &Roots,
    req: pb::FileMove,
) -> Result<pb::FileChangeReply, FileError> {
    let from = paths::place(fs, roots, &req.from, Final::Keep, Parents::Existing)?;
    refuse_root(roots, &from)?;
    if fs.lstat(&from.path())?.is_none() {
        return Err(FileError::not_found(&req.from));
    }
    let to = paths::place(
        fs,
        roots,
        &req.to,
        Final::Keep,
        Parents::create_if(req.create_dirs),
    )?;
    refuse_root(roots, &to)?;
    let (from_path, to_path) = (from.path(), to.path());
    if from_path == to_path {
        return Ok(unmoved(&to_path));
    }
    // SFTP has no rename that refuses an existing destination atomically: checked just before.
    if !req.overwrite && fs.lstat(&to_path)?.is_some() {
        return Err(FileError::already_exists(&req.to));
    }
    fs.rename(&from_path, &to_path).map_err(|e| match e {
        FileError::Io { source, .. } => FileError::invalid(
            &req.from,
            format!(
                "cannot be moved to {} ({source}; over SFTP a move works within one file \
                 system only, and never into itself)",
                req.to
            ),
        ),
        other => other,
    })?;
    Ok(change(
        &to_path,
        &format!("moved {} to {}", from_path.display(), to_path.display()),
    ))
}

/// Answers a `FileDelete`: a file or symlink, or a directory and everything in it when
/// `recursive`. A root, or a directory holding one, is never deleted.
pub fn delete(
    fs: &RemoteFs,
    roots: &Roots,
    req: pb::FileDelete,
) -> Result<pb::FileChangeReply, FileError> {
    let place = paths::place(fs, roots, &req.path, Final::Keep, Parents::Existing)?;
    refuse_root(roots, &place)?;
    let path = place.path();
    let meta = fs
        .lstat(&path)?
        .ok_or_else(|| FileError::not_found(&req.path))?;
    let mode = mode_of(&meta);
    let detail = if mode & libc::S_IFMT == libc::S_IFDIR {
        if !req.recursive {
            return Err(FileError::is_a_directory(
                &req.path,
                "; pass recursive to delete it and everything in it",
            ));
        }
        let removed = remove_tree(fs, &path, 0)?;
        format!(
            "deleted directory {} and the {} entries in it",
            path.display(),
            removed - 1
        )
    } else {
        fs.remove_file(&path)?;
        format!("deleted {} {}", kind_of_mode(mode), path.display())
    };
    Ok(change(&path, &detail))
}

/// Removes a directory and everything in it, never following a symlink (entries are judged by
/// their `lstat`). Returns how many entries were removed, the directory included.
fn remove_tree(fs: &RemoteFs, dir: &Path, depth: usize) -> Result<u64, FileError> {
    if depth > MAX_TREE_DEPTH {
        return Err(FileError::invalid(
            dir,
            format!("is nested deeper than {MAX_TREE_DEPTH} levels; delete it in parts"),
        ));
    }
    let mut removed = 0;
    for entry in fs.read_dir(dir)? {
        let path = dir.join(&entry.name);
        if mode_of(&entry.meta) & libc::S_IFMT == libc::S_IFDIR {
            removed += remove_tree(fs, &path, depth + 1)?;
        } else {
            fs.remove_file(&path)?;
            removed += 1;
        }
    }
    fs.remove_dir(dir)?;
    Ok(removed + 1)
}

/// The sha256 (hex) of a whole remote file.
pub fn sha256_of(fs: &RemoteFs, path: &Path) -> Result<String, FileError> {
    let file = fs.open(path)?;
    let mut hasher = Sha256::new();
    let mut offset = 0u64;
    loop {
        let chunk = file
            .bytes_at(offset, HASH_READ)
            .map_err(|e| FileError::io(path, "reading back", e))?;
        if chunk.is_empty() {
            break;
        }
        offset += chunk.len() as u64;
        hasher.update(&chunk);
    }
    Ok(hex::encode(hasher.finalize()))
}

/// A temp file beside its destination, removed unless committed.
pub struct Temp {
    pub path: PathBuf,
    shown: String,
}

impl Temp {
    /// Creates the temp file (it must not exist) in the place's directory.
    pub fn create(fs: &RemoteFs, place: &Place) -> Result<(Temp, File), FileError> {
        let name = temp_name(OsStr::new(&place.name));
        let path = place.dir.join(name);
        let file = fs.create_new(&path)?;
        let temp = Temp {
            path,
            shown: place.shown.clone(),
        };
        Ok((temp, file))
    }

    /// Renames the temp file over `to` (atomic on the target with `posix-rename`).
    pub fn commit(self, fs: &RemoteFs, to: &Path) -> Result<(), FileError> {
        let renamed = fs.rename(&self.path, to);
        if let Err(e) = renamed {
            self.discard(fs);
            return Err(match e {
                FileError::Io { source, .. } => {
                    FileError::io(&self.shown, "renaming into place", source)
                }
                other => other,
            });
        }
        Ok(())
    }

    /// Removes the temp file (best effort: a failure leaves a hidden `.…execmesh-….tmp`).
    pub fn discard(&self, fs: &RemoteFs) {
        let _ = fs.remove_file(&self.path);
    }
}
