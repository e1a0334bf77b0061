//! Environment variables a request may not set: those that make the shell, the dynamic loader or a common tool run code the guard never sees.
//!
//! A request's `env` reaches the job's shell before the command does, so a variable that the
//! shell reads at start (`BASH_ENV`), that changes how it parses or traces (`IFS`, `SHELLOPTS`,
//! `PS4`), that changes which program a name runs (`PATH`, `BASH_FUNC_*`), or that the dynamic
//! loader or an interpreter acts on (`LD_PRELOAD`, `PERL5OPT`) would run code or change the
//! command behind the guard's back. The same variables written in the command text are seen
//! and checked by the guard; only the request's side channel is closed.

use super::glob::glob_match;

/// One group of refused names, with the reason given in refusals.
pub struct Group {
    /// Names or globs (`LD_*`).
    pub names: &'static [&'static str],
    /// Why a request may not set them.
    pub why: &'static str,
}

/// Variables whose value common tools run as a command (`GIT_SSH_COMMAND=…`): refused in a
/// request's env, and walked as the command they carry where the command text sets them.
pub const COMMAND_VARIABLES: &[&str] = &[
    "GIT_SSH_COMMAND",
    "GIT_SSH",
    "GIT_PAGER",
    "GIT_EDITOR",
    "GIT_EXTERNAL_DIFF",
    "GIT_ASKPASS",
    "GIT_PROXY_COMMAND",
    "SSH_ASKPASS",
    "SUDO_ASKPASS",
    "PAGER",
    "MANPAGER",
    "SYSTEMD_PAGER",
    "EDITOR",
    "VISUAL",
    "SUDO_EDITOR",
    "SYSTEMD_EDITOR",
    "LESSOPEN",
    "LESSCLOSE",
    "RSYNC_RSH",
    "BROWSER",
];

/// Why a request may not set a variable a common tool acts on.
const TOOL_RUNS_IT: &str = "a common tool runs the command it names";

/// The refused names, by reason.
pub const DANGEROUS: &[Group] = &[
    Group {
        names: &["BASH_ENV", "ENV"],
        why: "the shell runs the file it names before the command",
    },
    Group {
        names: &[
            "SHELLOPTS",
            "BASHOPTS",
            "POSIXLY_CORRECT",
            "IFS",
            "CDPATH",
            "GLOBIGNORE",
            "EXECIGNORE",
        ],
        why: "it changes how the shell parses, expands or resolves the command, so the guard \
              would judge another command than the one that runs",
    },
    Group {
        names: &["PS0", "PS1", "PS2", "PS3", "PS4", "PROMPT_COMMAND"],
        why: "the shell expands or runs it as code (with tracing or prompts)",
    },
    Group {
        names: &["PATH", "SHELL", "BASH_FUNC_*"],
        why: "it changes which program a command name runs",
    },
    Group {
        names: &[
            "LD_*",
            "GCONV_PATH",
            "GETCONF_DIR",
            "GLIBC_TUNABLES",
            "HOSTALIASES",
            "LOCPATH",
            "MALLOC_TRACE",
            "NLSPATH",
            "RESOLV_HOST_CONF",
            "RES_OPTIONS",
        ],
        why: "the dynamic loader or the C library loads code or files it names into every program",
    },
    Group {
        names: &[
            "PERL5OPT",
            "PERL5LIB",
            "PERLLIB",
            "PYTHONSTARTUP",
            "PYTHONPATH",
            "PYTHONHOME",
            "PYTHONWARNINGS",
            "RUBYOPT",
            "RUBYLIB",
            "NODE_OPTIONS",
            "NODE_PATH",
            "JAVA_TOOL_OPTIONS",
            "_JAVA_OPTIONS",
            "JDK_JAVA_OPTIONS",
        ],
        why: "an interpreter loads code it names before the program",
    },
    Group {
        names: COMMAND_VARIABLES,
        why: TOOL_RUNS_IT,
    },
    Group {
        names: &[
            "GIT_EXEC_PATH",
            "GIT_CONFIG_*",
            "RSYNC_CONNECT_PROG",
            "TAR_OPTIONS",
        ],
        why: TOOL_RUNS_IT,
    },
];

/// Why a request may not set `name`, or `None` if it may.
pub fn refused(name: &str) -> Option<&'static str> {
    if !is_identifier(name) {
        return Some(
            "it is not a shell variable name; such names only carry exported shell functions",
        );
    }
    DANGEROUS
        .iter()
        .find(|group| group.names.iter().any(|glob| glob_match(glob, name)))
        .map(|group| group.why)
}

/// Whether `name` is a shell identifier (`[A-Za-z_][A-Za-z0-9_]*`).
pub fn is_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dangerous_names_are_refused_and_ordinary_ones_pass() {
        for name in [
            "BASH_ENV",
            "ENV",
            "LD_PRELOAD",
            "LD_LIBRARY_PATH",
            "LD_AUDIT",
            "PROMPT_COMMAND",
            "SHELLOPTS",
            "BASHOPTS",
            "PS4",
            "IFS",
            "PATH",
            "BASH_FUNC_ls%%",
            "GIT_CONFIG_COUNT",
            "x y",
        ] {
            assert!(refused(name).is_some(), "{name}");
        }
        for name in [
            "LANG",
            "TZ",
            "HOME",
            "RUST_LOG",
            "APP_ENV",
            "PYTHONUNBUFFERED",
            "ld",
        ] {
            assert!(refused(name).is_none(), "{name}");
        }
    }
}
