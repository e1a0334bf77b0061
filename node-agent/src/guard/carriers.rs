//! Commands that run other commands or text: what each one carries, read with its own option syntax.
//!
//! - Wrappers run a command given as words: `env`, `sudo`, `doas`, `pkexec`, `runuser -u`,
//!   `nice`, `nohup`, `setsid`, `stdbuf`, `ionice`, `taskset`, `chrt`, `numactl`, `prlimit`,
//!   `setpriv`, `unshare`, `nsenter`, `chroot`, `timeout`, `time`, `xargs`, `find -exec`, `flock`,
//!   `systemd-run`, `strace`, `ltrace`, `valgrind`, `fakeroot`, `eatmydata`, `setarch` and its
//!   aliases, `ssh-agent`, `dbus-run-session`, `capsh --`, `start-stop-daemon`, `screen`,
//!   `parallel`, `watch -x`, `exec`, `command`, `builtin`, `busybox`, `toybox`, `coreutils`.
//! - Code carriers run text: shells with `-c` (any option cluster, `+x`, `-o opt` before it,
//!   positional parameters after it), `eval`, `trap`, `su -c`, `runuser -c`, `sg`, `flock -c`,
//!   `script -c`, `watch`, `env -S`, `mapfile -C`, `ssh` (the remote command, `ProxyCommand`,
//!   `LocalCommand`), `tmux`, `git -c` (aliases and command settings), `tar` (`--to-command`,
//!   `--checkpoint-action=exec=`, `-I`), `rsync -e`, and shell-outs in code given to other
//!   interpreters (see [`foreign`](super::foreign)).
//! - Script readers run what they read: a shell without `-c` and a script operand, or with
//!   `/dev/stdin`, `-` or a process substitution as its script; `source`/`.`; `sudo -i`/`-s`,
//!   `su`, `doas -s`, `ssh` without a command; `at`, `batch`, `crontab -`.
//!
//! A command whose name is only known at run time may be any of these: it is read as a shell
//! (`$SHELL -c …`), as a wrapper of whatever command word follows, and as a reader of its
//! standard input.

use super::foreign;
use super::options::{Spec, long_matches};
use super::word::{
    Carried, Dyn, Field, Format, Invocation, Piece, Stdin, ansi_c, basename, shown_words,
};

/// Shells whose `-c`, script operand and standard input are read as shell text.
pub const SHELLS: &[&str] = &[
    "sh", "bash", "dash", "zsh", "ksh", "ksh93", "mksh", "lksh", "pdksh", "ash", "rbash", "yash",
    "posh", "csh", "tcsh", "fish",
];

/// Git settings whose value is a command.
const GIT_COMMAND_KEYS: &[&str] = &[
    "core.sshcommand",
    "core.pager",
    "core.editor",
    "core.fsmonitor",
    "core.askpass",
    "sequence.editor",
    "diff.external",
    "gpg.program",
    "pager.*",
];

macro_rules! spec {
    ($short:expr, [$($long:expr),* $(,)?], $permute:expr) => {
        Spec { short: $short, long: &[$($long),*], permute: $permute }
    };
}

const SHELL: Spec = spec!(
    "abefhkmnptuvxBCEHPTilrsDco:O:",
    [
        "norc",
        "noprofile",
        "posix",
        "login=l",
        "verbose=v",
        "debugger",
        "dump-strings",
        "dump-po-strings",
        "help",
        "version",
        "noediting",
        "pretty-print",
        "restricted=r",
        "rcfile:",
        "init-file:",
    ],
    false
);
const ENV: Spec = spec!(
    "i0u:C:S:v",
    [
        "ignore-environment=i",
        "null=0",
        "unset=u",
        "chdir=C",
        "split-string=S",
        "debug=v",
        "block-signal::",
        "default-signal::",
        "ignore-signal::",
        "list-signal-handling",
    ],
    false
);
const SUDO: Spec = spec!(
    "AbBEeHhiKklnNPSsVvu:g:p:C:D:r:t:T:U:R:",
    [
        "askpass=A",
        "background=b",
        "bell=B",
        "close-from=C",
        "chdir=D",
        "preserve-env::",
        "edit=e",
        "group=g",
        "set-home=H",
        "help",
        "host:",
        "login=i",
        "remove-timestamp=K",
        "reset-timestamp=k",
        "list=l",
        "non-interactive=n",
        "preserve-groups=P",
        "prompt=p",
        "chroot=R",
        "role=r",
        "stdin=S",
        "shell=s",
        "type=t",
        "command-timeout=T",
        "other-user=U",
        "user=u",
        "version=V",
        "validate=v",
    ],
    false
);
const SU: Spec = spec!(
    "c:C:s:g:G:w:lmpfPhVu:",
    [
        "command=c",
        "session-command=C",
        "shell=s",
        "group=g",
        "supp-group=G",
        "whitelist-environment=w",
        "login=l",
        "preserve-environment=m",
        "fast=f",
        "pty=P",
        "help=h",
        "version=V",
        "user=u",
    ],
    true
);
const RUNUSER_COMMAND: Spec = spec!(
    "g:G:lmpfPhVu:s:w:",
    [
        "group=g",
        "supp-group=G",
        "login=l",
        "preserve-environment=m",
        "user=u",
        "shell=s",
        "whitelist-environment=w",
    ],
    false
);
const NICE: Spec = spec!("n:", ["adjustment=n"], false);
const NO_OPTIONS: Spec = spec!("", ["help", "version"], false);
const SETSID: Spec = spec!("cfw", ["ctty=c", "fork=f", "wait=w"], false);
const STDBUF: Spec = spec!("i:o:e:", ["input=i", "output=o", "error=e"], false);
const IONICE: Spec = spec!(
    "c:n:p:P:u:t",
    [
        "class=c",
        "classdata=n",
        "pid=p",
        "pgid=P",
        "uid=u",
        "ignore=t"
    ],
    false
);
const TASKSET: Spec = spec!("apc", ["all-tasks=a", "pid=p", "cpu-list=c"], false);
const CHRT: Spec = spec!(
    "abdfiomprvRT:P:D:",
    [
        "all-tasks=a",
        "batch=b",
        "deadline=d",
        "fifo=f",
        "idle=i",
        "other=o",
        "max=m",
        "pid=p",
        "rr=r",
        "verbose=v",
        "reset-on-fork=R",
        "sched-runtime=T",
        "sched-period=P",
        "sched-deadline=D",
    ],
    false
);
const NUMACTL: Spec = spec!(
    "ai:m:N:C:lp:P:bsHS:",
    [
        "all=a",
        "interleave=i",
        "membind=m",
        "cpunodebind=N",
        "physcpubind=C",
        "localalloc=l",
        "preferred=p",
        "preferred-many=P",
        "balancing=b",
        "show=s",
        "hardware=H",
        "huge",
        "offset:",
        "shm:",
        "file:",
        "length:",
        "strict",
        "shmmode:",
        "shmid:",
        "touch",
        "dump",
        "dump-nodes",
    ],
    false
);
const PRLIMIT: Spec = spec!(
    "p:o:A::c::t::d::f::x::l::q::e::n::u::m::r::y::i::s::",
    [
        "pid=p",
        "output=o",
        "noheadings",
        "raw",
        "verbose",
        "as=A",
        "core=c",
        "cpu=t",
        "data=d",
        "fsize=f",
        "locks=x",
        "memlock=l",
        "msgqueue=q",
        "nice=e",
        "nofile=n",
        "nproc=u",
        "rss=m",
        "rtprio=r",
        "rttime=y",
        "sigpending=i",
        "stack=s",
    ],
    false
);
const SETPRIV: Spec = spec!(
    "d",
    [
        "dump=d",
        "reuid:",
        "regid:",
        "ruid:",
        "rgid:",
        "euid:",
        "egid:",
        "clear-groups",
        "keep-groups",
        "init-groups",
        "groups:",
        "inh-caps:",
        "ambient-caps:",
        "bounding-set:",
        "securebits:",
        "pdeathsig:",
        "selinux-label:",
        "apparmor-profile:",
        "landlock-access:",
        "landlock-rule:",
        "reset-env",
        "nnp",
        "no-new-privs",
        "rlimit:",
        "list-caps",
    ],
    false
);
const UNSHARE: Spec = spec!(
    "m::u::i::n::p::U::C::T::frcR:w:S:G:l",
    [
        "mount=m",
        "uts=u",
        "ipc=i",
        "net=n",
        "pid=p",
        "user=U",
        "cgroup=C",
        "time=T",
        "fork=f",
        "map-root-user=r",
        "map-current-user=c",
        "kill-child::",
        "mount-proc::",
        "propagation:",
        "setgroups:",
        "root=R",
        "wd=w",
        "setuid=S",
        "setgid=G",
        "monotonic:",
        "boottime:",
        "map-user:",
        "map-group:",
        "map-users:",
        "map-groups:",
        "map-auto",
        "keep-caps",
        "mount-binfmt::",
        "load-interp:",
    ],
    false
);
const NSENTER: Spec = spec!(
    "t:m::u::i::n::p::U::C::T::S:G:r::w::FaZe",
    [
        "target=t",
        "mount=m",
        "uts=u",
        "ipc=i",
        "net=n",
        "pid=p",
        "user=U",
        "cgroup=C",
        "time=T",
        "setuid=S",
        "setgid=G",
        "root=r",
        "wd=w",
        "no-fork=F",
        "all=a",
        "preserve-credentials",
        "follow-context=Z",
        "env=e",
        "join-cgroup",
    ],
    false
);
const CHROOT: Spec = spec!("", ["userspec:", "groups:", "skip-chdir"], false);
const TIMEOUT: Spec = spec!(
    "s:k:v",
    [
        "signal=s",
        "kill-after=k",
        "preserve-status",
        "foreground",
        "verbose=v",
    ],
    false
);
const TIME: Spec = spec!(
    "f:o:apqv",
    [
        "format=f",
        "output=o",
        "append=a",
        "portability=p",
        "quiet=q",
        "verbose=v",
    ],
    false
);
const XARGS: Spec = spec!(
    "0a:d:E:e::I:i::L:l::n:oP:prs:tx",
    [
        "null=0",
        "arg-file=a",
        "delimiter=d",
        "eof=e",
        "replace=i",
        "max-lines=l",
        "max-args=n",
        "open-tty=o",
        "max-procs=P",
        "interactive=p",
        "no-run-if-empty=r",
        "max-chars=s",
        "verbose=t",
        "exit=x",
        "process-slot-var:",
        "show-limits",
    ],
    false
);
const WATCH: Spec = spec!(
    "bcCd::egn:prtwxq:",
    [
        "beep=b",
        "color=c",
        "no-color=C",
        "differences=d",
        "errexit=e",
        "chgexit=g",
        "interval=n",
        "precise=p",
        "no-rerun=r",
        "no-title=t",
        "no-wrap=w",
        "exec=x",
        "equexit=q",
    ],
    false
);
const FLOCK: Spec = spec!(
    "sexnuow:E:FhV",
    [
        "shared=s",
        "exclusive=x",
        "unlock=u",
        "nonblock=n",
        "nb=n",
        "close=o",
        "wait=w",
        "timeout=w",
        "conflict-exit-code=E",
        "no-fork=F",
        "verbose",
        "help=h",
        "version=V",
    ],
    false
);
const SYSTEMD_RUN: Spec = spec!(
    "u:p:E:tPqGdrH:M:Sv",
    [
        "unit=u",
        "property=p",
        "description:",
        "slice:",
        "slice-inherit",
        "scope",
        "remain-after-exit=r",
        "send-sighup",
        "service-type:",
        "uid:",
        "gid:",
        "nice:",
        "working-directory:",
        "same-dir=d",
        "setenv=E",
        "pty=t",
        "pipe=P",
        "quiet=q",
        "wait",
        "collect=G",
        "user",
        "system",
        "host=H",
        "machine=M",
        "on-active:",
        "on-boot:",
        "on-startup:",
        "on-unit-active:",
        "on-unit-inactive:",
        "on-calendar:",
        "on-clock-change",
        "on-timezone-change",
        "path-property:",
        "socket-property:",
        "timer-property:",
        "no-block",
        "no-ask-password",
        "expand-environment:",
        "shell=S",
        "verbose=v",
        "json:",
        "job-mode:",
    ],
    false
);
const STRACE: Spec = spec!(
    "a:b:e:E:I:o:O:p:P:s:S:u:X:cCdDfFhiknNqrtTvVwxyYzZ",
    [
        "output=o", "attach=p", "user=u", "trace=e", "signal:", "env=E"
    ],
    false
);
const LTRACE: Spec = spec!(
    "a:A:b:D:e:F:n:o:p:s:u:x:X:w:cCfhiLrStTV",
    ["output=o", "library:"],
    false
);
const FAKEROOT: Spec = spec!(
    "l:s:i:ub",
    [
        "lib=l",
        "faked:",
        "save-file=s",
        "import=i",
        "unknown-is-real=u",
        "fd-base:",
    ],
    false
);
const SETARCH: Spec = spec!("vRFZLXBIST3", ["verbose=v", "uname-2.6", "list"], false);
const SSH_AGENT: Spec = spec!("a:cDdE:kO:P:st:", [], false);
const DBUS_RUN_SESSION: Spec = spec!("", ["config-file:", "dbus-daemon:"], false);
const EXEC: Spec = spec!("cla:", [], false);
const COMMAND: Spec = spec!("pvV", [], false);
const TRAP: Spec = spec!("lpP", [], false);
const SSH: Spec = spec!(
    "46AaCfGgKkMNnqsTtVvXxYyB:b:c:D:E:e:F:I:i:J:L:l:m:O:o:p:Q:R:S:W:w:",
    [],
    false
);
const SCRIPT: Spec = spec!(
    "ac:eE:fqI:O:B:T:t::m:hV",
    [
        "append=a",
        "command=c",
        "return=e",
        "echo=E",
        "flush=f",
        "force",
        "quiet=q",
        "log-in=I",
        "log-out=O",
        "log-io=B",
        "log-timing=T",
        "timing=t",
        "logging-format=m",
    ],
    false
);
const AT: Spec = spec!("q:f:t:mMlvdrcbVKu:", [], true);
const CRONTAB: Spec = spec!("u:lreisnT", [], true);
const SCREEN: Spec = spec!("AaDdfhiLlmOqRrUxS:c:e:h:p:s:T:t:X:", [], false);
const TMUX: Spec = spec!("2CDluvVNc:f:L:S:T:", [], false);
const GIT: Spec = spec!(
    "C:c:pPvh",
    [
        "config-env:",
        "exec-path::",
        "git-dir:",
        "work-tree:",
        "namespace:",
        "super-prefix:",
        "paginate=p",
        "no-pager=P",
        "bare",
        "no-replace-objects",
        "literal-pathspecs",
        "glob-pathspecs",
        "noglob-pathspecs",
        "icase-pathspecs",
        "no-optional-locks",
        "list-cmds:",
        "attr-source:",
        "version",
        "help",
        "html-path",
        "man-path",
        "info-path",
    ],
    false
);
/// `mapfile`/`readarray`'s options (`-C CALLBACK`).
pub const MAPFILE: Spec = spec!("d:n:O:s:tu:C:c:", [], true);
const DOAS: Spec = spec!("nsu:C:L", [], false);
const PKEXEC: Spec = spec!(
    "",
    [
        "user:",
        "disable-internal-agent",
        "keep-cwd",
        "help",
        "version",
    ],
    false
);
const VALGRIND: Spec = spec!("hqv", [], false);

/// `read`'s options (its operands are variable names).
pub const READ: Spec = spec!("ersa:d:i:n:N:p:t:u:", [], true);
/// `printf`'s options (`-v NAME`).
pub const PRINTF: Spec = spec!("v:", [], false);
/// `hash`'s options (`-p PATH NAME`).
pub const HASH: Spec = spec!("dlrtp:", [], true);
/// `ln`'s options.
pub const LN: Spec = spec!(
    "bdfFiLnPrsS:t:Tv",
    [
        "backup::",
        "directory=d",
        "force=f",
        "interactive=i",
        "logical=L",
        "no-dereference=n",
        "physical=P",
        "relative=r",
        "symbolic=s",
        "suffix=S",
        "target-directory=t",
        "no-target-directory=T",
        "verbose=v",
    ],
    true
);
/// `cp`'s options.
pub const CP: Spec = spec!(
    "abdfHilLnPprsS:t:TuvxZ",
    [
        "archive=a",
        "attributes-only",
        "backup::",
        "copy-contents",
        "force=f",
        "interactive=i",
        "link=l",
        "dereference=L",
        "no-clobber=n",
        "no-dereference=P",
        "preserve::",
        "no-preserve:",
        "parents",
        "recursive=r",
        "reflink::",
        "remove-destination",
        "sparse:",
        "strip-trailing-slashes",
        "symbolic-link=s",
        "suffix=S",
        "target-directory=t",
        "no-target-directory=T",
        "update::",
        "verbose=v",
        "one-file-system=x",
        "context::",
        "debug",
        "keep-directory-symlink",
    ],
    true
);
/// `install`'s options.
pub const INSTALL: Spec = spec!(
    "bcCdDg:m:o:psS:t:TvZ",
    [
        "backup::",
        "compare=C",
        "directory=d",
        "group=g",
        "mode=m",
        "owner=o",
        "preserve-timestamps=p",
        "strip=s",
        "strip-program:",
        "suffix=S",
        "target-directory=t",
        "no-target-directory=T",
        "verbose=v",
        "context::",
    ],
    true
);
/// `mv`'s options.
pub const MV: Spec = spec!(
    "bfinS:t:TuvZ",
    [
        "backup::",
        "force=f",
        "interactive=i",
        "no-clobber=n",
        "no-copy",
        "strip-trailing-slashes",
        "suffix=S",
        "target-directory=t",
        "no-target-directory=T",
        "update::",
        "verbose=v",
        "context=Z",
        "exchange",
        "debug",
    ],
    true
);
/// `mount`'s options.
pub const MOUNT: Spec = spec!(
    "aBcfFhiLlMnNo:O:rRsS:t:T:U:vVwX:",
    [
        "all=a",
        "bind=B",
        "rbind=R",
        "move=M",
        "options=o",
        "types=t",
        "read-only=r",
        "read-write=w",
        "label=L",
        "uuid=U",
        "verbose=v",
        "source:",
        "target:",
        "make-shared",
        "make-private",
        "make-slave",
        "make-unbindable",
    ],
    true
);

/// What `invocation` carries; `stdin` is what it reads on standard input.
pub fn carried(invocation: &Invocation, stdin: &Stdin) -> Vec<Carried> {
    let Some(first) = invocation.fields.first() else {
        return Vec::new();
    };
    let args = invocation.args();
    let name = match first {
        Field::Dynamic(d) => return unknown_program(&d.shown, args, stdin),
        Field::Static(s) => basename(s),
    };
    let command = |from: usize, label: &str| command(args, from, label, None);
    match name {
        "env" => env(args),
        "sudo" => {
            let parsed = SUDO.parse(args);
            if ["e", "l", "v", "K", "V"].iter().any(|o| parsed.has(o)) {
                return Vec::new();
            }
            if parsed.rest < args.len() {
                self::command(args, parsed.rest, "sudo", parsed.value("D").cloned())
            } else if parsed.has("i") || parsed.has("s") {
                stdin_reader("sudo (a shell reading its input)")
            } else {
                Vec::new()
            }
        }
        "doas" => {
            let parsed = DOAS.parse(args);
            if parsed.rest < args.len() {
                command(parsed.rest, "doas")
            } else if parsed.has("s") {
                stdin_reader("doas -s (a shell reading its input)")
            } else {
                Vec::new()
            }
        }
        "pkexec" => command(PKEXEC.parse(args).rest, "pkexec"),
        "su" | "runuser" => su(name, args),
        "sg" => {
            let operands: Vec<&Field> = args
                .iter()
                .filter(|a| !matches!(a.known(), Some("-" | "-c")))
                .collect();
            match operands.get(1) {
                Some(text) => vec![text_of((*text).clone(), "sg -c")],
                None => stdin_reader("sg (a shell reading its input)"),
            }
        }
        "newgrp" => stdin_reader("newgrp (a shell reading its input)"),
        "nice" => command(NICE.parse(args).rest, "nice"),
        "nohup" | "eatmydata" | "nocache" | "catchsegv" | "unbuffer" | "tini" | "dumb-init"
        | "torsocks" | "proxychains" | "proxychains4" | "xvfb-run" | "sem" => {
            command(NO_OPTIONS.parse(args).rest, name)
        }
        "setsid" => command(SETSID.parse(args).rest, "setsid"),
        "stdbuf" => command(STDBUF.parse(args).rest, "stdbuf"),
        "ionice" => {
            let parsed = IONICE.parse(args);
            if parsed.has("p") || parsed.has("P") || parsed.has("u") {
                return Vec::new();
            }
            command(parsed.rest, "ionice")
        }
        "taskset" => {
            let parsed = TASKSET.parse(args);
            if parsed.has("p") {
                return Vec::new();
            }
            // The first operand is the CPU mask or list.
            command(parsed.rest + 1, "taskset")
        }
        "chrt" => {
            let parsed = CHRT.parse(args);
            if parsed.has("p") || parsed.has("m") {
                return Vec::new();
            }
            // The first operand is the priority.
            command(parsed.rest + 1, "chrt")
        }
        "numactl" => command(NUMACTL.parse(args).rest, "numactl"),
        "prlimit" => {
            let parsed = PRLIMIT.parse(args);
            if parsed.has("p") {
                return Vec::new();
            }
            command(parsed.rest, "prlimit")
        }
        "setpriv" => command(SETPRIV.parse(args).rest, "setpriv"),
        "unshare" => command(UNSHARE.parse(args).rest, "unshare"),
        "nsenter" => command(NSENTER.parse(args).rest, "nsenter"),
        "chroot" => command(CHROOT.parse(args).rest + 1, "chroot"),
        "timeout" => command(TIMEOUT.parse(args).rest + 1, "timeout"),
        "time" => command(TIME.parse(args).rest, "time"),
        "xargs" => xargs(args, stdin),
        "find" => find_exec(args),
        "watch" => {
            let parsed = WATCH.parse(args);
            if parsed.has("x") {
                return command(parsed.rest, "watch -x");
            }
            match args.get(parsed.rest..) {
                Some(rest) if !rest.is_empty() => vec![text_of(join_fields(rest), "watch")],
                _ => Vec::new(),
            }
        }
        "flock" => flock(args),
        "systemd-run" => command(SYSTEMD_RUN.parse(args).rest, "systemd-run"),
        "strace" => command(STRACE.parse(args).rest, "strace"),
        "ltrace" => command(LTRACE.parse(args).rest, "ltrace"),
        "valgrind" => {
            // Its options are `--name=value`.
            command(VALGRIND.parse(args).rest, "valgrind")
        }
        "fakeroot" => command(FAKEROOT.parse(args).rest, "fakeroot"),
        "setarch" => command(SETARCH.parse(args).rest + 1, "setarch"),
        "linux32" | "linux64" | "i386" | "x86_64" => command(SETARCH.parse(args).rest, name),
        "ssh-agent" => command(SSH_AGENT.parse(args).rest, "ssh-agent"),
        "dbus-run-session" | "dbus-launch" => command(DBUS_RUN_SESSION.parse(args).rest, name),
        "capsh" => {
            // What follows `--` is given to /bin/bash.
            match args.iter().position(|a| a.known() == Some("--")) {
                Some(at) => {
                    let mut fields = vec![Field::Static("/bin/bash".into())];
                    fields.extend(args[at + 1..].iter().cloned());
                    vec![Carried::Command {
                        fields,
                        label: "capsh --".into(),
                        cwd: None,
                        assigns: Vec::new(),
                    }]
                }
                None => Vec::new(),
            }
        }
        "start-stop-daemon" => start_stop_daemon(args),
        "screen" => {
            let parsed = SCREEN.parse(args);
            if parsed.has("X") {
                return Vec::new();
            }
            command(parsed.rest, "screen")
        }
        "tmux" => tmux(args),
        "parallel" => parallel(args, stdin),
        "exec" => command(EXEC.parse(args).rest, "exec"),
        "command" => {
            let parsed = COMMAND.parse(args);
            if parsed.has("v") || parsed.has("V") {
                return Vec::new();
            }
            command(parsed.rest, "command")
        }
        "builtin" => command(0, "builtin"),
        "busybox" | "toybox" => {
            if args
                .first()
                .and_then(Field::known)
                .is_some_and(|a| a.starts_with('-'))
            {
                return Vec::new();
            }
            command(0, name)
        }
        "coreutils" => match args.first().and_then(Field::known) {
            Some(a) if a.starts_with("--coreutils-prog=") => {
                let mut fields = vec![Field::Static(a["--coreutils-prog=".len()..].to_string())];
                fields.extend(args[1..].iter().cloned());
                vec![Carried::Command {
                    fields,
                    label: "coreutils".into(),
                    cwd: None,
                    assigns: Vec::new(),
                }]
            }
            _ => Vec::new(),
        },
        "eval" => {
            if args.is_empty() {
                Vec::new()
            } else {
                vec![Carried::Text {
                    text: join_fields(args),
                    label: "eval".into(),
                    args: None,
                    lenient: false,
                    stdin: None,
                }]
            }
        }
        "trap" => {
            let parsed = TRAP.parse(args);
            if parsed.has("l") || parsed.has("p") || parsed.has("P") {
                return Vec::new();
            }
            match args.get(parsed.rest) {
                Some(Field::Static(action)) if action == "-" || action.is_empty() => Vec::new(),
                Some(action) => vec![Carried::Text {
                    text: action.clone(),
                    label: "trap".into(),
                    args: None,
                    lenient: false,
                    stdin: None,
                }],
                None => Vec::new(),
            }
        }
        "source" | "." => {
            let from = usize::from(args.first().and_then(Field::known) == Some("--"));
            match args.get(from) {
                Some(file) => vec![Carried::File {
                    file: file.clone(),
                    label: name.to_string(),
                    args: (args.len() > from + 1).then(|| (None, args[from + 1..].to_vec())),
                }],
                None => Vec::new(),
            }
        }
        "mapfile" | "readarray" => {
            let parsed = MAPFILE.parse(args);
            match parsed.value("C") {
                Some(callback) => vec![Carried::Text {
                    text: callback.clone(),
                    label: format!("{name} -C"),
                    args: None,
                    lenient: false,
                    stdin: None,
                }],
                None => Vec::new(),
            }
        }
        "ssh" => ssh(args),
        "script" => {
            let parsed = SCRIPT.parse(args);
            match parsed.value("c") {
                Some(text) => vec![text_of(text.clone(), "script -c")],
                None => stdin_reader("script (a shell reading its input)"),
            }
        }
        "at" | "batch" => {
            let parsed = AT.parse(args);
            if ["l", "d", "r", "c"].iter().any(|o| parsed.has(o)) {
                return Vec::new();
            }
            match parsed.value("f") {
                Some(file) => vec![Carried::File {
                    file: file.clone(),
                    label: name.to_string(),
                    args: None,
                }],
                None => stdin_reader(name),
            }
        }
        "crontab" => {
            let parsed = CRONTAB.parse(args);
            if ["l", "r", "e", "T"].iter().any(|o| parsed.has(o)) {
                return Vec::new();
            }
            match parsed.operand_fields(args).next() {
                Some(Field::Static(file)) if file != "-" => vec![Carried::File {
                    file: Field::Static(file.clone()),
                    label: "crontab".into(),
                    args: None,
                }],
                _ => vec![Carried::Stdin {
                    label: "crontab".into(),
                    format: Format::Crontab,
                    lenient: false,
                }],
            }
        }
        "git" => git(args),
        "tar" => tar(args),
        "rsync" => rsync(args),
        shell if SHELLS.contains(&shell) => shell_carried(shell, args),
        other => foreign::carried(other, args),
    }
}

/// Words `args[from..]` as a command run by `label`.
fn command(args: &[Field], from: usize, label: &str, cwd: Option<Field>) -> Vec<Carried> {
    match args.get(from..) {
        Some(rest) if !rest.is_empty() => vec![Carried::Command {
            fields: rest.to_vec(),
            label: label.into(),
            cwd,
            assigns: Vec::new(),
        }],
        _ => Vec::new(),
    }
}

fn text_of(text: Field, label: &str) -> Carried {
    Carried::Text {
        text,
        label: label.into(),
        args: None,
        lenient: false,
        stdin: None,
    }
}

fn stdin_reader(label: &str) -> Vec<Carried> {
    vec![Carried::Stdin {
        label: label.into(),
        format: Format::Shell,
        lenient: false,
    }]
}

/// Fields joined with spaces into one (as `eval` and `ssh` join their words).
pub fn join_fields(fields: &[Field]) -> Field {
    if let Some(known) = fields.iter().map(Field::known).collect::<Option<Vec<_>>>() {
        return Field::Static(known.join(" "));
    }
    let mut parts = Vec::new();
    for (i, field) in fields.iter().enumerate() {
        if i > 0 {
            parts.push(Piece::Text(" ".into()));
        }
        match field {
            Field::Static(s) => parts.push(Piece::Text(s.clone())),
            Field::Dynamic(d) => parts.extend(d.parts.iter().cloned()),
        }
    }
    Field::Dynamic(Dyn {
        shown: shown_words(fields),
        parts,
        splits: false,
        content: None,
    })
}

/// Quotes a known word for shell text.
fn quote(word: &str) -> String {
    format!("'{}'", word.replace('\'', r"'\''"))
}

/// A command only known at run time: any shell, wrapper or stdin reader it may be.
fn unknown_program(shown: &str, args: &[Field], stdin: &Stdin) -> Vec<Carried> {
    let label = format!("{shown} (a program only known at run time)");
    let mut carried = Vec::new();
    let parsed = SHELL.parse_shell(args);
    if parsed.has("c") {
        if let Some(text) = args.get(parsed.rest) {
            carried.push(Carried::Text {
                text: text.clone(),
                label: format!("{shown} -c"),
                args: Some((
                    args.get(parsed.rest + 1).cloned(),
                    args.get(parsed.rest + 2..).unwrap_or_default().to_vec(),
                )),
                lenient: true,
                stdin: None,
            });
        }
    } else {
        // It may be a wrapper of any command word that follows it.
        for (i, arg) in args.iter().enumerate().take(8) {
            if arg
                .known()
                .is_some_and(|a| !a.starts_with('-') && !a.is_empty())
            {
                carried.push(Carried::Command {
                    fields: args[i..].to_vec(),
                    label: label.clone(),
                    cwd: None,
                    assigns: Vec::new(),
                });
            }
        }
        if args.is_empty() && !matches!(stdin, Stdin::Null | Stdin::File) {
            carried.push(Carried::Stdin {
                label: format!("{shown} (a program only known at run time, reading its input)"),
                format: Format::Shell,
                lenient: true,
            });
        }
    }
    carried
}

fn env(args: &[Field]) -> Vec<Carried> {
    let parsed = ENV.parse(args);
    if let Some(split) = parsed.value("S") {
        // `env -S 'A=1 rm -rf /'`: the string is split into words, then read as `env`'s own.
        return match split {
            Field::Static(text) => {
                let rest: Vec<String> = args[parsed.rest.min(args.len())..]
                    .iter()
                    .map(|f| quote(f.shown()))
                    .collect();
                vec![text_of(
                    Field::Static(format!("env {text} {}", rest.join(" "))),
                    "env -S",
                )]
            }
            Field::Dynamic(d) => vec![Carried::Unchecked(format!(
                "`env -S` splits a string only known at run time into a command: `{}`",
                d.shown
            ))],
        };
    }
    let mut at = parsed.rest;
    let mut assigns = Vec::new();
    while let Some(Field::Static(word)) = args.get(at) {
        match word.split_once('=') {
            Some((name, value)) if !name.is_empty() => {
                assigns.push((name.to_string(), Field::Static(value.to_string())));
                at += 1;
            }
            _ => break,
        }
    }
    // `NAME=<(…)`: the value is a process substitution.
    while let Some(Field::Dynamic(d)) = args.get(at) {
        match d.shown.split_once('=') {
            Some((name, _)) if super::env::is_identifier(name) && d.content.is_some() => {
                assigns.push((name.to_string(), args[at].clone()));
                at += 1;
            }
            _ => break,
        }
    }
    match args.get(at..) {
        Some(rest) if !rest.is_empty() => vec![Carried::Command {
            fields: rest.to_vec(),
            label: "env".into(),
            cwd: parsed.value("C").cloned(),
            assigns,
        }],
        _ => Vec::new(),
    }
}

fn su(name: &str, args: &[Field]) -> Vec<Carried> {
    let parsed = SU.parse(args);
    if let Some(text) = parsed.value("c").or_else(|| parsed.value("C")) {
        return vec![text_of(text.clone(), &format!("{name} -c"))];
    }
    if name == "runuser" && parsed.has("u") {
        let parsed = RUNUSER_COMMAND.parse(args);
        return command(args, parsed.rest, "runuser -u", None);
    }
    stdin_reader(&format!("{name} (a shell reading its input)"))
}

/// `sh -c TEXT [$0 [$1 …]]`, a script operand, or a shell reading its standard input.
fn shell_carried(shell: &str, args: &[Field]) -> Vec<Carried> {
    let parsed = SHELL.parse_shell(args);
    if parsed.has("n") {
        // Syntax check only: nothing runs.
        return Vec::new();
    }
    if parsed.has("c") {
        return match args.get(parsed.rest) {
            Some(text) => vec![Carried::Text {
                text: text.clone(),
                label: format!("{shell} -c"),
                args: Some((
                    args.get(parsed.rest + 1).cloned(),
                    args.get(parsed.rest + 2..).unwrap_or_default().to_vec(),
                )),
                lenient: false,
                stdin: None,
            }],
            None => Vec::new(),
        };
    }
    match args.get(parsed.rest) {
        Some(script) if !parsed.has("s") && script.known() != Some("-") => {
            vec![Carried::File {
                file: script.clone(),
                label: format!("{shell} {}", script.shown()),
                args: Some((
                    Some(script.clone()),
                    args.get(parsed.rest + 1..).unwrap_or_default().to_vec(),
                )),
            }]
        }
        _ => stdin_reader(&format!("{shell} (reading its input)")),
    }
}

fn flock(args: &[Field]) -> Vec<Carried> {
    // `flock LOCK -c TEXT` (also written `--command`, `--command=TEXT`).
    for (i, arg) in args.iter().enumerate() {
        let Some(a) = arg.known() else { continue };
        if let Some(text) = a.strip_prefix("--command=") {
            return vec![text_of(Field::Static(text.to_string()), "flock -c")];
        }
        if a == "-c" || (long_matches(a, "command", 3) && !a.contains('=')) {
            return match args.get(i + 1) {
                Some(text) => vec![text_of(text.clone(), "flock -c")],
                None => Vec::new(),
            };
        }
    }
    let parsed = FLOCK.parse(args);
    // The first operand is the lock file (or a descriptor number: then nothing runs).
    command(args, parsed.rest + 1, "flock", None)
}

fn xargs(args: &[Field], stdin: &Stdin) -> Vec<Carried> {
    let parsed = XARGS.parse(args);
    let mut command: Vec<Field> = args[parsed.rest.min(args.len())..].to_vec();
    if command.is_empty() {
        command.push(Field::Static("echo".into()));
    }
    let replace = parsed
        .value("I")
        .or_else(|| parsed.value("i"))
        .and_then(Field::known)
        .map(str::to_string)
        .or_else(|| (parsed.has("i") && parsed.value("i").is_none()).then(|| "{}".to_string()));
    let items: Option<Vec<String>> = match (stdin, parsed.value("a")) {
        (Stdin::Known(text), None) => Some(if parsed.has("0") {
            text.split('\0')
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect()
        } else if let Some(delim) = parsed.value("d").and_then(Field::known) {
            let delim = ansi_c(delim);
            text.split(delim.as_str())
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect()
        } else if replace.is_some() {
            text.lines()
                .map(|l| l.trim().to_string())
                .filter(|l| !l.is_empty())
                .collect()
        } else {
            text.split_whitespace()
                .map(|s| s.trim_matches(['\'', '"']).to_string())
                .collect()
        }),
        _ => None,
    };
    let unknown = || {
        Field::Dynamic(Dyn {
            shown: "(arguments read from stdin)".into(),
            parts: vec![Piece::Unknown { maybe_empty: true }],
            splits: true,
            content: None,
        })
    };
    let carried = |fields: Vec<Field>| Carried::Command {
        fields,
        label: "xargs".into(),
        cwd: None,
        assigns: Vec::new(),
    };
    match (replace, items) {
        (Some(r), Some(items)) => items
            .iter()
            .take(8)
            .map(|item| {
                carried(
                    command
                        .iter()
                        .map(|f| replace_in(f, &r, Some(item)))
                        .collect(),
                )
            })
            .collect(),
        (Some(r), None) => vec![carried(
            command.iter().map(|f| replace_in(f, &r, None)).collect(),
        )],
        (None, Some(items)) => {
            command.extend(items.into_iter().map(Field::Static));
            vec![carried(command)]
        }
        (None, None) => {
            command.push(unknown());
            vec![carried(command)]
        }
    }
}

/// `field` with `pattern` replaced by `with` (or by something unknown).
fn replace_in(field: &Field, pattern: &str, with: Option<&str>) -> Field {
    let Field::Static(text) = field else {
        return field.clone();
    };
    if !text.contains(pattern) {
        return field.clone();
    }
    match with {
        Some(with) => Field::Static(text.replace(pattern, with)),
        None => {
            let mut parts = Vec::new();
            for (i, chunk) in text.split(pattern).enumerate() {
                if i > 0 {
                    parts.push(Piece::Unknown { maybe_empty: false });
                }
                if !chunk.is_empty() {
                    parts.push(Piece::Text(chunk.to_string()));
                }
            }
            Field::Dynamic(Dyn {
                shown: text.clone(),
                parts,
                splits: false,
                content: None,
            })
        }
    }
}

/// Tests of `find` that narrow what it selects by name.
const FIND_NAME_TESTS: &[&str] = &[
    "-name",
    "-iname",
    "-path",
    "-ipath",
    "-wholename",
    "-iwholename",
    "-regex",
    "-iregex",
    "-lname",
    "-ilname",
    "-inum",
    "-samefile",
];

/// `find`'s starting points and whether its expression selects everything below them (no
/// test narrows it by name).
pub fn find_scope(args: &[Field]) -> (Vec<Field>, bool, usize) {
    let mut i = 0;
    // Leading options: -H -L -P -D debugopts -Olevel.
    while let Some(a) = args.get(i).and_then(Field::known) {
        match a {
            "-H" | "-L" | "-P" => i += 1,
            "-D" => i += 2,
            _ if a.starts_with("-O") => i += 1,
            _ => break,
        }
    }
    let mut starts = Vec::new();
    while let Some(arg) = args.get(i) {
        match arg.known() {
            Some(a) if a.starts_with('-') || a == "(" || a == "!" || a == "," => break,
            _ => {
                starts.push(arg.clone());
                i += 1;
            }
        }
    }
    if starts.is_empty() {
        starts.push(Field::Static(".".into()));
    }
    let expression = &args[i..];
    let mut narrowed = false;
    let mut negated = false;
    let mut j = 0;
    while j < expression.len() {
        match expression[j].known() {
            Some("!" | "-not") => {
                negated = !negated;
                j += 1;
                continue;
            }
            Some("-o" | "-or" | ",") => return (starts, true, i),
            Some("-empty") if !negated => narrowed = true,
            Some(test) if FIND_NAME_TESTS.contains(&test) => {
                let pattern = expression.get(j + 1);
                let everything = match pattern.and_then(Field::known) {
                    Some(p) if test.contains("regex") => p == ".*",
                    Some(p) => super::glob::matches_everything(p),
                    None => false,
                };
                if !negated && !everything {
                    narrowed = true;
                }
                j += 1;
            }
            _ => {}
        }
        negated = false;
        j += 1;
    }
    (starts, !narrowed, i)
}

/// The commands of `find … -exec CMD … ;` (also `-execdir`, `-ok`, `-okdir`, ended by `+`).
/// `{}` stands for the starting points when nothing narrows the selection, else for a path
/// only known at run time.
fn find_exec(args: &[Field]) -> Vec<Carried> {
    let (starts, everything, _) = find_scope(args);
    let mut carried = Vec::new();
    let mut i = 0;
    while i < args.len() {
        if matches!(
            args[i].known(),
            Some("-exec" | "-execdir" | "-ok" | "-okdir")
        ) {
            let start = i + 1;
            let mut end = start;
            while end < args.len() && !matches!(args[end].known(), Some(";" | "+")) {
                end += 1;
            }
            let fields = &args[start..end];
            if !fields.is_empty() {
                let substitutions: Vec<Option<&str>> = if everything {
                    starts.iter().map(Field::known).take(8).collect()
                } else {
                    vec![None]
                };
                for with in substitutions {
                    carried.push(Carried::Command {
                        fields: fields.iter().map(|f| replace_in(f, "{}", with)).collect(),
                        label: "find -exec".into(),
                        cwd: None,
                        assigns: Vec::new(),
                    });
                }
            }
            i = end;
        }
        i += 1;
    }
    carried
}

fn start_stop_daemon(args: &[Field]) -> Vec<Carried> {
    let mut program = None;
    let mut start = false;
    let mut i = 0;
    while i < args.len() {
        let Some(a) = args[i].known() else {
            i += 1;
            continue;
        };
        match a {
            "--" => break,
            "-S" | "--start" => start = true,
            "-x" | "--exec" | "-a" | "--startas" => {
                program = args.get(i + 1).cloned();
                i += 1;
            }
            _ if a.starts_with("--exec=") || a.starts_with("--startas=") => {
                program = a.split_once('=').map(|(_, v)| Field::Static(v.to_string()));
            }
            _ => {}
        }
        i += 1;
    }
    let (Some(program), true) = (program, start) else {
        return Vec::new();
    };
    let mut fields = vec![program];
    fields.extend(args.get(i + 1..).unwrap_or_default().iter().cloned());
    vec![Carried::Command {
        fields,
        label: "start-stop-daemon".into(),
        cwd: None,
        assigns: Vec::new(),
    }]
}

fn ssh(args: &[Field]) -> Vec<Carried> {
    let parsed = SSH.parse(args);
    let mut carried = Vec::new();
    for option in parsed.values("o") {
        let Some(text) = option.known() else { continue };
        let (key, value) = text
            .split_once(['=', ' '])
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .unwrap_or_default();
        if matches!(
            key.as_str(),
            "proxycommand" | "localcommand" | "knownhostscommand"
        ) {
            carried.push(text_of(Field::Static(value), &format!("ssh -o {key}")));
        }
    }
    if parsed.has("N") || parsed.has("s") || parsed.has("G") || parsed.has("V") {
        return carried;
    }
    let mut remote = args.get(parsed.rest + 1..).unwrap_or_default();
    if remote.first().and_then(Field::known) == Some("--") {
        remote = &remote[1..];
    }
    if !remote.is_empty() {
        carried.push(text_of(join_fields(remote), "ssh (the remote command)"));
    } else if parsed.rest < args.len() && !parsed.has("n") && !parsed.has("f") {
        carried.extend(stdin_reader("ssh (a remote shell reading its input)"));
    }
    carried
}

fn tmux(args: &[Field]) -> Vec<Carried> {
    let parsed = TMUX.parse(args);
    let mut carried = Vec::new();
    if let Some(text) = parsed.value("c") {
        carried.push(text_of(text.clone(), "tmux -c"));
    }
    let rest = args.get(parsed.rest..).unwrap_or_default();
    let Some((sub, sub_args)) = rest.split_first() else {
        return carried;
    };
    let runs_last = matches!(
        sub.known(),
        Some(
            "new"
                | "new-session"
                | "neww"
                | "new-window"
                | "splitw"
                | "split-window"
                | "respawnp"
                | "respawn-pane"
                | "respawnw"
                | "respawn-window"
                | "run"
                | "run-shell"
                | "if"
                | "if-shell"
                | "pipep"
                | "pipe-pane"
                | "popup"
                | "display-popup"
        )
    );
    if runs_last
        && let Some(last) = sub_args.last()
        && last.known().is_none_or(|l| !l.starts_with('-'))
    {
        carried.push(Carried::Text {
            text: last.clone(),
            label: format!("tmux {}", sub.shown()),
            args: None,
            lenient: true,
            stdin: None,
        });
    }
    if matches!(sub.known(), Some("send" | "send-keys")) {
        let keys: Vec<Field> = sub_args
            .iter()
            .filter(|a| {
                a.known()
                    .is_none_or(|k| !k.starts_with('-') && k != "Enter" && k != "C-m")
            })
            .cloned()
            .collect();
        if !keys.is_empty() {
            carried.push(Carried::Text {
                text: join_fields(&keys),
                label: "tmux send-keys".into(),
                args: None,
                lenient: true,
                stdin: None,
            });
        }
    }
    carried
}

fn parallel(args: &[Field], stdin: &Stdin) -> Vec<Carried> {
    let separator = args
        .iter()
        .position(|a| matches!(a.known(), Some(":::" | "::::" | ":::+" | "::::+")));
    let command_end = separator.unwrap_or(args.len());
    let start = args[..command_end]
        .iter()
        .position(|a| a.known().is_none_or(|w| !w.starts_with('-')))
        .unwrap_or(command_end);
    let words = &args[start..command_end];
    if words.is_empty() {
        return Vec::new();
    }
    let inputs: Option<Vec<String>> = match (separator, stdin) {
        (Some(at), _) if args[at].known() == Some(":::") => args[at + 1..]
            .iter()
            .map(|a| a.known().map(str::to_string))
            .collect(),
        (None, Stdin::Known(text)) => Some(text.lines().map(str::to_string).collect()),
        _ => None,
    };
    let template = join_fields(words);
    let has_placeholder = template.shown().contains("{}");
    let mut carried = Vec::new();
    match inputs {
        Some(inputs) => {
            for input in inputs.iter().take(8) {
                let text = match &template {
                    Field::Static(t) if has_placeholder => {
                        Field::Static(t.replace("{}", &quote(input)))
                    }
                    Field::Static(t) => Field::Static(format!("{t} {}", quote(input))),
                    other => other.clone(),
                };
                carried.push(text_of(text, "parallel"));
            }
        }
        None if has_placeholder => {
            carried.push(text_of(replace_in(&template, "{}", None), "parallel"));
        }
        None => {
            let mut fields = words.to_vec();
            fields.push(Field::unknown("(arguments read by parallel)"));
            carried.push(Carried::Command {
                fields,
                label: "parallel".into(),
                cwd: None,
                assigns: Vec::new(),
            });
        }
    }
    carried
}

fn git(args: &[Field]) -> Vec<Carried> {
    let parsed = GIT.parse(args);
    let mut carried = Vec::new();
    for setting in parsed.values("c") {
        let Some(text) = setting.known() else {
            carried.push(Carried::Unchecked(format!(
                "`git -c` sets a value only known at run time: `{}`",
                setting.shown()
            )));
            continue;
        };
        let Some((key, value)) = text.split_once('=') else {
            continue;
        };
        let key = key.to_ascii_lowercase();
        let command = if key.starts_with("alias.") || key == "credential.helper" {
            value.strip_prefix('!')
        } else if GIT_COMMAND_KEYS
            .iter()
            .any(|k| super::glob::glob_match(k, &key))
        {
            Some(value)
        } else {
            None
        };
        if let Some(command) = command {
            carried.push(Carried::Text {
                text: Field::Static(command.to_string()),
                label: format!("git -c {key}"),
                args: None,
                lenient: true,
                stdin: None,
            });
        }
    }
    carried
}

fn tar(args: &[Field]) -> Vec<Carried> {
    const LONG: &[&str] = &[
        "to-command",
        "use-compress-program",
        "rsh-command",
        "info-script",
        "new-volume-script",
        "checkpoint-action",
    ];
    let mut carried = Vec::new();
    let mut push = |value: &Field, label: &str| {
        let value = match value {
            Field::Static(v) => Field::Static(v.strip_prefix("exec=").unwrap_or(v).to_string()),
            other => other.clone(),
        };
        carried.push(Carried::Text {
            text: value,
            label: label.into(),
            args: None,
            lenient: true,
            stdin: None,
        });
    };
    let mut i = 0;
    while i < args.len() {
        if let Some(a) = args[i].known() {
            if let Some(long) = LONG.iter().find(|l| long_matches(a, l, 4)) {
                match a.split_once('=') {
                    Some((_, v)) => push(&Field::Static(v.to_string()), &format!("tar --{long}")),
                    None => {
                        if let Some(v) = args.get(i + 1) {
                            push(v, &format!("tar --{long}"));
                        }
                        i += 1;
                    }
                }
            } else if a.starts_with('-') && !a.starts_with("--") {
                for (k, c) in a[1..].char_indices() {
                    if c == 'I' || c == 'F' {
                        let attached = &a[1 + k + 1..];
                        if attached.is_empty() {
                            if let Some(v) = args.get(i + 1) {
                                push(v, &format!("tar -{c}"));
                            }
                            i += 1;
                        } else {
                            push(&Field::Static(attached.to_string()), &format!("tar -{c}"));
                        }
                        break;
                    }
                }
            }
        }
        i += 1;
    }
    carried
}

fn rsync(args: &[Field]) -> Vec<Carried> {
    let mut carried = Vec::new();
    for (i, arg) in args.iter().enumerate() {
        let Some(a) = arg.known() else { continue };
        let value = if let Some(v) = a.strip_prefix("--rsh=") {
            Some(Field::Static(v.to_string()))
        } else if a == "-e" || a == "--rsh" {
            args.get(i + 1).cloned()
        } else if a.starts_with("-e") && !a.starts_with("--") && a.len() > 2 {
            Some(Field::Static(a[2..].to_string()))
        } else {
            None
        };
        if let Some(value) = value {
            carried.push(Carried::Text {
                text: value,
                label: "rsync -e".into(),
                args: None,
                lenient: true,
                stdin: None,
            });
        }
    }
    carried
}

/// The commands of a crontab, one per line, as shell text (schedules, variables and comments
/// left out; `%` starts the command's input).
pub fn crontab_commands(text: &str) -> String {
    let mut commands = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let first = line.split_whitespace().next().unwrap_or_default();
        if first.contains('=') && !first.starts_with('@') {
            continue;
        }
        let command = if first.starts_with('@') {
            line[first.len()..].trim()
        } else {
            let mut rest = line;
            for _ in 0..5 {
                rest = rest.trim_start();
                rest = rest.find(char::is_whitespace).map_or("", |at| &rest[at..]);
            }
            rest.trim()
        };
        let command = command.split('%').next().unwrap_or_default();
        if !command.is_empty() {
            commands.push(command.to_string());
        }
    }
    commands.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crontab_lines_become_commands() {
        let text =
            "# m h\nSHELL=/bin/sh\n* * * * * rm -rf /tmp/x\n@reboot reboot\n0 3 * * 1 echo a%b\n";
        assert_eq!(crontab_commands(text), "rm -rf /tmp/x\nreboot\necho a");
    }

    #[test]
    fn find_scope_tells_narrowed_selections() {
        let f = |words: &[&str]| {
            let fields: Vec<Field> = words.iter().map(|w| Field::Static(w.to_string())).collect();
            find_scope(&fields).1
        };
        assert!(f(&["/", "-delete"]));
        assert!(f(&["/", "-type", "f", "-delete"]));
        assert!(f(&["/", "!", "-name", "x", "-delete"]));
        assert!(f(&["/", "-name", "*", "-delete"]));
        assert!(!f(&["/", "-name", "*.pyc", "-delete"]));
        assert!(f(&["/", "-name", "x", "-o", "-delete"]));
    }
}
