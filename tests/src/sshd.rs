//! A real OpenSSH server per test: an unprivileged-port `sshd` on loopback with its own host key, an authorized user key, and the client side (known_hosts, ssh config with an alias) a relay user would have.
//!
//! ```no_run
//! # async fn scenario() {
//! # use execmesh_tests::sshd::Sshd;
//! let sshd = Sshd::start().await;
//! let out = sshd.ssh("echo hi"); // over a connection of its own, like an operator's check
//! assert_eq!(out.trim(), "hi");
//! // A relay target: destination `sshd.alias()`, ssh config `sshd.ssh_config()`.
//! # }
//! ```
//!
//! The port is taken by binding 127.0.0.1:0 and releasing it just before sshd binds it; sshd
//! is then awaited until it accepts connections and answers a real login.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use tempfile::TempDir;

use crate::process::{ChildProcess, children_of};

/// Where Debian installs the server (`tests/run.sh` installs openssh-server when missing).
pub const SSHD_BINARY: &str = "/usr/sbin/sshd";
/// How long sshd may take to answer its first login.
const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// A running sshd, killed (and its files removed) on drop.
pub struct Sshd {
    dir: TempDir,
    port: u16,
    process: Option<ChildProcess>,
    /// Sessions run `login_rc` before their command (and so never answer before it ends).
    login_rc: bool,
}

// === impl Sshd ===

impl Sshd {
    /// Generates keys and configuration, starts sshd, and waits until a login works.
    pub async fn start() -> Sshd {
        Self::start_with(None).await
    }

    /// Like [`Sshd::start`], but every session's shell first runs `rc` (a login shell's startup
    /// file, through `BASH_ENV`): `sleep 30` makes a target whose login hangs, as a startup file
    /// waiting on a lock does.
    pub async fn start_with_login_rc(rc: &str) -> Sshd {
        Self::start_with(Some(rc)).await
    }

    async fn start_with(login_rc: Option<&str>) -> Sshd {
        crate::init_tracing();
        let dir = tempfile::Builder::new()
            .prefix("execmesh-sshd-")
            .tempdir()
            .expect("create a temp dir for sshd");
        let path = dir.path();
        keygen(&path.join("host_key"));
        keygen(&path.join("user_key"));
        keygen(&path.join("other_key"));
        std::fs::copy(path.join("user_key.pub"), path.join("authorized_keys"))
            .expect("authorize the user key");
        // sshd refuses to start without its privilege separation directory.
        let _ = std::fs::create_dir_all("/run/sshd");
        let port = free_port();
        let mut sshd = Sshd {
            port,
            process: None,
            dir,
            login_rc: login_rc.is_some(),
        };
        if let Some(rc) = login_rc {
            std::fs::write(sshd.path("login_rc"), rc).expect("write the login rc");
        }
        sshd.write_client_files(&sshd.host_public_key());
        std::fs::write(sshd.dir.path().join("sshd_config"), sshd.server_config())
            .expect("write sshd_config");
        sshd.launch();
        let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
        loop {
            // A login that hangs by design is ready once sshd accepts the key (`-N`: no session).
            let probe = if sshd.login_rc { None } else { Some("true") };
            if sshd.try_ssh_with(probe).is_some_and(|o| o.status.success()) {
                return sshd;
            }
            if let Some(process) = sshd.process.as_mut()
                && let Some(status) = process.exited()
            {
                panic!(
                    "sshd exited with {status} before it was ready:\n{}",
                    process.log_tail(40)
                );
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "sshd did not accept a login within {READY_TIMEOUT:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn launch(&mut self) {
        let mut command = Command::new(SSHD_BINARY);
        command
            .arg("-D")
            .arg("-e")
            .arg("-f")
            .arg(self.dir.path().join("sshd_config"));
        let log = self.dir.path().join("sshd.log");
        let process = ChildProcess::spawn("sshd", command, &log)
            .unwrap_or_else(|e| panic!("cannot start {SSHD_BINARY}: {e}"));
        self.process = Some(process);
    }

    fn server_config(&self) -> String {
        let p = self.dir.path();
        // The tests log in as the user running them, whose login shell is this machine's. Bash
        // reads ~/.bashrc when sshd starts it, unless it is a nested shell (SHLVL): SHLVL=1 keeps
        // the developer's own startup files (a version manager's init, say, which can wait a
        // minute on a lock) out of the target. `login_rc` stands for a target's own.
        let mut env = "SHLVL=1".to_string();
        if self.login_rc {
            env.push_str(&format!(" BASH_ENV={}", p.join("login_rc").display()));
        }
        format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey {host_key}\nPidFile {pid}\n\
             AuthorizedKeysFile {authorized}\nPubkeyAuthentication yes\n\
             PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\n\
             StrictModes no\nPermitRootLogin prohibit-password\nLogLevel VERBOSE\n\
             MaxSessions 100\nMaxStartups 100:30:200\nPrintMotd no\nAcceptEnv none\n\
             SetEnv {env}\nSubsystem sftp internal-sftp\n",
            port = self.port,
            host_key = p.join("host_key").display(),
            pid = p.join("sshd.pid").display(),
            authorized = p.join("authorized_keys").display(),
        )
    }

    /// Writes known_hosts (with `host_public_key` for this server) and the ssh config whose
    /// alias reaches it with the user key and strict host key checking.
    fn write_client_files(&self, host_public_key: &str) {
        let p = self.dir.path();
        std::fs::write(
            p.join("known_hosts"),
            format!("[127.0.0.1]:{} {}\n", self.port, host_public_key.trim()),
        )
        .expect("write known_hosts");
        std::fs::write(p.join("ssh_config"), self.client_config("user_key"))
            .expect("write ssh_config");
    }

    fn client_config(&self, key: &str) -> String {
        let p = self.dir.path();
        format!(
            "Host {alias}\n  HostName 127.0.0.1\n  Port {port}\n  User {user}\n  \
             IdentityFile {key}\n  IdentitiesOnly yes\n  IdentityAgent none\n  \
             UserKnownHostsFile {known}\n  GlobalKnownHostsFile /dev/null\n  \
             StrictHostKeyChecking yes\n  BatchMode yes\n  LogLevel ERROR\n",
            alias = self.alias(),
            port = self.port,
            user = login_user(),
            key = p.join(key).display(),
            known = p.join("known_hosts").display(),
        )
    }

    /// The ssh config alias of this server.
    pub fn alias(&self) -> &'static str {
        "execmesh-test-target"
    }

    /// The port sshd listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The client's ssh config file (alias, user key, known_hosts, strict checking).
    pub fn ssh_config(&self) -> PathBuf {
        self.dir.path().join("ssh_config")
    }

    /// The server's log.
    pub fn log_tail(&self, lines: usize) -> String {
        crate::process::log_tail(&self.dir.path().join("sshd.log"), lines)
    }

    fn host_public_key(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("host_key.pub")).expect("read host key")
    }

    /// Replaces the known host key with another key: the server now looks like an impostor.
    pub fn forget_host_key(&self) {
        let other = std::fs::read_to_string(self.dir.path().join("other_key.pub"))
            .expect("read the other key");
        self.write_client_files(&other);
    }

    /// Makes the client offer a key the server does not authorize.
    pub fn use_wrong_user_key(&self) {
        std::fs::write(self.ssh_config(), self.client_config("other_key"))
            .expect("write ssh_config");
    }

    fn try_ssh(&self, command: &str) -> Option<std::process::Output> {
        self.try_ssh_with(Some(command))
    }

    /// `ssh alias -- command`; without a command, a login that opens no shell: a stdio
    /// forward to sshd's own port (it prints the banner and ends when stdin does), which
    /// proves the key was accepted.
    fn try_ssh_with(&self, command: Option<&str>) -> Option<std::process::Output> {
        let mut ssh = Command::new("ssh");
        ssh.arg("-F")
            .arg(self.ssh_config())
            .arg("-o")
            .arg("ControlMaster=no")
            .arg("-o")
            .arg("ControlPath=none");
        match command {
            Some(command) => ssh.arg(self.alias()).arg("--").arg(command),
            None => ssh
                .arg("-W")
                .arg(format!("127.0.0.1:{}", self.port))
                .arg(self.alias()),
        };
        ssh.stdin(std::process::Stdio::null()).output().ok()
    }

    /// Runs `command` on the server over a connection of its own and returns its stdout.
    pub fn ssh(&self, command: &str) -> String {
        let out = self
            .try_ssh(command)
            .unwrap_or_else(|| panic!("cannot run ssh"));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A file in the server's directory (for test scripts and markers).
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        // The listener, and the process of each connection it serves (they would outlive it):
        // that closes every connection, and with them the relay masters and their sessions.
        if let Some(mut process) = self.process.take() {
            // Listed before the listener dies: then they would belong to init.
            let connections = children_of(process.pid());
            process.signal(nix::sys::signal::Signal::SIGKILL);
            for child in connections {
                let Ok(child) = i32::try_from(child) else {
                    continue;
                };
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(child),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        if std::thread::panicking() {
            self.dir.disable_cleanup(true);
            eprintln!("sshd: files kept in {}", self.dir.path().display());
        }
    }
}

/// The user the tests log in as: the one running them.
fn login_user() -> String {
    nix::unistd::User::from_uid(nix::unistd::geteuid())
        .ok()
        .flatten()
        .map(|u| u.name)
        .unwrap_or_else(|| "root".to_string())
}

fn keygen(path: &Path) {
    let status = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "execmesh-test", "-f"])
        .arg(path)
        .status()
        .expect("run ssh-keygen");
    assert!(status.success(), "ssh-keygen failed for {}", path.display());
}

/// A port free on 127.0.0.1 now (bound by the kernel's choice, then released for sshd).
fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local address").port()
}
