//! The CommandGuard: parses a command with a real shell parser and refuses it when any simple command it can run matches a deny rule.
//!
//! The command is parsed as bash by `brush-parser` (the parser of the brush shell); a command
//! that does not parse is refused with the parse error. [`walk`] finds every simple command the
//! program can run — through pipelines, lists, subshells, substitutions, functions and the
//! carriers that run commands given to them (`sh -c`, `eval`, `sudo`, `env`, `xargs`, …) — and
//! [`rules`] says which are denied. A refusal names the rule and the offending command.
//!
//! The guard is a guard rail against accidents and careless prompts, not the security boundary:
//! what a command computes at run time (`$var`, `$(…)` output, a script file's contents) is not
//! known to it. The boundary is the account the command runs as (run-as) and the tier.

pub mod rules;
pub mod walk;

use execmesh_proto::Token;
use execmesh_proto::pb::ErrorCode;

use crate::request::Refusal;
use rules::{DEFAULT_RULES, Pattern, Rule};
use walk::{Invocation, WalkError};

/// The host's `[guard]` settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuardConfig {
    /// Check commands at all.
    pub enabled: bool,
    /// Host rules (see [`rules`] for the syntax), checked after the defaults.
    pub deny: Vec<String>,
    /// Ids of default rules this host does not apply (`power` on a host that may reboot).
    pub disable: Vec<String>,
}

impl Default for GuardConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            deny: Vec::new(),
            disable: Vec::new(),
        }
    }
}

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
        problems
    }
}

/// Why the guard refused a command.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GuardError {
    /// The command (or one it carries) does not parse, or nests too deep.
    #[error("{0}; a command the guard cannot read is refused")]
    Unreadable(#[from] WalkError),
    /// A rule matched.
    #[error("rule {rule} refused `{command}`{}: {why}", carriers(.via))]
    Denied {
        /// The rule's id (`recursive-delete`, ``host rule `iptables -F` ``).
        rule: String,
        /// The offending simple command.
        command: String,
        /// The carriers it was inside, outermost first.
        via: Vec<String>,
        /// What the rule saw, in words.
        why: String,
    },
}

fn carriers(via: &[String]) -> String {
    if via.is_empty() {
        String::new()
    } else {
        format!(" (inside {})", via.join(" → "))
    }
}

/// The guard of one host.
#[derive(Debug, Clone)]
pub struct Guard {
    enabled: bool,
    rules: Vec<Rule>,
}

// === impl Guard ===

impl Guard {
    /// The guard for `config`. Host rules that do not parse (the configuration check reports
    /// them) are left out.
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
        }
    }

    /// Whether the guard checks commands.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Checks a command as `bash -c` would run it.
    pub fn check(&self, command: &str) -> Result<(), GuardError> {
        if !self.enabled {
            return Ok(());
        }
        let walked = walk::walk(command)?;
        if self.rules.contains(&Rule::ForkBomb)
            && let Some(bomb) = walked.fork_bombs.first()
        {
            return Err(GuardError::Denied {
                rule: Rule::ForkBomb.id(),
                command: command.trim().to_string(),
                via: bomb.via.clone(),
                why: format!(
                    "function `{}` calls itself in a pipeline or in the background",
                    bomb.function
                ),
            });
        }
        for invocation in &walked.invocations {
            self.check_invocation(invocation)?;
        }
        Ok(())
    }

    fn check_invocation(&self, invocation: &Invocation) -> Result<(), GuardError> {
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
}
