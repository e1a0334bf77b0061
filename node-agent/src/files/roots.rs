//! The directories file operations may touch, and the path checks that keep every operation inside them.
//!
//! A path is checked in three steps: it must be absolute and is normalised lexically (`.` and
//! `..` are folded without touching the disk); its symlinks are resolved (the whole path, or
//! only its parent when the final component must not be followed or does not exist yet); the
//! result must lie inside a root, compared component by component (`/tmp2` is not in `/tmp`).
//! Because the disk can change between the check and the use, files and directories are then
//! opened with `O_NOFOLLOW` and the opened descriptor's real path (`/proc/self/fd/<fd>`) is
//! checked again; later steps work relative to descriptors, not paths.
//!
//! A hard link is the one name a path check cannot see through: `/srv/app/x` may be another
//! name of `/etc/y`. Unless the host allows it (`file_allow_hardlinks`), a regular file with
//! more than one link is neither read (read, copy, grep) nor changed (write, append, the target
//! of a copy, a move across file systems). Its metadata stays visible (stat, list), and a move
//! within a file system or a delete acts on the name only, never on the other names.

use std::ffi::OsString;
use std::fs::{self, File};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{FileStat, Mode};
use tracing::warn;

use super::clamp::floor_char_boundary;
use super::error::FileError;

/// Roots used when the configuration names none.
pub const DEFAULT_ROOTS: &[&str] = &["/tmp", "/var/log", "/srv", "/opt", "/home"];

/// Longest path accepted (Linux's `PATH_MAX`).
const MAX_PATH_BYTES: usize = 4096;

/// The canonical, existing directories under which file operations are allowed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Roots {
    roots: Vec<PathBuf>,
    /// Whether regular files with more than one hard link may be read and changed.
    allow_hardlinks: bool,
}

/// A verified directory: an open descriptor and the real path it had when it was checked.
#[derive(Debug)]
pub struct Dir {
    pub fd: OwnedFd,
    pub path: PathBuf,
}

/// Where a file is or will be: an open, verified directory and a name inside it. Operations on a
/// place go through the directory's descriptor, so a directory swapped for a symlink after the
/// check cannot redirect them.
#[derive(Debug)]
pub struct Place {
    pub dir: Dir,
    /// A single path component (never `.`, `..` or empty).
    pub name: OsString,
    /// The path as the caller gave it, for messages.
    pub shown: String,
}

/// What [`Roots::place`] does about parent directories that do not exist.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parents {
    /// The operation acts only on what exists (stat, delete, the source of a move).
    Existing,
    /// The operation could create them: the refusal names `create_dirs`.
    Offer,
    /// Create them (`create_dirs`), inside the roots only.
    Create,
}

impl Parents {
    /// For an operation with a `create_dirs` flag.
    pub fn create_if(create_dirs: bool) -> Parents {
        if create_dirs {
            Parents::Create
        } else {
            Parents::Offer
        }
    }
}

/// Whether [`Roots::place`] follows a symlink in the final component.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Final {
    /// Resolve an existing final symlink to its target (writes land in the target).
    Follow,
    /// Keep the final component as it is (stat, delete and move act on a link itself).
    Keep,
}

// === impl Roots ===

impl Roots {
    /// Canonicalises the configured roots; one that does not exist (or is no directory) is
    /// skipped with a warning, duplicates are dropped.
    pub fn new(configured: &[PathBuf]) -> Roots {
        let mut roots = Vec::new();
        for root in configured {
            match fs::canonicalize(root) {
                Ok(real) if real.is_dir() => {
                    if !roots.contains(&real) {
                        roots.push(real);
                    }
                }
                Ok(_) => warn!(root = %root.display(), "file root is not a directory; skipped"),
                Err(e) => warn!(root = %root.display(), error = %e,
                                "file root cannot be resolved; skipped"),
            }
        }
        Roots {
            roots,
            allow_hardlinks: false,
        }
    }

    /// Roots already resolved elsewhere (on an SSH target, by its own `realpath`): canonical,
    /// existing directories; duplicates are dropped.
    pub fn resolved(resolved: Vec<PathBuf>) -> Roots {
        let mut roots: Vec<PathBuf> = Vec::with_capacity(resolved.len());
        for root in resolved {
            if !roots.contains(&root) {
                roots.push(root);
            }
        }
        Roots {
            roots,
            allow_hardlinks: false,
        }
    }

    /// These roots, allowing (or not) regular files with several hard links.
    pub fn allowing_hardlinks(self, allow: bool) -> Roots {
        Roots {
            allow_hardlinks: allow,
            ..self
        }
    }

    /// Refuses a regular file with more than one hard link, unless the host allows them.
    /// `links` is `nlink_t`, whose width differs between targets.
    pub fn check_links(
        &self,
        raw: &str,
        mode: u32,
        links: impl Into<u64>,
    ) -> Result<(), FileError> {
        let links = links.into();
        if !self.allow_hardlinks && mode & libc::S_IFMT == libc::S_IFREG && links > 1 {
            return Err(FileError::HardLinked {
                path: raw.to_string(),
                links,
            });
        }
        Ok(())
    }

    /// The canonical roots.
    pub fn paths(&self) -> &[PathBuf] {
        &self.roots
    }

    /// Whether `path` (already canonical) is a root or lies below one.
    pub fn contains(&self, path: &Path) -> bool {
        self.roots.iter().any(|root| path.starts_with(root))
    }

    /// Whether `path` (already canonical) is a root or an ancestor of one: such a path is never
    /// deleted or moved.
    pub fn holds_root(&self, path: &Path) -> bool {
        self.roots.iter().any(|root| root.starts_with(path))
    }

    /// The roots as a list for messages.
    pub fn listed(&self) -> String {
        if self.roots.is_empty() {
            return "none are configured on this host".into();
        }
        self.roots
            .iter()
            .map(|r| r.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The refusal for `raw`, which resolved to `real`.
    pub fn outside(&self, raw: &str, real: Option<&Path>) -> FileError {
        let resolved = match real {
            Some(real) if real != Path::new(raw) => format!(" (resolves to {})", real.display()),
            _ => String::new(),
        };
        FileError::OutsideRoots {
            path: raw.to_string(),
            resolved,
            roots: self.listed(),
        }
    }

    /// The real path of an existing `raw`, symlinks resolved, if it lies inside a root.
    pub fn resolve(&self, raw: &str) -> Result<PathBuf, FileError> {
        let lexical = normalize(raw)?;
        match fs::canonicalize(&lexical) {
            Ok(real) if self.contains(&real) => Ok(real),
            Ok(real) => Err(self.outside(raw, Some(&real))),
            Err(e) => Err(self.refuse_unresolved(raw, &lexical, e)),
        }
    }

    /// The directory and name `raw` designates: the parent resolved and verified, the final
    /// component followed (when it is an existing symlink and `last` is [`Final::Follow`]) or
    /// kept. Missing parent directories are created (inside the roots only) or refused, as
    /// `parents` says.
    pub fn place(&self, raw: &str, last: Final, parents: Parents) -> Result<Place, FileError> {
        let lexical = normalize(raw)?;
        let target = match last {
            Final::Follow => match fs::canonicalize(&lexical) {
                Ok(real) => real,
                Err(_) => lexical,
            },
            Final::Keep => lexical,
        };
        let (Some(parent), Some(name)) = (target.parent(), target.file_name()) else {
            return Err(FileError::invalid(
                raw,
                "names a directory, not a file in one",
            ));
        };
        let name = name.to_os_string();
        let dir = match fs::canonicalize(parent) {
            Ok(real) => {
                let full = real.join(&name);
                if !self.contains(&full) {
                    return Err(self.outside(raw, Some(&full)));
                }
                let dir = open_dir_fd(&real).map_err(|e| FileError::io(parent, "opening", e))?;
                let verified =
                    fd_path(dir.as_fd()).map_err(|e| FileError::io(raw, "checking", e))?;
                let full = verified.join(&name);
                if !self.contains(&full) {
                    return Err(self.outside(raw, Some(&full)));
                }
                Dir {
                    fd: dir,
                    path: verified,
                }
            }
            Err(e) if parents == Parents::Create && e.kind() == io::ErrorKind::NotFound => {
                self.make_dirs(raw, parent)?
            }
            Err(e) => {
                return Err(match self.refuse_unresolved(raw, &target, e) {
                    FileError::NotFound { .. } if parents == Parents::Offer => {
                        FileError::NotFound {
                            path: format!("the directory {} of {raw}", parent.display()),
                            hint: "; pass create_dirs to create it",
                        }
                    }
                    other => other,
                });
            }
        };
        Ok(Place {
            dir,
            name,
            shown: raw.to_string(),
        })
    }

    /// Opens the file at `real` (a path [`Roots::resolve`] returned) without following a final
    /// symlink and checks where the descriptor really points. `O_NONBLOCK` keeps a FIFO from
    /// blocking the open; callers check the file type.
    pub fn open_file(&self, real: &Path, raw: &str) -> Result<File, FileError> {
        let flags = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK;
        let fd = nix::fcntl::open(real, flags, Mode::empty())
            .map_err(|e| FileError::errno(raw, "opening", e))?;
        self.verify(fd.as_fd(), raw)?;
        let st = nix::sys::stat::fstat(&fd)
            .map_err(|e| FileError::errno(raw, "reading the status", e))?;
        self.check_links(raw, st.st_mode, st.st_nlink)?;
        Ok(File::from(fd))
    }

    /// Opens the directory at `real` without following a final symlink and checks it.
    pub fn open_dir(&self, real: &Path, raw: &str) -> Result<Dir, FileError> {
        let fd = open_dir_fd(real).map_err(|e| FileError::io(raw, "opening", e))?;
        let path = self.verify(fd.as_fd(), raw)?;
        Ok(Dir { fd, path })
    }

    /// The real path of an open descriptor, if it lies inside a root.
    pub fn verify(&self, fd: BorrowedFd<'_>, raw: &str) -> Result<PathBuf, FileError> {
        let real = fd_path(fd).map_err(|e| FileError::io(raw, "checking", e))?;
        if self.contains(&real) {
            Ok(real)
        } else {
            Err(self.outside(raw, Some(&real)))
        }
    }

    /// The deepest existing ancestor of `parent` (lexical, absolute), as `real` resolves a path
    /// (`None`: it does not exist), and the names below it that do not exist yet, outermost
    /// first; refused unless the ancestor and the whole path lie inside a root.
    pub(crate) fn deepest_existing(
        &self,
        raw: &str,
        parent: &Path,
        mut real: impl FnMut(&Path) -> Result<Option<PathBuf>, FileError>,
    ) -> Result<(PathBuf, Vec<OsString>), FileError> {
        let mut missing = Vec::new();
        let mut base = parent;
        let real_base = loop {
            if let Some(found) = real(base)? {
                break found;
            }
            let (Some(up), Some(name)) = (base.parent(), base.file_name()) else {
                return Err(FileError::not_found(raw));
            };
            missing.push(name.to_os_string());
            base = up;
        };
        missing.reverse();
        let mut full = real_base.clone();
        full.extend(&missing);
        if !self.contains(&real_base) || !self.contains(&full) {
            return Err(self.outside(raw, Some(&full)));
        }
        Ok((real_base, missing))
    }

    /// Creates the missing directories of `parent` (lexical, absolute) one by one through
    /// descriptors, never following a symlink, starting from its deepest existing ancestor,
    /// which must itself lie inside a root.
    fn make_dirs(&self, raw: &str, parent: &Path) -> Result<Dir, FileError> {
        let (real_base, missing) =
            self.deepest_existing(raw, parent, |base| match fs::canonicalize(base) {
                Ok(real) => Ok(Some(real)),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(FileError::io(base, "resolving", e)),
            })?;
        let mut dir = self.open_dir(&real_base, raw)?;
        for name in &missing {
            let path = dir.path.join(name);
            match nix::sys::stat::mkdirat(
                &dir.fd,
                name.as_os_str(),
                Mode::from_bits_truncate(0o755),
            ) {
                Ok(()) | Err(Errno::EEXIST) => {}
                Err(e) => return Err(FileError::errno(&path, "creating the directory", e)),
            }
            let fd = nix::fcntl::openat(
                &dir.fd,
                name.as_os_str(),
                OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                Mode::empty(),
            )
            .map_err(|e| FileError::errno(&path, "opening", e))?;
            dir = Dir { fd, path };
        }
        let path = self.verify(dir.fd.as_fd(), raw)?;
        Ok(Dir { fd: dir.fd, path })
    }

    /// Why `lexical` could not be resolved: outside the roots if the part of it that exists
    /// already leads outside (so nothing is revealed about what exists there), else the error.
    fn refuse_unresolved(&self, raw: &str, lexical: &Path, e: io::Error) -> FileError {
        let mut rest = Vec::new();
        let mut ancestor = lexical;
        while let (Some(up), Some(name)) = (ancestor.parent(), ancestor.file_name()) {
            rest.push(name);
            ancestor = up;
            if let Ok(real) = fs::canonicalize(ancestor) {
                let mut full = real;
                full.extend(rest.iter().rev());
                if !self.contains(&full) {
                    return self.outside(raw, Some(&full));
                }
                break;
            }
        }
        FileError::io(raw, "resolving", e)
    }
}

// === impl Place ===

impl Place {
    /// The place's path (as verified when the directory was opened).
    pub fn path(&self) -> PathBuf {
        self.dir.path.join(&self.name)
    }

    /// `lstat` of the name in the directory; `None` when nothing is there.
    pub fn lstat(&self) -> Result<Option<FileStat>, FileError> {
        match nix::sys::stat::fstatat(
            &self.dir.fd,
            self.name.as_os_str(),
            AtFlags::AT_SYMLINK_NOFOLLOW,
        ) {
            Ok(stat) => Ok(Some(stat)),
            Err(Errno::ENOENT) => Ok(None),
            Err(e) => Err(FileError::errno(&self.shown, "reading the status", e)),
        }
    }

    /// Opens the name in the directory with `flags` plus `O_NOFOLLOW | O_CLOEXEC`, and checks
    /// where the descriptor points.
    pub fn open(&self, roots: &Roots, flags: OFlag, mode: Mode) -> Result<File, FileError> {
        let fd = nix::fcntl::openat(
            &self.dir.fd,
            self.name.as_os_str(),
            flags | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            mode,
        )
        .map_err(|e| FileError::errno(&self.shown, "opening", e))?;
        roots.verify(fd.as_fd(), &self.shown)?;
        Ok(File::from(fd))
    }
}

/// Folds `.` and `..` out of an absolute path without touching the disk.
pub fn normalize(raw: &str) -> Result<PathBuf, FileError> {
    if raw.is_empty() {
        return Err(FileError::invalid("(empty path)", "a path is required"));
    }
    if raw.contains('\0') {
        return Err(FileError::invalid(
            raw.escape_debug().to_string(),
            "the path contains a NUL byte",
        ));
    }
    if raw.len() > MAX_PATH_BYTES {
        return Err(FileError::invalid(
            format!("{}…", &raw[..floor_char_boundary(raw, 64)]),
            format!("the path is longer than {MAX_PATH_BYTES} bytes"),
        ));
    }
    if !raw.starts_with('/') {
        return Err(FileError::invalid(
            raw,
            "the path is not absolute (it must start with /)",
        ));
    }
    let mut out = PathBuf::from("/");
    for component in Path::new(raw).components() {
        match component {
            Component::Normal(name) => out.push(name),
            Component::ParentDir => {
                out.pop();
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    Ok(out)
}

/// Opens a directory for descriptor-relative work, refusing a final symlink.
fn open_dir_fd(path: &Path) -> io::Result<OwnedFd> {
    nix::fcntl::open(
        path,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(io::Error::from)
}

/// Where an open descriptor really points, as the kernel tells it.
pub fn fd_path(fd: BorrowedFd<'_>) -> io::Result<PathBuf> {
    fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn roots_at(dir: &Path) -> Roots {
        Roots::new(&[dir.to_path_buf()])
    }

    /// A temp dir holding `root` (the only allowed root, with an empty `sub`) and a directory
    /// outside it, for swapping `sub` for a symlink out.
    fn swap_fixture() -> (tempfile::TempDir, PathBuf, PathBuf, Roots) {
        let tmp = tempfile::tempdir().unwrap();
        let base = fs::canonicalize(tmp.path()).unwrap();
        let root = base.join("root");
        let outside_dir = base.join("outside");
        fs::create_dir_all(root.join("sub")).unwrap();
        fs::create_dir(&outside_dir).unwrap();
        let roots = roots_at(&root);
        (tmp, root, outside_dir, roots)
    }

    #[test]
    fn normalisation_folds_dots_and_refuses_relative_paths() {
        assert_eq!(normalize("/tmp/./a/../b").unwrap(), PathBuf::from("/tmp/b"));
        assert_eq!(normalize("/../../etc").unwrap(), PathBuf::from("/etc"));
        assert_eq!(normalize("//tmp//x/").unwrap(), PathBuf::from("/tmp/x"));
        for bad in ["", "tmp/x", "./x", "../etc", "/tmp/\0x"] {
            assert!(
                matches!(normalize(bad), Err(FileError::Invalid { .. })),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn containment_is_by_component_not_by_string_prefix() {
        let roots = Roots {
            roots: vec![PathBuf::from("/tmp")],
            allow_hardlinks: false,
        };
        assert!(roots.contains(Path::new("/tmp")));
        assert!(roots.contains(Path::new("/tmp/a/b")));
        assert!(!roots.contains(Path::new("/tmp2")));
        assert!(!roots.contains(Path::new("/tmp2/a")));
        assert!(!roots.contains(Path::new("/")));
        assert!(roots.holds_root(Path::new("/tmp")));
        assert!(roots.holds_root(Path::new("/")));
        assert!(!roots.holds_root(Path::new("/tmp/a")));
    }

    #[test]
    fn missing_roots_are_skipped_and_the_rest_canonicalised() {
        let tmp = tempfile::tempdir().unwrap();
        let real = tmp.path().join("real");
        fs::create_dir(&real).unwrap();
        symlink(&real, tmp.path().join("alias")).unwrap();
        let roots = Roots::new(&[
            tmp.path().join("alias"),
            tmp.path().join("missing"),
            real.clone(),
        ]);
        assert_eq!(roots.paths(), [fs::canonicalize(&real).unwrap()]);
    }

    #[test]
    fn traversal_out_of_the_roots_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let base = fs::canonicalize(tmp.path()).unwrap();
        let root = base.join("root");
        let sibling = base.join("root2");
        fs::create_dir(&root).unwrap();
        fs::create_dir(&sibling).unwrap();
        fs::write(sibling.join("secret"), "s").unwrap();
        fs::write(root.join("ok"), "o").unwrap();
        symlink("/etc", root.join("etc")).unwrap();
        let roots = roots_at(&root);

        let outside = |raw: String| {
            let err = roots.resolve(&raw).unwrap_err();
            assert!(
                matches!(err, FileError::OutsideRoots { .. }),
                "{raw}: {err}"
            );
            assert!(err.to_string().contains(&raw), "{err}");
        };
        outside(format!("{}/../root2/secret", root.display()));
        outside(format!("{}/secret", sibling.display()));
        outside(format!("{}/etc/passwd", root.display()));
        outside(format!("{}/etc/does-not-exist", root.display()));
        outside("/etc/passwd".into());
        assert_eq!(
            roots.resolve(&format!("{}/ok", root.display())).unwrap(),
            root.join("ok")
        );
        // A missing file inside the roots is simply not there.
        assert!(matches!(
            roots.resolve(&format!("{}/nope", root.display())),
            Err(FileError::NotFound { .. })
        ));
        // Places check the same way, and the link itself is inside when not followed.
        let link = format!("{}/etc", root.display());
        assert!(roots.place(&link, Final::Keep, Parents::Existing).is_ok());
        assert!(matches!(
            roots.place(&format!("{link}/x"), Final::Keep, Parents::Existing),
            Err(FileError::OutsideRoots { .. })
        ));
        assert!(matches!(
            roots.place(
                &format!("{}/x", sibling.display()),
                Final::Keep,
                Parents::Create
            ),
            Err(FileError::OutsideRoots { .. })
        ));
        assert!(!sibling.join("x").exists());
    }

    #[test]
    fn a_followed_symlink_must_land_inside_the_roots() {
        let tmp = tempfile::tempdir().unwrap();
        let root = fs::canonicalize(tmp.path()).unwrap();
        symlink("/etc/hostname", root.join("host")).unwrap();
        let roots = roots_at(&root);
        let raw = format!("{}/host", root.display());
        assert!(matches!(
            roots.place(&raw, Final::Follow, Parents::Offer),
            Err(FileError::OutsideRoots { .. })
        ));
        assert!(roots.place(&raw, Final::Keep, Parents::Existing).is_ok());
    }

    #[test]
    fn create_dirs_makes_missing_parents_inside_the_roots() {
        let tmp = tempfile::tempdir().unwrap();
        let root = fs::canonicalize(tmp.path()).unwrap();
        let roots = roots_at(&root);
        let raw = format!("{}/a/b/c/file", root.display());
        assert!(matches!(
            roots.place(&raw, Final::Follow, Parents::Offer),
            Err(FileError::NotFound { .. })
        ));
        let place = roots.place(&raw, Final::Follow, Parents::Create).unwrap();
        assert!(root.join("a/b/c").is_dir());
        assert_eq!(place.path(), root.join("a/b/c/file"));
        assert_eq!(place.name, "file");
    }

    #[test]
    fn a_component_swapped_after_the_check_is_caught_when_opening() {
        let (_tmp, root, outside_dir, roots) = swap_fixture();
        fs::write(root.join("sub/file"), "inside").unwrap();
        fs::write(outside_dir.join("file"), "outside").unwrap();

        let raw = format!("{}/sub/file", root.display());
        let real = roots.resolve(&raw).expect("inside before the swap");
        assert!(roots.open_file(&real, &raw).is_ok());

        // Swap `sub` for a symlink to a directory outside the roots between check and open.
        fs::rename(root.join("sub"), root.join("sub.orig")).unwrap();
        symlink(&outside_dir, root.join("sub")).unwrap();
        let err = roots.open_file(&real, &raw).unwrap_err();
        assert!(matches!(err, FileError::OutsideRoots { .. }), "{err}");
        assert!(err.to_string().contains("outside"), "{err}");

        // The final component swapped for a symlink is refused by O_NOFOLLOW.
        fs::remove_file(root.join("sub")).unwrap();
        fs::rename(root.join("sub.orig"), root.join("sub")).unwrap();
        let real = roots.resolve(&raw).unwrap();
        fs::remove_file(root.join("sub/file")).unwrap();
        symlink(outside_dir.join("file"), root.join("sub/file")).unwrap();
        assert!(roots.open_file(&real, &raw).is_err());
    }

    #[test]
    fn a_place_whose_directory_is_swapped_is_refused_when_opened() {
        let (_tmp, root, outside_dir, roots) = swap_fixture();
        let raw = format!("{}/sub/new", root.display());
        let place = roots.place(&raw, Final::Follow, Parents::Offer).unwrap();
        // The place holds the directory open: swapping its path changes nothing for it.
        fs::rename(root.join("sub"), root.join("sub.orig")).unwrap();
        symlink(&outside_dir, root.join("sub")).unwrap();
        let file = place
            .open(
                &roots,
                OFlag::O_WRONLY | OFlag::O_CREAT,
                Mode::from_bits_truncate(0o600),
            )
            .unwrap();
        drop(file);
        assert!(root.join("sub.orig/new").is_file());
        assert!(!outside_dir.join("new").exists());
    }
}
