//! The workspace's binaries the scenarios spawn; child processes themselves are the nats-server package's.

use std::path::PathBuf;

pub use execmesh_nats_server::process::{ChildProcess, log_tail};

/// Path of a workspace binary (`execmesh-node-agent`, …) built by `cargo build --workspace --bins`.
///
/// `EXECMESH_BIN_DIR` wins when set; otherwise the binary sits next to the running test
/// executable's profile directory (`target/debug/deps/<test>` → `target/debug/<name>`).
pub fn workspace_binary(name: &str) -> PathBuf {
    let dir = match std::env::var_os("EXECMESH_BIN_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => {
            let exe = std::env::current_exe().expect("the test executable's path");
            let mut dir = exe
                .parent()
                .expect("the test executable has a parent directory")
                .to_path_buf();
            if dir.file_name().is_some_and(|n| n == "deps") {
                dir.pop();
            }
            dir
        }
    };
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "{} is missing: build the workspace binaries first (`cargo build --workspace --bins`; \
         `tests/run.sh` does it), or point EXECMESH_BIN_DIR at the directory holding them",
        path.display()
    );
    path
}
