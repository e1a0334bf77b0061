//! The CommandGuard's deny rules: the defaults, the host's own (`[guard] deny`), and how each matches one invocation.
//!
//! Default rules, by id:
//!
//! - `recursive-delete`: `rm -r`/`-R`/`--recursive` of `/`, a top-level system directory
//!   (`/bin`, `/boot`, `/dev`, `/etc`, `/home`, `/lib*`, `/opt`, `/root`, `/sbin`, `/srv`,
//!   `/usr`, `/var`), a glob reaching one (`/*`, `/e*`), or everything in one (`/usr/*`).
//! - `recursive-chmod-chown`: `chmod`, `chown` or `chgrp` with `-R` on the same paths.
//! - `mkfs`: `mkfs`, `mkfs.*`, `mke2fs`, `wipefs`.
//! - `block-device-write`: `dd of=/dev/<disk>`, `shred /dev/<disk>`, or an output redirection
//!   onto a disk device (`sd*`, `nvme*`, `vd*`, `xvd*`, `hd*`, `mmcblk*`, `md*`, `dm-*`,
//!   `loop*`, `nbd*`, `mapper/*`, `disk/*`, `mem`, …).
//! - `power`: `shutdown`, `reboot`, `poweroff`, `halt`, `init`/`telinit` 0, 1, 6 or s,
//!   `systemctl poweroff|reboot|halt|kexec|soft-reboot|rescue|emergency`.
//! - `fork-bomb`: a function that calls itself in a pipeline or in the background, whatever it
//!   is called (`:(){ :|:& };:`).
//!
//! A host rule is a pattern: the command name, then arguments, each a glob (`*`, `?`, `[…]`),
//! separated by spaces. It denies a command whose name (without its directory) matches the first
//! glob and whose arguments contain, in this order but not necessarily next to each other, an
//! argument matching each further glob: `iptables -F`, `systemctl stop *`, `docker system
//! prune*`, `kubectl delete namespace *`.
//!
//! When the command name is only known at run time (`$cmd -rf /`), the rules that look at
//! arguments are checked as if it could be any command; rules that look at the name only are
//! not (otherwise every `"$cmd"` would be refused).

use super::walk::{Field, Invocation, basename};

/// Top-level directories whose recursive delete (or chmod/chown) is denied, besides `/`.
const SYSTEM_DIRS: &[&str] = &[
    "bin", "boot", "dev", "etc", "home", "lib", "lib32", "lib64", "libx32", "opt", "root", "sbin",
    "srv", "usr", "var",
];

/// Device names under `/dev` that are disks (or raw memory).
const DISK_DEVICES: &[&str] = &[
    "sd*", "hd*", "vd*", "xvd*", "nvme*", "mmcblk*", "md*", "dm-*", "loop*", "nbd*", "zram*",
    "rbd*", "sr*", "mapper/*", "disk/*", "root", "mem", "kmem", "port",
];

/// Ids of the default rules, in the order they are checked.
pub const DEFAULT_RULES: &[&str] = &[
    "recursive-delete",
    "recursive-chmod-chown",
    "mkfs",
    "block-device-write",
    "power",
    "fork-bomb",
];

/// One deny rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rule {
    RecursiveDelete,
    RecursiveOwnership,
    Mkfs,
    BlockDeviceWrite,
    Power,
    /// Matched on the walk's fork-bomb findings, not on invocations.
    ForkBomb,
    /// A host rule from `[guard] deny`.
    Host(Pattern),
}

/// A host rule: a name glob and argument globs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    /// The rule as written.
    pub text: String,
    name: String,
    args: Vec<String>,
}

// === impl Pattern ===

impl Pattern {
    /// Parses a host rule; the error says what is wrong with it.
    pub fn parse(text: &str) -> Result<Pattern, String> {
        let mut words = text.split_whitespace();
        let name = words
            .next()
            .ok_or_else(|| "a rule names at least a command".to_string())?;
        let args: Vec<String> = words.map(str::to_string).collect();
        for glob in std::iter::once(name).chain(args.iter().map(String::as_str)) {
            check_glob(glob).map_err(|e| format!("`{glob}`: {e}"))?;
        }
        Ok(Pattern {
            text: text.split_whitespace().collect::<Vec<_>>().join(" "),
            name: name.to_string(),
            args,
        })
    }

    fn matches(&self, invocation: &Invocation) -> bool {
        match invocation.fields.first() {
            Some(Field::Static(name)) => {
                if !glob_match(&self.name, basename(name)) && !glob_match(&self.name, name) {
                    return false;
                }
            }
            // Any command could be meant: only a rule about its arguments can tell.
            Some(Field::Dynamic(_)) if !self.args.is_empty() => {}
            _ => return false,
        }
        let mut args = invocation.args().iter().filter_map(Field::known);
        self.args
            .iter()
            .all(|glob| args.by_ref().any(|arg| glob_match(glob, arg)))
    }
}

// === impl Rule ===

impl Rule {
    /// The default rule with `id`.
    pub fn default_rule(id: &str) -> Option<Rule> {
        Some(match id {
            "recursive-delete" => Rule::RecursiveDelete,
            "recursive-chmod-chown" => Rule::RecursiveOwnership,
            "mkfs" => Rule::Mkfs,
            "block-device-write" => Rule::BlockDeviceWrite,
            "power" => Rule::Power,
            "fork-bomb" => Rule::ForkBomb,
            _ => return None,
        })
    }

    /// The rule's name in refusals.
    pub fn id(&self) -> String {
        match self {
            Rule::RecursiveDelete => "recursive-delete".into(),
            Rule::RecursiveOwnership => "recursive-chmod-chown".into(),
            Rule::Mkfs => "mkfs".into(),
            Rule::BlockDeviceWrite => "block-device-write".into(),
            Rule::Power => "power".into(),
            Rule::ForkBomb => "fork-bomb".into(),
            Rule::Host(p) => format!("host rule `{}`", p.text),
        }
    }

    /// Why the rule denies `invocation`, or `None` if it does not.
    pub fn check(&self, invocation: &Invocation) -> Option<String> {
        let name = invocation.name();
        let any_name = invocation.name_is_dynamic();
        let args = invocation.args();
        match self {
            Rule::RecursiveDelete => {
                let applies = any_name || name == Some("rm");
                let (options, operands) = split_options(args);
                (applies && options.iter().any(|o| recursive(o, "rR")))
                    .then(|| system_path(&operands))
                    .flatten()
                    .map(|p| format!("recursive delete of the system path {p}"))
            }
            Rule::RecursiveOwnership => {
                let applies = any_name || matches!(name, Some("chmod" | "chown" | "chgrp"));
                let (options, operands) = split_options(args);
                (applies && options.iter().any(|o| recursive(o, "R")))
                    .then(|| system_path(&operands))
                    .flatten()
                    .map(|p| format!("recursive change of owner or mode of the system path {p}"))
            }
            Rule::Mkfs => {
                let name = name?;
                (glob_match("mkfs*", name) || matches!(name, "mke2fs" | "wipefs"))
                    .then(|| format!("`{name}` erases a file system"))
            }
            Rule::BlockDeviceWrite => {
                if let Some(target) = invocation.writes_to.iter().find_map(disk) {
                    return Some(format!("output redirected onto the disk device {target}"));
                }
                if any_name || name == Some("dd") {
                    let of = args
                        .iter()
                        .filter_map(Field::known)
                        .filter_map(|a| a.strip_prefix("of="))
                        .find(|path| is_disk(path));
                    if let Some(of) = of {
                        return Some(format!("`dd` writing onto the disk device {of}"));
                    }
                }
                if name == Some("shred") {
                    let (_, operands) = split_options(args);
                    if let Some(device) = operands.iter().copied().find(|p| is_disk(p)) {
                        return Some(format!("`shred` of the disk device {device}"));
                    }
                }
                None
            }
            Rule::Power => {
                let name = name?;
                let first = args.first().and_then(Field::known);
                match name {
                    "shutdown" | "reboot" | "poweroff" | "halt" => {
                        Some(format!("`{name}` takes the host down"))
                    }
                    "init" | "telinit" if matches!(first, Some("0" | "1" | "6" | "s" | "S")) => {
                        Some(format!(
                            "`{name} {}` changes the run level",
                            first.unwrap_or("")
                        ))
                    }
                    "systemctl" => {
                        let verb = args
                            .iter()
                            .filter_map(Field::known)
                            .find(|a| !a.starts_with('-'))?;
                        matches!(
                            verb,
                            "poweroff"
                                | "reboot"
                                | "halt"
                                | "kexec"
                                | "soft-reboot"
                                | "rescue"
                                | "emergency"
                        )
                        .then(|| format!("`systemctl {verb}` takes the host down"))
                    }
                    _ => None,
                }
            }
            Rule::ForkBomb => None,
            Rule::Host(pattern) => pattern
                .matches(invocation)
                .then(|| "denied by this host's configuration".to_string()),
        }
    }
}

/// Options (before `--`, starting with `-`) and the known operands.
fn split_options(args: &[Field]) -> (Vec<&str>, Vec<&str>) {
    let mut options = Vec::new();
    let mut operands = Vec::new();
    let mut after_dashes = false;
    for arg in args.iter().filter_map(Field::known) {
        if !after_dashes && arg == "--" {
            after_dashes = true;
        } else if !after_dashes && arg.len() > 1 && arg.starts_with('-') {
            options.push(arg);
        } else {
            operands.push(arg);
        }
    }
    (options, operands)
}

/// `--recursive`, or a short-option cluster with one of `letters` (`-rf`, `-fR`).
fn recursive(option: &str, letters: &str) -> bool {
    option == "--recursive"
        || (!option.starts_with("--") && option[1..].chars().any(|c| letters.contains(c)))
}

/// The first operand that is, or reaches, a protected system path; as normalised.
fn system_path(operands: &[&str]) -> Option<String> {
    operands.iter().find_map(|op| protected(op))
}

/// `Some(normalised path)` if deleting `path` recursively would remove `/`, a system
/// directory, or everything in one.
fn protected(path: &str) -> Option<String> {
    if !path.starts_with('/') {
        return None;
    }
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            other => parts.push(other),
        }
    }
    let shown = format!("/{}", parts.join("/"));
    let glob_at = parts.iter().position(|p| is_glob(p));
    match (parts.as_slice(), glob_at) {
        ([], _) => Some(shown),
        ([dir], None) if is_system_dir(dir) => Some(shown),
        // `/*`, `/e*`, `/[eu]*`: a glob right under `/` reaching a system directory.
        ([glob, ..], Some(0)) if SYSTEM_DIRS.iter().any(|d| glob_match(glob, d)) => Some(shown),
        // `/usr/*`: everything in a system directory.
        ([dir, glob], Some(1)) if is_system_dir(dir) && matches_everything(glob) => Some(shown),
        _ => None,
    }
}

fn is_system_dir(name: &str) -> bool {
    SYSTEM_DIRS.contains(&name) || name.starts_with("lib")
}

/// A glob that matches any name (`*`, `?*`, `*[!.]*`…), judged by a few unlike names.
fn matches_everything(glob: &str) -> bool {
    ["bin", "x.conf", "a", "Zz-9"]
        .iter()
        .all(|name| glob_match(glob, name))
}

fn is_glob(s: &str) -> bool {
    s.contains(['*', '?', '['])
}

fn disk(field: &Field) -> Option<&str> {
    field.known().filter(|p| is_disk(p))
}

/// `/dev/<disk>` (after `//` and `/./` are folded).
fn is_disk(path: &str) -> bool {
    let parts: Vec<&str> = path
        .split('/')
        .filter(|p| !p.is_empty() && *p != ".")
        .collect();
    let ["dev", device @ ..] = parts.as_slice() else {
        return false;
    };
    let device = device.join("/");
    !device.is_empty() && DISK_DEVICES.iter().any(|g| glob_match(g, &device))
}

/// Checks that brackets in a glob are closed.
fn check_glob(glob: &str) -> Result<(), String> {
    let mut chars = glob.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                chars.next();
            }
            '[' if !chars.by_ref().skip(1).any(|c| c == ']') => {
                return Err("`[` without a closing `]`".into());
            }
            _ => {}
        }
    }
    Ok(())
}

/// Shell-style glob match of the whole `text`: `*`, `?`, `[abc]`, `[a-z]`, `[!x]`/`[^x]`, `\`.
pub fn glob_match(glob: &str, text: &str) -> bool {
    let g: Vec<char> = glob.chars().collect();
    let t: Vec<char> = text.chars().collect();
    matches_at(&g, &t)
}

fn matches_at(g: &[char], t: &[char]) -> bool {
    let (mut gi, mut ti) = (0, 0);
    // Backtracking point of the last `*`: (glob index after it, text index it stands at).
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        let step = if gi < g.len() {
            match g[gi] {
                '*' => {
                    star = Some((gi + 1, ti));
                    gi += 1;
                    continue;
                }
                '?' => Some(gi + 1),
                '[' => class(g, gi, t[ti]),
                '\\' if gi + 1 < g.len() => (g[gi + 1] == t[ti]).then_some(gi + 2),
                c => (c == t[ti]).then_some(gi + 1),
            }
        } else {
            None
        };
        match step {
            Some(next) => {
                gi = next;
                ti += 1;
            }
            None => match star {
                Some((after, at)) => {
                    gi = after;
                    ti = at + 1;
                    star = Some((after, at + 1));
                }
                None => return false,
            },
        }
    }
    g[gi..].iter().all(|c| *c == '*')
}

/// Matches `c` against the class starting at `g[at] == '['`; the glob index after the class.
fn class(g: &[char], at: usize, c: char) -> Option<usize> {
    let mut i = at + 1;
    let negated = matches!(g.get(i), Some('!' | '^'));
    if negated {
        i += 1;
    }
    let mut matched = false;
    let mut first = true;
    while i < g.len() && (first || g[i] != ']') {
        first = false;
        if i + 2 < g.len() && g[i + 1] == '-' && g[i + 2] != ']' {
            matched |= (g[i]..=g[i + 2]).contains(&c);
            i += 3;
        } else {
            matched |= g[i] == c;
            i += 1;
        }
    }
    if i >= g.len() {
        // No closing bracket: `[` is literal.
        return (c == '[').then_some(at + 1);
    }
    (matched != negated).then_some(i + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_like_the_shell() {
        assert!(glob_match("*", "anything"));
        assert!(glob_match("mkfs*", "mkfs.ext4"));
        assert!(glob_match("/[eu]*", "/etc"));
        assert!(glob_match("[!a]b", "xb"));
        assert!(!glob_match("[!a]b", "ab"));
        assert!(glob_match("a?c", "abc"));
        assert!(!glob_match("a?c", "ac"));
        assert!(glob_match("*.log", "x.log"));
        assert!(!glob_match("*.log", "x.log.gz"));
        assert!(glob_match("\\*", "*"));
    }

    #[test]
    fn system_paths_are_recognised_after_normalising() {
        for path in [
            "/",
            "//",
            "/.",
            "/etc",
            "/etc/",
            "/usr/..",
            "/tmp/../..",
            "/*",
            "/e*",
            "/lib64",
            "/usr/*",
            "/var/./",
        ] {
            assert!(protected(path).is_some(), "{path}");
        }
        for path in [
            "/tmp/build",
            "/etc/nginx/conf.d",
            "/usr/local/src",
            "relative",
            "/usr/*.bak",
            "/tm*",
            "/home/alice",
        ] {
            assert!(protected(path).is_none(), "{path}");
        }
    }

    #[test]
    fn disks_are_told_from_other_devices() {
        for path in [
            "/dev/sda",
            "/dev/nvme0n1p1",
            "/dev/mapper/vg-root",
            "//dev/./vda",
        ] {
            assert!(is_disk(path), "{path}");
        }
        for path in ["/dev/null", "/dev/zero", "/dev/stdout", "/tmp/sda", "/dev/"] {
            assert!(!is_disk(path), "{path}");
        }
    }

    #[test]
    fn host_patterns_parse_and_match_in_order() {
        let p = Pattern::parse("systemctl  stop *").expect("valid");
        assert_eq!(p.text, "systemctl stop *");
        let inv = |words: &[&str]| Invocation {
            fields: words.iter().map(|w| Field::Static(w.to_string())).collect(),
            writes_to: Vec::new(),
            text: words.join(" "),
            via: Vec::new(),
        };
        assert!(p.matches(&inv(&["/bin/systemctl", "--now", "stop", "nginx"])));
        assert!(!p.matches(&inv(&["systemctl", "status", "nginx"])));
        assert!(!p.matches(&inv(&["systemctl", "nginx", "stop"])));
        assert!(Pattern::parse("").is_err());
        assert!(Pattern::parse("rm [abc").is_err());
    }
}
