//! Why a file operation was refused or failed, one variant per wire `ErrorCode`, each naming the path.

use std::io;
use std::path::Path;

use execmesh_proto::pb::ErrorCode;

/// A file operation that did not happen. The dispatcher prefixes the host; every message names
/// the path as the caller gave it (and where it resolved to, when that matters).
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// `hint` says what to do about it (e.g. pass `create_dirs`).
    #[error("{path} does not exist{hint}")]
    NotFound { path: String, hint: &'static str },

    #[error("permission denied on {path}")]
    PermissionDenied { path: String },

    /// `hint` says what to do instead (e.g. pass `recursive`).
    #[error("{path} is a directory{hint}")]
    IsADirectory { path: String, hint: &'static str },

    #[error("{path} is not a directory")]
    NotADirectory { path: String },

    /// After normalisation and symlink resolution the path lies outside every allowed root.
    #[error("{path}{resolved} is outside the allowed roots ({roots})")]
    OutsideRoots {
        path: String,
        /// ` (resolves to …)` when symlinks took the path elsewhere, else empty.
        resolved: String,
        roots: String,
    },

    #[error("{path}: {what} is {size} bytes, over the limit of {limit} bytes")]
    TooLarge {
        path: String,
        what: &'static str,
        size: u64,
        limit: u64,
    },

    #[error("{path} looks binary (a NUL byte in its first 8 KiB); read it with raw to get bytes")]
    Binary { path: String },

    #[error("{path} already exists; pass overwrite to replace it")]
    AlreadyExists { path: String },

    #[error("{path}: the copy arrived with sha256 {actual}, not {expected}; nothing was written")]
    ChecksumMismatch {
        path: String,
        expected: String,
        actual: String,
    },

    #[error("{path} is not empty")]
    NotEmpty { path: String },

    /// A write asked for a mode with the setuid, setgid or sticky bit: the file tool never sets
    /// them (a setuid file written by one account runs as another).
    #[error(
        "{path}: mode {mode:04o} has the {bits} bit set; the file tool does not create setuid, \
         setgid or sticky files (use a mode of at most 0777)"
    )]
    SpecialMode {
        path: String,
        mode: u32,
        /// The offending bits in words (`setuid`, `setgid and sticky`, …).
        bits: String,
    },

    /// A regular file with more than one hard link: another of its names may lie outside the
    /// allowed roots, so it is neither read nor changed (the host's `file_allow_hardlinks`
    /// allows it).
    #[error(
        "{path} has {links} hard links; one of them may lie outside the allowed roots, so the \
         file tool neither reads nor changes it (a host allows it with file_allow_hardlinks)"
    )]
    HardLinked { path: String, links: u64 },

    /// Replacing the file would give it a new owner: the file keeps its owner or is left alone.
    #[error(
        "{path} belongs to uid {uid} (gid {gid}) and {reason}; replacing it would make it \
         another user's, so it was left as it is"
    )]
    OwnerNotKept {
        path: String,
        uid: u32,
        gid: u32,
        /// Why the owner cannot be kept.
        reason: &'static str,
    },

    /// A request that cannot be carried out as asked; `reason` says why.
    #[error("{path}: {reason}")]
    Invalid { path: String, reason: String },

    /// Any other operating-system error, with the operation that hit it.
    #[error("{path}: {op} failed: {source}")]
    Io {
        path: String,
        op: &'static str,
        source: io::Error,
    },
}

// === impl FileError ===

impl FileError {
    /// The wire code of this error.
    pub fn code(&self) -> ErrorCode {
        match self {
            FileError::NotFound { .. } => ErrorCode::NotFound,
            FileError::PermissionDenied { .. } => ErrorCode::PermissionDenied,
            FileError::IsADirectory { .. } => ErrorCode::IsADirectory,
            FileError::NotADirectory { .. } => ErrorCode::NotADirectory,
            FileError::OutsideRoots { .. } => ErrorCode::OutsideRoots,
            FileError::TooLarge { .. } => ErrorCode::TooLarge,
            FileError::Binary { .. } => ErrorCode::Binary,
            FileError::AlreadyExists { .. } => ErrorCode::AlreadyExists,
            FileError::ChecksumMismatch { .. } => ErrorCode::ChecksumMismatch,
            FileError::NotEmpty { .. } => ErrorCode::NotEmpty,
            FileError::SpecialMode { .. } => ErrorCode::Invalid,
            FileError::HardLinked { .. } => ErrorCode::PermissionDenied,
            FileError::OwnerNotKept { .. } => ErrorCode::PermissionDenied,
            FileError::Invalid { .. } => ErrorCode::Invalid,
            FileError::Io { .. } => ErrorCode::Internal,
        }
    }

    pub fn invalid(path: impl AsRef<Path>, reason: impl Into<String>) -> Self {
        FileError::Invalid {
            path: shown(path),
            reason: reason.into(),
        }
    }

    pub fn not_found(path: impl AsRef<Path>) -> Self {
        FileError::NotFound {
            path: shown(path),
            hint: "",
        }
    }

    pub fn is_a_directory(path: impl AsRef<Path>, hint: &'static str) -> Self {
        FileError::IsADirectory {
            path: shown(path),
            hint,
        }
    }

    pub fn not_a_directory(path: impl AsRef<Path>) -> Self {
        FileError::NotADirectory { path: shown(path) }
    }

    pub fn already_exists(path: impl AsRef<Path>) -> Self {
        FileError::AlreadyExists { path: shown(path) }
    }

    pub fn too_large(path: impl AsRef<Path>, what: &'static str, size: u64, limit: u64) -> Self {
        FileError::TooLarge {
            path: shown(path),
            what,
            size,
            limit,
        }
    }

    /// Translates an operating-system error on `path` into the variant a caller can act on.
    pub fn io(path: impl AsRef<Path>, op: &'static str, source: io::Error) -> Self {
        let path = shown(path);
        match source.kind() {
            io::ErrorKind::NotFound => FileError::NotFound { path, hint: "" },
            io::ErrorKind::PermissionDenied => FileError::PermissionDenied { path },
            io::ErrorKind::IsADirectory => FileError::IsADirectory { path, hint: "" },
            io::ErrorKind::NotADirectory => FileError::NotADirectory { path },
            io::ErrorKind::DirectoryNotEmpty => FileError::NotEmpty { path },
            io::ErrorKind::AlreadyExists => FileError::AlreadyExists { path },
            _ if source.raw_os_error() == Some(libc::ELOOP) => FileError::Invalid {
                path,
                reason: "is a symbolic link where a file was expected (or it changed while being opened)"
                    .into(),
            },
            _ if source.raw_os_error() == Some(libc::EPERM) => {
                FileError::PermissionDenied { path }
            }
            _ => FileError::Io { path, op, source },
        }
    }

    /// [`FileError::io`] for a `nix` call.
    pub fn errno(path: impl AsRef<Path>, op: &'static str, errno: nix::errno::Errno) -> Self {
        Self::io(path, op, io::Error::from(errno))
    }
}

/// How a path appears in messages.
pub fn shown(path: impl AsRef<Path>) -> String {
    path.as_ref().display().to_string()
}
