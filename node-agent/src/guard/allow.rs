//! Allowlist mode: only the commands a host lists may run, each with the arguments its patterns allow.
//!
//! An entry is a pattern like a host deny rule — the command, then one glob per argument,
//! separated by spaces — but it must match the *whole* command: every argument, in order.
//! `...` stands for any number of arguments (none included). An argument glob starting with `/`
//! is matched against the argument's normal path, component by component (`*` does not cross
//! `/`), so `/var/log/*` allows `/var/log/syslog` but not `/var/log/../../etc/shadow`. `*`
//! alone allows one argument of any value, also one only known at run time if it cannot split
//! into several words.
//!
//! The command name: an entry naming a bare program (`systemctl`) allows it when it is called
//! by name or by its path in a system directory (`/usr/bin/systemctl`), not from anywhere else
//! (`./systemctl`, `/tmp/systemctl`); an entry with a path allows exactly that program.
//!
//! Every simple command of the program must match an entry: the commands in pipelines,
//! lists, substitutions and function bodies, and the commands wrappers run (`sudo systemctl
//! …` needs an entry for `sudo …` and one for `systemctl …`). A command whose name is only
//! known at run time, and any command that runs text as code (`sh -c`, `eval`, `source`,
//! `trap`, a shell reading its input, `alias`, `mapfile -C`), is refused. File redirections must
//! name a path allowed by `allow_redirects` (`/dev/null` by default). Assignments to the
//! variables a request may not set (`PATH`, `LD_PRELOAD`, `BASH_ENV`, …) are refused.

use super::env;
use super::glob::{command_globs, glob_match, has_extglob};
use super::path::View;
use super::walk::Walked;
use super::word::{Carrier, Field, Invocation, basename};

/// Directories where a program called by its path is the program an entry names.
const SYSTEM_BIN_DIRS: &[&str] = &[
    "/usr/local/sbin",
    "/usr/local/bin",
    "/usr/sbin",
    "/usr/bin",
    "/sbin",
    "/bin",
];

/// Redirection targets always allowed.
const DEFAULT_REDIRECTS: &[&str] = &["/dev/null"];

/// One allowed command pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The pattern as written.
    pub text: String,
    name: String,
    args: Vec<String>,
}

/// Why allowlist mode refused a command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// The command, as written.
    pub command: String,
    /// The carriers it was inside.
    pub via: Vec<String>,
    /// Why, in words.
    pub why: String,
}

/// A host's allowlist.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allowlist {
    entries: Vec<Entry>,
    redirects: Vec<String>,
}

// === impl Entry ===

impl Entry {
    /// Parses an entry; the error says what is wrong with it.
    pub fn parse(text: &str) -> Result<Entry, String> {
        let (name, args) = command_globs(text, "an entry names at least a command")?;
        if name == "..." {
            return Err("the command name must be a program, not `...`".into());
        }
        Ok(Entry {
            text: text.split_whitespace().collect::<Vec<_>>().join(" "),
            name: name.to_string(),
            args,
        })
    }

    fn names(&self, invocation: &Invocation) -> bool {
        let Some(Field::Static(name)) = invocation.fields.first() else {
            return false;
        };
        if self.name.contains('/') {
            return views_all_match(&self.name, invocation, &Field::Static(name.clone()));
        }
        if !glob_match(&self.name, basename(name)) {
            return false;
        }
        if !name.contains('/') {
            return true;
        }
        let views = invocation.views(&Field::Static(name.clone()));
        !views.is_empty()
            && views.into_iter().all(|view| match view {
                View::Abs(path) => path
                    .rsplit_once('/')
                    .is_some_and(|(dir, _)| SYSTEM_BIN_DIRS.contains(&dir)),
                View::Ancestor(_) => false,
            })
    }

    fn matches(&self, invocation: &Invocation) -> bool {
        self.names(invocation) && args_match(&self.args, invocation.args(), invocation)
    }
}

/// Whether the argument patterns match all of `args`.
fn args_match(patterns: &[String], args: &[Field], invocation: &Invocation) -> bool {
    match patterns.split_first() {
        None => args.is_empty(),
        Some((first, rest)) if first == "..." => {
            (0..=args.len()).any(|skip| args_match(rest, &args[skip..], invocation))
        }
        Some((first, rest)) => match args.split_first() {
            Some((arg, more)) => {
                arg_matches(first, arg, invocation) && args_match(rest, more, invocation)
            }
            None => false,
        },
    }
}

fn arg_matches(glob: &str, arg: &Field, invocation: &Invocation) -> bool {
    match arg {
        Field::Dynamic(d) => glob == "*" && !d.splits,
        Field::Static(value) if glob.starts_with('/') => {
            !has_extglob(value) && views_all_match(glob, invocation, arg)
        }
        Field::Static(value) => glob_match(glob, value),
    }
}

/// Whether every path `field` may name matches `glob`, component by component.
fn views_all_match(glob: &str, invocation: &Invocation, field: &Field) -> bool {
    let views = invocation.views(field);
    !views.is_empty()
        && views.iter().all(|view| match view {
            View::Abs(path) => path_matches(glob, path),
            View::Ancestor(_) => false,
        })
}

/// Component-wise glob match of a normal path; `**` matches any number of components.
pub fn path_matches(glob: &str, path: &str) -> bool {
    let globs: Vec<&str> = glob.split('/').filter(|p| !p.is_empty()).collect();
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    fn go(globs: &[&str], parts: &[&str]) -> bool {
        match globs.split_first() {
            None => parts.is_empty(),
            Some((&"**", rest)) => (0..=parts.len()).any(|skip| go(rest, &parts[skip..])),
            Some((g, rest)) => match parts.split_first() {
                Some((p, more)) => glob_match(g, p) && go(rest, more),
                None => false,
            },
        }
    }
    go(&globs, &parts)
}

// === impl Allowlist ===

impl Allowlist {
    /// The allowlist of `entries` (those that do not parse are left out: the configuration
    /// check reports them) and allowed redirection targets.
    pub fn new(entries: &[String], redirects: &[String]) -> Allowlist {
        Allowlist {
            entries: entries
                .iter()
                .filter_map(|e| Entry::parse(e).ok())
                .collect(),
            redirects: DEFAULT_REDIRECTS
                .iter()
                .map(|r| r.to_string())
                .chain(redirects.iter().cloned())
                .collect(),
        }
    }

    /// The first command of `walked` the allowlist does not allow.
    pub fn check(&self, walked: &Walked) -> Result<(), Refused> {
        for invocation in &walked.invocations {
            if let Some(why) = self.refusal(invocation) {
                return Err(Refused {
                    command: invocation.text.clone(),
                    via: invocation.via.clone(),
                    why,
                });
            }
        }
        Ok(())
    }

    fn refusal(&self, invocation: &Invocation) -> Option<String> {
        for (name, _) in &invocation.assignments {
            let base = name.split('[').next().unwrap_or(name);
            if env::refused(base).is_some() || matches!(base, "BASH_ALIASES" | "BASH_CMDS") {
                return Some(format!(
                    "assigning `{base}` changes how commands run, which allowlist mode refuses"
                ));
            }
        }
        for redirect in &invocation.redirects {
            let allowed = match &redirect.target {
                Field::Static(target) if target.parse::<u32>().is_ok() || target == "-" => true,
                field @ Field::Static(_) => self
                    .redirects
                    .iter()
                    .any(|glob| views_all_match(glob, invocation, field)),
                Field::Dynamic(_) => false,
            };
            if !allowed {
                return Some(format!(
                    "the redirection to `{}` is not allowed (allowed: {})",
                    redirect.target.shown(),
                    self.redirects.join(", ")
                ));
            }
        }
        let first = invocation.fields.first()?;
        if let Field::Dynamic(d) = first {
            return Some(format!(
                "the command name `{}` is only known at run time, which allowlist mode refuses",
                d.shown
            ));
        }
        if invocation.carries == Some(Carrier::Code) {
            return Some(format!(
                "`{}` runs text as shell code, which allowlist mode refuses",
                invocation.name().unwrap_or_default()
            ));
        }
        if self.entries.iter().any(|entry| entry.matches(invocation)) {
            return None;
        }
        let name = invocation.name().unwrap_or_default();
        let for_name: Vec<&str> = self
            .entries
            .iter()
            .filter(|e| glob_match(&e.name, name) || basename(&e.name) == name)
            .map(|e| e.text.as_str())
            .collect();
        Some(if for_name.is_empty() {
            format!("`{name}` is not in this host's allowlist")
        } else {
            format!(
                "its arguments match no allowed pattern for `{name}` ({})",
                for_name.join("; ")
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_match_component_by_component() {
        assert!(path_matches("/var/log/*", "/var/log/syslog"));
        assert!(!path_matches("/var/log/*", "/var/log/nginx/access.log"));
        assert!(path_matches("/var/log/**", "/var/log/nginx/access.log"));
        assert!(!path_matches("/var/log/*", "/etc/shadow"));
        assert!(path_matches("/dev/null", "/dev/null"));
    }

    #[test]
    fn entries_parse() {
        assert!(Entry::parse("systemctl status *").is_ok());
        assert!(Entry::parse("").is_err());
        assert!(Entry::parse("... x").is_err());
        assert!(Entry::parse("cat /var/log/[").is_err());
    }
}
