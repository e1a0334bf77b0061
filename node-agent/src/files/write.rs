//! `FileWrite`, `FileMove` and `FileDelete`: changes made atomically where the file system allows it, never outside the roots.
//!
//! A write goes to a temp file in the destination's directory, is fsynced, takes the mode and
//! owner of the file it replaces, and is renamed over it; the directory is fsynced after. A
//! reader sees the old file or the new one, never a mix. Everything after the path check works
//! through the verified directory's descriptor.
//!
//! Keeping the owner: a file written as a run-as account would belong to the account. When the
//! replaced file belongs to someone else, the account must be allowed to write that file in
//! place (then it could have given it the same content anyway); the agent then gives the new
//! file the old owner and group with its own rights, and drops setuid and setgid bits as the
//! kernel does when such a writer writes. Otherwise the file is left alone with an error: a
//! replace never changes a file's owner. Modes with setuid, setgid or sticky bits are never
//! set on request.

use std::ffi::{CString, OsStr, OsString};
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use execmesh_proto::pb;
use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::stat::{FileStat, Mode};
use nix::unistd::{Gid, Uid, UnlinkatFlags};
use sha2::{Digest, Sha256};

use super::error::FileError;
use super::read::read_at;
use super::roots::{Final, Parents, Place, Roots};
use super::stat::kind_of_mode;
use super::{Files, Limits};

/// Mode of a new file when the request names none.
pub const DEFAULT_MODE: u32 = 0o644;
/// Deepest directory tree a recursive delete descends (one descriptor per level).
const MAX_TREE_DEPTH: usize = 256;
/// Longest part of the destination's name kept in a temp file's name.
const TEMP_NAME_BYTES: usize = 200;

/// Answers a `FileWrite`: replaces the file atomically, or appends to it.
pub fn write(files: &Files, req: pb::FileWrite) -> Result<pb::FileWriteReply, FileError> {
    let raw = req.path.as_str();
    check_write(&files.limits, &req)?;
    let place = files
        .roots
        .place(raw, Final::Follow, Parents::create_if(req.create_dirs))?;
    if req.append {
        append(files, place, &req)
    } else {
        replace(&files.roots, place, &req)
    }
}

/// Refuses a write over the host's size limit, or with a mode the file tool never sets.
pub(crate) fn check_write(limits: &Limits, req: &pb::FileWrite) -> Result<(), FileError> {
    let raw = req.path.as_str();
    let size = req.content.len() as u64;
    if size > limits.max_write_bytes {
        return Err(FileError::too_large(
            raw,
            "the content",
            size,
            limits.max_write_bytes,
        ));
    }
    if let Some(mode) = req.mode {
        if mode > 0o7777 {
            return Err(FileError::invalid(
                raw,
                format!("mode {mode:o} has bits beyond 7777"),
            ));
        }
        refuse_special_mode(raw, mode)?;
    }
    Ok(())
}

fn replace(
    roots: &Roots,
    place: Place,
    req: &pb::FileWrite,
) -> Result<pb::FileWriteReply, FileError> {
    let existing = place.lstat()?;
    let keep = match &existing {
        Some(st) if is_dir(st) => {
            return Err(FileError::is_a_directory(&place.shown, ""));
        }
        Some(st) if is_regular(st) => Some(Keep::of(roots, &place, st)?),
        // A symlink here dangles (a live one was followed): it is replaced by the file.
        _ => None,
    };
    let mode = req.mode.unwrap_or(DEFAULT_MODE);
    let path = place.path();
    let mut temp = Temp::create(roots, place)?;
    temp.fill(&req.content)?;
    temp.finish(mode, keep)?;
    temp.commit(true)?;
    Ok(pb::FileWriteReply {
        path: path.display().to_string(),
        size: req.content.len() as u64,
        sha256: hex::encode(Sha256::digest(&req.content)),
        created: existing.is_none(),
    })
}

fn append(
    files: &Files,
    place: Place,
    req: &pb::FileWrite,
) -> Result<pb::FileWriteReply, FileError> {
    let shown = place.shown.clone();
    let existing = place.lstat()?;
    if existing.as_ref().is_some_and(is_dir) {
        return Err(FileError::is_a_directory(&shown, ""));
    }
    let mode = req.mode.unwrap_or(DEFAULT_MODE);
    let mut file = place.open(
        &files.roots,
        OFlag::O_RDWR | OFlag::O_APPEND | OFlag::O_CREAT,
        Mode::from_bits_truncate(mode),
    )?;
    let meta = file
        .metadata()
        .map_err(|e| FileError::io(&shown, "reading the status", e))?;
    if !meta.is_file() {
        return Err(FileError::invalid(&shown, "is not a regular file"));
    }
    files.roots.check_links(&shown, meta.mode(), meta.nlink())?;
    let created = existing.is_none();
    if created {
        // The umask does not decide the mode of a file the caller asked for.
        nix::sys::stat::fchmod(&file, Mode::from_bits_truncate(mode))
            .map_err(|e| FileError::errno(&shown, "setting the mode", e))?;
    }
    file.write_all(&req.content)
        .and_then(|()| file.sync_all())
        .map_err(|e| FileError::io(&shown, "appending", e))?;
    if created {
        sync_dir(place.dir.fd.as_fd(), &shown)?;
    }
    let size = file
        .metadata()
        .map_err(|e| FileError::io(&shown, "reading the status", e))?
        .len();
    // Hashing a huge log after every append would cost more than the append: only files up
    // to the write limit get a sha256.
    let sha256 = if size <= files.limits.max_write_bytes {
        sha256_of(&file).map_err(|e| FileError::io(&shown, "reading back", e))?
    } else {
        String::new()
    };
    Ok(pb::FileWriteReply {
        path: place.path().display().to_string(),
        size,
        sha256,
        created,
    })
}

/// Answers a `FileMove`: a rename, or on another file system copy, fsync, rename and unlink.
pub fn rename(files: &Files, req: pb::FileMove) -> Result<pb::FileChangeReply, FileError> {
    let roots = &files.roots;
    let from = roots.place(&req.from, Final::Keep, Parents::Existing)?;
    refuse_root(roots, &from)?;
    let st = from
        .lstat()?
        .ok_or_else(|| FileError::not_found(&req.from))?;
    let to = roots.place(&req.to, Final::Keep, Parents::create_if(req.create_dirs))?;
    refuse_root(roots, &to)?;
    let (from_path, to_path) = (from.path(), to.path());
    if from_path == to_path {
        return Ok(unmoved(&to_path));
    }
    let renamed = if req.overwrite {
        nix::fcntl::renameat(
            &from.dir.fd,
            from.name.as_os_str(),
            &to.dir.fd,
            to.name.as_os_str(),
        )
        .map_err(io::Error::from)
    } else {
        rename_noreplace(from.dir.fd.as_fd(), &from.name, to.dir.fd.as_fd(), &to.name)
    };
    match renamed {
        Ok(()) => {
            sync_dir(to.dir.fd.as_fd(), &to.shown)?;
            sync_dir(from.dir.fd.as_fd(), &from.shown)?;
            Ok(change(
                &to_path,
                &format!("moved {} to {}", from_path.display(), to_path.display()),
            ))
        }
        Err(e) if e.raw_os_error() == Some(libc::EXDEV) => {
            move_across(roots, from, &st, to, req.overwrite)?;
            Ok(change(
                &to_path,
                &format!(
                    "moved {} to {} (copied across file systems, then removed)",
                    from_path.display(),
                    to_path.display()
                ),
            ))
        }
        Err(e) => Err(rename_error(&req.from, &req.to, e)),
    }
}

/// Answers a `FileDelete`: a file or symlink, or a directory with everything in it when
/// `recursive`. A root, or a directory holding one, is never deleted.
pub fn delete(files: &Files, req: pb::FileDelete) -> Result<pb::FileChangeReply, FileError> {
    let place = files
        .roots
        .place(&req.path, Final::Keep, Parents::Existing)?;
    refuse_root(&files.roots, &place)?;
    let st = place
        .lstat()?
        .ok_or_else(|| FileError::not_found(&req.path))?;
    let path = place.path();
    let detail = if is_dir(&st) {
        if !req.recursive {
            return Err(FileError::is_a_directory(
                &req.path,
                "; pass recursive to delete it and everything in it",
            ));
        }
        let removed = remove_tree(place.dir.fd.as_fd(), &place.name, &path, 0)?;
        format!(
            "deleted directory {} and the {} entries in it",
            path.display(),
            removed - 1
        )
    } else {
        nix::unistd::unlinkat(
            &place.dir.fd,
            place.name.as_os_str(),
            UnlinkatFlags::NoRemoveDir,
        )
        .map_err(|e| FileError::errno(&req.path, "deleting", e))?;
        format!("deleted {} {}", kind_of_mode(st.st_mode), path.display())
    };
    sync_dir(place.dir.fd.as_fd(), &req.path)?;
    Ok(change(&path, &detail))
}

/// A temp file next to its destination (`.<name>.execmesh-<random>.tmp`), removed on drop
/// unless it was committed.
#[derive(Debug)]
pub struct Temp {
    /// The destination.
    pub place: Place,
    name: OsString,
    pub file: File,
    committed: bool,
}

impl Temp {
    /// Creates the temp file (mode 0600 until [`Temp::finish`]) in the destination's directory.
    pub fn create(roots: &Roots, place: Place) -> Result<Temp, FileError> {
        let name = temp_name(&place.name);
        let fd = nix::fcntl::openat(
            &place.dir.fd,
            name.as_os_str(),
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(0o600),
        )
        .map_err(|e| FileError::errno(&place.shown, "creating a temp file", e))?;
        let temp = Temp {
            file: File::from(fd),
            name,
            place,
            committed: false,
        };
        roots.verify(temp.file.as_fd(), &temp.place.shown)?;
        Ok(temp)
    }

    /// Appends `data`.
    pub fn fill(&mut self, data: &[u8]) -> Result<(), FileError> {
        self.file
            .write_all(data)
            .map_err(|e| FileError::io(&self.place.shown, "writing", e))
    }

    /// Sets the final mode — or, replacing a file, its owner, group and mode ([`Keep`]) — and
    /// fsyncs the data. `mode` is for a new file.
    pub fn finish(&mut self, mode: u32, keep: Option<Keep>) -> Result<(), FileError> {
        let shown = &self.place.shown;
        match keep {
            Some(keep) => keep.apply(&self.file, shown)?,
            None => {
                // The umask does not decide the mode of a file the caller asked for.
                nix::sys::stat::fchmod(&self.file, Mode::from_bits_truncate(mode))
                    .map_err(|e| FileError::errno(shown, "setting the mode", e))?;
            }
        }
        self.file
            .sync_all()
            .map_err(|e| FileError::io(shown, "syncing", e))
    }

    /// Renames the temp file over the destination (refusing an existing one unless
    /// `overwrite`) and fsyncs the directory.
    pub fn commit(mut self, overwrite: bool) -> Result<(), FileError> {
        let dir = self.place.dir.fd.as_fd();
        let renamed = if overwrite {
            nix::fcntl::renameat(dir, self.name.as_os_str(), dir, self.place.name.as_os_str())
                .map_err(io::Error::from)
        } else {
            rename_noreplace(dir, &self.name, dir, &self.place.name)
        };
        renamed.map_err(|e| FileError::io(&self.place.shown, "renaming into place", e))?;
        self.committed = true;
        sync_dir(dir, &self.place.shown)
    }
}

impl Drop for Temp {
    fn drop(&mut self) {
        if !self.committed {
            let _ = nix::unistd::unlinkat(
                &self.place.dir.fd,
                self.name.as_os_str(),
                UnlinkatFlags::NoRemoveDir,
            );
        }
    }
}

/// A fresh name for a temp file beside `name`: `.<name>.execmesh-<random>.tmp`, hidden, and
/// never the name of a file a caller asked for.
pub(crate) fn temp_name(name: &OsStr) -> OsString {
    let mut temp = b".".to_vec();
    let base = name.as_bytes();
    temp.extend_from_slice(&base[..base.len().min(TEMP_NAME_BYTES)]);
    temp.extend_from_slice(format!(".execmesh-{:016x}.tmp", rand::random::<u64>()).as_bytes());
    OsString::from_vec(temp)
}

/// The owner, group and mode a replacement takes from the file it replaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Keep {
    uid: u32,
    gid: u32,
    mode: u32,
}

impl Keep {
    /// What a replacement of the regular file `st` at `place` keeps, if the writer (this
    /// thread's filesystem ids) may replace it without changing its owner: a file of its own,
    /// or one it may write in place. A file with several hard links is refused first.
    pub fn of(roots: &Roots, place: &Place, st: &FileStat) -> Result<Keep, FileError> {
        roots.check_links(&place.shown, st.st_mode, st.st_nlink)?;
        let (fsuid, _) = crate::runas::fs_ids();
        let mut mode = st.st_mode & 0o7777;
        if st.st_uid != fsuid && fsuid != 0 {
            match nix::fcntl::openat(
                &place.dir.fd,
                place.name.as_os_str(),
                OFlag::O_WRONLY
                    | OFlag::O_NONBLOCK
                    | OFlag::O_NOCTTY
                    | OFlag::O_NOFOLLOW
                    | OFlag::O_CLOEXEC,
                Mode::empty(),
            ) {
                // A running program (ETXTBSY) or a leased file (EWOULDBLOCK) passed the
                // permission check before the kernel said no.
                Ok(_) | Err(Errno::ETXTBSY) | Err(Errno::EWOULDBLOCK) => {}
                Err(Errno::EACCES | Errno::EPERM | Errno::EROFS) => {
                    return Err(FileError::OwnerNotKept {
                        path: place.shown.clone(),
                        uid: st.st_uid,
                        gid: st.st_gid,
                        reason: "this account may not write it",
                    });
                }
                Err(e) => return Err(FileError::errno(&place.shown, "opening", e)),
            }
        }
        if fsuid != 0 {
            // As the kernel does when anyone but root writes to a set-id file.
            mode &= !0o6000;
        }
        Ok(Keep {
            uid: st.st_uid,
            gid: st.st_gid,
            mode,
        })
    }

    /// Gives `file` (a temp file this thread created) the kept owner, group and mode. Only the
    /// agent may give a file away: it does so with its own rights, on the open descriptor.
    fn apply(self, file: &File, shown: &str) -> Result<(), FileError> {
        let st = nix::sys::stat::fstat(file)
            .map_err(|e| FileError::errno(shown, "reading the status", e))?;
        let give = (st.st_uid, st.st_gid) != (self.uid, self.gid);
        let set = || -> Result<(), FileError> {
            if give {
                nix::unistd::fchown(
                    file,
                    Some(Uid::from_raw(self.uid)),
                    Some(Gid::from_raw(self.gid)),
                )
                .map_err(|e| match e {
                    Errno::EPERM => FileError::OwnerNotKept {
                        path: shown.to_string(),
                        uid: self.uid,
                        gid: self.gid,
                        reason: "the agent is not allowed to give files to that owner (it does not run as root)",
                    },
                    e => FileError::errno(shown, "setting the owner", e),
                })?;
            }
            // After chown, which clears set-id bits.
            nix::sys::stat::fchmod(file, Mode::from_bits_truncate(self.mode))
                .map_err(|e| FileError::errno(shown, "setting the mode", e))
        };
        if give {
            crate::runas::as_agent(set)
        } else {
            set()
        }
    }
}

/// Refuses setuid, setgid and sticky bits in a requested mode, naming them.
fn refuse_special_mode(raw: &str, mode: u32) -> Result<(), FileError> {
    let bits: Vec<&str> = [(0o4000, "setuid"), (0o2000, "setgid"), (0o1000, "sticky")]
        .into_iter()
        .filter(|(bit, _)| mode & bit != 0)
        .map(|(_, name)| name)
        .collect();
    if bits.is_empty() {
        return Ok(());
    }
    Err(FileError::SpecialMode {
        path: raw.to_string(),
        mode,
        bits: bits.join(" and "),
    })
}

/// Moves a regular file to another file system: copy to a temp file beside the destination,
/// fsync, rename into place, then remove the source.
fn move_across(
    roots: &Roots,
    from: Place,
    st: &FileStat,
    to: Place,
    overwrite: bool,
) -> Result<(), FileError> {
    if !is_regular(st) {
        return Err(FileError::invalid(
            &from.shown,
            format!(
                "is a {} on another file system than {}; only regular files are moved across file systems",
                kind_of_mode(st.st_mode),
                to.shown
            ),
        ));
    }
    if !overwrite && to.lstat()?.is_some() {
        return Err(FileError::already_exists(&to.shown));
    }
    // A rename keeps the owner; the copy does too, on the same terms as a replace.
    let keep = Keep::of(roots, &from, st)?;
    let mut source = from.open(roots, OFlag::O_RDONLY, Mode::empty())?;
    let mut temp = Temp::create(roots, to)?;
    io::copy(&mut source, &mut temp.file).map_err(|e| FileError::io(&from.shown, "copying", e))?;
    temp.finish(DEFAULT_MODE, Some(keep))?;
    temp.commit(overwrite)?;
    nix::unistd::unlinkat(
        &from.dir.fd,
        from.name.as_os_str(),
        UnlinkatFlags::NoRemoveDir,
    )
    .map_err(|e| FileError::errno(&from.shown, "removing the source after copying", e))?;
    sync_dir(from.dir.fd.as_fd(), &from.shown)
}

/// Deletes the directory `name` in `parent` and everything in it, through descriptors opened
/// with `O_NOFOLLOW` (a symlink inside is removed, never followed). Returns the entries removed,
/// the directory included.
fn remove_tree(
    parent: BorrowedFd<'_>,
    name: &OsStr,
    shown: &Path,
    depth: usize,
) -> Result<u64, FileError> {
    if depth > MAX_TREE_DEPTH {
        return Err(FileError::invalid(
            shown,
            format!("is more than {MAX_TREE_DEPTH} directories deep; not deleted"),
        ));
    }
    let mut dir = nix::dir::Dir::openat(
        parent,
        name,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| FileError::errno(shown, "opening", e))?;
    let entries: Vec<(OsString, Option<nix::dir::Type>)> = dir
        .iter()
        .filter_map(Result::ok)
        .filter(|e| !matches!(e.file_name().to_bytes(), b"." | b".."))
        .map(|e| {
            (
                OsString::from_vec(e.file_name().to_bytes().to_vec()),
                e.file_type(),
            )
        })
        .collect();
    let fd = dir.as_fd();
    let mut removed = 0;
    for (entry, kind) in entries {
        let path = shown.join(&entry);
        let is_dir = match kind {
            Some(kind) => kind == nix::dir::Type::Directory,
            None => nix::sys::stat::fstatat(
                fd,
                entry.as_os_str(),
                nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
            )
            .is_ok_and(|st| is_dir(&st)),
        };
        if is_dir {
            removed += remove_tree(fd, &entry, &path, depth + 1)?;
        } else {
            match nix::unistd::unlinkat(fd, entry.as_os_str(), UnlinkatFlags::NoRemoveDir) {
                Ok(()) | Err(Errno::ENOENT) => removed += 1,
                Err(e) => return Err(FileError::errno(&path, "deleting", e)),
            }
        }
    }
    drop(dir);
    nix::unistd::unlinkat(parent, name, UnlinkatFlags::RemoveDir)
        .map_err(|e| FileError::errno(shown, "deleting", e))?;
    Ok(removed + 1)
}

/// `renameat2(…, RENAME_NOREPLACE)`: fails with `EEXIST` instead of replacing.
pub fn rename_noreplace(
    from_dir: BorrowedFd<'_>,
    from: &OsStr,
    to_dir: BorrowedFd<'_>,
    to: &OsStr,
) -> io::Result<()> {
    let from = CString::new(from.as_bytes())?;
    let to = CString::new(to.as_bytes())?;
    // SAFETY: both names are NUL-terminated strings that outlive the call, and both
    // descriptors are open for its duration.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_renameat2,
            from_dir.as_raw_fd(),
            from.as_ptr(),
            to_dir.as_raw_fd(),
            to.as_ptr(),
            libc::RENAME_NOREPLACE,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// fsync of a directory, so a rename or a new entry survives a crash.
pub fn sync_dir(fd: BorrowedFd<'_>, shown: &str) -> Result<(), FileError> {
    nix::unistd::fsync(fd).map_err(|e| FileError::errno(shown, "syncing the directory", e))
}

/// The sha256 (hex) of a whole open file.
pub fn sha256_of(file: &File) -> io::Result<String> {
    let mut hasher = Sha256::new();
    let mut offset = 0u64;
    loop {
        let chunk = read_at(file, offset, 256 * 1024)?;
        if chunk.is_empty() {
            break;
        }
        offset += chunk.len() as u64;
        hasher.update(&chunk);
    }
    Ok(hex::encode(hasher.finalize()))
}

/// Refuses to move or delete a root or a directory holding one.
fn refuse_root(roots: &Roots, place: &Place) -> Result<(), FileError> {
    if roots.holds_root(&place.path()) {
        return Err(FileError::invalid(
            &place.shown,
            "is an allowed root (or holds one); it is never moved, replaced or deleted",
        ));
    }
    Ok(())
}

fn rename_error(from: &str, to: &str, e: io::Error) -> FileError {
    match e.raw_os_error() {
        Some(libc::EEXIST) => FileError::already_exists(to),
        Some(libc::ENOTEMPTY) => FileError::NotEmpty { path: to.into() },
        Some(libc::EISDIR) => FileError::is_a_directory(to, ""),
        Some(libc::ENOTDIR) => FileError::not_a_directory(to),
        Some(libc::EINVAL) => FileError::invalid(
            from,
            format!("cannot be moved to {to} (into itself, or the file system refuses)"),
        ),
        _ => FileError::io(from, "moving", e),
    }
}

/// The answer to a move whose source and destination are one place.
pub(crate) fn unmoved(path: &Path) -> pb::FileChangeReply {
    change(path, "nothing to do: source and destination are the same")
}

pub(crate) fn change(path: &Path, detail: &str) -> pb::FileChangeReply {
    pb::FileChangeReply {
        path: path.display().to_string(),
        detail: detail.to_string(),
    }
}

fn is_dir(st: &FileStat) -> bool {
    st.st_mode & libc::S_IFMT == libc::S_IFDIR
}

fn is_regular(st: &FileStat) -> bool {
    st.st_mode & libc::S_IFMT == libc::S_IFREG
}

/// Reads a whole file (tests only).
#[cfg(test)]
fn contents(path: &Path) -> Vec<u8> {
    use std::io::Read;
    let mut v = Vec::new();
    File::open(path).unwrap().read_to_end(&mut v).unwrap();
    v
}

#[cfg(test)]
mod tests {
    use super::super::fixture::{Fixture, limits};
    use super::*;
    use std::os::unix::fs::{PermissionsExt, symlink};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    fn write_req(path: String, content: &[u8]) -> pb::FileWrite {
        pb::FileWrite {
            path,
            content: content.to_vec(),
            ..Default::default()
        }
    }

    fn mode_of(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
    }

    fn leftovers(fx: &Fixture, dir: &str) -> Vec<String> {
        std::fs::read_dir(fx.abs(dir))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains(".execmesh-"))
            .collect()
    }

    #[test]
    fn a_write_creates_a_file_with_its_mode_and_returns_size_and_sha256() {
        let fx = Fixture::new();
        let mut req = write_req(fx.path("new.txt"), b"hello\n");
        req.mode = Some(0o600);
        let reply = write(&fx.files, req).unwrap();
        assert!(reply.created);
        assert_eq!(reply.size, 6);
        assert_eq!(
            reply.sha256,
            "5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03"
        );
        assert_eq!(contents(&fx.abs("new.txt")), b"hello\n");
        assert_eq!(mode_of(&fx.abs("new.txt")), 0o600);
        let reply = write(&fx.files, write_req(fx.path("default.txt"), b"")).unwrap();
        assert_eq!(mode_of(&fx.abs("default.txt")), DEFAULT_MODE);
        assert_eq!(reply.size, 0);
        assert!(leftovers(&fx, "").is_empty());
    }

    #[test]
    fn a_rewrite_keeps_the_mode_of_the_file_it_replaces() {
        let fx = Fixture::new();
        let path = fx.write("script.sh", "old");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o751)).unwrap();
        let mut req = write_req(fx.path("script.sh"), b"#!/bin/sh\necho new\n");
        req.mode = Some(0o600); // only for new files
        let reply = write(&fx.files, req).unwrap();
        assert!(!reply.created);
        assert_eq!(mode_of(&path), 0o751);
        assert_eq!(contents(&path), b"#!/bin/sh\necho new\n");
    }

    #[test]
    fn a_write_through_a_symlink_inside_the_roots_lands_in_its_target() {
        let fx = Fixture::new();
        fx.write("real.conf", "v1");
        symlink(fx.abs("real.conf"), fx.abs("current.conf")).unwrap();
        write(&fx.files, write_req(fx.path("current.conf"), b"v2")).unwrap();
        assert_eq!(contents(&fx.abs("real.conf")), b"v2");
        assert!(
            fx.abs("current.conf")
                .symlink_metadata()
                .unwrap()
                .file_type()
                .is_symlink()
        );
        // A symlink out of the roots is refused.
        symlink("/etc/hostname", fx.abs("host")).unwrap();
        let err = write(&fx.files, write_req(fx.path("host"), b"x")).unwrap_err();
        assert!(matches!(err, FileError::OutsideRoots { .. }), "{err}");
    }

    #[test]
    fn modes_with_setuid_setgid_or_sticky_bits_are_refused_naming_the_mode() {
        let fx = Fixture::new();
        for (mode, append, bit) in [
            (0o4755, false, "setuid"),
            (0o2755, false, "setgid"),
            (0o1644, true, "sticky"),
            (0o6755, true, "setuid and setgid"),
        ] {
            let mut req = write_req(fx.path("special"), b"#!/bin/sh\n");
            req.mode = Some(mode);
            req.append = append;
            let err = write(&fx.files, req).unwrap_err();
            assert_eq!(err.code(), pb::ErrorCode::Invalid, "{err}");
            let message = err.to_string();
            assert!(
                message.contains(&format!("{mode:04o}")) && message.contains(bit),
                "{mode:o}: {message}"
            );
            assert!(!fx.exists("special"), "{mode:o} created the file");
        }
        let mut req = write_req(fx.path("plain"), b"x");
        req.mode = Some(0o750);
        write(&fx.files, req).unwrap();
        assert_eq!(mode_of(&fx.abs("plain")), 0o750);
    }

    #[test]
    fn a_hard_link_to_a_file_outside_the_roots_is_not_changed() {
        let fx = Fixture::new();
        let outside = tempfile::tempdir().unwrap();
        let target = outside.path().join("target");
        std::fs::write(&target, "original\n").unwrap();
        std::fs::hard_link(&target, fx.abs("link")).unwrap();
        for append in [false, true] {
            let mut req = write_req(fx.path("link"), b"changed\n");
            req.append = append;
            let err = write(&fx.files, req).unwrap_err();
            assert_eq!(err.code(), pb::ErrorCode::PermissionDenied, "{err}");
            assert!(err.to_string().contains("hard links"), "{err}");
        }
        assert_eq!(contents(&target), b"original\n");
        assert_eq!(contents(&fx.abs("link")), b"original\n");
        assert!(leftovers(&fx, "").is_empty());
    }

    /// Runs `f` on a thread acting as the `nobody` account, as a run-as request does.
    fn as_nobody<T: Send>(f: impl FnOnce() -> T + Send) -> T {
        let nobody = crate::runas::Account::lookup("nobody").expect("nobody exists");
        std::thread::scope(|s| {
            s.spawn(|| {
                let _as = crate::runas::FsCredentials::assume(&nobody).expect("switch");
                f()
            })
            .join()
            .expect("thread")
        })
    }

    fn owner_of(path: &Path) -> (u32, u32) {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(path).unwrap();
        (meta.uid(), meta.gid())
    }

    #[test]
    fn a_replace_as_an_account_keeps_the_owner_group_and_mode_of_the_file() {
        if !nix::unistd::geteuid().is_root() {
            // Switching accounts needs root; the tests run as root.
            return;
        }
        let fx = Fixture::new();
        // A directory the account may write in, holding files of root and of another user
        // that the account may write to.
        std::fs::set_permissions(&fx.root, std::fs::Permissions::from_mode(0o777)).unwrap();
        let of_root = fx.write("root.conf", "old\n");
        std::fs::set_permissions(&of_root, std::fs::Permissions::from_mode(0o666)).unwrap();
        let of_other = fx.write("other.conf", "old\n");
        std::os::unix::fs::chown(&of_other, Some(4242), Some(4343)).unwrap();
        std::fs::set_permissions(&of_other, std::fs::Permissions::from_mode(0o4777)).unwrap();

        as_nobody(|| {
            write(&fx.files, write_req(fx.path("root.conf"), b"new\n")).unwrap();
            write(&fx.files, write_req(fx.path("other.conf"), b"new\n")).unwrap();
        });
        assert_eq!(contents(&of_root), b"new\n");
        assert_eq!(owner_of(&of_root), (0, 0));
        assert_eq!(mode_of(&of_root), 0o666);
        assert_eq!(contents(&of_other), b"new\n");
        assert_eq!(owner_of(&of_other), (4242, 4343));
        // The account wrote it: a setuid bit would run its content as the owner.
        assert_eq!(mode_of(&of_other), 0o777);
        assert!(leftovers(&fx, "").is_empty());

        // The agent itself (root) keeps everything, set-id bits included.
        std::fs::set_permissions(&of_other, std::fs::Permissions::from_mode(0o4755)).unwrap();
        write(&fx.files, write_req(fx.path("other.conf"), b"newer\n")).unwrap();
        assert_eq!(owner_of(&of_other), (4242, 4343));
        assert_eq!(mode_of(&of_other), 0o4755);
    }

    #[test]
    fn a_replace_as_an_account_of_a_file_it_may_not_write_is_refused() {
        if !nix::unistd::geteuid().is_root() {
            return;
        }
        let fx = Fixture::new();
        std::fs::set_permissions(&fx.root, std::fs::Permissions::from_mode(0o777)).unwrap();
        let of_root = fx.write("root.conf", "old\n");
        std::fs::set_permissions(&of_root, std::fs::Permissions::from_mode(0o644)).unwrap();

        let err =
            as_nobody(|| write(&fx.files, write_req(fx.path("root.conf"), b"new\n")).unwrap_err());
        assert_eq!(err.code(), pb::ErrorCode::PermissionDenied, "{err}");
        let message = err.to_string();
        assert!(
            message.contains(&fx.path("root.conf")) && message.contains("uid 0"),
            "{message}"
        );
        assert_eq!(contents(&of_root), b"old\n");
        assert_eq!(owner_of(&of_root), (0, 0));
        assert!(leftovers(&fx, "").is_empty());
        // A new file is the account's, as always.
        as_nobody(|| write(&fx.files, write_req(fx.path("mine"), b"x")).unwrap());
        let nobody = crate::runas::Account::lookup("nobody").unwrap();
        assert_eq!(owner_of(&fx.abs("mine")).0, nobody.uid);
    }

    #[test]
    fn writes_refuse_directories_oversize_content_and_missing_parents() {
        let fx = Fixture::with_limits(super::super::Limits {
            max_write_bytes: 10,
            ..limits()
        });
        std::fs::create_dir(fx.abs("dir")).unwrap();
        let err = write(&fx.files, write_req(fx.path("dir"), b"x")).unwrap_err();
        assert!(matches!(err, FileError::IsADirectory { .. }), "{err}");
        let err = write(&fx.files, write_req(fx.path("big"), &[b'x'; 11])).unwrap_err();
        assert!(
            matches!(
                err,
                FileError::TooLarge {
                    size: 11,
                    limit: 10,
                    ..
                }
            ),
            "{err}"
        );
        let err = write(&fx.files, write_req(fx.path("a/b/c"), b"x")).unwrap_err();
        assert!(matches!(err, FileError::NotFound { .. }), "{err}");
        let mut req = write_req(fx.path("a/b/c"), b"x");
        req.create_dirs = true;
        write(&fx.files, req).unwrap();
        assert_eq!(contents(&fx.abs("a/b/c")), b"x");
    }

    #[test]
    fn append_creates_then_extends_and_hashes_the_whole_file() {
        let fx = Fixture::new();
        let mut req = write_req(fx.path("log"), b"one\n");
        req.append = true;
        let first = write(&fx.files, req.clone()).unwrap();
        assert!(first.created);
        assert_eq!(mode_of(&fx.abs("log")), DEFAULT_MODE);
        req.content = b"two\n".to_vec();
        let second = write(&fx.files, req).unwrap();
        assert!(!second.created);
        assert_eq!(second.size, 8);
        assert_eq!(second.sha256, hex::encode(Sha256::digest(b"one\ntwo\n")));
        assert_eq!(contents(&fx.abs("log")), b"one\ntwo\n");
    }

    #[test]
    fn readers_never_see_a_half_written_file() {
        let fx = Fixture::new();
        let a = vec![b'a'; 4 * 1024 * 1024];
        let b = vec![b'b'; 4 * 1024 * 1024];
        fx.write("big", &a);
        let path = fx.abs("big");
        let stop = Arc::new(AtomicBool::new(false));
        let reader = {
            let (stop, path) = (Arc::clone(&stop), path.clone());
            std::thread::spawn(move || {
                let mut reads = 0;
                while !stop.load(Ordering::Relaxed) {
                    let data = contents(&path);
                    assert_eq!(data.len(), 4 * 1024 * 1024, "a reader saw a partial file");
                    assert!(
                        data.iter().all(|&c| c == data[0]),
                        "a reader saw a mix of two versions"
                    );
                    reads += 1;
                }
                reads
            })
        };
        for i in 0..30 {
            let content = if i % 2 == 0 { &b } else { &a };
            write(&fx.files, write_req(fx.path("big"), content)).unwrap();
        }
        stop.store(true, Ordering::Relaxed);
        let reads = reader.join().expect("reader saw only whole versions");
        assert!(reads > 0);
        assert!(leftovers(&fx, "").is_empty());
    }

    #[test]
    fn move_renames_and_refuses_to_overwrite_unless_asked() {
        let fx = Fixture::new();
        fx.write("a", "A");
        fx.write("b", "B");
        let mv = |from: &str, to: &str, overwrite: bool| {
            rename(
                &fx.files,
                pb::FileMove {
                    from: fx.path(from),
                    to: fx.path(to),
                    overwrite,
                    create_dirs: true,
                },
            )
        };
        let err = mv("a", "b", false).unwrap_err();
        assert!(matches!(err, FileError::AlreadyExists { .. }), "{err}");
        assert_eq!(contents(&fx.abs("b")), b"B");
        mv("a", "b", true).unwrap();
        assert_eq!(contents(&fx.abs("b")), b"A");
        assert!(!fx.exists("a"));
        let reply = mv("b", "sub/dir/c", false).unwrap();
        assert!(reply.path.ends_with("sub/dir/c"));
        assert!(reply.detail.contains("moved"));
        assert!(matches!(
            mv("nope", "x", false),
            Err(FileError::NotFound { .. })
        ));
        let err = rename(
            &fx.files,
            pb::FileMove {
                from: fx.path("sub/dir/c"),
                to: "/etc/c".into(),
                ..Default::default()
            },
        )
        .unwrap_err();
        assert!(matches!(err, FileError::OutsideRoots { .. }), "{err}");
        let err = rename(
            &fx.files,
            pb::FileMove {
                from: fx.path(""),
                to: fx.path("x"),
                ..Default::default()
            },
        )
        .unwrap_err();
        assert!(err.to_string().contains("root"), "{err}");
    }

    #[test]
    fn move_across_file_systems_copies_and_removes_the_source() {
        let Ok(shm) = tempfile::tempdir_in("/dev/shm") else {
            eprintln!("no /dev/shm; skipping");
            return;
        };
        let fx = Fixture::new();
        let shm_root = std::fs::canonicalize(shm.path()).unwrap();
        use std::os::unix::fs::MetadataExt;
        if std::fs::metadata(&shm_root).unwrap().dev() == std::fs::metadata(&fx.root).unwrap().dev()
        {
            eprintln!("/dev/shm is on the same file system; skipping");
            return;
        }
        let files = Files::with(Roots::new(&[fx.root.clone(), shm_root.clone()]), limits());
        let path = fx.write("moved.bin", "payload");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        let reply = rename(
            &files,
            pb::FileMove {
                from: fx.path("moved.bin"),
                to: shm_root.join("moved.bin").display().to_string(),
                ..Default::default()
            },
        )
        .unwrap();
        assert!(
            reply.detail.contains("across file systems"),
            "{}",
            reply.detail
        );
        assert!(!path.exists());
        assert_eq!(contents(&shm_root.join("moved.bin")), b"payload");
        assert_eq!(mode_of(&shm_root.join("moved.bin")), 0o640);
    }

    #[test]
    fn delete_files_links_and_directories_only_when_recursive() {
        let fx = Fixture::new();
        fx.write("f", "x");
        fx.write("d/sub/deep/file", "x");
        fx.write("d/other", "x");
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("keep"), "k").unwrap();
        symlink(outside.path(), fx.abs("d/sub/link-out")).unwrap();
        let del = |rel: &str, recursive: bool| {
            delete(
                &fx.files,
                pb::FileDelete {
                    path: fx.path(rel),
                    recursive,
                },
            )
        };
        del("f", false).unwrap();
        assert!(!fx.exists("f"));
        let err = del("d", false).unwrap_err();
        assert!(matches!(err, FileError::IsADirectory { .. }), "{err}");
        assert!(err.to_string().contains("recursive"), "{err}");
        let reply = del("d", true).unwrap();
        assert!(!fx.exists("d"));
        assert!(reply.detail.contains("5 entries"), "{}", reply.detail);
        // The symlink was removed, not followed.
        assert!(outside.path().join("keep").exists());
        assert!(matches!(del("d", true), Err(FileError::NotFound { .. })));
        let err = del("", true).unwrap_err();
        assert!(err.to_string().contains("root"), "{err}");
        assert!(fx.root.exists());
    }
}
