//! Finding the nats-server binaries once per test process (the current release every test runs on, the minimum release a few run on too) and checking their versions.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// Oldest nats-server execmesh works with (per-message TTL, KV per-key TTL, batch direct get).
const MIN_VERSION: (u64, u64, u64) = (2, 12, 6);
/// The release line `deploy/install-nats.sh minimum` installs: the oldest one the mesh is
/// tested on, beside the current one.
pub const MINIMUM_RELEASE: (u64, u64) = (2, 12);

/// The nats-server binary, found once per test process and checked to be new enough.
///
/// Order: `EXECMESH_NATS_SERVER` (or the older `NATS_SERVER_BIN`),
/// `<workspace>/.tools/nats/bin/nats-server` (what `tests/run.sh` installs), then `nats-server`
/// on `PATH`. A missing server is a broken setup, not a reason to skip a test.
pub fn nats_server_binary() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| {
        let path = find_nats_server().unwrap_or_else(|| {
            panic!(
                "nats-server not found (EXECMESH_NATS_SERVER, {}, PATH). Run the test command \
                 `tests/run.sh`, which installs nats-server {}.{}.{}+ into .tools/nats",
                project_local_nats_server().display(),
                MIN_VERSION.0,
                MIN_VERSION.1,
                MIN_VERSION.2
            )
        });
        check_version(&path);
        path
    })
}

/// The minimum supported nats-server (a [`MINIMUM_RELEASE`] release), for the scenarios that
/// run on both: `EXECMESH_NATS_SERVER_MINIMUM`, else `<workspace>/.tools/nats-minimum/bin/
/// nats-server` (what `deploy/install-nats.sh minimum`, run by `tests/run.sh`, installs). A
/// missing one is a broken setup, not a reason to skip.
pub fn minimum_nats_server_binary() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| {
        let path = std::env::var_os("EXECMESH_NATS_SERVER_MINIMUM")
            .map(PathBuf::from)
            .unwrap_or_else(|| project_local("nats-minimum"));
        assert!(
            path.is_file(),
            "the minimum nats-server is not at {} (EXECMESH_NATS_SERVER_MINIMUM). Run the test \
             command `tests/run.sh`, which installs it with `deploy/install-nats.sh minimum`",
            path.display()
        );
        let version = check_version(&path);
        assert_eq!(
            (version.0, version.1),
            MINIMUM_RELEASE,
            "{} is {}.{}.{}, not the minimum release line {}.{}",
            path.display(),
            version.0,
            version.1,
            version.2,
            MINIMUM_RELEASE.0,
            MINIMUM_RELEASE.1
        );
        path
    })
}

/// The version of a nats-server binary (`nats-server --version`).
pub fn nats_server_version(path: &Path) -> (u64, u64, u64) {
    let output = Command::new(path)
        .arg("--version")
        .output()
        .unwrap_or_else(|e| panic!("cannot run {} --version: {e}", path.display()));
    let text = String::from_utf8_lossy(&output.stdout);
    parse_version(&text).unwrap_or_else(|| {
        panic!(
            "cannot read the version of {} from {text:?}",
            path.display()
        )
    })
}

/// `<workspace>/.tools/nats/bin/nats-server`; this package lives in `<workspace>/tests/nats-server`.
fn project_local_nats_server() -> PathBuf {
    project_local("nats")
}

/// `<workspace>/.tools/<folder>/bin/nats-server`.
fn project_local(folder: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../.tools")
        .join(folder)
        .join("bin/nats-server")
}

fn find_nats_server() -> Option<PathBuf> {
    if let Some(path) =
        std::env::var_os("EXECMESH_NATS_SERVER").or_else(|| std::env::var_os("NATS_SERVER_BIN"))
    {
        return Some(PathBuf::from(path));
    }
    let local = project_local_nats_server();
    if local.is_file() {
        return Some(local);
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join("nats-server"))
        .find(|path| path.is_file())
}

/// Panics unless the binary at `path` is at least [`MIN_VERSION`]; returns its version.
fn check_version(path: &Path) -> (u64, u64, u64) {
    let version = nats_server_version(path);
    assert!(
        version >= MIN_VERSION,
        "{} is version {}.{}.{}; execmesh needs nats-server {}.{}.{} or newer. Run `tests/run.sh`, \
         which installs a suitable one into .tools/nats",
        path.display(),
        version.0,
        version.1,
        version.2,
        MIN_VERSION.0,
        MIN_VERSION.1,
        MIN_VERSION.2
    );
    version
}

/// Reads `nats-server: v2.12.8` (pre-release suffixes ignored).
fn parse_version(text: &str) -> Option<(u64, u64, u64)> {
    let (_, version) = text.trim().rsplit_once('v')?;
    let version = version.split(['-', '+', ' ']).next()?;
    let mut parts = version.split('.').map(|p| p.parse::<u64>().ok());
    Some((parts.next()??, parts.next()??, parts.next()??))
}

#[cfg(test)]
mod tests {
    use super::parse_version;

    #[test]
    fn reads_nats_server_versions() {
        assert_eq!(parse_version("nats-server: v2.12.8\n"), Some((2, 12, 8)));
        assert_eq!(parse_version("nats-server: v2.13.0-RC.1"), Some((2, 13, 0)));
        assert_eq!(parse_version("garbage"), None);
    }
}
