//! `FileStat`: what a path is (the link itself for a symlink), its size, mode, owner and age.

use execmesh_proto::pb;
use nix::unistd::{Gid, Group, Uid, User};

use super::Files;
use super::error::FileError;
use super::roots::{Final, Parents};

/// Answers a `FileStat`: `lstat` of the path, symlinks described and never followed.
pub fn stat(files: &Files, req: pb::FileStat) -> Result<pb::FileStatReply, FileError> {
    let place = files
        .roots
        .place(&req.path, Final::Keep, Parents::Existing)?;
    let st = place
        .lstat()?
        .ok_or_else(|| FileError::not_found(&req.path))?;
    let mode = st.st_mode;
    let symlink_target = if mode & libc::S_IFMT == libc::S_IFLNK {
        nix::fcntl::readlinkat(&place.dir.fd, place.name.as_os_str())
            .map(|t| t.to_string_lossy().into_owned())
            .map_err(|e| FileError::errno(&req.path, "reading the link", e))?
    } else {
        String::new()
    };
    Ok(pb::FileStatReply {
        path: place.path().display().to_string(),
        kind: kind_of_mode(mode).into(),
        size: st.st_size.max(0) as u64,
        mode: mode & 0o7777,
        uid: st.st_uid,
        gid: st.st_gid,
        owner: user_name(st.st_uid),
        group: group_name(st.st_gid),
        mtime_ms: mtime_ms(st.st_mtime, st.st_mtime_nsec),
        symlink_target,
    })
}

/// The wire name of a file type (`st_mode & S_IFMT`).
pub fn kind_of_mode(mode: u32) -> &'static str {
    match mode & libc::S_IFMT {
        libc::S_IFREG => "file",
        libc::S_IFDIR => "directory",
        libc::S_IFLNK => "symlink",
        libc::S_IFIFO => "fifo",
        libc::S_IFSOCK => "socket",
        libc::S_IFBLK => "block_device",
        libc::S_IFCHR => "char_device",
        _ => "unknown",
    }
}

/// Unix milliseconds of a `(seconds, nanoseconds)` timestamp.
pub fn mtime_ms(secs: i64, nsec: i64) -> u64 {
    (secs.max(0) as u64)
        .saturating_mul(1000)
        .saturating_add((nsec.max(0) / 1_000_000) as u64)
}

/// The user name of `uid`, or empty when the system has none.
fn user_name(uid: u32) -> String {
    User::from_uid(Uid::from_raw(uid))
        .ok()
        .flatten()
        .map(|u| u.name)
        .unwrap_or_default()
}

/// The group name of `gid`, or empty when the system has none.
fn group_name(gid: u32) -> String {
    Group::from_gid(Gid::from_raw(gid))
        .ok()
        .flatten()
        .map(|g| g.name)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::super::fixture::Fixture;
    use super::*;
    use std::os::unix::fs::{PermissionsExt, symlink};

    fn stat_of(fx: &Fixture, rel: &str) -> Result<pb::FileStatReply, FileError> {
        stat(&fx.files, pb::FileStat { path: fx.path(rel) })
    }

    #[test]
    fn a_file_is_described_with_mode_owner_and_time() {
        let fx = Fixture::new();
        let path = fx.write("a.txt", "hello");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o4640)).unwrap();
        let st = stat_of(&fx, "a.txt").unwrap();
        assert_eq!(st.kind, "file");
        assert_eq!(st.size, 5);
        assert_eq!(st.mode, 0o4640);
        assert_eq!(st.uid, nix::unistd::geteuid().as_raw());
        assert!(!st.owner.is_empty());
        assert!(st.mtime_ms > 1_600_000_000_000);
        assert_eq!(st.path, path.display().to_string());
        assert_eq!(stat_of(&fx, "").unwrap().kind, "directory");
    }

    #[test]
    fn a_symlink_out_of_the_roots_is_described_not_followed() {
        let fx = Fixture::new();
        symlink("/etc/passwd", fx.abs("link")).unwrap();
        let st = stat_of(&fx, "link").unwrap();
        assert_eq!(st.kind, "symlink");
        assert_eq!(st.symlink_target, "/etc/passwd");
        assert!(matches!(
            stat_of(&fx, "missing"),
            Err(FileError::NotFound { .. })
        ));
        let err = stat(
            &fx.files,
            pb::FileStat {
                path: "/etc/passwd".into(),
            },
        )
        .unwrap_err();
        assert!(matches!(err, FileError::OutsideRoots { .. }), "{err}");
    }
}
