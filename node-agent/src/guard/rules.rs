//! The CommandGuard's deny rules: the defaults, the host's own (`[guard] deny`), and how each matches one invocation.
//!
//! Default rules, by id (see `docs/security.md` for the full table):
//!
//! - `recursive-delete`: `rm -r` (any spelling: `-R`, `-fr`, `--recursive`, `--recur`, options
//!   after operands) of a system path; `find … -delete` and `find … -exec rm -r {}` over one
//!   without a test that narrows it by name; `rsync --delete*` onto one (or
//!   `--remove-source-files` from one); `mv` of one.
//! - `recursive-chmod-chown`: `chmod`, `chown`, `chgrp`, `chattr`, `setfacl` with `-R` on a
//!   system path, or on `/` itself without it.
//! - `mkfs`: `mkfs`, `mkfs.*`, `mke2fs`, `mkswap`, `mkdosfs`, `mkntfs`, … and `wipefs -a`/`-o`.
//! - `disk-erase`: `blkdiscard`, destructive `sgdisk`/`sfdisk`/`parted`/`fdisk`/`gdisk`,
//!   `cryptsetup luksFormat`/`erase`/`luksKillSlot`, `hdparm --security-erase`, `nvme
//!   format`/`sanitize`, `sg_format`, `mdadm --zero-superblock`, LVM and ZFS removals,
//!   `badblocks -w`.
//! - `block-device-write`: writing onto a disk device — `dd of=`, `cp`, `tee`, `shred`,
//!   `ddrescue`, `qemu-img convert`, `socat`, `find -fprint`, or an output redirection.
//! - `power`: shutdown, reboot, halt, suspend and kexec in every spelling (`systemctl`,
//!   `loginctl`, `init`, D-Bus calls to logind or systemd, `rtcwake`, `pm-suspend`, writes to
//!   `/proc/sysrq-trigger` or `/sys/power/state`).
//! - `kill-init`: a signal to pid 1 or to every process (`kill -9 -1`), `killall5`, `pkill init`.
//! - `fork-bomb`, `unchecked-code`, `dangerous-env`: judged on the walk and the request (see
//!   the [`guard`](super) module), not here.
//!
//! Paths are judged after [normalising](super::path) (`/proc/self/root/etc` is `/etc`,
//! relative paths are resolved against the working directory when it is known), and globs count
//! for every name they can match (`/u*/l*` can be `/usr/lib`). A word only known at run time is
//! judged as it would be with its unknown parts empty (`rm -rf "$DIR/"` can be `rm -rf /`).
//!
//! A host rule is a pattern: the command name, then arguments, each a glob (`*`, `?`, `[…]`),
//! separated by spaces. It denies a command whose name (without its directory) matches the
//! first glob and whose arguments contain, in this order but not necessarily next to each
//! other, an argument matching each further glob: `iptables -F`, `systemctl stop *`, `docker
//! system prune*`, `kubectl delete namespace *`. An argument glob starting with `-` is an
//! option and matches it however it is spelled (`-F` also matches `-vF` and, for programs whose
//! options the guard knows, `--flush` and `--fl`); one starting with `/` is a path and matches
//! the argument's normal path (`/etc/../etc/shadow`, `//etc/shadow`, `shadow` in `/etc`, and
//! globs that can name it).
//!
//! When the command name is only known at run time (`$cmd -rf /`), the rules that look at
//! arguments are checked as if it could be any command; rules that look at the name only are
//! not (otherwise every `"$cmd"` would be refused).

use super::carriers::{CP, MV, find_scope};
use super::glob::{command_globs, glob_match, globs_intersect, is_glob};
use super::options::{RM, Spec, long_matches};
use super::path::{View, is_disk, power_file, protected};
use super::word::{Field, Invocation, Piece, basename};

/// Ids of the default rules, in the order they are checked.
pub const DEFAULT_RULES: &[&str] = &[
    "recursive-delete",
    "recursive-chmod-chown",
    "mkfs",
    "disk-erase",
    "block-device-write",
    "power",
    "kill-init",
    "fork-bomb",
    "unchecked-code",
    "dangerous-env",
];

/// One deny rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rule {
    RecursiveDelete,
    RecursiveOwnership,
    Mkfs,
    DiskErase,
    BlockDeviceWrite,
    Power,
    KillInit,
    /// Matched on the walk's fork-bomb findings, not on invocations.
    ForkBomb,
    /// Matched on the walk's unreadable code, not on invocations.
    UncheckedCode,
    /// Matched on the request's environment, not on invocations.
    DangerousEnv,
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
        let (name, args) = command_globs(text, "a rule names at least a command")?;
        Ok(Pattern {
            text: text.split_whitespace().collect::<Vec<_>>().join(" "),
            name: name.to_string(),
            args,
        })
    }

    /// Whether the rule denies `invocation`.
    pub fn matches(&self, invocation: &Invocation) -> bool {
        let name = match invocation.fields.first() {
            Some(Field::Static(name)) => name,
            // Any command could be meant: only a rule about its arguments can tell.
            Some(Field::Dynamic(_)) if !self.args.is_empty() => "",
            _ => return false,
        };
        if !name.is_empty() && !self.name_matches(name, invocation) {
            return false;
        }
        let args = invocation.args();
        let spec = known_spec(basename(name));
        let parsed = spec.map(|s| s.parse(args));
        let mut next = 0;
        for glob in &self.args {
            if is_option_glob(glob) {
                if !has_option(glob, args, spec, parsed.as_ref()) {
                    return false;
                }
                continue;
            }
            match args[next.min(args.len())..]
                .iter()
                .position(|arg| word_matches(glob, arg, invocation))
            {
                Some(at) => next += at + 1,
                None => return false,
            }
        }
        true
    }

    fn name_matches(&self, name: &str, invocation: &Invocation) -> bool {
        if self.name.contains('/') {
            return invocation.views(&Field::Static(name.to_string())).iter().any(|view| {
                matches!(view, View::Abs(path) if globs_intersect(&self.name, path, false))
            });
        }
        glob_match(&self.name, basename(name))
    }
}

/// A rule argument that names an option (`-F`, `--flush`, `--output=*`).
fn is_option_glob(glob: &str) -> bool {
    glob.len() > 1 && glob.starts_with('-') && !is_glob(glob.split('=').next().unwrap_or(glob))
}

/// Whether the command's arguments give option `glob` in any spelling.
fn has_option(
    glob: &str,
    args: &[Field],
    spec: Option<&Spec>,
    parsed: Option<&super::options::Parsed>,
) -> bool {
    if let (Some(spec), Some(parsed)) = (spec, parsed) {
        let wanted = spec.parse(&[Field::Static(
            glob.split('=').next().unwrap_or(glob).to_string(),
        )]);
        let value = glob.split_once('=').map(|(_, v)| v);
        return wanted.options.iter().all(|want| {
            parsed.options.iter().any(|found| {
                found.name == want.name
                    && value.is_none_or(|v| {
                        found
                            .value
                            .as_ref()
                            .and_then(Field::known)
                            .is_some_and(|f| glob_match(v, f))
                    })
            })
        });
    }
    let statics: Vec<&str> = args.iter().filter_map(Field::known).collect();
    if let Some(long) = glob.strip_prefix("--") {
        let (name, value) = match long.split_once('=') {
            Some((n, v)) => (n, Some(v)),
            None => (long, None),
        };
        return statics.iter().enumerate().any(|(i, arg)| {
            long_matches(arg, name, 1)
                && value.is_none_or(|v| match arg.split_once('=') {
                    Some((_, given)) => glob_match(v, given),
                    None => statics.get(i + 1).is_some_and(|next| glob_match(v, next)),
                })
        });
    }
    // Short options: every letter in some cluster.
    glob[1..].chars().all(|letter| {
        statics
            .iter()
            .any(|arg| arg.starts_with('-') && !arg.starts_with("--") && arg[1..].contains(letter))
    })
}

/// Whether a rule's word glob matches one argument.
fn word_matches(glob: &str, arg: &Field, invocation: &Invocation) -> bool {
    if glob.starts_with('/') {
        let views = invocation.views(arg);
        if views.iter().any(|view| match view {
            View::Abs(path) => globs_intersect(glob, path, is_glob(path)),
            View::Ancestor(_) => false,
        }) {
            return true;
        }
        // A relative path from a directory that is not known could be under any directory.
        if let Some(arg) = arg.known()
            && !arg.starts_with('/')
            && !arg.split('/').any(|p| p == "..")
            && invocation.cwd.iter().any(Option::is_none)
        {
            let tail = arg.trim_start_matches("./");
            return globs_intersect(glob, &format!("*/{tail}"), false);
        }
        return false;
    }
    match arg {
        Field::Static(value) => {
            glob_match(glob, value) || (is_glob(value) && globs_intersect(glob, value, false))
        }
        Field::Dynamic(_) => glob == "*",
    }
}

/// Programs whose options host rules are matched by meaning (`-F` = `--flush`).
fn known_spec(name: &str) -> Option<&'static Spec> {
    match name {
        "iptables" | "ip6tables" | "iptables-legacy" | "iptables-nft" | "ip6tables-legacy"
        | "ip6tables-nft" => Some(&IPTABLES),
        "rm" => Some(&RM),
        "systemctl" => Some(&SYSTEMCTL),
        _ => None,
    }
}

const IPTABLES: Spec = Spec {
    short: "A:C:D:I:R:L::S::F::Z::N:X::P:E:t:p:s:d:j:g:i:o:fm:nvw::xc:46",
    long: &[
        "append=A",
        "check=C",
        "delete=D",
        "insert=I",
        "replace=R",
        "list=L",
        "list-rules=S",
        "flush=F",
        "zero=Z",
        "new-chain=N",
        "delete-chain=X",
        "policy=P",
        "rename-chain=E",
        "table=t",
        "protocol=p",
        "source=s",
        "destination=d",
        "jump=j",
        "goto=g",
        "in-interface=i",
        "out-interface=o",
        "fragment=f",
        "match=m",
        "numeric=n",
        "verbose=v",
        "wait=w",
        "exact=x",
        "line-numbers",
        "modprobe:",
        "set-counters=c",
        "ipv4=4",
        "ipv6=6",
    ],
    permute: true,
};

const CHMOD: Spec = Spec {
    short: "cfvRhHLP",
    long: &[
        "changes=c",
        "silent=f",
        "quiet=f",
        "verbose=v",
        "recursive=R",
        "reference:",
        "from:",
        "dereference",
        "no-dereference=h",
        "preserve-root",
        "no-preserve-root",
        "help",
        "version",
    ],
    permute: true,
};

const SETFACL: Spec = Spec {
    short: "bkndRLPtm:M:x:X:s:",
    long: &[
        "remove-all=b",
        "remove-default=k",
        "no-mask=n",
        "default=d",
        "recursive=R",
        "logical=L",
        "physical=P",
        "test=t",
        "modify=m",
        "modify-file=M",
        "remove=x",
        "remove-file=X",
        "set=s",
        "set-file:",
        "mask",
        "restore:",
    ],
    permute: true,
};

const RSYNC: Spec = Spec {
    short: "vqcarRbuLlkKHpEAXogDtUNOJSnWxyz0sIhBe:f:T:M:P",
    long: &[
        "rsh=e",
        "filter=f",
        "temp-dir=T",
        "remote-option=M",
        "block-size=B",
        "rsync-path:",
        "exclude:",
        "include:",
        "exclude-from:",
        "include-from:",
        "files-from:",
        "log-file:",
        "log-file-format:",
        "password-file:",
        "port:",
        "bwlimit:",
        "timeout:",
        "contimeout:",
        "chmod:",
        "chown:",
        "usermap:",
        "groupmap:",
        "partial-dir:",
        "backup-dir:",
        "suffix:",
        "compare-dest:",
        "copy-dest:",
        "link-dest:",
        "out-format:",
        "max-size:",
        "min-size:",
        "max-delete:",
        "info:",
        "debug:",
        "checksum-choice:",
        "compress-choice:",
        "compress-level:",
        "skip-compress:",
        "sockopts:",
        "outbuf:",
        "iconv:",
        "stop-after:",
        "stop-at:",
        "modify-window:",
        "address:",
        "only-write-batch:",
        "write-batch:",
        "read-batch:",
        "protocol:",
    ],
    permute: true,
};

const SHRED: Spec = Spec {
    short: "fn:s:uvxz",
    long: &[
        "force=f",
        "iterations=n",
        "random-source:",
        "size=s",
        "remove::",
        "verbose=v",
        "exact=x",
        "zero=z",
    ],
    permute: true,
};

const TEE: Spec = Spec {
    short: "aip",
    long: &["append=a", "ignore-interrupts=i", "output-error::"],
    permute: true,
};

const SYSTEMCTL: Spec = Spec {
    short: "t:p:P:as:H:M:n:o:lqifr",
    long: &[
        "type=t",
        "property=p",
        "value",
        "all=a",
        "signal=s",
        "host=H",
        "machine=M",
        "lines=n",
        "output=o",
        "full=l",
        "quiet=q",
        "ignore-inhibitors=i",
        "force=f",
        "recursive=r",
        "state:",
        "job-mode:",
        "kill-whom:",
        "kill-value:",
        "root:",
        "image:",
        "what:",
        "timestamp:",
        "boot-loader-entry:",
        "boot-loader-menu:",
        "reboot-argument:",
        "message:",
        "legend:",
        "check-inhibitors:",
        "when:",
        "preset-mode:",
        "drop-in:",
        "no-block",
        "no-wall",
        "no-reload",
        "no-ask-password",
        "no-pager",
        "no-legend",
        "now",
        "runtime",
        "user",
        "system",
        "global",
        "wait",
        "dry-run",
        "firmware-setup",
        "failed",
        "plain",
        "show-types",
        "show-transaction",
        "with-dependencies",
        "reverse",
        "after",
        "before",
        "marked",
        "read-only",
        "mkdir",
    ],
    permute: true,
};

const CRYPTSETUP: Spec = Spec {
    short: "c:s:h:d:l:S:i:o:p:b:T:t:M:qvyrI:",
    long: &[
        "cipher=c",
        "key-size=s",
        "hash=h",
        "key-file=d",
        "keyfile-size=l",
        "keyfile-offset:",
        "key-slot=S",
        "iter-time=i",
        "offset=o",
        "skip=p",
        "size=b",
        "tries=T",
        "timeout=t",
        "type=M",
        "integrity=I",
        "batch-mode=q",
        "verbose=v",
        "verify-passphrase=y",
        "readonly=r",
        "pbkdf:",
        "label:",
        "subsystem:",
        "header:",
        "uuid:",
        "sector-size:",
        "luks2-metadata-size:",
        "luks2-keyslots-size:",
        "token-id:",
        "priority:",
        "new-keyfile:",
        "master-key-file:",
        "volume-key-file:",
        "reduce-device-size:",
        "encrypt",
        "decrypt",
        "debug",
        "force-password",
    ],
    permute: true,
};

/// Units whose start takes the host down.
const POWER_UNITS: &[&str] = &[
    "reboot.target",
    "poweroff.target",
    "halt.target",
    "kexec.target",
    "soft-reboot.target",
    "rescue.target",
    "emergency.target",
    "shutdown.target",
    "suspend.target",
    "hibernate.target",
    "hybrid-sleep.target",
    "suspend-then-hibernate.target",
    "sleep.target",
    "ctrl-alt-del.target",
    "exit.target",
    "systemd-reboot.service",
    "systemd-poweroff.service",
    "systemd-halt.service",
    "systemd-kexec.service",
    "systemd-soft-reboot.service",
    "systemd-suspend.service",
    "systemd-hibernate.service",
    "systemd-hybrid-sleep.service",
    "systemd-suspend-then-hibernate.service",
];

/// `systemctl` verbs that take the host down.
const POWER_VERBS: &[&str] = &[
    "poweroff",
    "reboot",
    "halt",
    "kexec",
    "soft-reboot",
    "rescue",
    "emergency",
    "suspend",
    "hibernate",
    "hybrid-sleep",
    "suspend-then-hibernate",
    "sleep",
    "exit",
    "switch-root",
];

/// D-Bus methods of logind and systemd that take the host down.
const POWER_METHODS: &[&str] = &[
    "PowerOff",
    "Reboot",
    "Halt",
    "KExec",
    "SoftReboot",
    "Suspend",
    "Hibernate",
    "HybridSleep",
    "SuspendThenHibernate",
    "Sleep",
    "PowerOffWithFlags",
    "RebootWithFlags",
    "HaltWithFlags",
    "KExecWithFlags",
    "SuspendWithFlags",
    "HibernateWithFlags",
    "HybridSleepWithFlags",
    "SuspendThenHibernateWithFlags",
];

// === impl Rule ===

impl Rule {
    /// The default rule with `id`.
    pub fn default_rule(id: &str) -> Option<Rule> {
        Some(match id {
            "recursive-delete" => Rule::RecursiveDelete,
            "recursive-chmod-chown" => Rule::RecursiveOwnership,
            "mkfs" => Rule::Mkfs,
            "disk-erase" => Rule::DiskErase,
            "block-device-write" => Rule::BlockDeviceWrite,
            "power" => Rule::Power,
            "kill-init" => Rule::KillInit,
            "fork-bomb" => Rule::ForkBomb,
            "unchecked-code" => Rule::UncheckedCode,
            "dangerous-env" => Rule::DangerousEnv,
            _ => return None,
        })
    }

    /// The rule's name in refusals.
    pub fn id(&self) -> String {
        match self {
            Rule::RecursiveDelete => "recursive-delete".into(),
            Rule::RecursiveOwnership => "recursive-chmod-chown".into(),
            Rule::Mkfs => "mkfs".into(),
            Rule::DiskErase => "disk-erase".into(),
            Rule::BlockDeviceWrite => "block-device-write".into(),
            Rule::Power => "power".into(),
            Rule::KillInit => "kill-init".into(),
            Rule::ForkBomb => "fork-bomb".into(),
            Rule::UncheckedCode => "unchecked-code".into(),
            Rule::DangerousEnv => "dangerous-env".into(),
            Rule::Host(p) => format!("host rule `{}`", p.text),
        }
    }

    /// Why the rule denies `invocation`, or `None` if it does not.
    pub fn check(&self, invocation: &Invocation) -> Option<String> {
        match self {
            Rule::RecursiveDelete => recursive_delete(invocation),
            Rule::RecursiveOwnership => recursive_ownership(invocation),
            Rule::Mkfs => mkfs(invocation),
            Rule::DiskErase => disk_erase(invocation),
            Rule::BlockDeviceWrite => block_device_write(invocation),
            Rule::Power => power(invocation),
            Rule::KillInit => kill_init(invocation),
            Rule::ForkBomb | Rule::UncheckedCode | Rule::DangerousEnv => None,
            Rule::Host(pattern) => pattern
                .matches(invocation)
                .then(|| "denied by this host's configuration".to_string()),
        }
    }
}

/// The system path one of `fields` is or can be, described for a refusal.
fn system_path<'a>(
    fields: impl IntoIterator<Item = &'a Field>,
    invocation: &Invocation,
) -> Option<String> {
    for field in fields {
        for view in invocation.views(field) {
            if let Some(path) = protected(&view) {
                return Some(describe(field, &view, &path));
            }
        }
    }
    None
}

/// `the system path /usr`, or how the argument can be it.
fn describe(field: &Field, view: &View, path: &str) -> String {
    let shown = field.shown();
    match (field, view) {
        (Field::Static(s), View::Abs(abs)) if s == path || abs == path => {
            format!("the system path {path}")
        }
        (Field::Static(_), View::Ancestor(_)) => format!(
            "`{shown}`, which climbs from a working directory the guard does not know and can \
             reach {path}"
        ),
        (Field::Static(_), View::Abs(abs)) if abs == shown => {
            format!("`{shown}`, which can match the system path {path}")
        }
        (Field::Static(_), View::Abs(abs)) => {
            format!("`{shown}` ({abs}), which is or can match the system path {path}")
        }
        (Field::Dynamic(d), _) => {
            if d.parts
                .iter()
                .any(|p| matches!(p, Piece::Unknown { maybe_empty: true }))
            {
                format!(
                    "`{shown}`, which is the system path {path} if its part only known at run \
                     time is empty (write `${{VAR:?}}` to stop on an empty value)"
                )
            } else {
                format!("`{shown}`, which can be the system path {path}")
            }
        }
    }
}

fn recursive_delete(invocation: &Invocation) -> Option<String> {
    let args = invocation.args();
    let dynamic = invocation.name_is_dynamic();
    let name = invocation.name();
    if dynamic || matches!(name, Some("rm" | "srm" | "wipe")) {
        let parsed = RM.parse(args);
        if (parsed.has("r") || parsed.has("R"))
            && let Some(path) = system_path(parsed.operand_fields(args), invocation)
        {
            return Some(format!("recursive delete of {path}"));
        }
    }
    match name? {
        "find" => {
            if !args.iter().any(|a| a.known() == Some("-delete")) {
                return None;
            }
            let (starts, everything, _) = find_scope(args);
            if !everything {
                return None;
            }
            system_path(&starts, invocation).map(|p| {
                format!("`find -delete` of everything under {p} (no test narrows it by name)")
            })
        }
        "rsync" => {
            let parsed = RSYNC.parse(args);
            let operands: Vec<&Field> = parsed.operand_fields(args).collect();
            let local = |f: &&Field| {
                f.known().is_none_or(|p| {
                    !p.contains("::")
                        && !p.starts_with("rsync://")
                        && p.split('/').next().is_none_or(|head| !head.contains(':'))
                })
            };
            let deletes = parsed
                .options
                .iter()
                .any(|o| o.name.trim_start_matches('?').starts_with("del"));
            let removes = parsed
                .options
                .iter()
                .any(|o| o.name.trim_start_matches('?').starts_with("remove-s"));
            let (dest, sources) = operands.split_last()?;
            if deletes
                && local(dest)
                && let Some(p) = system_path([*dest], invocation)
            {
                return Some(format!(
                    "`rsync --delete` into {p} deletes what the source lacks"
                ));
            }
            if removes
                && let Some(p) = system_path(sources.iter().copied().filter(local), invocation)
            {
                return Some(format!("`rsync --remove-source-files` from {p}"));
            }
            None
        }
        "mv" => {
            let parsed = MV.parse(args);
            let operands: Vec<&Field> = parsed.operand_fields(args).collect();
            let sources: Vec<&Field> = if parsed.value("t").is_some() {
                operands
            } else {
                operands
                    .split_last()
                    .map(|(_, s)| s.to_vec())
                    .unwrap_or_default()
            };
            system_path(sources, invocation).map(|p| format!("`mv` moves {p} away"))
        }
        _ => None,
    }
}

fn recursive_ownership(invocation: &Invocation) -> Option<String> {
    let name = invocation.name()?;
    let args = invocation.args();
    let (recursive, files): (bool, Vec<&Field>) = match name {
        "chmod" | "chown" | "chgrp" => {
            let parsed = CHMOD.parse(args);
            let operands: Vec<&Field> = parsed.operand_fields(args).collect();
            // `chmod -w f`: the mode was written as an option.
            let mode_as_option = name == "chmod"
                && parsed.options.iter().any(|o| {
                    o.name.starts_with('?') && "rwxXst".contains(o.name.trim_start_matches('?'))
                });
            let skip = usize::from(parsed.value("reference").is_none() && !mode_as_option);
            (parsed.has("R"), operands.into_iter().skip(skip).collect())
        }
        "setfacl" => {
            let parsed = SETFACL.parse(args);
            (parsed.has("R"), parsed.operand_fields(args).collect())
        }
        "chattr" => {
            let recursive = args.iter().filter_map(Field::known).any(|a| {
                a.starts_with('-')
                    && a.len() > 1
                    && a[1..].chars().all(|c| "RVf".contains(c))
                    && a.contains('R')
            });
            let files = args
                .iter()
                .filter(|a| a.known().is_none_or(|s| !s.starts_with(['-', '+', '='])))
                .collect();
            (recursive, files)
        }
        _ => return None,
    };
    if recursive {
        return system_path(files, invocation)
            .map(|p| format!("recursive change of owner or mode of {p}"));
    }
    files.into_iter().find_map(|file| {
        invocation
            .views(file)
            .iter()
            .any(|v| *v == View::Abs("/".into()))
            .then(|| format!("`{name}` of / itself"))
    })
}

fn mkfs(invocation: &Invocation) -> Option<String> {
    let name = invocation.name()?;
    let args = invocation.args();
    let creates = [
        "mkfs",
        "mkfs.*",
        "mkfs_*",
        "mke2fs",
        "mkswap",
        "mkdosfs",
        "mkntfs",
        "mkexfatfs",
        "mkexfat",
        "mkreiserfs",
        "mkudffs",
        "mkhfs",
        "mkjfs",
    ]
    .iter()
    .any(|glob| glob_match(glob, name));
    if creates {
        return Some(format!(
            "`{name}` creates a file system over what is on the device"
        ));
    }
    if name == "wipefs" {
        let statics: Vec<&str> = args.iter().filter_map(Field::known).collect();
        let short = |c: char| {
            statics
                .iter()
                .any(|a| a.starts_with('-') && !a.starts_with("--") && a.contains(c))
        };
        let long = |l: &str| statics.iter().any(|a| long_matches(a, l, 3));
        let erases = short('a') || short('o') || long("all") || long("offset");
        let dry = short('n') || long("no-act");
        return (erases && !dry).then(|| "`wipefs` erases file system signatures".to_string());
    }
    None
}

fn disk_erase(invocation: &Invocation) -> Option<String> {
    let name = invocation.name()?;
    let args = invocation.args();
    let statics: Vec<&str> = args.iter().filter_map(Field::known).collect();
    let operands: Vec<&str> = statics
        .iter()
        .copied()
        .filter(|a| !a.starts_with('-'))
        .collect();
    let erase = |what: &str| Some(format!("`{name}` {what}"));
    match name {
        "blkdiscard"
            if !statics
                .iter()
                .any(|a| matches!(*a, "-h" | "--help" | "-V" | "--version")) =>
        {
            erase("discards every block of the device")
        }
        "sgdisk" => {
            const READ_ONLY: &[&str] = &[
                "p",
                "print",
                "i",
                "info",
                "v",
                "verify",
                "V",
                "version",
                "L",
                "list-types",
                "O",
                "print-mbr",
                "b",
                "backup",
                "P",
                "pretend",
                "h",
                "help",
                "?",
                "usage",
            ];
            let options: Vec<&str> = statics
                .iter()
                .filter(|a| a.starts_with('-') && a.len() > 1)
                .map(|a| match a.strip_prefix("--") {
                    Some(long) => long.split('=').next().unwrap_or(long),
                    None => &a[1..2],
                })
                .collect();
            if options.iter().any(|o| matches!(*o, "P" | "pretend")) {
                return None;
            }
            options
                .iter()
                .find(|o| !READ_ONLY.contains(o))
                .and_then(|o| erase(&format!("changes the partition table (`{o}`)")))
        }
        "sfdisk" => {
            let read_only = statics.iter().any(|a| {
                matches!(
                    *a,
                    "-l" | "--list"
                        | "-d"
                        | "--dump"
                        | "-J"
                        | "--json"
                        | "-s"
                        | "--show-size"
                        | "-g"
                        | "--show-geometry"
                        | "-F"
                        | "--list-free"
                        | "-V"
                        | "--verify"
                        | "-n"
                        | "--no-act"
                        | "-h"
                        | "--help"
                        | "-v"
                        | "--version"
                )
            });
            (!read_only
                && (!operands.is_empty() || statics.iter().any(|a| long_matches(a, "delete", 3))))
            .then(|| "`sfdisk` writes the partition table".to_string())
        }
        "parted" => {
            const DESTRUCTIVE: &[&str] = &[
                "mklabel",
                "mktable",
                "mkpart",
                "mkpartfs",
                "resizepart",
                "resize",
                "rm",
            ];
            operands.iter().find_map(|o| {
                DESTRUCTIVE
                    .iter()
                    .find(|v| **v == *o || (o.len() >= 3 && v.starts_with(o)))
                    .and_then(|v| erase(&format!("{v} changes the partition table")))
            })
        }
        "fdisk" | "gdisk" | "cfdisk" => {
            let read_only = statics.iter().any(|a| {
                matches!(
                    *a,
                    "-l" | "--list"
                        | "-x"
                        | "--list-details"
                        | "-s"
                        | "--getsz"
                        | "-h"
                        | "--help"
                        | "-V"
                        | "--version"
                )
            });
            (!read_only && !operands.is_empty()).then(|| {
                format!("`{name}` rewrites the partition table from the commands it reads")
            })
        }
        "cryptsetup" => {
            let parsed = CRYPTSETUP.parse(args);
            let action = parsed.operand_fields(args).next().and_then(Field::known)?;
            matches!(
                action,
                "luksFormat" | "erase" | "luksErase" | "luksKillSlot" | "reencrypt"
            )
            .then(|| format!("`cryptsetup {action}` destroys the data or the keys on the device"))
        }
        "hdparm" => statics
            .iter()
            .find(|a| {
                [
                    "security-erase",
                    "trim-sector-ranges",
                    "write-sector",
                    "make-bad-sector",
                    "fwdownload",
                    "dco-restore",
                ]
                .iter()
                .any(|l| a.starts_with(&format!("--{l}")))
            })
            .and_then(|a| erase(&format!("{a} destroys data on the disk"))),
        "nvme" => operands
            .first()
            .filter(|v| matches!(**v, "format" | "sanitize" | "ns-delete" | "delete-ns"))
            .and_then(|v| erase(&format!("{v} erases the namespace"))),
        "sg_format"
            if statics
                .iter()
                .any(|a| *a == "-F" || long_matches(a, "format", 3)) =>
        {
            erase("formats the disk")
        }
        "sg_sanitize" => erase("sanitizes the disk"),
        "mdadm" => statics
            .iter()
            .find(|a| {
                long_matches(a, "zero-superblock", 4) || long_matches(a, "create", 3) || **a == "-C"
            })
            .and_then(|a| erase(&format!("{a} overwrites the RAID superblocks"))),
        "pvremove" | "vgremove" | "lvremove" | "pvcreate" | "lvreduce" => {
            erase("removes or overwrites LVM volumes")
        }
        "zpool" => operands
            .first()
            .filter(|v| matches!(**v, "destroy" | "labelclear" | "create"))
            .and_then(|v| erase(&format!("{v} destroys a ZFS pool's data"))),
        "zfs" => operands
            .first()
            .filter(|v| **v == "destroy")
            .and_then(|_| erase("destroy deletes ZFS datasets")),
        "badblocks"
            if statics
                .iter()
                .any(|a| a.starts_with('-') && !a.starts_with("--") && a.contains('w')) =>
        {
            erase("-w overwrites the whole device")
        }
        "dmsetup" => operands
            .first()
            .filter(|v| matches!(**v, "remove_all" | "wipe_table"))
            .and_then(|v| erase(&format!("{v} tears down device-mapper devices"))),
        _ => None,
    }
}

fn disk_in<'a>(
    fields: impl IntoIterator<Item = &'a Field>,
    invocation: &Invocation,
) -> Option<String> {
    fields.into_iter().find_map(|field| {
        invocation
            .views(field)
            .iter()
            .find(|v| is_disk(v))
            .map(|v| match v {
                View::Abs(p) if p == field.shown() => p.clone(),
                View::Abs(p) => format!("{} ({p})", field.shown()),
                View::Ancestor(p) => p.clone(),
            })
    })
}

/// Values of `key=` words (`dd of=/dev/sda`).
fn assignments_of<'a>(args: &'a [Field], key: &'a str) -> impl Iterator<Item = Field> + 'a {
    args.iter().filter_map(move |a| match a {
        Field::Static(s) => s.strip_prefix(key).map(|v| Field::Static(v.to_string())),
        Field::Dynamic(d) => d.shown.strip_prefix(key).map(|_| {
            let mut d = d.clone();
            if let Some(Piece::Text(first)) = d.parts.first_mut() {
                *first = first.strip_prefix(key).unwrap_or(first).to_string();
            }
            d.shown = d.shown[key.len()..].to_string();
            Field::Dynamic(d)
        }),
    })
}

/// Files a command writes into, by its own syntax (not its redirections).
fn written_files(invocation: &Invocation) -> Vec<Field> {
    let args = invocation.args();
    let name = match invocation.name() {
        Some(name) => name,
        None if invocation.name_is_dynamic() => return assignments_of(args, "of=").collect(),
        None => return Vec::new(),
    };
    match name {
        "dd" | "dcfldd" | "dc3dd" => assignments_of(args, "of=").collect(),
        "tee" => {
            let parsed = TEE.parse(args);
            parsed.operand_fields(args).cloned().collect()
        }
        "cp" | "install" => {
            let parsed = CP.parse(args);
            match parsed.value("t") {
                Some(dir) => vec![dir.clone()],
                None => {
                    let operands: Vec<&Field> = parsed.operand_fields(args).collect();
                    if operands.len() >= 2 {
                        operands
                            .last()
                            .map(|f| vec![(*f).clone()])
                            .unwrap_or_default()
                    } else {
                        Vec::new()
                    }
                }
            }
        }
        "shred" => {
            let parsed = SHRED.parse(args);
            parsed.operand_fields(args).cloned().collect()
        }
        "ddrescue" => args
            .iter()
            .filter(|a| a.known().is_none_or(|s| !s.starts_with('-')))
            .nth(1)
            .cloned()
            .into_iter()
            .collect(),
        "qemu-img" => {
            let operands: Vec<&Field> = args
                .iter()
                .filter(|a| a.known().is_none_or(|s| !s.starts_with('-')))
                .collect();
            match operands.first().and_then(|f| f.known()) {
                Some("convert") => operands
                    .last()
                    .map(|f| vec![(*f).clone()])
                    .unwrap_or_default(),
                Some("dd") => assignments_of(args, "of=").collect(),
                _ => Vec::new(),
            }
        }
        "socat" => args
            .iter()
            .filter_map(Field::known)
            .filter(|a| !a.starts_with('-') || *a == "-")
            .filter_map(|a| {
                let address = a.split(',').next().unwrap_or(a);
                let path = match address.split_once(':') {
                    Some((kind, path))
                        if ["FILE", "OPEN", "CREATE", "GOPEN", "CREAT"]
                            .contains(&kind.to_ascii_uppercase().as_str()) =>
                    {
                        path
                    }
                    Some(_) => return None,
                    None => address,
                };
                path.starts_with('/')
                    .then(|| Field::Static(path.to_string()))
            })
            .collect(),
        "find" => args
            .windows(2)
            .filter(|w| {
                matches!(
                    w[0].known(),
                    Some("-fprint" | "-fprint0" | "-fprintf" | "-fls")
                )
            })
            .map(|w| w[1].clone())
            .collect(),
        _ => Vec::new(),
    }
}

fn block_device_write(invocation: &Invocation) -> Option<String> {
    if let Some(target) = disk_in(invocation.writes_to(), invocation) {
        return Some(format!("output redirected onto the disk device {target}"));
    }
    let written = written_files(invocation);
    disk_in(&written, invocation).map(|target| {
        let name = invocation
            .name()
            .unwrap_or("a program only known at run time");
        format!("`{name}` writes onto the disk device {target}")
    })
}

fn power(invocation: &Invocation) -> Option<String> {
    let files: Vec<Field> = invocation
        .writes_to()
        .cloned()
        .chain(written_files(invocation))
        .collect();
    for file in &files {
        if let Some(target) = invocation.views(file).iter().find_map(power_file) {
            return Some(format!("writing to {target} takes the host down"));
        }
    }
    let name = invocation.name()?;
    let args = invocation.args();
    let statics: Vec<&str> = args.iter().filter_map(Field::known).collect();
    let first = statics.first().copied();
    let help = statics
        .iter()
        .any(|a| matches!(*a, "--help" | "-h" | "--version"));
    match name {
        "shutdown" => {
            let harmless = statics
                .iter()
                .any(|a| matches!(*a, "-c" | "--show" | "-k" | "--help"));
            (!harmless).then(|| "`shutdown` takes the host down".to_string())
        }
        "reboot" | "poweroff" | "halt" | "systemd-shutdown" | "pm-suspend" | "pm-hibernate"
        | "pm-suspend-hybrid" | "zzz" | "ZZZ" | "s2ram" | "s2disk" | "s2both" | "hibernate"
            if !help =>
        {
            Some(format!("`{name}` takes the host down"))
        }
        "init" | "telinit" if matches!(first, Some("0" | "1" | "6" | "s" | "S")) => Some(format!(
            "`{name} {}` changes the run level",
            first.unwrap_or("")
        )),
        "systemctl" => {
            let parsed = SYSTEMCTL.parse(args);
            let mut operands = parsed.operand_fields(args).filter_map(Field::known);
            let verb = operands.next()?;
            if POWER_VERBS.contains(&verb) {
                return Some(format!("`systemctl {verb}` takes the host down"));
            }
            let starts = matches!(
                verb,
                "start"
                    | "restart"
                    | "try-restart"
                    | "reload-or-restart"
                    | "try-reload-or-restart"
                    | "isolate"
                    | "enable"
                    | "reenable"
            );
            if !starts {
                return None;
            }
            let isolate = verb == "isolate";
            operands.find_map(|unit| {
                let unit = if isolate && !unit.contains('.') {
                    format!("{unit}.target")
                } else {
                    unit.to_string()
                };
                POWER_UNITS
                    .iter()
                    .find(|u| globs_intersect(&unit, u, false))
                    .map(|u| format!("`systemctl {verb} {u}` takes the host down"))
            })
        }
        "loginctl" => statics
            .iter()
            .find(|a| {
                matches!(
                    **a,
                    "poweroff"
                        | "reboot"
                        | "halt"
                        | "suspend"
                        | "hibernate"
                        | "hybrid-sleep"
                        | "suspend-then-hibernate"
                        | "sleep"
                )
            })
            .map(|verb| format!("`loginctl {verb}` takes the host down")),
        "busctl" | "dbus-send" | "gdbus" | "qdbus" | "dbus-call" | "qdbus6" => {
            let method = statics.iter().find_map(|a| {
                let last = a.rsplit(['.', '/']).next().unwrap_or(a);
                POWER_METHODS.contains(&last).then_some(last)
            });
            if let Some(method) = method {
                return Some(format!("the D-Bus call {method} takes the host down"));
            }
            let starts_unit = statics.iter().any(|a| {
                let last = a.rsplit('.').next().unwrap_or(a);
                last.starts_with("StartUnit") || last.starts_with("RestartUnit")
            });
            starts_unit
                .then(|| statics.iter().find(|a| POWER_UNITS.contains(a)))
                .flatten()
                .map(|unit| format!("the D-Bus call starting {unit} takes the host down"))
        }
        "kexec" => {
            let loads = statics.iter().any(|a| {
                matches!(
                    *a,
                    "-l" | "--load"
                        | "-p"
                        | "--load-panic"
                        | "-u"
                        | "--unload"
                        | "-S"
                        | "--status"
                        | "-h"
                        | "--help"
                        | "-v"
                        | "--version"
                )
            });
            let executes = statics
                .iter()
                .any(|a| matches!(*a, "-e" | "--exec" | "-f" | "--force"));
            (executes || !loads).then(|| "`kexec` boots another kernel now".to_string())
        }
        "rtcwake" => {
            let mode = args
                .windows(2)
                .find(|w| matches!(w[0].known(), Some("-m" | "--mode")))
                .and_then(|w| w[1].known())
                .or_else(|| statics.iter().find_map(|a| a.strip_prefix("--mode=")))
                .unwrap_or("standby");
            (!matches!(mode, "no" | "on" | "disable" | "show"))
                .then(|| format!("`rtcwake -m {mode}` suspends or powers off the host"))
        }
        _ => None,
    }
}

/// The number a `kill` operand names as a pid (`01` is 1, `-1` is every process).
fn pid(text: &str) -> Option<i64> {
    let text = text.trim();
    let (negative, digits) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text.strip_prefix('+').unwrap_or(text)),
    };
    let value = if let Some(hex) = digits
        .strip_prefix("0x")
        .or_else(|| digits.strip_prefix("0X"))
    {
        i64::from_str_radix(hex, 16).ok()?
    } else {
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        digits.trim_start_matches('0').parse::<i64>().unwrap_or(0)
    };
    Some(if negative { -value } else { value })
}

fn kill_init(invocation: &Invocation) -> Option<String> {
    let name = invocation.name()?;
    let args = invocation.args();
    match name {
        "kill" => {
            let words: Vec<Option<&str>> = args.iter().map(Field::known).collect();
            let mut i = 0;
            let mut signal = "TERM".to_string();
            while let Some(Some(word)) = words.get(i) {
                match *word {
                    "-l" | "-L" | "--list" | "--table" => return None,
                    "-s" | "-n" | "--signal" => {
                        signal = words
                            .get(i + 1)
                            .copied()
                            .flatten()
                            .unwrap_or("?")
                            .to_string();
                        i += 2;
                    }
                    "-q" | "--queue" | "--timeout" => i += 2,
                    "--" => {
                        i += 1;
                        break;
                    }
                    w if w.starts_with('-')
                        && i == 0
                        && pid(w).is_none_or(|_| true)
                        && w.len() > 1 =>
                    {
                        signal = w[1..].to_string();
                        i += 1;
                    }
                    _ => break,
                }
            }
            let signal = signal.trim_start_matches("SIG").to_string();
            if signal == "0" {
                return None;
            }
            args[i.min(args.len())..]
                .iter()
                .filter_map(Field::known)
                .filter_map(pid)
                .find(|p| *p == 1 || *p == -1)
                .map(|p| {
                    if p == 1 {
                        format!("`kill -{signal}` of pid 1 (init) brings the host down")
                    } else {
                        format!("`kill -{signal} -1` signals every process")
                    }
                })
        }
        "killall5" => Some("`killall5` signals every process".into()),
        "pkill" | "killall" => {
            let pattern = args
                .iter()
                .filter_map(Field::known)
                .filter(|a| !a.starts_with('-'))
                .find(|a| {
                    let bare = a.trim_start_matches('^').trim_end_matches('$');
                    matches!(bare, "init" | "systemd" | "1")
                })?;
            Some(format!("`{name} {pattern}` signals init"))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn invocation(words: &[&str]) -> Invocation {
        Invocation {
            fields: words.iter().map(|w| Field::Static(w.to_string())).collect(),
            redirects: Vec::new(),
            assignments: Vec::new(),
            text: words.join(" "),
            via: Vec::new(),
            cwd: vec![None],
            links: Vec::new(),
            carries: None,
            function: false,
        }
    }

    #[test]
    fn host_patterns_parse_and_match_in_order() {
        let p = Pattern::parse("systemctl  stop *").expect("valid");
        assert_eq!(p.text, "systemctl stop *");
        assert!(p.matches(&invocation(&["/bin/systemctl", "--now", "stop", "nginx"])));
        assert!(!p.matches(&invocation(&["systemctl", "status", "nginx"])));
        assert!(!p.matches(&invocation(&["systemctl", "nginx", "stop"])));
        assert!(Pattern::parse("").is_err());
        assert!(Pattern::parse("rm [abc").is_err());
    }

    #[test]
    fn host_patterns_match_options_and_paths_however_spelled() {
        let flush = Pattern::parse("iptables -F").expect("valid");
        for words in [
            &["iptables", "-F"][..],
            &["iptables", "--flush"],
            &["iptables", "--fl"],
            &["iptables", "-vF"],
            &["iptables", "-t", "nat", "-F", "INPUT"],
        ] {
            assert!(flush.matches(&invocation(words)), "{words:?}");
        }
        assert!(!flush.matches(&invocation(&["iptables", "-L"])));
        let shadow = Pattern::parse("cat /etc/shadow").expect("valid");
        for path in [
            "/etc/shadow",
            "//etc/./shadow",
            "/etc/../etc/shadow",
            "/etc/sha*",
            "/proc/self/root/etc/shadow",
        ] {
            assert!(shadow.matches(&invocation(&["cat", path])), "{path}");
        }
        assert!(!shadow.matches(&invocation(&["cat", "/etc/passwd"])));
    }

    #[test]
    fn pids_are_read_in_every_spelling() {
        assert_eq!(pid("1"), Some(1));
        assert_eq!(pid("01"), Some(1));
        assert_eq!(pid("-1"), Some(-1));
        assert_eq!(pid("0x1"), Some(1));
        assert_eq!(pid("%1"), None);
        assert_eq!(pid("1234"), Some(1234));
    }
}
