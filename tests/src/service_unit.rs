//! A systemd service unit read from its installed file and started as systemd would start it, on a machine where systemd is not PID 1: its ExecStart as its User, with its Environment and LoadCredential.
//!
//! What is applied: `User=`/`Group=` (uid, gid, no supplementary groups), `UMask=`, `Environment=`,
//! `LoadCredential=` (each source copied into a credentials directory only the service's user
//! can read, which `%d` names, as systemd does; a missing source fails the start, as it fails
//! the unit), `ExecStart=`, the working directory `/` and a clean environment. The sandboxing
//! directives (`ProtectSystem=`, capability sets, …) are systemd's own and are not applied:
//! `systemd-analyze verify` checks them, and what the service writes is checked against its
//! `StateDirectory=`.

use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use nix::unistd::{Group, User};

/// `PATH` systemd gives services.
const SERVICE_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin";

/// The `[Service]` settings of one unit file that starting it needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceUnit {
    /// The unit file.
    pub path: PathBuf,
    /// `User=`, or root when absent.
    pub user: Option<String>,
    /// `Group=`, or the user's primary group when absent.
    pub group: Option<String>,
    /// `UMask=`, or systemd's default 0022.
    pub umask: u32,
    /// `Environment=` assignments, in order.
    pub environment: Vec<(String, String)>,
    /// `LoadCredential=`: the name under `%d` and the file it is read from.
    pub credentials: Vec<(String, PathBuf)>,
    /// `StateDirectory=`, relative to `/var/lib`.
    pub state_directories: Vec<PathBuf>,
    /// `ExecStart=`, split into words (`%d` not yet replaced).
    pub exec_start: Vec<String>,
}

/// Why a unit cannot be read or started.
#[derive(Debug, thiserror::Error)]
pub enum UnitError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {what}", path.display())]
    Unsupported { path: PathBuf, what: String },
    #[error("{}: the credential {name} cannot be loaded from {}: {source}", unit.display(), from.display())]
    Credential {
        unit: PathBuf,
        name: String,
        from: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: no account {name} on this machine", unit.display())]
    NoAccount { unit: PathBuf, name: String },
}

// === impl ServiceUnit ===

impl ServiceUnit {
    /// Reads the `[Service]` section of the unit at `path`. Quoting and specifiers other than
    /// `%d` are refused rather than misread.
    pub fn load(path: &Path) -> Result<Self, UnitError> {
        let text = std::fs::read_to_string(path).map_err(|source| UnitError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let unsupported = |what: String| UnitError::Unsupported {
            path: path.to_path_buf(),
            what,
        };
        let mut unit = ServiceUnit {
            path: path.to_path_buf(),
            user: None,
            group: None,
            umask: 0o022,
            environment: Vec::new(),
            credentials: Vec::new(),
            state_directories: Vec::new(),
            exec_start: Vec::new(),
        };
        let mut in_service = false;
        for line in text.lines().map(str::trim) {
            if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
                continue;
            }
            if line.starts_with('[') {
                in_service = line == "[Service]";
                continue;
            }
            let Some((key, value)) = line.split_once('=') else {
                return Err(unsupported(format!("not a setting: {line}")));
            };
            if !in_service {
                continue;
            }
            if value.contains(['"', '\'', '\\']) {
                return Err(unsupported(format!("quoting in {key}= is not read here")));
            }
            if value.replace("%d", "").contains('%') {
                return Err(unsupported(format!("a specifier other than %d in {key}=")));
            }
            match key {
                "User" => unit.user = Some(value.to_string()),
                "Group" => unit.group = Some(value.to_string()),
                "UMask" => {
                    unit.umask = u32::from_str_radix(value, 8)
                        .map_err(|_| unsupported(format!("UMask={value}")))?;
                }
                "Environment" => {
                    for assignment in value.split_whitespace() {
                        let (k, v) = assignment
                            .split_once('=')
                            .ok_or_else(|| unsupported(format!("Environment={assignment}")))?;
                        unit.environment.push((k.to_string(), v.to_string()));
                    }
                }
                "LoadCredential" => {
                    let (name, from) = value
                        .split_once(':')
                        .ok_or_else(|| unsupported(format!("LoadCredential={value}")))?;
                    unit.credentials
                        .push((name.to_string(), PathBuf::from(from)));
                }
                "StateDirectory" => unit
                    .state_directories
                    .extend(value.split_whitespace().map(PathBuf::from)),
                "ExecStart" => {
                    unit.exec_start = value.split_whitespace().map(str::to_string).collect();
                }
                _ => {}
            }
        }
        if unit.exec_start.is_empty() {
            return Err(unsupported("no ExecStart=".to_string()));
        }
        Ok(unit)
    }

    /// The account the service runs as: (user name, uid, gid).
    pub fn account(&self) -> Result<(String, u32, u32), UnitError> {
        let name = self.user.clone().unwrap_or_else(|| "root".to_string());
        let no_account = |name: &str| UnitError::NoAccount {
            unit: self.path.clone(),
            name: name.to_string(),
        };
        let user = User::from_name(&name)
            .ok()
            .flatten()
            .ok_or_else(|| no_account(&name))?;
        let gid = match &self.group {
            Some(group) => {
                Group::from_name(group)
                    .ok()
                    .flatten()
                    .ok_or_else(|| no_account(group))?
                    .gid
            }
            None => user.gid,
        };
        Ok((name, user.uid.as_raw(), gid.as_raw()))
    }

    /// The command systemd would run: the credentials loaded into `credentials_dir` (created,
    /// readable by the service's user only), `%d` naming it, the unit's account and environment
    /// (`extra_env` on top, as a drop-in's `Environment=` would be), in `/`.
    pub fn command(
        &self,
        credentials_dir: &Path,
        extra_env: &[(&str, &str)],
    ) -> Result<Command, UnitError> {
        let (name, uid, gid) = self.account()?;
        self.load_credentials(credentials_dir, uid, gid)?;
        let dir = credentials_dir.display().to_string();
        let words: Vec<String> = self
            .exec_start
            .iter()
            .map(|w| w.replace("%d", &dir))
            .collect();
        let mut command = Command::new(&words[0]);
        command.args(&words[1..]);
        let home = User::from_name(&name)
            .ok()
            .flatten()
            .map(|u| u.dir)
            .unwrap_or_else(|| PathBuf::from("/"));
        command
            .env_clear()
            .env("PATH", SERVICE_PATH)
            .env("USER", &name)
            .env("LOGNAME", &name)
            .env("HOME", home)
            .env("CREDENTIALS_DIRECTORY", credentials_dir);
        for (k, v) in &self.environment {
            command.env(k, v);
        }
        for (k, v) in extra_env {
            command.env(k, v);
        }
        command.current_dir("/").uid(uid).gid(gid);
        let umask = self.umask as libc::mode_t;
        // SAFETY: umask(2) is async-signal-safe and touches no memory of the parent.
        unsafe {
            command.pre_exec(move || {
                libc::umask(umask);
                Ok(())
            });
        }
        Ok(command)
    }

    /// Copies every `LoadCredential=` source into `dir`, as systemd does before the start:
    /// the directory 0500 and each file 0400, owned by the service's account.
    fn load_credentials(&self, dir: &Path, uid: u32, gid: u32) -> Result<(), UnitError> {
        let err = |name: &str, from: &Path| {
            let unit = self.path.clone();
            let (name, from) = (name.to_string(), from.to_path_buf());
            move |source| UnitError::Credential {
                unit,
                name,
                from,
                source,
            }
        };
        std::fs::create_dir_all(dir).map_err(err("(directory)", dir))?;
        for (name, from) in &self.credentials {
            let to = dir.join(name);
            std::fs::copy(from, &to).map_err(err(name, from))?;
            std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o400))
                .and_then(|()| std::os::unix::fs::chown(&to, Some(uid), Some(gid)))
                .map_err(err(name, from))?;
        }
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o500))
            .and_then(|()| std::os::unix::fs::chown(dir, Some(uid), Some(gid)))
            .map_err(err("(directory)", dir))?;
        Ok(())
    }
}
