//! `execmesh-node-agent guard check`: answers whether this host's CommandGuard would refuse a command, and by which rule.
//!
//! It reads the agent's configuration the way the agent does (the file, then `EXECMESH_…`
//! variables and flags over it), so an operator can test the host's rules before relying on
//! them. Exit codes: 0 allowed, 1 refused, 2 a usage or configuration error.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::cli::{Cli, GuardCheck};
use crate::config::Config;
use crate::guard::{Guard, Job};

/// The command runs.
pub const ALLOWED: u8 = 0;
/// The guard refuses the command.
pub const REFUSED: u8 = 1;
/// Bad usage or configuration.
pub const USAGE: u8 = 2;

/// Where the packaged agent's configuration lives; read when no file is named.
pub const DEFAULT_CONFIG: &str = "/etc/execmesh/node-agent.toml";

/// Runs `guard check` with the agent's command line `cli`; writes the answer to `out` and
/// problems to `err`; returns the exit code.
pub fn run(cli: Cli, check: &GuardCheck, out: &mut impl Write, err: &mut impl Write) -> u8 {
    let file = check
        .config
        .clone()
        .or_else(|| cli.config.clone())
        .or_else(|| {
            Path::new(DEFAULT_CONFIG)
                .is_file()
                .then(|| PathBuf::from(DEFAULT_CONFIG))
        });
    let config = match Config::load(Cli {
        config: file.clone(),
        command: None,
        ..cli
    }) {
        Ok(config) => config,
        Err(e) => {
            let _ = writeln!(err, "invalid configuration: {e}");
            return USAGE;
        }
    };
    let mut env = Vec::new();
    for pair in &check.env {
        match pair.split_once('=') {
            Some((name, value)) if !name.is_empty() => {
                env.push((name.to_string(), value.to_string()))
            }
            _ => {
                let _ = writeln!(err, "--env `{pair}`: expected NAME=VALUE");
                return USAGE;
            }
        }
    }
    if let Some(cwd) = &check.cwd
        && !cwd.starts_with('/')
    {
        let _ = writeln!(err, "--cwd `{cwd}`: expected an absolute path");
        return USAGE;
    }
    let command = check.command.join(" ");
    if command.trim().is_empty() {
        let _ = writeln!(err, "no command given: write it after `--`");
        return USAGE;
    }
    let source = match &file {
        Some(path) => format!("configuration {}", path.display()),
        None => "no configuration file: the defaults".to_string(),
    };
    let host = &config.host_id;
    let guard = Guard::new(&config.guard);
    if !guard.enabled() {
        let _ = writeln!(
            out,
            "allowed: the CommandGuard of host {host} is switched off ([guard] enabled = false; {source})"
        );
        return ALLOWED;
    }
    let job = Job {
        command: &command,
        env,
        known: Vec::new(),
        cwd: check.cwd.clone(),
    };
    match guard.check_job(&job) {
        Ok(()) => {
            let _ = writeln!(
                out,
                "allowed: the CommandGuard of host {host} lets this command run ({} mode; {source})",
                guard.mode()
            );
            ALLOWED
        }
        Err(e) => {
            let _ = writeln!(out, "refused by rule {}: {e}", e.rule());
            REFUSED
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(config: &str, command: &[&str], env: &[&str]) -> (u8, String, String) {
        let mut file = tempfile::NamedTempFile::new().expect("temp file");
        file.write_all(config.as_bytes()).expect("write");
        let check = GuardCheck {
            config: Some(file.path().to_path_buf()),
            cwd: None,
            env: env.iter().map(|e| e.to_string()).collect(),
            command: command.iter().map(|c| c.to_string()).collect(),
        };
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let code = run(Cli::default(), &check, &mut out, &mut err);
        (
            code,
            String::from_utf8(out).expect("utf8"),
            String::from_utf8(err).expect("utf8"),
        )
    }

    #[test]
    fn answers_with_the_rule_and_exit_code() {
        let (code, out, _) = check("host_id = \"db-1\"\n", &["rm", "-rf", "/"], &[]);
        assert_eq!(code, REFUSED);
        assert!(
            out.starts_with("refused by rule recursive-delete:"),
            "{out}"
        );
        let (code, out, _) = check("host_id = \"db-1\"\n", &["ls -la /tmp"], &[]);
        assert_eq!(code, ALLOWED, "{out}");
        assert!(
            out.contains("host db-1") && out.contains("denylist mode"),
            "{out}"
        );
        let (code, out, _) = check(
            "[guard]\ndeny = [\"iptables -F\"]\n",
            &["iptables --flush"],
            &[],
        );
        assert_eq!(code, REFUSED);
        assert!(out.contains("host rule `iptables -F`"), "{out}");
        let (code, out, _) = check("", &["true"], &["LD_PRELOAD=/tmp/x.so"]);
        assert_eq!(code, REFUSED);
        assert!(out.contains("`LD_PRELOAD`"), "{out}");
    }

    #[test]
    fn bad_configuration_and_usage_exit_2() {
        let (code, _, err) = check("[guard]\nmode = \"sometimes\"\n", &["true"], &[]);
        assert_eq!(code, USAGE);
        assert!(err.contains("guard.mode"), "{err}");
        let (code, _, err) = check("", &["true"], &["NOEQUALS"]);
        assert_eq!(code, USAGE);
        assert!(err.contains("NOEQUALS"), "{err}");
    }
}
