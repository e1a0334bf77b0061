//! The .deb packages as a test uses them: built by `deploy/packages/build.sh` from the suite's own binaries, read with dpkg-deb, installed into this machine (as root) and removed without a trace, also when the test fails.
//!
//! Installing is global to the machine: [`SystemInstall::take`] holds a lock for it across
//! processes (two suites side by side), clears what an earlier run may have left, and clears
//! again on drop: the packages purged, `/etc/execmesh` and `/var/lib/execmesh` removed, the
//! packages' own system users deleted.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use nix::fcntl::{Flock, FlockArg};
use tempfile::TempDir;

use crate::process::workspace_binary;
use crate::workspace_path;

/// The packages, in the order they are installed.
pub const PACKAGES: [&str; 3] = [
    "execmesh-gateway",
    "execmesh-node-agent",
    "execmesh-audit-sink",
];
/// The system users the packages create (unless they exist).
pub const SYSTEM_USERS: [&str; 3] = ["execmesh", "execmesh-audit", "execmesh-run"];
/// The users a cleanup removes: the packages' own. `execmesh-run` stays: the quickstart creates
/// and uses it too, and its scenario may run beside this one (in this suite or another).
const REMOVED_USERS: [&str; 2] = ["execmesh", "execmesh-audit"];
/// Where the packages keep configuration and state.
pub const ETC: &str = "/etc/execmesh";
pub const STATE: &str = "/var/lib/execmesh";
/// Held while a test installs packages into this machine.
const LOCK: &str = "/run/lock/execmesh-packages-test.lock";

/// Packages built into a temp dir.
pub struct Debs {
    dir: TempDir,
    /// One `.deb` per [`PACKAGES`] entry, in that order.
    pub files: Vec<PathBuf>,
}

/// This machine with the packages installable: the lock, and the cleanup on drop.
pub struct SystemInstall {
    _lock: Flock<File>,
}

// === impl Debs ===

impl Debs {
    /// Runs `deploy/packages/build.sh` on the binaries the suite built (the debug ones: CI
    /// builds nothing more for this), uncompressed, which is fastest.
    pub fn build() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("execmesh-debs-")
            .tempdir()
            .expect("create a temp dir for the packages");
        let bin_dir = workspace_binary("execmesh-gateway")
            .parent()
            .expect("binaries live in a directory")
            .to_path_buf();
        let out = run(Command::new("bash")
            .arg(workspace_path("deploy/packages/build.sh"))
            .arg("--bin-dir")
            .arg(&bin_dir)
            .arg("--out")
            .arg(dir.path())
            .arg("--compression")
            .arg("none"));
        let files: Vec<PathBuf> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(PathBuf::from)
            .collect();
        assert_eq!(
            files.len(),
            PACKAGES.len(),
            "build.sh printed {files:?}, one path per package expected"
        );
        for (file, package) in files.iter().zip(PACKAGES) {
            let name = file.file_name().unwrap_or_default().to_string_lossy();
            assert!(
                name.starts_with(&format!("{package}_")) && file.is_file(),
                "{} is not {package}'s package",
                file.display()
            );
        }
        Debs { dir, files }
    }

    /// The `.deb` of `package`.
    pub fn of(&self, package: &str) -> &Path {
        let index = PACKAGES
            .iter()
            .position(|p| *p == package)
            .unwrap_or_else(|| panic!("{package} is not one of the packages"));
        &self.files[index]
    }

    /// The directory the packages were written to.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `dpkg-deb --field` of `package`: its control field `field`.
    pub fn field(&self, package: &str, field: &str) -> String {
        let out = run(Command::new("dpkg-deb")
            .arg("--field")
            .arg(self.of(package))
            .arg(field));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// `dpkg-deb --info` of `package`'s control member `member` (`conffiles`, `postinst`).
    pub fn control_member(&self, package: &str, member: &str) -> String {
        let out = run(Command::new("dpkg-deb")
            .arg("--info")
            .arg(self.of(package))
            .arg(member));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `dpkg-deb --contents` of `package`: each entry's mode string, owner and path (without
    /// the leading `.`).
    pub fn contents(&self, package: &str) -> Vec<(String, String, String)> {
        let out = run(Command::new("dpkg-deb")
            .arg("--contents")
            .arg(self.of(package)));
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|line| {
                let words: Vec<&str> = line.split_whitespace().collect();
                let path = words.last()?.trim_start_matches('.');
                Some((
                    words.first()?.to_string(),
                    words.get(1)?.to_string(),
                    path.trim_end_matches('/').to_string(),
                ))
            })
            .collect()
    }
}

// === impl SystemInstall ===

impl SystemInstall {
    /// Takes the machine-wide lock (waiting for another suite's test to finish) and removes
    /// whatever an earlier, interrupted run left.
    pub fn take() -> Self {
        assert!(
            nix::unistd::geteuid().is_root(),
            "installing packages into this machine needs root (CI and the suite run as root)"
        );
        let file = File::create(LOCK).unwrap_or_else(|e| panic!("cannot create {LOCK}: {e}"));
        let lock = Flock::lock(file, FlockArg::LockExclusive)
            .unwrap_or_else(|(_, e)| panic!("cannot lock {LOCK}: {e}"));
        clear();
        SystemInstall { _lock: lock }
    }

    /// Installs every package of `debs` with `deploy/install.sh` (dpkg underneath); returns
    /// what it printed (dpkg's report and the operator's next steps). Panics if it fails.
    pub fn install(&self, debs: &Debs) -> String {
        let out = run(Command::new("bash")
            .arg(workspace_path("deploy/install.sh"))
            .arg("--from")
            .arg(debs.dir()));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `dpkg --purge` of every package; panics with dpkg's output if it fails.
    pub fn purge(&self) -> String {
        let out = run(Command::new("dpkg").arg("--purge").args(PACKAGES));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for SystemInstall {
    fn drop(&mut self) {
        clear();
    }
}

/// Whether dpkg knows `package` in any state but "not installed".
pub fn is_known(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["--show", "--showformat=${db:Status-Abbrev}", package])
        .output()
        .map(|out| out.status.success() && !out.stdout.starts_with(b"un"))
        .unwrap_or(false)
}

/// Purges the packages and removes what they leave on purge by design (state, users) or what an
/// operator put next to their files, so the next run starts from a machine without execmesh.
/// Best effort: called from `Drop`, it reports and goes on.
fn clear() {
    let known: Vec<&str> = PACKAGES.into_iter().filter(|p| is_known(p)).collect();
    if !known.is_empty() {
        let status = Command::new("dpkg")
            .arg("--purge")
            .args(&known)
            .stdout(Stdio::null())
            .status();
        if !matches!(status, Ok(s) if s.success()) {
            eprintln!("packages: dpkg --purge {known:?} failed: {status:?}");
        }
    }
    for dir in [ETC, STATE] {
        if let Err(e) = std::fs::remove_dir_all(dir)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            eprintln!("packages: cannot remove {dir}: {e}");
        }
    }
    for user in REMOVED_USERS {
        if nix::unistd::User::from_name(user).ok().flatten().is_some() {
            let _ = Command::new("userdel").arg(user).status();
        }
        if nix::unistd::Group::from_name(user).ok().flatten().is_some() {
            let _ = Command::new("groupdel").arg(user).status();
        }
    }
}

/// Runs `command` to completion; panics with its output unless it succeeds.
pub fn run(command: &mut Command) -> Output {
    let out = command
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"));
    assert!(
        out.status.success(),
        "{command:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}
