//! Where a path on an SSH target really is: normalised lexically, symlinks resolved by the target's own `realpath`, then checked against the target's roots (resolved the same way).
//!
//! The steps are the agent's (see `files::roots`), done remotely. What SFTP cannot give is a
//! descriptor to re-check after opening: a symlink swapped on the target between the check and
//! the use is not caught. The relay's SSH login is the last bound there — give the target's
//! SSH account no more rights than its roots need.

use std::path::{Path, PathBuf};

use crate::files::{FileError, Roots, normalize};
pub use crate::files::{Final, Parents};
use crate::relay::sftp::RemoteFs;

/// A place on the target: its resolved directory (inside the roots) and a name in it.
pub struct Place {
    pub dir: PathBuf,
    pub name: String,
    /// The path as the caller gave it, for messages.
    pub shown: String,
}

// === impl Place ===

impl Place {
    pub fn path(&self) -> PathBuf {
        self.dir.join(&self.name)
    }
}

/// The real path of `raw` on the target, which must lie inside `roots` (it may not exist).
pub fn resolve(fs: &RemoteFs, roots: &Roots, raw: &str) -> Result<PathBuf, FileError> {
    let lexical = normalize(raw)?;
    match fs.realpath(&lexical) {
        Ok(real) if roots.contains(&real) => Ok(real),
        Ok(real) => Err(roots.outside(raw, Some(&real))),
        Err(FileError::NotFound { .. }) => Err(unresolved(fs, roots, raw, &lexical)),
        Err(e) => Err(e),
    }
}

/// The real path of an existing `raw` inside `roots`.
pub fn existing(fs: &RemoteFs, roots: &Roots, raw: &str) -> Result<PathBuf, FileError> {
    let real = resolve(fs, roots, raw)?;
    match fs.stat(&real)? {
        Some(_) => Ok(real),
        None => Err(FileError::not_found(raw)),
    }
}

/// The directory and name `raw` designates, the directory resolved on the target and inside
/// the roots; missing parents created or refused as `parents` says.
pub fn place(
    fs: &RemoteFs,
    roots: &Roots,
    raw: &str,
    last: Final,
    parents: Parents,
) -> Result<Place, FileError> {
    let lexical = normalize(raw)?;
    let target = match last {
        Final::Follow => fs.realpath(&lexical).unwrap_or(lexical),
        Final::Keep => lexical,
    };
    let (Some(parent), Some(name)) = (target.parent(), target.file_name()) else {
        return Err(FileError::invalid(
            raw,
            "names a directory, not a file in one",
        ));
    };
    let name = name.to_string_lossy().into_owned();
    let dir = match fs.realpath(parent) {
        Ok(real) => {
            let full = real.join(&name);
            if !roots.contains(&full) {
                return Err(roots.outside(raw, Some(&full)));
            }
            match fs.stat(&real)? {
                Some(meta) if meta.file_type().is_some_and(|t| t.is_dir()) => real,
                Some(_) => return Err(FileError::not_a_directory(parent)),
                None => missing_parent(fs, roots, raw, parent, parents)?,
            }
        }
        Err(FileError::NotFound { .. }) => missing_parent(fs, roots, raw, parent, parents)?,
        Err(e) => return Err(e),
    };
    Ok(Place {
        dir,
        name,
        shown: raw.to_string(),
    })
}

/// `parent` does not exist: created (inside the roots) or refused.
fn missing_parent(
    fs: &RemoteFs,
    roots: &Roots,
    raw: &str,
    parent: &Path,
    parents: Parents,
) -> Result<PathBuf, FileError> {
    match parents {
        Parents::Create => make_dirs(fs, roots, raw, parent),
        Parents::Offer => match unresolved(fs, roots, raw, parent) {
            FileError::NotFound { .. } => Err(FileError::NotFound {
                path: format!("the directory {} of {raw}", parent.display()),
                hint: "; pass create_dirs to create it",
            }),
            other => Err(other),
        },
        Parents::Existing => Err(unresolved(fs, roots, raw, parent)),
    }
}

/// Creates the missing directories of `parent` one by one from its deepest existing ancestor,
/// which must lie inside the roots; each new directory is resolved again and checked.
fn make_dirs(fs: &RemoteFs, roots: &Roots, raw: &str, parent: &Path) -> Result<PathBuf, FileError> {
    let (mut dir, missing) = roots.deepest_existing(raw, parent, |base| {
        if let Ok(real) = fs.realpath(base)
            && fs.stat(&real)?.is_some()
        {
            return Ok(Some(real));
        }
        Ok(None)
    })?;
    for name in &missing {
        let path = dir.join(name);
        if let Err(e) = fs.mkdir(&path)
            && fs.lstat(&path)?.is_none()
        {
            return Err(e);
        }
        let real = fs.realpath(&path)?;
        if real != path || !roots.contains(&real) {
            return Err(roots.outside(raw, Some(&real)));
        }
        dir = real;
    }
    Ok(dir)
}

/// Why `lexical` could not be resolved: outside the roots if the part of it that exists leads
/// outside (so nothing is revealed about what is there), else not found.
fn unresolved(fs: &RemoteFs, roots: &Roots, raw: &str, lexical: &Path) -> FileError {
    let mut rest = Vec::new();
    let mut ancestor = lexical;
    while let (Some(up), Some(name)) = (ancestor.parent(), ancestor.file_name()) {
        rest.push(name);
        ancestor = up;
        if let Ok(real) = fs.realpath(ancestor) {
            let mut full = real;
            full.extend(rest.iter().rev());
            if !roots.contains(&full) {
                return roots.outside(raw, Some(&full));
            }
            break;
        }
    }
    FileError::not_found(raw)
}

/// Refuses to move, replace or delete a root or a directory holding one.
pub fn refuse_root(roots: &Roots, place: &Place) -> Result<(), FileError> {
    if roots.holds_root(&place.path()) {
        return Err(FileError::invalid(
            &place.shown,
            "is an allowed root (or holds one); it is never moved, replaced or deleted",
        ));
    }
    Ok(())
}
