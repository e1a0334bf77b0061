//! The access policy: users, groups, which hosts each may reach, guard tiers, approval rules and
//! run-as hints, read from one TOML file that is identical on every gateway replica.
//!
//! ```toml
//! operators = ["alice", "@oncall"]   # may see, follow and kill other users' jobs (audited);
//!                                    # top-level keys come before the first [table]
//!
//! [groups.ops]
//! tier = "standard"          # readonly < standard < dangerous
//! hosts = ["*"]              # selectors of the hosts the group may reach
//! run_as = "ops"             # unix account hint for the agents
//!
//! [users.alice]
//! password_hash = "$argon2id$v=19$..."   # `execmesh-gateway user add` writes it
//! groups = ["ops"]
//! tier = "dangerous"         # optional: an explicit user tier wins over the groups'
//!
//! [[approvals]]              # calls that wait for a teammate's approval
//! tool = "file"
//! action = "delete"          # optional
//! hosts = "role=db"          # optional selector
//!
//! [approvers]                # who may decide approvals (nobody when absent)
//! users = ["alice"]
//! groups = ["leads"]
//!
//! [token_admins]             # who may mint tokens for other users through the admin API
//! users = ["root"]
//!
//! [runbooks.disk-usage]      # named operations a lower tier may run (see core::runbooks);
//! description = "df"         # also one `<name>.toml` per runbook in `runbooks/` next to this file
//! command = ["df", "-hP"]
//! tier = "readonly"
//! ```
//!
//! A user's tier is their own `tier` if set, else the highest tier among their groups, else
//! `readonly`. Their reach is the union of their own `hosts` and their groups' `hosts`; a user
//! with neither reaches no host. Their run-as hint is their own `run_as`, else the first of their
//! groups (in the order listed) that has one. Without a policy file the gateway runs in
//! development mode: every holder of a valid token is `dangerous`, reaches every host and is an
//! operator.
//!
//! A job belongs to the user who started it: everyone else is told it does not exist. The users
//! `operators` names (by name, or `@group` for every member of a group) may see, follow and kill
//! other users' jobs too, within their tier and reach, and every such use is audited. No tier
//! implies it: `dangerous` is about what a user may do on hosts, not whose work they may read.
//! development mode: every holder of a valid token is `dangerous` and reaches every host.
//!
//! An approver must also hold the tier and reach the held call needs, and is never the
//! requester (see the approvals module). Without `[approvers]` no one may approve: a policy that
//! holds calls must say who releases them. Without `[token_admins]` a caller of the admin API
//! mints tokens only for themselves (see the admin API's token service).

mod edit;
pub mod password;
mod store;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::Deserialize;
use sha2::{Digest, Sha256};

use execmesh_proto::Token;

use crate::core::runbooks::{self, Runbook};
use crate::core::tier::{self, Tier};

pub use edit::{NewUser, add_user};
pub use store::LivePolicy;

/// Why a policy file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("cannot read policy file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write policy file {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("policy file {path} is not valid TOML: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error("policy file {path} is invalid: {}", .problems.join("; "))]
    Invalid {
        path: PathBuf,
        problems: Vec<String>,
    },
    #[error("user `{0}` already exists in the policy (pass --replace to change it)")]
    UserExists(String),
    #[error("cannot hash the password: {0}")]
    Hash(String),
}

/// The policy as written in the file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    #[serde(default)]
    users: BTreeMap<String, UserEntry>,
    #[serde(default)]
    groups: BTreeMap<String, GroupEntry>,
    #[serde(default)]
    approvals: Vec<ApprovalRule>,
    /// Users (`alice`) and groups (`@oncall`) with operator rights over other users' jobs.
    #[serde(default)]
    operators: Vec<String>,
    #[serde(default)]
    approvers: Option<Members>,
    #[serde(default)]
    token_admins: Option<Members>,
    /// Runbooks defined inline, by name (more come from the `runbooks/` directory).
    #[serde(default)]
    runbooks: BTreeMap<String, toml::Table>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct UserEntry {
    #[serde(default)]
    password_hash: Option<String>,
    #[serde(default)]
    groups: Vec<String>,
    #[serde(default)]
    tier: Option<String>,
    #[serde(default)]
    hosts: Vec<String>,
    #[serde(default)]
    run_as: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct GroupEntry {
    #[serde(default)]
    tier: Option<String>,
    #[serde(default)]
    hosts: Vec<String>,
    #[serde(default)]
    run_as: Option<String>,
}

/// One rule of calls that need a teammate's approval. A call matches when the tool matches, the
/// action matches (if the rule names one) and a target host matches `hosts` (if set).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApprovalRule {
    /// The tool, e.g. `bash` or `file`.
    pub tool: String,
    /// The action of the tool, e.g. `delete`; any action when absent.
    #[serde(default)]
    pub action: Option<String>,
    /// A selector of the hosts the rule covers; every host when absent.
    #[serde(default)]
    pub hosts: Option<String>,
}

/// The holders of a role the policy hands out by name (`[approvers]`, `[token_admins]`): the
/// users listed, and every member of the groups listed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Members {
    /// User names; each must be defined under `[users]`.
    #[serde(default)]
    pub users: Vec<String>,
    /// Group names; each must be defined under `[groups]`.
    #[serde(default)]
    pub groups: Vec<String>,
}

impl Members {
    /// Whether `user` is listed, or is in a listed group.
    pub fn includes(&self, user: &User) -> bool {
        self.users.iter().any(|u| u == user.name.as_str())
            || user.groups.iter().any(|g| self.groups.contains(g))
    }

    /// The members as written, for messages: `users alice, bob; groups leads`.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if !self.users.is_empty() {
            parts.push(format!("users {}", self.users.join(", ")));
        }
        if !self.groups.is_empty() {
            parts.push(format!("groups {}", self.groups.join(", ")));
        }
        if parts.is_empty() {
            "nobody".to_string()
        } else {
            parts.join("; ")
        }
    }
}

/// Tools whose calls an approval rule can hold (the others only read the registry).
pub const GATED_TOOLS: [&str; 6] = ["bash", "file", "grep", "facts", "job", "runbook"];

/// The directory of runbook files that goes with the policy file at `path`: `runbooks/` next
/// to it.
pub fn runbooks_dir(path: &Path) -> PathBuf {
    path.parent()
        .unwrap_or_else(|| Path::new("."))
        .join("runbooks")
}

impl std::fmt::Display for ApprovalRule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "tool={}", self.tool)?;
        if let Some(action) = &self.action {
            write!(f, " action={action}")?;
        }
        if let Some(hosts) = &self.hosts {
            write!(f, " hosts=`{hosts}`")?;
        }
        Ok(())
    }
}

/// A user as the policy defines them.
#[derive(Debug, Clone)]
pub struct User {
    pub name: Token,
    /// PHC string of the argon2 hash; a user without one cannot log in (tokens only).
    pub password_hash: Option<String>,
    pub groups: Vec<String>,
    /// The user's own tier, which wins over the groups'.
    pub tier: Option<Tier>,
    pub hosts: Vec<String>,
    pub run_as: Option<String>,
}

/// A group of users sharing a tier, a reach and a run-as hint.
#[derive(Debug, Clone, Default)]
pub struct Group {
    pub tier: Option<Tier>,
    pub hosts: Vec<String>,
    pub run_as: Option<String>,
}

/// What the policy grants one user, resolved from their entry and their groups.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub tier: Tier,
    /// The user's groups, as listed.
    pub groups: Vec<String>,
    /// Selectors of the hosts the user may reach (`*`: every host); empty: none.
    pub reach: Vec<String>,
    /// The unix account the agents should run the user's commands as, if the policy says.
    pub run_as: Option<String>,
}

/// A parsed, validated policy. Immutable: a reload builds a new one.
#[derive(Debug, Clone)]
pub struct Policy {
    users: BTreeMap<Token, User>,
    groups: BTreeMap<String, Group>,
    approvals: Vec<ApprovalRule>,
    /// Who has operator rights over other users' jobs: user names and `@group`s, as written.
    operators: Vec<String>,
    /// Who may decide approvals; `None` (not set): nobody.
    approvers: Option<Members>,
    /// Who may mint tokens for other users through the admin API.
    token_admins: Members,
    /// The runbooks of the policy file and of its `runbooks/` directory, by name.
    runbooks: BTreeMap<String, Runbook>,
    /// sha256 (hex) of the file's bytes (and of the runbook files, when there are any); binds
    /// approvals to the policy they were granted under.
    version: String,
    /// No policy file: everyone is `dangerous` and reaches `*`.
    development: bool,
}

// === impl Policy ===

impl Policy {
    /// The development-mode policy used when no policy file is configured.
    pub fn development() -> Self {
        Self {
            users: BTreeMap::new(),
            groups: BTreeMap::new(),
            approvals: Vec::new(),
            operators: Vec::new(),
            approvers: None,
            token_admins: Members::default(),
            runbooks: BTreeMap::new(),
            version: "development".to_string(),
            development: true,
        }
    }

    /// Reads and validates the policy at `path`, with the runbook files of its `runbooks/`
    /// directory.
    pub fn load(path: &Path) -> Result<Self, PolicyError> {
        let text = std::fs::read_to_string(path).map_err(|source| PolicyError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let files =
            runbooks::read_dir(&runbooks_dir(path)).map_err(|problem| PolicyError::Invalid {
                path: path.to_path_buf(),
                problems: vec![problem],
            })?;
        Self::parse_with_runbooks(&text, path, &files)
    }

    /// Parses and validates policy text; `path` only names the file in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Self, PolicyError> {
        Self::parse_with_runbooks(text, path, &[])
    }

    /// Parses and validates policy text with runbook `files` (name, path, bytes).
    fn parse_with_runbooks(
        text: &str,
        path: &Path,
        files: &[(String, PathBuf, Vec<u8>)],
    ) -> Result<Self, PolicyError> {
        let file: PolicyFile = toml::from_str(text).map_err(|e| PolicyError::Syntax {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        let mut problems = Vec::new();
        let mut groups = BTreeMap::new();
        for (name, entry) in file.groups {
            if name.is_empty() || name.contains(|c: char| c.is_whitespace() || c == '.') {
                problems.push(format!("group name `{name}` must be a word without dots"));
            }
            let tier = parse_tier(
                entry.tier.as_deref(),
                &format!("group `{name}`"),
                &mut problems,
            );
            check_hosts(&entry.hosts, &format!("group `{name}`"), &mut problems);
            check_run_as(
                entry.run_as.as_deref(),
                &format!("group `{name}`"),
                &mut problems,
            );
            groups.insert(
                name,
                Group {
                    tier,
                    hosts: entry.hosts,
                    run_as: entry.run_as,
                },
            );
        }
        let mut users = BTreeMap::new();
        for (name, entry) in file.users {
            let token = match Token::parse("user", &name) {
                Ok(token) => token,
                Err(e) => {
                    problems.push(format!("user `{name}`: {e}"));
                    continue;
                }
            };
            let what = format!("user `{name}`");
            let tier = parse_tier(entry.tier.as_deref(), &what, &mut problems);
            for group in &entry.groups {
                if !groups.contains_key(group) {
                    problems.push(format!(
                        "{what} is in group `{group}`, which is not defined"
                    ));
                }
            }
            if let Some(hash) = &entry.password_hash
                && let Err(e) = password::check_hash(hash)
            {
                problems.push(format!("{what}: password_hash {e}"));
            }
            check_hosts(&entry.hosts, &what, &mut problems);
            check_run_as(entry.run_as.as_deref(), &what, &mut problems);
            users.insert(
                token.clone(),
                User {
                    name: token,
                    password_hash: entry.password_hash,
                    groups: entry.groups,
                    tier,
                    hosts: entry.hosts,
                    run_as: entry.run_as,
                },
            );
        }
        let mut runbooks = BTreeMap::new();
        for (name, table) in file.runbooks {
            // The hash covers the table as written, re-serialised (the file holds other things).
            let text = toml::to_string(&table).unwrap_or_default();
            if let Some(rb) = Runbook::parse(&name, table, text.as_bytes(), "policy", &mut problems)
            {
                runbooks.insert(name, rb);
            }
        }
        for (name, file_path, bytes) in files {
            if runbooks.contains_key(name) {
                problems.push(format!(
                    "runbook `{name}` is defined both in the policy and in {}",
                    file_path.display()
                ));
            } else if let Some(rb) = runbooks::parse_file(name, file_path, bytes, &mut problems) {
                runbooks.insert(name.clone(), rb);
            }
        }
        let mut approvals = file.approvals;
        for (i, rule) in approvals.iter().enumerate() {
            let what = format!("approvals[{i}]");
            if rule.tool == "runbook" {
                // A rule on `runbook` names a runbook as its action (or covers them all).
                if let Some(name) = &rule.action
                    && !runbooks.contains_key(name)
                {
                    problems.push(format!(
                        "{what}: tool `runbook` action `{name}` names no runbook the policy defines"
                    ));
                }
            } else if !tier::is_known_tool(&rule.tool) {
                problems.push(format!("{what}: unknown tool `{}`", rule.tool));
            } else if !GATED_TOOLS.contains(&rule.tool.as_str()) {
                problems.push(format!(
                    "{what}: `{}` only reads the registry and never needs approval; approvals \
                     apply to {}",
                    rule.tool,
                    GATED_TOOLS.join(", ")
                ));
            } else if rule.tool == "job" && rule.action.as_deref() != Some("kill") {
                problems.push(format!(
                    "{what}: only `job` action `kill` can need approval; set action = \"kill\""
                ));
            } else if let Some(action) = &rule.action
                && tier::allowed_actions(&rule.tool, Tier::Dangerous)
                    .is_none_or(|actions| !actions.contains(&action.as_str()))
            {
                problems.push(format!(
                    "{what}: tool `{}` has no action `{action}`",
                    rule.tool
                ));
            }
            if let Some(hosts) = &rule.hosts {
                check_hosts(std::slice::from_ref(hosts), &what, &mut problems);
            }
        }
        for entry in &file.operators {
            match entry.strip_prefix('@') {
                Some(group) if !groups.contains_key(group) => {
                    problems.push(format!("operators: group `{group}` is not defined"))
                }
                Some(_) => {}
                None if !users.keys().any(|u| u.as_str() == entry) => problems.push(format!(
                    "operators: user `{entry}` is not defined (name a group as `@group`)"
                )),
                None => {}
            }
        }
        for (what, members) in [
            ("approvers", file.approvers.as_ref()),
            ("token_admins", file.token_admins.as_ref()),
        ] {
            let Some(members) = members else { continue };
            for user in &members.users {
                if !users.keys().any(|k: &Token| k.as_str() == user) {
                    problems.push(format!(
                        "{what} names user `{user}`, who is not defined under [users]"
                    ));
                }
            }
            for group in &members.groups {
                if !groups.contains_key(group) {
                    problems.push(format!(
                        "{what} names group `{group}`, which is not defined under [groups]"
                    ));
                }
            }
        }
        if !problems.is_empty() {
            return Err(PolicyError::Invalid {
                path: path.to_path_buf(),
                problems,
            });
        }
        // A runbook marked `approval = true` is held as if a rule named it.
        approvals.extend(
            runbooks
                .values()
                .filter(|rb| rb.approval)
                .map(|rb| ApprovalRule {
                    tool: "runbook".to_string(),
                    action: Some(rb.name.to_string()),
                    hosts: None,
                }),
        );
        let version = if files.is_empty() {
            hex(&Sha256::digest(text.as_bytes()))
        } else {
            let mut hasher = Sha256::new();
            hasher.update(text.as_bytes());
            for (name, _, bytes) in files {
                hasher.update([0]);
                hasher.update(name.as_bytes());
                hasher.update([0]);
                hasher.update((bytes.len() as u64).to_be_bytes());
                hasher.update(bytes);
            }
            hex(&hasher.finalize())
        };
        Ok(Self {
            users,
            groups,
            approvals,
            operators: file.operators,
            approvers: file.approvers,
            token_admins: file.token_admins.unwrap_or_default(),
            runbooks,
            version,
            development: false,
        })
    }

    /// True without a policy file (every user `dangerous`, reaching `*`).
    pub fn is_development(&self) -> bool {
        self.development
    }

    /// sha256 (hex) of the policy file, or `development`.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// The user named `name`, if the policy defines them (never in development mode).
    pub fn user(&self, name: &str) -> Option<&User> {
        self.users
            .iter()
            .find(|(k, _)| k.as_str() == name)
            .map(|(_, u)| u)
    }

    /// Every user, by name.
    pub fn users(&self) -> impl Iterator<Item = &User> {
        self.users.values()
    }

    /// Every group, by name.
    pub fn groups(&self) -> &BTreeMap<String, Group> {
        &self.groups
    }

    /// What the policy grants `name`: `None` for a user the policy does not know (who must be
    /// refused). In development mode everyone gets `dangerous` and `*`.
    pub fn grant(&self, name: &str) -> Option<Grant> {
        if self.development {
            return Some(Grant {
                tier: Tier::Dangerous,
                groups: Vec::new(),
                reach: vec!["*".to_string()],
                run_as: None,
            });
        }
        let user = self.user(name)?;
        let member_of = || user.groups.iter().filter_map(|g| self.groups.get(g));
        let tier = user
            .tier
            .or_else(|| member_of().filter_map(|g| g.tier).max())
            .unwrap_or(Tier::Readonly);
        let mut seen = BTreeSet::new();
        let reach = user
            .hosts
            .iter()
            .chain(member_of().flat_map(|g| g.hosts.iter()))
            .filter(|s| seen.insert(s.as_str()))
            .cloned()
            .collect();
        let run_as = user
            .run_as
            .clone()
            .or_else(|| member_of().find_map(|g| g.run_as.clone()));
        Some(Grant {
            tier,
            groups: user.groups.clone(),
            reach,
            run_as,
        })
    }

    /// Selectors of the hosts `name` may reach; empty for unknown users.
    pub fn reach(&self, name: &str) -> Vec<String> {
        self.grant(name).map(|g| g.reach).unwrap_or_default()
    }

    /// Whether `name` has operator rights over other users' jobs: named in `operators`, or a
    /// member of a group named there as `@group`. Everyone in development mode; no one the
    /// policy does not know.
    pub fn is_operator(&self, name: &str) -> bool {
        if self.development {
            return true;
        }
        let Some(user) = self.user(name) else {
            return false;
        };
        self.operators
            .iter()
            .any(|entry| match entry.strip_prefix('@') {
                Some(group) => user.groups.iter().any(|g| g == group),
                None => entry == name,
            })
    }

    /// The approval rules, in file order.
    pub fn approvals(&self) -> &[ApprovalRule] {
        &self.approvals
    }

    /// Who may decide approvals as the policy says (`None`: the policy does not say, and
    /// nobody may).
    pub fn approvers(&self) -> Option<&Members> {
        self.approvers.as_ref()
    }

    /// Whether `name` is a user of the policy whom `[approvers]` names (directly or by group).
    /// The tier, reach and "never the requester" checks come on top (the approvals module).
    pub fn is_approver(&self, name: &str) -> bool {
        match (&self.approvers, self.user(name)) {
            (Some(members), Some(user)) => members.includes(user),
            _ => false,
        }
    }

    /// Every runbook, by name.
    pub fn runbooks(&self) -> impl Iterator<Item = &Runbook> {
        self.runbooks.values()
    }

    /// The runbooks a caller of tier `have` may run (each runbook's `tier` at most `have`).
    pub fn runbooks_for(&self, have: Tier) -> impl Iterator<Item = &Runbook> {
        self.runbooks.values().filter(move |rb| rb.tier <= have)
    }

    /// The runbook named `name`.
    pub fn runbook(&self, name: &str) -> Option<&Runbook> {
        self.runbooks.get(name)
    }

    /// Who may mint tokens for other users through the admin API.
    pub fn token_admins(&self) -> &Members {
        &self.token_admins
    }

    /// Whether `name` is a user of the policy whom `[token_admins]` names (directly or by
    /// group). Never in development mode, which has no users.
    pub fn is_token_admin(&self, name: &str) -> bool {
        self.user(name)
            .is_some_and(|user| self.token_admins.includes(user))
    }

    /// What is legal but probably not meant, for the log at load: approval rules with no one
    /// named to decide them.
    pub fn warnings(&self) -> Vec<String> {
        let mut warnings = Vec::new();
        if !self.approvals.is_empty() {
            match &self.approvers {
                None => warnings.push(
                    "the policy holds calls for approval ([[approvals]]) but names no approvers:                      nobody can approve them until [approvers] lists users or groups"
                        .to_string(),
                ),
                Some(members) if members.users.is_empty() && members.groups.is_empty() => {
                    warnings.push(
                        "[approvers] is empty: nobody can approve the calls [[approvals]] holds"
                            .to_string(),
                    )
                }
                Some(_) => {}
            }
        }
        warnings
    }

    /// The rules that could cover a call of `tool` with `action`, before host selectors are
    /// matched (the caller matches [`ApprovalRule::hosts`] against the resolved hosts).
    pub fn approval_rules_for<'a>(
        &'a self,
        tool: &'a str,
        action: Option<&'a str>,
    ) -> impl Iterator<Item = &'a ApprovalRule> + 'a {
        self.approvals.iter().filter(move |rule| {
            rule.tool == tool
                && match (&rule.action, action) {
                    (None, _) => true,
                    (Some(want), Some(got)) => want == got,
                    (Some(_), None) => false,
                }
        })
    }
}

fn parse_tier(text: Option<&str>, what: &str, problems: &mut Vec<String>) -> Option<Tier> {
    let text = text?;
    match text.parse::<Tier>() {
        Ok(tier) => Some(tier),
        Err(e) => {
            problems.push(format!("{what}: {e}"));
            None
        }
    }
}

/// Selectors are checked for the obvious here; their grammar is checked where they are matched.
fn check_hosts(hosts: &[String], what: &str, problems: &mut Vec<String>) {
    for selector in hosts {
        if selector.trim().is_empty() {
            problems.push(format!("{what}: an empty host selector"));
        }
    }
}

/// A unix account name as `useradd` accepts it.
fn check_run_as(name: Option<&str>, what: &str, problems: &mut Vec<String>) {
    let Some(name) = name else { return };
    let ok = !name.is_empty()
        && name.len() <= 32
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
    if !ok {
        problems.push(format!(
            "{what}: run_as `{name}` is not a unix account name"
        ));
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Policy, PolicyError> {
        Policy::parse(text, Path::new("test.toml"))
    }

    #[test]
    fn the_example_policy_has_groups_and_no_user() {
        // policy.example.toml is the package's /etc/execmesh/policy.toml: the first user is
        // added into one of its groups.
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("policy.example.toml");
        let text = std::fs::read_to_string(&path).unwrap();
        let policy = Policy::parse(&text, &path).unwrap_or_else(|e| panic!("{e}"));
        assert!(policy.user("alice").is_none());
        assert!(policy.grant("alice").is_none());
    }

    const POLICY: &str = r#"
        [groups.ops]
        tier = "standard"
        hosts = ["web-*", "role=db"]
        run_as = "ops"

        [groups.oncall]
        tier = "dangerous"
        hosts = ["*"]

        [groups.contractors]
        tier = "readonly"
        hosts = ["web-*"]

        [users.alice]
        groups = ["ops", "oncall"]

        [users.bob]
        groups = ["ops"]
        tier = "readonly"
        hosts = ["db-1"]
        run_as = "bob"

        [users.carol]
        groups = ["contractors"]

        [users.dave]

        [[approvals]]
        tool = "file"
        action = "delete"

        [[approvals]]
        tool = "bash"
        hosts = "role=db"
    "#;

    #[test]
    fn operators_are_named_users_and_members_of_named_groups_and_no_tier_implies_it() {
        let policy = parse(&format!("operators = [\"carol\", \"@ops\"]\n{POLICY}")).unwrap();
        assert!(policy.is_operator("carol"), "named");
        assert!(policy.is_operator("bob"), "a member of ops");
        assert!(policy.is_operator("alice"), "a member of ops");
        assert!(!policy.is_operator("dave"));
        assert!(!policy.is_operator("eve"), "not in the policy");
        let plain = parse(POLICY).unwrap();
        assert_eq!(plain.grant("alice").unwrap().tier, Tier::Dangerous);
        assert!(
            !plain.is_operator("alice"),
            "the dangerous tier is not operator rights"
        );
        assert!(Policy::development().is_operator("anyone"));
        let err = parse(&format!("operators = [\"zed\", \"@nope\"]\n{POLICY}"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("user `zed` is not defined"), "{err}");
        assert!(err.contains("group `nope` is not defined"), "{err}");
    }

    #[test]
    fn tier_is_the_users_own_else_the_highest_of_the_groups_else_readonly() {
        let policy = parse(POLICY).unwrap();
        assert_eq!(policy.grant("alice").unwrap().tier, Tier::Dangerous);
        assert_eq!(policy.grant("bob").unwrap().tier, Tier::Readonly);
        assert_eq!(policy.grant("carol").unwrap().tier, Tier::Readonly);
        assert_eq!(policy.grant("dave").unwrap().tier, Tier::Readonly);
        assert_eq!(policy.grant("eve"), None);
    }

    #[test]
    fn reach_is_the_union_of_own_and_group_hosts_and_run_as_prefers_the_user() {
        let policy = parse(POLICY).unwrap();
        let alice = policy.grant("alice").unwrap();
        assert_eq!(alice.reach, ["web-*", "role=db", "*"]);
        assert_eq!(alice.run_as.as_deref(), Some("ops"));
        let bob = policy.grant("bob").unwrap();
        assert_eq!(bob.reach, ["db-1", "web-*", "role=db"]);
        assert_eq!(bob.run_as.as_deref(), Some("bob"));
        assert!(policy.reach("dave").is_empty());
    }

    #[test]
    fn development_mode_grants_everything() {
        let policy = Policy::development();
        let grant = policy.grant("anyone").unwrap();
        assert_eq!(grant.tier, Tier::Dangerous);
        assert_eq!(grant.reach, ["*"]);
    }

    #[test]
    fn version_is_the_hash_of_the_text() {
        let a = parse(POLICY).unwrap();
        let b = parse(&format!("{POLICY}\n# comment\n")).unwrap();
        assert_eq!(a.version().len(), 64);
        assert_ne!(a.version(), b.version());
    }

    #[test]
    fn approval_rules_match_tool_and_action() {
        let policy = parse(POLICY).unwrap();
        assert_eq!(policy.approval_rules_for("file", Some("delete")).count(), 1);
        assert_eq!(policy.approval_rules_for("file", Some("read")).count(), 0);
        let bash: Vec<_> = policy.approval_rules_for("bash", None).collect();
        assert_eq!(bash[0].hosts.as_deref(), Some("role=db"));
    }

    #[test]
    fn approvers_and_token_admins_are_named_users_and_group_members() {
        let policy = parse(&format!(
            "{POLICY}\n[approvers]\nusers = [\"bob\"]\ngroups = [\"oncall\"]\n\n\
             [token_admins]\ngroups = [\"contractors\"]\n"
        ))
        .unwrap();
        assert!(policy.is_approver("bob"));
        assert!(policy.is_approver("alice"), "alice is in oncall");
        assert!(!policy.is_approver("carol"));
        assert!(!policy.is_approver("eve"), "not a user of the policy");
        assert!(policy.is_token_admin("carol"));
        assert!(!policy.is_token_admin("alice"));
        assert!(policy.warnings().is_empty());
    }

    #[test]
    fn without_approvers_nobody_approves_and_the_load_warns() {
        let policy = parse(POLICY).unwrap();
        assert_eq!(policy.approvers(), None);
        assert!(!policy.is_approver("alice"));
        assert!(!policy.is_token_admin("alice"));
        assert!(policy.warnings()[0].contains("names no approvers"));
        let empty = parse(&format!("{POLICY}\n[approvers]\n")).unwrap();
        assert!(!empty.is_approver("alice"));
        assert!(empty.warnings()[0].contains("[approvers] is empty"));
        let dev = Policy::development();
        assert!(!dev.is_approver("anyone") && !dev.is_token_admin("anyone"));
    }

    #[test]
    fn approvers_and_token_admins_must_name_defined_users_and_groups() {
        let err = refusal(&format!(
            "{POLICY}\n[approvers]\nusers = [\"zed\"]\ngroups = [\"nobody\"]\n\n\
             [token_admins]\nusers = [\"yan\"]\n"
        ));
        assert_names(
            &err,
            &[
                "approvers names user `zed`",
                "approvers names group `nobody`",
                "token_admins names user `yan`",
            ],
        );
        assert!(refusal("[approvers]\nuser = [\"x\"]\n").contains("user"));
    }

    /// Why the policy `text` is refused.
    fn refusal(text: &str) -> String {
        parse(text).unwrap_err().to_string()
    }

    /// Asserts that `err` names each of `needles`.
    fn assert_names(err: &str, needles: &[&str]) {
        for needle in needles {
            assert!(err.contains(needle), "{needle} missing from: {err}");
        }
    }

    #[test]
    fn every_problem_is_named() {
        let err = refusal(
            r#"
            [groups.ops]
            tier = "root"
            [users."Bad.Name"]
            [users.erin]
            groups = ["nope"]
            password_hash = "plain"
            run_as = "Root"
            [[approvals]]
            tool = "file"
            action = "shred"
            "#,
        );
        assert_names(
            &err,
            &[
                "unknown tier `root`",
                "Bad.Name",
                "group `nope`, which is not defined",
                "password_hash",
                "run_as `Root`",
                "no action `shred`",
            ],
        );
        assert!(refusal("[users.x]\npasword_hash = \"\"\n").contains("pasword_hash"));
    }
}
