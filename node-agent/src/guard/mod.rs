//! The CommandGuard: parses a command with a real shell parser and refuses it when anything it can run matches a deny rule, or — in allowlist mode — is not allowed.
//!
//! The command is parsed as bash by `brush-parser` (the parser of the brush shell); a command
//! that does not parse is refused with the parse error. [`walk`] finds every simple command the
//! program can run — through pipelines, lists, subshells, substitutions, functions, variables it
//! sets, and the carriers that run commands or text given to them ([`carriers`]) — with its
//! words and paths evaluated as far as they are known before it runs ([`path`], [`options`]).
//! [`rules`] says which are denied; [`allow`] which are allowed in allowlist mode. Text handed to
//! an interpreter that cannot be read before it runs is refused (`unchecked-code`), and so are
//! request environment variables that would run code the guard never sees ([`env`]). A refusal
//! names the rule and the offending command.
//!
//! The guard is a guard rail against accidents and careless prompts, not the security boundary:
//! what a command computes at run time (the output of `$(curl …)` used as a path, a script
//! file's contents, what a program does on its own) is not known to it. The boundary is the
//! account the command runs as (run-as) and the tier.

pub mod allow;
pub mod carriers;
#[cfg(test)]
mod corpus;
pub mod env;
pub mod foreign;
pub mod glob;
pub mod options;
pub mod path;
pub mod rules;
pub mod walk;
pub mod word;

use std::fmt;

use execmesh_proto::Token;
use execmesh_proto::pb::ErrorCode;

use crate::refusal::Refusal;
use allow::{Allowlist, Entry};
use rules::{DEFAULT_RULES, Pattern, Rule};
use walk::{Start, WalkError};

/// How a host's guard decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// Everything runs unless a deny rule refuses it.
    #[default]
    Denylist,
    /// Only commands that match an `allow` entry run (and deny rules still refuse).
    Allowlist,
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Denylist => "denylist",
            Mode::Allowlist => "allowlist",
        })
    }
}

/// The host's `[guard]` settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuardConfig {
    /// Check commands at all.
    pub enabled: bool,
    /// Deny-list (the default) or allowlist mode.
    pub mode: Mode,
    /// Host rules (see [`rules`] for the syntax), checked after the defaults.
    pub deny: Vec<String>,
    /// Ids of default rules this host does not apply (`power` on a host that may reboot).
    pub disable: Vec<String>,
    /// Allowlist mode: the commands allowed (see [`allow`] for the syntax).
    pub allow: Vec<String>,
    /// Allowlist mode: paths file redirections may name, besides `/dev/null` (globs).
    pub allow_redirects: Vec<String>,
}

impl Default for GuardConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            mode: Mode::Denylist,
            deny: Vec::new(),
            disable: Vec::new(),
            allow: Vec::new(),
            allow_redirects: Vec::new(),
        }
    }
}

/// Keys of the `[guard]` table.
const KEYS: &[&str] = &[
    "enabled",
    "mode",
    "deny",
    "disable",
    "allow",
    "allow_redirects",
];

// === impl GuardConfig ===

impl GuardConfig {
    /// Problems with the settings, one sentence each.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        for rule in &self.deny {
            if let Err(e) = Pattern::parse(rule) {
                problems.push(format!("guard.deny: `{rule}`: {e}"));
            }
        }
        for id in &self.disable {
            if Rule::default_rule(id).is_none() {
                problems.push(format!(
                    "guard.disable: `{id}` is not a default rule (they are {})",
                    DEFAULT_RULES.join(", ")
                ));
            }
        }
        for entry in &self.allow {
            if let Err(e) = Entry::parse(entry) {
                problems.push(format!("guard.allow: `{entry}`: {e}"));
            }
        }
        for target in &self.allow_redirects {
            if !target.starts_with('/') {
                problems.push(format!(
                    "guard.allow_redirects: `{target}` is not an absolute path"
                ));
            } else if let Err(e) = glob::check_glob(target) {
                problems.push(format!("guard.allow_redirects: `{target}`: {e}"));
            }
        }
        match self.mode {
            Mode::Allowlist if self.allow.is_empty() => problems.push(
                "guard.mode = \"allowlist\" needs guard.allow entries; without any, every \
                 command is refused"
                    .into(),
            ),
            Mode::Denylist if !self.allow.is_empty() || !self.allow_redirects.is_empty() => {
                problems.push(
                    "guard.allow and guard.allow_redirects only apply with guard.mode = \
                     \"allowlist\""
                        .into(),
                )
            }
            _ => {}
        }
        problems
    }

    /// Reads the `[guard]` table of a configuration file over `self`; problems name `file`.
    pub fn read_toml(&mut self, value: &toml::Value, file: &str) -> Vec<String> {
        let mut problems = Vec::new();
        let toml::Value::Table(table) = value else {
            problems.push(format!(
                "guard = {value} (in {file}): expected a table such as `[guard]` / `deny = \
                 [\"iptables -F\"]`"
            ));
            return problems;
        };
        for (key, value) in table {
            match (key.as_str(), value) {
                ("enabled", toml::Value::Boolean(b)) => self.enabled = *b,
                ("mode", toml::Value::String(mode)) => match mode.as_str() {
                    "denylist" => self.mode = Mode::Denylist,
                    "allowlist" => self.mode = Mode::Allowlist,
                    other => problems.push(format!(
                        "guard.mode = \"{other}\" (in {file}): expected \"denylist\" or \
                         \"allowlist\""
                    )),
                },
                (
                    list @ ("deny" | "disable" | "allow" | "allow_redirects"),
                    toml::Value::Array(items),
                ) => {
                    let strings: Option<Vec<String>> = items
                        .iter()
                        .map(|i| i.as_str().map(str::to_string))
                        .collect();
                    match strings {
                        Some(strings) => match list {
                            "deny" => self.deny = strings,
                            "disable" => self.disable = strings,
                            "allow" => self.allow = strings,
                            _ => self.allow_redirects = strings,
                        },
                        None => problems.push(format!(
                            "guard.{list} (in {file}): expected a list of strings"
                        )),
                    }
                }
                (known, other) if KEYS.contains(&known) => {
                    problems.push(format!("guard.{known} = {other} (in {file}): wrong type"))
                }
                (unknown, _) => problems.push(format!("unknown key `guard.{unknown}` in {file}")),
            }
        }
        problems
    }
}

/// Why the guard refused a command.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GuardError {
    /// The command (or text it carries) does not parse, nests too deep, or expands to too
    /// much.
    #[error("{0}; a command the guard cannot read is refused")]
    Unreadable(#[from] WalkError),
    /// A rule matched (or, in allowlist mode, no entry did).
    #[error("rule {rule} refused `{command}`{}: {why}", carriers(.via))]
    Denied {
        /// The rule's id (`recursive-delete`, ``host rule `iptables -F` ``, `allowlist`).
        rule: String,
        /// The offending simple command.
        command: String,
        /// The carriers it was inside, outermost first.
        via: Vec<String>,
        /// What the rule saw, in words.
        why: String,
    },
    /// The request sets an environment variable that runs code the guard does not see.
    #[error(
        "rule dangerous-env refused the environment variable `{name}` of the request: {why}; \
         set it in the command itself, where the guard can check it"
    )]
    DangerousEnv {
        /// The variable.
        name: String,
        /// Why it is refused.
        why: String,
    },
}

// === impl GuardError ===

impl GuardError {
    /// The id of the rule that refused (`unreadable` for a command that cannot be read).
    pub fn rule(&self) -> &str {
        match self {
            GuardError::Unreadable(_) => "unreadable",
            GuardError::Denied { rule, .. } => rule,
            GuardError::DangerousEnv { .. } => "dangerous-env",
        }
    }
}

fn carriers(via: &[String]) -> String {
    if via.is_empty() {
        String::new()
    } else {
        format!(" (inside {})", via.join(" → "))
    }
}

/// A command as the agent would run it.
#[derive(Debug, Clone, Default)]
pub struct Job<'a> {
    /// The command text, run as `bash -c`.
    pub command: &'a str,
    /// The request's environment variables.
    pub env: Vec<(String, String)>,
    /// Other variables known to be set when it starts (the account's `HOME`, `USER`).
    pub known: Vec<(String, String)>,
    /// The directory it starts in, when known.
    pub cwd: Option<String>,
}

/// The guard of one host.
#[derive(Debug, Clone)]
pub struct Guard {
    enabled: bool,
    rules: Vec<Rule>,
    allowlist: Option<Allowlist>,
}

// === impl Guard ===

impl Guard {
    /// The guard for `config`. Host rules and allowlist entries that do not parse (the
    /// configuration check reports them) are left out.
    pub fn new(config: &GuardConfig) -> Guard {
        let mut rules: Vec<Rule> = DEFAULT_RULES
            .iter()
            .filter(|id| !config.disable.iter().any(|d| d == *id))
            .filter_map(|id| Rule::default_rule(id))
            .collect();
        rules.extend(
            config
                .deny
                .iter()
                .filter_map(|r| Pattern::parse(r).ok())
                .map(Rule::Host),
        );
        Guard {
            enabled: config.enabled,
            rules,
            allowlist: (config.mode == Mode::Allowlist)
                .then(|| Allowlist::new(&config.allow, &config.allow_redirects)),
        }
    }

    /// Whether the guard checks commands.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// The guard's mode.
    pub fn mode(&self) -> Mode {
        if self.allowlist.is_some() {
            Mode::Allowlist
        } else {
            Mode::Denylist
        }
    }

    fn applies(&self, rule: &Rule) -> bool {
        // Allowlist mode refuses what it cannot read whatever the deny rules say.
        self.allowlist.is_some()
            && matches!(
                rule,
                Rule::ForkBomb | Rule::UncheckedCode | Rule::DangerousEnv
            )
            || self.rules.contains(rule)
    }

    /// Checks a command as `bash -c` would run it, in a directory and environment not known.
    pub fn check(&self, command: &str) -> Result<(), GuardError> {
        self.check_job(&Job {
            command,
            ..Job::default()
        })
    }

    /// Checks a command with the environment and working directory it would run with.
    pub fn check_job(&self, job: &Job<'_>) -> Result<(), GuardError> {
        if !self.enabled {
            return Ok(());
        }
        if self.applies(&Rule::DangerousEnv) {
            let mut names: Vec<&String> = job.env.iter().map(|(name, _)| name).collect();
            names.sort();
            for name in names {
                if let Some(why) = env::refused(name) {
                    return Err(GuardError::DangerousEnv {
                        name: name.escape_debug().to_string(),
                        why: why.to_string(),
                    });
                }
            }
        }
        let start = Start {
            // The known variables (an account's login variables) win over the request's.
            vars: job.env.iter().chain(&job.known).cloned().collect(),
            cwd: job.cwd.clone(),
        };
        let walked = walk::walk(job.command, &start)?;
        for invocation in &walked.invocations {
            for rule in &self.rules {
                if let Some(why) = rule.check(invocation) {
                    let why = if invocation.name_is_dynamic() {
                        format!(
                            "{why} (the command name `{}` is only known at run time, and its \
                             arguments match)",
                            invocation.fields.first().map_or("", |f| f.shown())
                        )
                    } else {
                        why
                    };
                    return Err(GuardError::Denied {
                        rule: rule.id(),
                        command: invocation.text.clone(),
                        via: invocation.via.clone(),
                        why,
                    });
                }
            }
        }
        let whole = short(job.command);
        if self.applies(&Rule::ForkBomb)
            && let Some(bomb) = walked.fork_bombs.first()
        {
            return Err(GuardError::Denied {
                rule: Rule::ForkBomb.id(),
                command: whole,
                via: bomb.via.clone(),
                why: bomb.why.clone(),
            });
        }
        if self.applies(&Rule::UncheckedCode)
            && let Some(unchecked) = walked.unchecked.first()
        {
            return Err(GuardError::Denied {
                rule: Rule::UncheckedCode.id(),
                command: whole,
                via: unchecked.via.clone(),
                why: format!(
                    "{}; text an interpreter runs must be readable before it runs",
                    unchecked.why
                ),
            });
        }
        if let Some(allowlist) = &self.allowlist {
            allowlist
                .check(&walked)
                .map_err(|refused| GuardError::Denied {
                    rule: "allowlist".into(),
                    command: refused.command,
                    via: refused.via,
                    why: refused.why,
                })?;
        }
        Ok(())
    }

    /// The refusal for a guard error on `host`.
    pub fn refusal(host: &Token, error: &GuardError) -> Refusal {
        Refusal::new(
            ErrorCode::Guard,
            format!("host {host}: the CommandGuard refused the command: {error}"),
        )
    }
}

/// A command shortened for messages.
fn short(text: &str) -> String {
    walk::shortened(text, 120)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard() -> Guard {
        Guard::new(&GuardConfig::default())
    }

    /// Commands the default rules must refuse, however they are dressed up.
    const BYPASSES: &[(&str, &str)] = &[
        ("rm -rf /", "recursive-delete"),
        ("rm -rf /*", "recursive-delete"),
        ("rm -fr --no-preserve-root /", "recursive-delete"),
        ("rm -r -f /etc", "recursive-delete"),
        ("rm --recursive /usr/", "recursive-delete"),
        ("rm -rf /usr/*", "recursive-delete"),
        ("rm -rf /tmp/../..", "recursive-delete"),
        ("rm -rf -- /home", "recursive-delete"),
        ("rm -Rf /lib64", "recursive-delete"),
        ("rm -rf /boot /var", "recursive-delete"),
        ("r''m -rf /", "recursive-delete"),
        ("\"rm\" -rf /", "recursive-delete"),
        ("'r'\"m\" -rf '/'", "recursive-delete"),
        ("\\rm -rf /", "recursive-delete"),
        ("$'\\x72\\x6d' -rf /", "recursive-delete"),
        ("/bin/rm -rf /", "recursive-delete"),
        ("/usr/bin/../bin/rm -rf /", "recursive-delete"),
        ("echo $(rm -rf /)", "recursive-delete"),
        ("echo \"$(rm -rf /)\"", "recursive-delete"),
        ("echo `rm -rf /`", "recursive-delete"),
        ("x=$(rm -rf /)", "recursive-delete"),
        ("echo ${x:-$(rm -rf /)}", "recursive-delete"),
        ("(( y = $(rm -rf /) ))", "recursive-delete"),
        ("eval 'rm -rf /'", "recursive-delete"),
        ("eval rm -rf /", "recursive-delete"),
        ("sh -c 'rm -rf /'", "recursive-delete"),
        ("bash -c \"rm -rf /\"", "recursive-delete"),
        ("bash -ec 'rm -rf /'", "recursive-delete"),
        ("/bin/sh -c 'cd / && rm -rf /'", "recursive-delete"),
        ("bash -c \"bash -c 'rm -rf /'\"", "recursive-delete"),
        ("echo ok\nrm -rf /", "recursive-delete"),
        ("echo ok;rm -rf /", "recursive-delete"),
        ("true && rm -rf /", "recursive-delete"),
        ("false || rm -rf /", "recursive-delete"),
        ("(rm -rf /)", "recursive-delete"),
        ("{ rm -rf /; }", "recursive-delete"),
        ("ls | rm -rf /", "recursive-delete"),
        ("rm -rf / &", "recursive-delete"),
        ("if true; then rm -rf /; fi", "recursive-delete"),
        ("for d in a; do rm -rf /; done", "recursive-delete"),
        ("f() { rm -rf /; }; f", "recursive-delete"),
        ("env rm -rf /", "recursive-delete"),
        ("env -i PATH=/bin rm -rf /", "recursive-delete"),
        ("env -S 'rm -rf /'", "recursive-delete"),
        ("sudo rm -rf /", "recursive-delete"),
        ("sudo -u root -E rm -rf /", "recursive-delete"),
        ("sudo sh -c 'rm -rf /'", "recursive-delete"),
        ("doas rm -rf /", "recursive-delete"),
        ("xargs rm -rf /", "recursive-delete"),
        ("echo x | xargs -0 rm -rf /", "recursive-delete"),
        ("nice -n 10 rm -rf /", "recursive-delete"),
        ("nohup rm -rf / &", "recursive-delete"),
        ("timeout -s KILL 10 rm -rf /", "recursive-delete"),
        ("exec rm -rf /", "recursive-delete"),
        ("command rm -rf /", "recursive-delete"),
        ("busybox rm -rf /", "recursive-delete"),
        ("time rm -rf /", "recursive-delete"),
        ("setsid rm -rf /", "recursive-delete"),
        ("su -c 'rm -rf /' root", "recursive-delete"),
        ("find /tmp -exec rm -rf / \\;", "recursive-delete"),
        ("watch rm -rf /", "recursive-delete"),
        ("trap 'rm -rf /' EXIT", "recursive-delete"),
        ("sh <<EOF\nrm -rf /\nEOF", "recursive-delete"),
        ("bash <<'X'\nrm -rf /\nX", "recursive-delete"),
        ("bash <<< 'rm -rf /'", "recursive-delete"),
        ("echo 'rm -rf /' | sh", "recursive-delete"),
        ("printf 'rm -rf /' | bash -s", "recursive-delete"),
        ("cat <<EOF | sh\nrm -rf /\nEOF", "recursive-delete"),
        ("{rm,-rf,/}", "recursive-delete"),
        ("rm${IFS}-rf${IFS}/", "recursive-delete"),
        ("$CMD -rf /", "recursive-delete"),
        ("$(echo rm) -rf /", "recursive-delete"),
        ("cat <(rm -rf /)", "recursive-delete"),
        ("chmod -R 777 /", "recursive-chmod-chown"),
        ("chown -R nobody /", "recursive-chmod-chown"),
        ("chgrp -R users /etc", "recursive-chmod-chown"),
        ("sudo chmod -R 000 /usr", "recursive-chmod-chown"),
        ("mkfs.ext4 /dev/sda1", "mkfs"),
        ("mkfs -t xfs /dev/vdb", "mkfs"),
        ("sudo /sbin/mkfs.xfs /dev/nvme0n1", "mkfs"),
        ("wipefs -a /dev/sda", "mkfs"),
        ("dd if=/dev/zero of=/dev/sda bs=1M", "block-device-write"),
        ("dd if=x of=/dev/nvme0n1", "block-device-write"),
        ("cat image > /dev/sda", "block-device-write"),
        ("echo x >/dev/mapper/vg-root", "block-device-write"),
        ("shred -n1 /dev/vda", "block-device-write"),
        ("shutdown -h now", "power"),
        ("reboot", "power"),
        ("sudo poweroff", "power"),
        ("/sbin/halt -f", "power"),
        ("init 0", "power"),
        ("init 6", "power"),
        ("telinit 6", "power"),
        ("systemctl reboot", "power"),
        ("systemctl --force poweroff", "power"),
        ("ssh-keygen -q; reboot", "power"),
        (":(){ :|:& };:", "fork-bomb"),
        ("bomb() { bomb | bomb & }; bomb", "fork-bomb"),
        ("x(){ x|x & }; x", "fork-bomb"),
    ];

    /// Ordinary commands the default rules must let through.
    const ORDINARY: &[&str] = &[
        "rm -rf /tmp/build",
        "rm -rf ./build /tmp/cache",
        "rm -f /etc/nginx/sites-enabled/default",
        "rm -rf \"$BUILD_DIR\"",
        "rm -rf /usr/local/src/app",
        "ls -la /",
        "ls -R /etc",
        "grep -r foo /etc",
        "dd if=/dev/zero of=/tmp/x bs=1M count=1",
        "dd if=/dev/sda of=/tmp/mbr bs=512 count=1",
        "echo \"rm -rf /\"",
        "echo 'rm -rf /'",
        "printf '%s\\n' 'reboot'",
        "grep -c reboot /var/log/syslog",
        "systemctl status nginx",
        "systemctl restart nginx",
        "journalctl -u nginx --since today | tail -n 50",
        "chmod -R g+w /srv/app",
        "chown -R www-data: /var/www/site",
        "find /var/log -name '*.gz' -mtime +30 -delete",
        "find . -name '*.o' -exec rm -f {} +",
        "tar czf /tmp/etc.tgz /etc",
        "cat /etc/passwd > /dev/null",
        "echo hi >/dev/stderr",
        "df -h; free -m; uptime",
        "for f in /var/log/*.log; do wc -l \"$f\"; done",
        "if [[ -f /etc/os-release ]]; then . /etc/os-release; echo $ID; fi",
        "case $x in a) echo a;; *) echo other;; esac",
        "x=$((1+2)); echo $x",
        "arr=(a b c); echo ${arr[@]}",
        "cat <<EOF > /tmp/conf\nkey = value\nEOF",
        "diff <(sort a) <(sort b)",
        "sudo -u postgres psql -c 'select 1'",
        "bash -c 'echo hi'",
        "f() { echo hi; }; f | cat",
        "xargs -n1 echo < list.txt",
        "kill -TERM 1234",
        "mkdir -p /tmp/a/b && cd /tmp/a",
        "python3 -c 'print(1)'",
        "docker ps --format '{{.Names}}'",
    ];

    #[test]
    fn bypass_attempts_are_refused_naming_the_rule() {
        let guard = guard();
        let mut missed = Vec::new();
        for (command, rule) in BYPASSES {
            match guard.check(command) {
                Err(GuardError::Denied { rule: got, .. }) if got == *rule => {}
                other => missed.push(format!("{command:?}: expected {rule}, got {other:?}")),
            }
        }
        assert!(missed.is_empty(), "{}", missed.join("\n"));
    }

    #[test]
    fn ordinary_commands_are_allowed() {
        let guard = guard();
        let refused: Vec<String> = ORDINARY
            .iter()
            .filter_map(|c| guard.check(c).err().map(|e| format!("{c:?}: {e}")))
            .collect();
        assert!(refused.is_empty(), "{}", refused.join("\n"));
    }

    #[test]
    fn a_refusal_names_the_rule_the_command_and_its_carriers() {
        let err = guard().check("sudo sh -c 'ls; rm -rf /'").unwrap_err();
        let text = err.to_string();
        assert!(text.contains("recursive-delete"), "{text}");
        assert!(text.contains("rm -rf /"), "{text}");
        assert!(text.contains("sudo → sh -c"), "{text}");
        assert_eq!(err.rule(), "recursive-delete");
        let host = Token::parse("host id", "db-1").expect("token");
        let refusal = Guard::refusal(&host, &err);
        assert_eq!(refusal.code, ErrorCode::Guard);
        assert!(refusal.message.starts_with("host db-1:"), "{refusal:?}");
    }

    #[test]
    fn a_command_that_does_not_parse_is_refused_with_the_parse_error() {
        let err = guard().check("if true; then echo").unwrap_err();
        assert!(matches!(err, GuardError::Unreadable(_)), "{err:?}");
        assert!(err.to_string().contains("does not parse"), "{err}");
        let err = guard().check("bash -c 'echo $('").unwrap_err();
        assert!(err.to_string().contains("bash -c"), "{err}");
    }

    #[test]
    fn the_host_extends_disables_or_switches_off_the_guard() {
        let config = GuardConfig {
            enabled: true,
            deny: vec!["iptables -F".into(), "systemctl stop *".into()],
            disable: vec!["power".into()],
            ..GuardConfig::default()
        };
        assert!(config.problems().is_empty());
        let guard = Guard::new(&config);
        let err = guard.check("sudo iptables -t nat -F").unwrap_err();
        assert!(err.to_string().contains("host rule `iptables -F`"), "{err}");
        assert!(guard.check("systemctl stop nginx").is_err());
        assert!(guard.check("systemctl start nginx").is_ok());
        assert!(guard.check("reboot").is_ok());
        assert!(guard.check("rm -rf /").is_err());
        let off = Guard::new(&GuardConfig {
            enabled: false,
            ..GuardConfig::default()
        });
        assert!(off.check("rm -rf /").is_ok());
        let bad = GuardConfig {
            deny: vec!["rm [x".into()],
            disable: vec!["no-such-rule".into()],
            ..GuardConfig::default()
        };
        assert_eq!(bad.problems().len(), 2);
    }

    #[test]
    fn a_dangerous_request_variable_is_refused_by_name() {
        let job = Job {
            command: "true",
            env: vec![
                ("GREETING".into(), "hi".into()),
                ("BASH_ENV".into(), "/tmp/x".into()),
            ],
            ..Job::default()
        };
        let err = guard().check_job(&job).unwrap_err();
        assert_eq!(
            err,
            GuardError::DangerousEnv {
                name: "BASH_ENV".into(),
                why: env::refused("BASH_ENV").expect("refused").into(),
            }
        );
        assert!(err.to_string().contains("`BASH_ENV`"), "{err}");
        let harmless = Job {
            command: "echo \"$GREETING\"",
            env: vec![("GREETING".into(), "hi".into())],
            ..Job::default()
        };
        assert!(guard().check_job(&harmless).is_ok());
        // Switched off with the rule.
        let lax = Guard::new(&GuardConfig {
            disable: vec!["dangerous-env".into()],
            ..GuardConfig::default()
        });
        assert!(lax.check_job(&job).is_ok());
    }

    #[test]
    fn the_request_environment_and_directory_are_known_to_the_rules() {
        let job = |command, env: &[(&str, &str)], cwd: Option<&str>| Job {
            command,
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            known: Vec::new(),
            cwd: cwd.map(str::to_string),
        };
        let guard = guard();
        assert!(
            guard
                .check_job(&job("rm -rf \"$D\"", &[("D", "/")], None))
                .is_err()
        );
        assert!(
            guard
                .check_job(&job("rm -rf \"$D\"", &[("D", "/tmp/x")], None))
                .is_ok()
        );
        assert!(guard.check_job(&job("rm -rf *", &[], Some("/"))).is_err());
        assert!(
            guard
                .check_job(&job("rm -rf *", &[], Some("/srv/app")))
                .is_ok()
        );
    }

    fn allowlist(allow: &[&str]) -> Guard {
        Guard::new(&GuardConfig {
            mode: Mode::Allowlist,
            allow: allow.iter().map(|s| s.to_string()).collect(),
            allow_redirects: vec!["/tmp/*".into()],
            ..GuardConfig::default()
        })
    }

    #[test]
    fn allowlist_mode_runs_only_listed_commands_with_allowed_arguments() {
        let guard = allowlist(&[
            "systemctl status *",
            "systemctl restart nginx",
            "journalctl -u * ...",
            "tail -n * /var/log/*",
            "grep ... /var/log/**",
            "sudo systemctl restart nginx",
            "df -h",
            "head ...",
        ]);
        assert_eq!(guard.mode(), Mode::Allowlist);
        for allowed in [
            "systemctl status nginx",
            "/usr/bin/systemctl status nginx",
            "systemctl restart nginx",
            "journalctl -u nginx --since today | head -n 5",
            "tail -n 100 /var/log/syslog",
            "grep -i error /var/log/nginx/error.log",
            "sudo systemctl restart nginx",
            "df -h > /tmp/df.txt",
            "df -h 2>/dev/null",
            "systemctl status \"$UNIT\"",
        ] {
            assert!(
                guard.check(allowed).is_ok(),
                "{allowed}: {:?}",
                guard.check(allowed)
            );
        }
        for (refused, needle) in [
            ("systemctl stop nginx", "no allowed pattern for `systemctl`"),
            ("rm -rf /tmp/x", "`rm` is not in this host's allowlist"),
            ("tail -n 5 /var/log/../../etc/shadow", "no allowed pattern"),
            ("tail -n 5 /var/log/x/y", "no allowed pattern"),
            ("./systemctl status x", "no allowed pattern"),
            ("/tmp/systemctl status x", "no allowed pattern"),
            ("sh -c 'systemctl status nginx'", "runs text as shell code"),
            ("eval systemctl status nginx", "runs text as shell code"),
            ("$X status nginx", "only known at run time"),
            ("systemctl status $UNITS", "no allowed pattern"),
            (
                "df -h > /etc/motd",
                "redirection to `/etc/motd` is not allowed",
            ),
            ("PATH=/tmp systemctl status nginx", "assigning `PATH`"),
            ("systemctl status nginx; reboot", "`reboot`"),
            (
                "systemctl status $(cat /etc/shadow)",
                "`cat` is not in this host's allowlist",
            ),
        ] {
            let err = guard.check(refused).expect_err(refused);
            assert!(
                err.to_string().contains(needle) && matches!(err.rule(), "allowlist" | "power"),
                "{refused}: {err}"
            );
        }
        // Deny rules still apply, naming their own rule.
        let lax = allowlist(&["rm ..."]);
        assert_eq!(
            lax.check("rm -rf /").unwrap_err().rule(),
            "recursive-delete"
        );
    }

    #[test]
    fn the_documented_production_allowlist_is_valid_and_holds() {
        let doc = include_str!("../../../docs/security.md");
        let start = doc
            .find("```toml\n[guard]\nmode = \"allowlist\"")
            .expect("the allowlist example in docs/security.md");
        let block = &doc[start + "```toml\n".len()..];
        let block = &block[..block.find("```").expect("closed")];
        let table: toml::Table = toml::from_str(block).expect("the example is TOML");
        let mut config = GuardConfig::default();
        let problems = config.read_toml(&table["guard"], "docs/security.md");
        assert!(
            problems.is_empty() && config.problems().is_empty(),
            "{problems:?}"
        );
        let guard = Guard::new(&config);
        for allowed in [
            "journalctl -u nginx --since today | grep -i error | sort | uniq -c | sort -rn | head -n 20",
            "tail -n 200 /var/log/nginx/error.log | grep -i 502 | wc -l",
            "grep -i upstream /var/log/nginx/error.log",
            "df -h; free -m; uptime",
            "sudo systemctl restart nginx",
        ] {
            assert!(
                guard.check(allowed).is_ok(),
                "{allowed}: {:?}",
                guard.check(allowed)
            );
        }
        for refused in [
            "grep -i root /etc/shadow",
            "grep -i root /etc/shadow /var/log/nginx/error.log",
            "tail -n 5 /var/log/nginx/../../../etc/shadow",
            "systemctl stop nginx",
            "bash -c uptime",
            "df -h > /etc/motd",
        ] {
            assert_eq!(
                guard.check(refused).map_err(|e| e.rule().to_string()),
                Err("allowlist".into()),
                "{refused}"
            );
        }
    }

    #[test]
    fn guard_settings_are_checked() {
        let mut config = GuardConfig::default();
        let value: toml::Value = toml::from_str::<toml::Table>(
            "mode = \"allowlist\"\nallow = [\"systemctl status *\", \"cat [x\"]\n\
             allow_redirects = [\"tmp/*\"]\ncolour = 1\nenabled = \"yes\"\n",
        )
        .expect("toml")
        .into();
        let problems = config.read_toml(&value, "agent.toml");
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert_eq!(config.mode, Mode::Allowlist);
        let problems = config.problems();
        assert!(
            problems.iter().any(|p| p.contains("cat [x")),
            "{problems:?}"
        );
        assert!(problems.iter().any(|p| p.contains("tmp/*")), "{problems:?}");
        let empty = GuardConfig {
            mode: Mode::Allowlist,
            ..GuardConfig::default()
        };
        assert!(empty.problems()[0].contains("needs guard.allow"));
        let stray = GuardConfig {
            allow: vec!["ls".into()],
            ..GuardConfig::default()
        };
        assert!(stray.problems()[0].contains("only apply"));
    }
}
