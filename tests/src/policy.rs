//! Gateway policies for scenarios, built from the groups and users a scenario needs.
//!
//! ```
//! # use execmesh_proto::Tier;
//! # use execmesh_tests::policy::Policy;
//! let policy = Policy::new()
//!     .group("ops", Tier::Standard, &["web-*"], &["alice", "bob"])
//!     .user("carol", Tier::Readonly, &["*"]);
//! assert!(policy.to_string().contains("[users.carol]\ntier = \"readonly\""));
//! ```
//!
//! The text is the policy TOML an operator writes (see `execmesh_gateway::core::policy`);
//! [`Policy::toml`] appends what the builder has no words for (approval rules, approvers, token
//! admins).

use std::fmt;

use execmesh_proto::Tier;

/// A policy under construction; its `Display` is the TOML the gateway reads.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    /// Users (or `@group`s) with operator rights, the top-level `operators` key.
    operators: Vec<String>,
    groups: Vec<Group>,
    /// Users in the order they were first named, each written as one `[users.<name>]` table.
    users: Vec<User>,
    /// TOML appended verbatim after the groups and users.
    extra: String,
}

/// One `[groups.<name>]` table.
#[derive(Debug, Clone)]
struct Group {
    name: String,
    tier: Tier,
    hosts: Vec<String>,
}

/// One `[users.<name>]` table; unset keys are left out.
#[derive(Debug, Clone, Default)]
struct User {
    name: String,
    groups: Vec<String>,
    tier: Option<Tier>,
    hosts: Option<Vec<String>>,
    password_hash: Option<String>,
}

// === impl Policy ===

impl Policy {
    /// An empty policy: nobody may do anything.
    pub fn new() -> Self {
        Self::default()
    }

    /// Gives operator rights to `who` (user names, or `@group`).
    pub fn operators(mut self, who: &[&str]) -> Self {
        self.operators.extend(who.iter().map(|w| w.to_string()));
        self
    }

    /// A group of `tier` on the hosts `hosts` selects, with `members` in it.
    pub fn group(mut self, name: &str, tier: Tier, hosts: &[&str], members: &[&str]) -> Self {
        self.groups.push(Group {
            name: name.to_string(),
            tier,
            hosts: strings(hosts),
        });
        for member in members {
            self.entry(member).groups.push(name.to_string());
        }
        self
    }

    /// Puts `name` in `groups` too.
    pub fn member_of(mut self, name: &str, groups: &[&str]) -> Self {
        self.entry(name).groups.extend(strings(groups));
        self
    }

    /// A user with a tier and hosts of their own (besides any group they are in).
    pub fn user(mut self, name: &str, tier: Tier, hosts: &[&str]) -> Self {
        let user = self.entry(name);
        user.tier = Some(tier);
        user.hosts = Some(strings(hosts));
        self
    }

    /// Raises (or lowers) the tier `name` has from their groups, on the same hosts.
    pub fn tier_of(mut self, name: &str, tier: Tier) -> Self {
        self.entry(name).tier = Some(tier);
        self
    }

    /// Lets `name` sign in to the authorization server with the password `hash` stands for.
    pub fn password_hash(mut self, name: &str, hash: &str) -> Self {
        self.entry(name).password_hash = Some(hash.to_string());
        self
    }

    /// Lets `users` mint tokens for other users (`[token_admins]`).
    pub fn token_admins(self, users: &[&str]) -> Self {
        let users: Vec<String> = users.iter().map(|u| u.to_string()).collect();
        self.toml(&format!("[token_admins]\nusers = {}\n", list(&users)))
    }

    /// Holds every `tool` call on hosts matching `hosts` for a decision by a member of the
    /// `approvers` groups (one `[[approvals]]` rule and the `[approvers]` table: use it once).
    pub fn approved_by(self, tool: &str, hosts: &str, approvers: &[&str]) -> Self {
        let groups: Vec<String> = approvers.iter().map(|g| g.to_string()).collect();
        self.toml(&format!(
            "[[approvals]]\ntool = \"{tool}\"\nhosts = \"{hosts}\"\n\n[approvers]\ngroups = {}\n",
            list(&groups)
        ))
    }

    /// Appends `toml` as it is: approval rules, approvers, token admins.
    pub fn toml(mut self, toml: &str) -> Self {
        self.extra.push('\n');
        self.extra.push_str(toml);
        self
    }

    /// The table of `name`, added on first use.
    fn entry(&mut self, name: &str) -> &mut User {
        let at = match self.users.iter().position(|u| u.name == name) {
            Some(at) => at,
            None => {
                self.users.push(User {
                    name: name.to_string(),
                    ..User::default()
                });
                self.users.len() - 1
            }
        };
        &mut self.users[at]
    }
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.operators.is_empty() {
            writeln!(f, "operators = {}", list(&self.operators))?;
        }
        for group in &self.groups {
            writeln!(f, "\n[groups.{}]", group.name)?;
            writeln!(f, "tier = \"{}\"", group.tier)?;
            writeln!(f, "hosts = {}", list(&group.hosts))?;
        }
        for user in &self.users {
            writeln!(f, "\n[users.{}]", user.name)?;
            if !user.groups.is_empty() {
                writeln!(f, "groups = {}", list(&user.groups))?;
            }
            if let Some(tier) = user.tier {
                writeln!(f, "tier = \"{tier}\"")?;
            }
            if let Some(hosts) = &user.hosts {
                writeln!(f, "hosts = {}", list(hosts))?;
            }
            if let Some(hash) = &user.password_hash {
                writeln!(f, "password_hash = \"{hash}\"")?;
            }
        }
        f.write_str(&self.extra)
    }
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// A TOML array of strings.
fn list(items: &[String]) -> String {
    let quoted: Vec<String> = items.iter().map(|i| format!("{i:?}")).collect();
    format!("[{}]", quoted.join(", "))
}
