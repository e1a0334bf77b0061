//! The relay's configuration: the agent's settings it shares (NATS, gateway keys, tier cap, guard, limits), the user it serves, and its SSH targets.
//!
//! ```toml
//! user = "alice"                       # the MCP user whose requests this relay serves
//! nats_url = "nats://10.0.0.5:4222"
//! nats_nkey_seed = "/home/alice/.config/execmesh/relay-alice.nk"
//! gateway_keys = ["/home/alice/.config/execmesh/exec-signing.key.pub"]
//! max_tier = "standard"                # cap for every target
//!
//! [[targets]]
//! id = "db-1"                          # the host id the mesh knows the target by
//! destination = "alice@db1.internal"   # or an alias of ~/.ssh/config
//! labels = { role = "db" }
//! max_tier = "readonly"                # this target's own cap (lower wins)
//! remote_timeout_ms = 20000            # longest a session may take to start, the probe to answer
//! file_roots = ["/srv/db", "/var/log"] # on the target; default: an agent's default roots
//! grep_max_bytes = 268435456           # most bytes one grep reads from the target (256 MiB)
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use execmesh_proto::Token;

use crate::cli::Cli;
use crate::config::{Config, ConfigError, read_file};
use crate::files::DEFAULT_ROOTS;
use crate::relay::files::DEFAULT_GREP_MAX_BYTES;
use crate::relay::ssh::{DEFAULT_REMOTE_TIMEOUT, TargetSpec};
use crate::tier::Tier;

/// The shell a target runs commands with unless its configuration names another.
pub const DEFAULT_REMOTE_SHELL: &str = "/bin/bash";

/// Keys of a target table.
const TARGET_KEYS: &[&str] = &[
    "id",
    "destination",
    "labels",
    "max_tier",
    "file_roots",
    "ssh_config",
    "accept_new_host_key",
    "shell",
    "remote_timeout_ms",
    "grep_max_bytes",
];
/// Keys of the agent's configuration that mean nothing to a relay (each target has its own).
const AGENT_ONLY_KEYS: &[&str] = &["host_id", "labels", "run_as", "warm_shells"];

/// A relay's configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct RelayConfig {
    /// The settings shared with the agent; `host_id`, `labels` and `file_roots` are per target.
    pub agent: Config,
    /// The MCP user whose requests the relay serves (its subjects end in this token).
    pub user: Token,
    /// The SSH targets, in file order.
    pub targets: Vec<Target>,
    /// Names this relay among others of the same user (its machine and configuration file):
    /// the marker its jobs carry on a target, so that a restart finds their leftovers and never
    /// another relay's jobs.
    pub relay_id: String,
}

/// One SSH target of a relay.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    /// How to reach it.
    pub ssh: TargetSpec,
    /// Its labels, matched by selectors.
    pub labels: BTreeMap<String, String>,
    /// Its own tier cap; the relay's applies too (the lower wins).
    pub max_tier: Option<Tier>,
    /// Directories the file tool and grep may reach on it, resolved on the target; the
    /// agent's defaults ([`DEFAULT_ROOTS`]) when the configuration names none.
    pub file_roots: Vec<PathBuf>,
    /// Most bytes one grep reads from the target over SFTP.
    pub grep_max_bytes: u64,
}

// === impl RelayConfig ===

impl RelayConfig {
    /// Reads `path` (the relay's file), with `cli`'s flags and environment over the shared keys.
    pub fn load(cli: Cli, path: &Path) -> Result<RelayConfig, ConfigError> {
        let mut file = read_file(path)?;
        let mut problems = Vec::new();
        let user = match file.remove("user") {
            Some(toml::Value::String(user)) => Token::parse("user", &user)
                .map_err(|e| problems.push(format!("user: {e}")))
                .ok(),
            Some(other) => {
                problems.push(format!("user = {other}: expected the MCP user's name"));
                None
            }
            None => {
                problems
                    .push("user: missing (the MCP user whose requests this relay serves)".into());
                None
            }
        };
        let targets = match file.remove("targets") {
            Some(toml::Value::Array(items)) => items
                .iter()
                .enumerate()
                .filter_map(|(i, item)| parse_target(i, item, &mut problems))
                .collect(),
            Some(other) => {
                problems.push(format!("targets = {other}: expected `[[targets]]` tables"));
                Vec::new()
            }
            None => Vec::new(),
        };
        if targets.is_empty() && problems.is_empty() {
            problems.push("targets: no `[[targets]]`; a relay serves at least one".into());
        }
        let mut seen = std::collections::BTreeSet::new();
        for target in &targets {
            if !seen.insert(target.ssh.id.clone()) {
                problems.push(format!("targets: id `{}` is listed twice", target.ssh.id));
            }
        }
        for key in AGENT_ONLY_KEYS {
            if file.remove(*key).is_some() {
                problems.push(format!(
                    "{key}: not a relay setting (set it per target, or leave it out)"
                ));
            }
        }
        let cli = Cli {
            config: None,
            command: None,
            ..cli
        };
        let agent = match Config::load_table(cli, file, Some(path.to_path_buf())) {
            Ok(agent) => Some(agent),
            Err(ConfigError::Invalid { problems: more }) => {
                problems.extend(more);
                None
            }
            Err(e) => return Err(e),
        };
        match (agent, user) {
            (Some(agent), Some(user)) if problems.is_empty() => Ok(RelayConfig {
                agent,
                user,
                targets,
                relay_id: relay_id(path),
            }),
            _ => Err(ConfigError::Invalid { problems }),
        }
    }

    /// The agent configuration a target's node runs with: the shared settings, the target's
    /// id, labels and roots, the lower of the two tier caps, no warm shells (they are local).
    pub fn node_config(&self, target: &Target) -> Config {
        let max_tier = match target.max_tier {
            Some(own) => own.min(self.agent.max_tier),
            None => self.agent.max_tier,
        };
        Config {
            host_id: target.ssh.id.clone(),
            labels: target.labels.clone(),
            max_tier,
            file_roots: target.file_roots.clone(),
            warm_shells: 0,
            run_as: BTreeMap::new(),
            ..self.agent.clone()
        }
    }
}

/// 12 hex digits of sha256(hostname, canonical path of the file): the same across restarts of
/// one relay, different for another machine or another file.
fn relay_id(path: &Path) -> String {
    use sha2::Digest as _;
    let host = nix::unistd::gethostname()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_default();
    let file = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let digest = sha2::Sha256::digest(format!("{host}\0{}", file.display()));
    hex::encode(&digest[..6])
}

fn parse_target(i: usize, item: &toml::Value, problems: &mut Vec<String>) -> Option<Target> {
    let at = format!("targets[{i}]");
    let Some(table) = item.as_table() else {
        problems.push(format!("{at}: expected a table"));
        return None;
    };
    for key in table.keys() {
        if !TARGET_KEYS.contains(&key.as_str()) {
            problems.push(format!(
                "{at}.{key}: unknown key (known: {})",
                TARGET_KEYS.join(", ")
            ));
        }
    }
    let string = |key: &str, problems: &mut Vec<String>| match table.get(key) {
        None => None,
        Some(toml::Value::String(s)) => Some(s.clone()),
        Some(other) => {
            problems.push(format!("{at}.{key} = {other}: expected a string"));
            None
        }
    };
    let id = match string("id", problems) {
        Some(id) => Token::parse("host id", &id)
            .map_err(|e| problems.push(format!("{at}.id: {e}")))
            .ok(),
        None => {
            problems.push(format!("{at}.id: missing"));
            None
        }
    };
    let destination = string("destination", problems).or_else(|| {
        // Without a destination the id is the ssh destination (an alias of the ssh config).
        id.as_ref().map(|id| id.to_string())
    });
    if destination.as_deref().is_some_and(|d| d.starts_with('-')) {
        problems.push(format!("{at}.destination: must not start with `-`"));
    }
    let max_tier = string("max_tier", problems).and_then(|t| {
        t.parse::<Tier>()
            .map_err(|e| problems.push(format!("{at}.max_tier: {e}")))
            .ok()
    });
    let mut labels = BTreeMap::new();
    match table.get("labels") {
        None => {}
        Some(toml::Value::Table(t)) => {
            for (k, v) in t {
                match v {
                    toml::Value::String(v) => {
                        labels.insert(k.clone(), v.clone());
                    }
                    other => problems.push(format!(
                        "{at}.labels.{k} = {other}: label values are strings"
                    )),
                }
            }
        }
        Some(other) => problems.push(format!("{at}.labels = {other}: expected a table")),
    }
    let file_roots = match table.get("file_roots") {
        None => DEFAULT_ROOTS.iter().map(PathBuf::from).collect(),
        Some(toml::Value::Array(roots)) => roots
            .iter()
            .filter_map(|r| match r.as_str() {
                Some(r) if r.starts_with('/') => Some(PathBuf::from(r)),
                _ => {
                    problems.push(format!("{at}.file_roots: {r} is not an absolute path"));
                    None
                }
            })
            .collect(),
        Some(other) => {
            problems.push(format!(
                "{at}.file_roots = {other}: expected a list of paths"
            ));
            Vec::new()
        }
    };
    let accept_new_host_key = match table.get("accept_new_host_key") {
        None => false,
        Some(toml::Value::Boolean(b)) => *b,
        Some(other) => {
            problems.push(format!(
                "{at}.accept_new_host_key = {other}: expected true or false"
            ));
            false
        }
    };
    let remote_timeout = match table.get("remote_timeout_ms") {
        None => DEFAULT_REMOTE_TIMEOUT,
        Some(toml::Value::Integer(ms)) if *ms > 0 => Duration::from_millis(*ms as u64),
        Some(other) => {
            problems.push(format!(
                "{at}.remote_timeout_ms = {other}: expected a positive number of milliseconds"
            ));
            DEFAULT_REMOTE_TIMEOUT
        }
    };
    let grep_max_bytes = match table.get("grep_max_bytes") {
        None => DEFAULT_GREP_MAX_BYTES,
        Some(toml::Value::Integer(n)) if *n > 0 => *n as u64,
        Some(other) => {
            problems.push(format!(
                "{at}.grep_max_bytes = {other}: expected a positive number of bytes"
            ));
            DEFAULT_GREP_MAX_BYTES
        }
    };
    let ssh_config = string("ssh_config", problems).map(PathBuf::from);
    let shell = string("shell", problems).unwrap_or_else(|| DEFAULT_REMOTE_SHELL.to_string());
    Some(Target {
        ssh: TargetSpec {
            id: id?,
            destination: destination?,
            ssh_config,
            accept_new_host_key,
            shell,
            remote_timeout,
        },
        labels,
        max_tier,
        file_roots,
        grep_max_bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<RelayConfig, ConfigError> {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("relay.toml");
        std::fs::write(&path, text).expect("write");
        RelayConfig::load(Cli::default(), &path)
    }

    #[test]
    fn targets_get_their_own_ids_labels_and_the_lower_tier() {
        let config = load(
            "user = \"alice\"\nmax_tier = \"standard\"\n\
             [[targets]]\nid = \"db-1\"\ndestination = \"alice@db1\"\nlabels = { role = \"db\" }\nmax_tier = \"readonly\"\n\
             file_roots = [\"/srv/db\"]\ngrep_max_bytes = 1024\n\
             [[targets]]\nid = \"box-2\"\n",
        )
        .expect("valid");
        assert_eq!(config.user.as_str(), "alice");
        let db = config.node_config(&config.targets[0]);
        assert_eq!(db.host_id.as_str(), "db-1");
        assert_eq!(db.max_tier, Tier::Readonly);
        assert_eq!(db.labels["role"], "db");
        assert_eq!(db.warm_shells, 0);
        assert_eq!(db.file_roots, [PathBuf::from("/srv/db")]);
        assert_eq!(config.targets[0].grep_max_bytes, 1024);
        let other = config.node_config(&config.targets[1]);
        assert_eq!(other.max_tier, Tier::Standard);
        assert_eq!(config.targets[1].ssh.destination, "box-2");
        // Without file_roots a target gets an agent's default roots (resolved on the target).
        let defaults: Vec<PathBuf> = DEFAULT_ROOTS.iter().map(PathBuf::from).collect();
        assert_eq!(other.file_roots, defaults);
        assert_eq!(config.targets[1].grep_max_bytes, DEFAULT_GREP_MAX_BYTES);
    }

    #[test]
    fn every_bad_value_is_named() {
        let Err(ConfigError::Invalid { problems }) = load(
            "host_id = \"x\"\n[[targets]]\nid = \"Bad Id\"\nport = 22\n[[targets]]\nid = \"ok\"\ndestination = \"-oProxyCommand=x\"\n",
        ) else {
            panic!("must be refused");
        };
        let all = problems.join("\n");
        for needle in [
            "user: missing",
            "host_id",
            "targets[0].id",
            "targets[0].port",
            "targets[1].destination",
        ] {
            assert!(all.contains(needle), "{needle} not in {all}");
        }
    }
}
