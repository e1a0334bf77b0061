//! Finding the nats-server binary once per test process and checking that it is new enough.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// Oldest nats-server execmesh works with (per-message TTL, KV per-key TTL, batch direct get).
const MIN_VERSION: (u64, u64, u64) = (2, 12, 6);

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

/// `<workspace>/.tools/nats/bin/nats-server`; this package lives in `<workspace>/tests/nats-server`.
fn project_local_nats_server() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.tools/nats/bin/nats-server")
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

fn check_version(path: &Path) {
    let output = Command::new(path)
        .arg("--version")
        .output()
        .unwrap_or_else(|e| panic!("cannot run {} --version: {e}", path.display()));
    let text = String::from_utf8_lossy(&output.stdout);
    let version = parse_version(&text).unwrap_or_else(|| {
        panic!(
            "cannot read the version of {} from {text:?}",
            path.display()
        )
    });
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
