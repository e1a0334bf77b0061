//! The policy a running gateway enforces, swapped whole on SIGHUP or when the file changes; a
//! reload that fails keeps the policy in force and logs why.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::{Policy, PolicyError};

/// How often the file's modification time and size are checked.
const POLL_INTERVAL: Duration = Duration::from_secs(1);

/// What identifies a version of the file on disk without reading it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
}

/// What identifies the policy file and its runbook files on disk: one [`Stamp`] per file, the
/// directory's entries in name order.
type Stamps = Option<Vec<(PathBuf, Stamp)>>;

/// The policy in force, shared by every request of this replica.
#[derive(Debug)]
pub struct LivePolicy {
    /// The policy file; `None` in development mode.
    path: Option<PathBuf>,
    current: RwLock<Arc<Policy>>,
    /// The files as last loaded (or last failed to load), so a poll rereads only on change.
    stamp: Mutex<Stamps>,
}

// === impl LivePolicy ===

impl LivePolicy {
    /// Loads the policy at `path`, or enters development mode without one (logged loudly).
    pub fn load(path: Option<&Path>) -> Result<Self, PolicyError> {
        let Some(path) = path else {
            warn!(
                "NO POLICY FILE: development mode. Every holder of a valid token is `dangerous` \
                 and reaches every host. Set `policy_file` before exposing this gateway."
            );
            return Ok(Self::fixed(Policy::development()));
        };
        let stamp = stamp(path);
        let policy = Policy::load(path)?;
        info!(
            path = %path.display(),
            version = %policy.version(),
            users = policy.users().count(),
            "policy loaded"
        );
        warn_about(&policy, path);
        Ok(Self {
            path: Some(path.to_path_buf()),
            current: RwLock::new(Arc::new(policy)),
            stamp: Mutex::new(stamp),
        })
    }

    /// A policy that never reloads (tests, development mode).
    pub fn fixed(policy: Policy) -> Self {
        Self {
            path: None,
            current: RwLock::new(Arc::new(policy)),
            stamp: Mutex::new(None),
        }
    }

    /// The policy in force now.
    pub fn current(&self) -> Arc<Policy> {
        match self.current.read() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Rereads the file. On success the new policy is in force and its version returned; on
    /// failure the old one stays and the error says why.
    pub fn reload(&self) -> Result<String, PolicyError> {
        let Some(path) = &self.path else {
            return Ok(self.current().version().to_string());
        };
        let stamp = stamp(path);
        if let Ok(mut last) = self.stamp.lock() {
            *last = stamp;
        }
        let policy = Policy::load(path)?;
        let version = policy.version().to_string();
        let previous = self.current();
        if previous.version() != version {
            info!(
                path = %path.display(),
                from = %previous.version(),
                to = %version,
                users = policy.users().count(),
                "policy reloaded"
            );
            warn_about(&policy, path);
        }
        match self.current.write() {
            Ok(mut guard) => *guard = Arc::new(policy),
            Err(poisoned) => *poisoned.into_inner() = Arc::new(policy),
        }
        Ok(version)
    }

    /// Reloads on SIGHUP and whenever the file's modification time, size or inode changes,
    /// until `shutdown`. Returns at once in development mode.
    pub async fn watch(self: Arc<Self>, shutdown: CancellationToken) {
        let Some(path) = self.path.clone() else {
            return;
        };
        let mut hangup =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
        let mut ticks = tokio::time::interval(POLL_INTERVAL);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let forced = tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = ticks.tick() => false,
                Some(()) = async {
                    match hangup.as_mut() {
                        Some(signal) => signal.recv().await,
                        None => std::future::pending().await,
                    }
                } => true,
            };
            let changed = {
                let now = stamp(&path);
                self.stamp.lock().map(|last| *last != now).unwrap_or(true)
            };
            if !(forced || changed) {
                continue;
            }
            if let Err(e) = self.reload() {
                error!(
                    path = %path.display(),
                    error = %e,
                    version = %self.current().version(),
                    "policy reload failed; the previous policy stays in force"
                );
            }
        }
    }
}

/// Logs what the policy allows but probably does not mean (see [`Policy::warnings`]).
fn warn_about(policy: &Policy, path: &Path) {
    for warning in policy.warnings() {
        warn!(path = %path.display(), warning = %warning, "policy warning");
    }
}

/// The stamps of the policy file and of every file in its runbook directory; `None` when the
/// policy file cannot be read.
fn stamp(path: &Path) -> Stamps {
    let mut stamps = vec![(path.to_path_buf(), file_stamp(path)?)];
    if let Ok(entries) = std::fs::read_dir(super::runbooks_dir(path)) {
        let mut files: Vec<(PathBuf, Stamp)> = entries
            .filter_map(Result::ok)
            .filter_map(|e| Some((e.path(), file_stamp(&e.path())?)))
            .collect();
        files.sort_by(|a, b| a.0.cmp(&b.0));
        stamps.extend(files);
    }
    Some(stamps)
}

fn file_stamp(path: &Path) -> Option<Stamp> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).ok()?;
    Some(Stamp {
        modified: meta.modified().ok(),
        len: meta.len(),
        inode: meta.ino(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_reload_keeps_the_old_policy() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("policy.toml");
        std::fs::write(&path, "[users.alice]\ntier = \"standard\"\n").unwrap();
        let live = LivePolicy::load(Some(&path)).unwrap();
        let first = live.current().version().to_string();
        std::fs::write(&path, "[users.alice]\ntier = \"emperor\"\n").unwrap();
        assert!(live.reload().is_err());
        assert_eq!(live.current().version(), first);
        std::fs::write(&path, "[users.alice]\ntier = \"dangerous\"\n").unwrap();
        let second = live.reload().unwrap();
        assert_ne!(second, first);
        assert_eq!(
            live.current().grant("alice").unwrap().tier,
            crate::core::tier::Tier::Dangerous
        );
    }

    #[test]
    fn runbook_files_load_with_the_policy_and_an_edit_is_a_new_version() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("policy.toml");
        std::fs::write(&path, "[users.alice]\ntier = \"readonly\"\n").unwrap();
        std::fs::create_dir(dir.path().join("runbooks")).unwrap();
        let file = dir.path().join("runbooks/df.toml");
        std::fs::write(&file, "description = \"df\"\ncommand = [\"df\"]\n").unwrap();
        let live = LivePolicy::load(Some(&path)).unwrap();
        let (first, hash) = {
            let policy = live.current();
            let rb = policy.runbook("df").expect("loaded from the directory");
            (policy.version().to_string(), rb.hash.clone())
        };
        std::fs::write(
            &file,
            "description = \"df -h\"\ncommand = [\"df\", \"-h\"]\n",
        )
        .unwrap();
        assert_ne!(
            stamp(&path),
            *live.stamp.lock().unwrap(),
            "the edit is seen"
        );
        let second = live.reload().unwrap();
        assert_ne!(second, first);
        assert_ne!(live.current().runbook("df").unwrap().hash, hash);
        // A broken runbook file keeps the policy in force, naming the file.
        std::fs::write(&file, "description = \"df\"\n").unwrap();
        let e = live.reload().unwrap_err().to_string();
        assert!(e.contains("df") && e.contains("command"), "{e}");
        assert_eq!(live.current().version(), second);
    }
}
