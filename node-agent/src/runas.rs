//! Run-as: maps the MCP user of a request to a local unix account, and switches a child or a file-operation thread to that account.
//!
//! The mapping is the host owner's (`[run_as]` in the agent's configuration): `alice = "alice"`,
//! `bob = ["bob", "deploy"]` (the first is the default, the others may be asked for with the
//! request's `run_as`), `"*" = "execmesh"` for every user not listed. A user the mapping does not
//! cover is refused. Without any `[run_as]` the agent runs everything as itself — the development
//! default; production hosts map their users.
//!
//! A job's shell runs with the account's uid, gid and supplementary groups, with `HOME`, `USER`,
//! `LOGNAME` and `SHELL` set and the agent's own environment left behind, in the account's home
//! unless the request names a directory. File operations switch the thread that performs them
//! to the account's filesystem ids and groups (`setfsuid`, `setfsgid`, a thread-local
//! `setgroups`), so the kernel checks access as that account and new files belong to it.
//! Only an agent running as root can switch accounts; one that is not refuses mappings to any
//! account but its own.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt as _;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use execmesh_proto::Token;
use execmesh_proto::pb::ErrorCode;
use nix::unistd::{Gid, User, geteuid, getgrouplist};
use tracing::{error, warn};

use crate::refusal::Refusal;
use crate::vfork;

/// The key of the mapping entry that covers every user not listed.
pub const ANY_USER: &str = "*";
/// `PATH` of a child that runs as another account, when the agent has none.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// Variables of the agent's environment a child running as another account keeps.
const KEPT_VARS: &[&str] = &[
    "PATH", "LANG", "LANGUAGE", "LC_ALL", "LC_CTYPE", "TZ", "TERM",
];

/// A local unix account a request runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups (the primary group included), from the group database.
    pub groups: Vec<u32>,
    pub home: PathBuf,
    pub shell: PathBuf,
}

// === impl Account ===

impl Account {
    /// Looks `name` up in the user and group databases.
    pub fn lookup(name: &str) -> Result<Account, String> {
        let user = User::from_name(name)
            .map_err(|e| format!("cannot look up account {name}: {e}"))?
            .ok_or_else(|| format!("account {name} does not exist"))?;
        Self::from_user(user)
    }

    /// The account the agent itself runs as.
    pub fn agent() -> Result<Account, String> {
        let uid = geteuid();
        let user = User::from_uid(uid)
            .map_err(|e| format!("cannot look up uid {uid}: {e}"))?
            .ok_or_else(|| format!("uid {uid} has no account"))?;
        Self::from_user(user)
    }

    fn from_user(user: User) -> Result<Account, String> {
        let cname = CString::new(user.name.as_bytes())
            .map_err(|_| format!("account name {} has a NUL byte", user.name))?;
        let groups = getgrouplist(&cname, user.gid)
            .map_err(|e| format!("cannot list the groups of {}: {e}", user.name))?;
        Ok(Account {
            name: user.name,
            uid: user.uid.as_raw(),
            gid: user.gid.as_raw(),
            groups: groups.into_iter().map(Gid::as_raw).collect(),
            home: user.dir,
            shell: user.shell,
        })
    }

    /// Whether a process acting for this account must change its ids: it is not the agent's.
    pub fn switches(&self) -> bool {
        self.uid != geteuid().as_raw()
    }

    /// The ids a child of this account takes on.
    pub fn ids(&self) -> vfork::Ids<'_> {
        vfork::Ids {
            uid: self.uid,
            gid: self.gid,
            groups: &self.groups,
        }
    }

    /// Where a job starts when its request names no directory: the home directory, or `/` when
    /// that does not exist.
    pub fn default_cwd(&self) -> PathBuf {
        if self.home.is_dir() {
            self.home.clone()
        } else {
            PathBuf::from("/")
        }
    }

    /// The login variables a job of this account gets.
    pub fn login_env(&self) -> [(&'static str, String); 4] {
        [
            ("HOME", self.home.display().to_string()),
            ("USER", self.name.clone()),
            ("LOGNAME", self.name.clone()),
            ("SHELL", self.shell.display().to_string()),
        ]
    }

    /// The agent's variables a child running as another account keeps (`PATH`, locale, `TZ`).
    pub fn kept_env() -> Vec<(String, String)> {
        let mut kept: Vec<(String, String)> = KEPT_VARS
            .iter()
            .filter_map(|k| std::env::var(k).ok().map(|v| (k.to_string(), v)))
            .collect();
        if !kept.iter().any(|(k, _)| k == "PATH") {
            kept.push(("PATH".into(), DEFAULT_PATH.into()));
        }
        kept
    }

    /// What a forked child needs to become this account before exec, prepared in the parent
    /// (the child may not allocate).
    pub fn child_credentials(&self, cwd: Option<&Path>) -> io::Result<ChildCredentials> {
        let cwd = cwd
            .map(|c| CString::new(c.as_os_str().as_bytes()))
            .transpose()
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "cwd has a NUL byte"))?;
        Ok(ChildCredentials {
            uid: self.uid,
            gid: self.gid,
            groups: self.groups.clone(),
            cwd,
        })
    }
}

/// Ids, groups and working directory a child takes on before exec.
#[derive(Debug)]
pub struct ChildCredentials {
    uid: u32,
    gid: u32,
    groups: Vec<u32>,
    /// Changed into after the ids, so the directory is checked as the account.
    cwd: Option<CString>,
}

impl ChildCredentials {
    /// In the forked child: groups, gid, uid (in this order: each step needs the privileges the
    /// next one drops), then the working directory. Async-signal-safe: syscalls on memory
    /// prepared before the fork, no allocation.
    pub fn apply(&self) -> io::Result<()> {
        // SAFETY: setgroups, setgid, setuid, getuid and chdir only read the memory passed, which
        // lives as long as `self`.
        unsafe {
            if libc::setgroups(self.groups.len(), self.groups.as_ptr()) == -1
                || libc::setgid(self.gid) == -1
                || libc::setuid(self.uid) == -1
            {
                return Err(io::Error::last_os_error());
            }
            if libc::getuid() != self.uid || libc::geteuid() != self.uid {
                return Err(io::Error::from_raw_os_error(libc::EPERM));
            }
            if let Some(cwd) = &self.cwd
                && libc::chdir(cwd.as_ptr()) == -1
            {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(())
    }
}

/// The name of `account`, or of the agent's own account when there is none (as recorded in a
/// job's status).
pub fn name_of(account: Option<&Account>) -> String {
    static AGENT: OnceLock<String> = OnceLock::new();
    match account {
        Some(account) => account.name.clone(),
        None => AGENT
            .get_or_init(|| {
                Account::agent()
                    .map(|a| a.name)
                    .unwrap_or_else(|_| format!("uid {}", geteuid()))
            })
            .clone(),
    }
}

/// The host's `[run_as]` mapping.
#[derive(Debug, Clone)]
pub struct RunAs {
    /// MCP user (or [`ANY_USER`]) → accounts, the first being the default.
    mapping: BTreeMap<String, Vec<String>>,
    /// The agent's own account (`None` if it cannot be looked up).
    agent: Option<Account>,
}

// === impl RunAs ===

impl RunAs {
    /// The mapping of the configuration; warns about accounts a non-root agent cannot use.
    pub fn new(mapping: &BTreeMap<String, Vec<String>>) -> Self {
        let agent = Account::agent()
            .inspect_err(|e| warn!(error = %e, "cannot look up the agent's own account"))
            .ok();
        let run_as = Self {
            mapping: mapping.clone(),
            agent,
        };
        if !geteuid().is_root() {
            let own = run_as.agent_name();
            for accounts in run_as.mapping.values() {
                for account in accounts.iter().filter(|a| Some(a.as_str()) != own) {
                    warn!(account = %account, agent = own.unwrap_or("?"),
                          "the agent does not run as root: requests mapped to this account will be refused");
                }
            }
        }
        run_as
    }

    /// The account every user not listed runs as by default (the first of `"*"`), when it is
    /// another than the agent's and the agent can switch to it: the one warm shells are
    /// started as. `None` otherwise (without a mapping, jobs run as the agent).
    pub fn default_account(&self) -> Option<Account> {
        let name = self.mapping.get(ANY_USER)?.first()?;
        let account = Account::lookup(name)
            .inspect_err(|e| warn!(account = %name, error = %e, "warm shells: cannot look up the default account; jobs start their own shells"))
            .ok()?;
        (account.switches() && geteuid().is_root()).then_some(account)
    }

    /// Whether a mapping is configured; without one everything runs as the agent.
    pub fn is_configured(&self) -> bool {
        !self.mapping.is_empty()
    }

    fn agent_name(&self) -> Option<&str> {
        self.agent.as_ref().map(|a| a.name.as_str())
    }

    /// The account `user` runs as on `host`: `requested` (the request's `run_as`) if the mapping
    /// allows it, else the mapping's first account for the user. `None`: no mapping is
    /// configured and the request runs as the agent.
    pub fn resolve(
        &self,
        host: &Token,
        user: &Token,
        requested: &str,
    ) -> Result<Option<Account>, Refusal> {
        let refuse = |why: String| Refusal::new(ErrorCode::RunAs, format!("host {host}: {why}"));
        if !self.is_configured() {
            if requested.is_empty() || Some(requested) == self.agent_name() {
                return Ok(None);
            }
            return Err(refuse(format!(
                "user {user} asks to run as {requested}, but this host maps no accounts \
                 ([run_as] is empty), so requests run as the agent's own account {}",
                self.agent_name().unwrap_or("(unknown)")
            )));
        }
        let accounts = self
            .mapping
            .get(user.as_str())
            .or_else(|| self.mapping.get(ANY_USER))
            .filter(|accounts| !accounts.is_empty())
            .ok_or_else(|| {
                refuse(format!(
                    "user {user} has no unix account on this host (no `{user}` or `\"*\"` entry \
                     under [run_as])"
                ))
            })?;
        let name = if requested.is_empty() {
            &accounts[0]
        } else {
            accounts.iter().find(|a| *a == requested).ok_or_else(|| {
                refuse(format!(
                    "user {user} may run as {} on this host, not as {requested}",
                    accounts.join(", ")
                ))
            })?
        };
        let account = Account::lookup(name)
            .map_err(|e| refuse(format!("user {user} maps to account {name}, but {e}")))?;
        if account.switches() && !geteuid().is_root() {
            return Err(refuse(format!(
                "user {user} maps to account {name}, but the agent runs as {} (uid {}), not \
                 root, and can only run commands as itself",
                self.agent_name().unwrap_or("(unknown)"),
                geteuid()
            )));
        }
        Ok(Some(account))
    }
}

/// The calling thread acting on the file system as an account: its filesystem uid and gid and
/// its supplementary groups are the account's until the guard is dropped. Only this thread is
/// affected (Linux credentials are per thread; the raw `setgroups` syscall is used because
/// libc's wrapper changes every thread of the process). Used on blocking-pool threads for one
/// file operation at a time.
#[derive(Debug)]
pub struct FsCredentials {
    saved_uid: u32,
    saved_gid: u32,
    saved_groups: Vec<libc::gid_t>,
}

/// The filesystem ids of a thread that acts as an account: the agent's own and the account's.
#[derive(Debug, Clone, Copy)]
struct Acting {
    agent: (u32, u32),
    account: (u32, u32),
}

thread_local! {
    /// Set while this thread holds [`FsCredentials`], for [`as_agent`].
    static ACTING: Cell<Option<Acting>> = const { Cell::new(None) };
}

/// While alive, the thread has its own (the agent's) filesystem ids back; on drop it acts as
/// the account again.
struct AgentIds(Acting);

// === impl FsCredentials ===

impl FsCredentials {
    /// Switches this thread to `account` for file access. Fails (and changes nothing) if the
    /// switch does not take.
    pub fn assume(account: &Account) -> io::Result<FsCredentials> {
        let saved_groups = nix::unistd::getgroups()
            .map_err(io::Error::from)?
            .into_iter()
            .map(Gid::as_raw)
            .collect::<Vec<_>>();
        let saved = FsCredentials {
            saved_uid: current_fsuid(),
            saved_gid: current_fsgid(),
            saved_groups,
        };
        thread_setgroups(&account.groups)?;
        // SAFETY: plain syscalls on integers.
        unsafe {
            libc::setfsgid(account.gid);
            libc::setfsuid(account.uid);
        }
        if current_fsuid() != account.uid || current_fsgid() != account.gid {
            drop(saved);
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!("cannot take on the file-system ids of {}", account.name),
            ));
        }
        ACTING.set(Some(Acting {
            agent: (saved.saved_uid, saved.saved_gid),
            account: (account.uid, account.gid),
        }));
        Ok(saved)
    }
}

/// The filesystem uid and gid this thread acts with: an account's while it holds
/// [`FsCredentials`], the agent's otherwise.
pub fn fs_ids() -> (u32, u32) {
    (current_fsuid(), current_fsgid())
}

/// Runs `f` with the agent's own filesystem ids when this thread acts as an account (unchanged
/// otherwise). For the one thing an account cannot do itself and the agent does for it on a
/// descriptor already open: giving a replaced file's owner back to its replacement.
pub fn as_agent<T>(f: impl FnOnce() -> T) -> T {
    let Some(acting) = ACTING.get() else {
        return f();
    };
    // SAFETY: plain syscalls on integers.
    unsafe {
        libc::setfsuid(acting.agent.0);
        libc::setfsgid(acting.agent.1);
    }
    let _back = AgentIds(acting);
    f()
}

impl Drop for AgentIds {
    fn drop(&mut self) {
        // SAFETY: plain syscalls on integers.
        unsafe {
            libc::setfsgid(self.0.account.1);
            libc::setfsuid(self.0.account.0);
        }
        if current_fsuid() != self.0.account.0 {
            error!(
                uid = self.0.account.0,
                "could not switch a file worker back to its account"
            );
        }
    }
}

impl Drop for FsCredentials {
    fn drop(&mut self) {
        ACTING.set(None);
        // SAFETY: plain syscalls on integers.
        unsafe {
            libc::setfsuid(self.saved_uid);
            libc::setfsgid(self.saved_gid);
        }
        let groups_restored = thread_setgroups(&self.saved_groups).is_ok();
        if current_fsuid() != self.saved_uid || !groups_restored {
            // The thread keeps fewer rights than the agent, never more; say so loudly.
            error!(
                uid = self.saved_uid,
                "could not restore a file worker's credentials"
            );
        }
    }
}

/// `setfsuid(-1)` changes nothing and returns the current filesystem uid.
fn current_fsuid() -> u32 {
    // SAFETY: plain syscall; an invalid id is a query.
    unsafe { libc::setfsuid(u32::MAX) as u32 }
}

fn current_fsgid() -> u32 {
    // SAFETY: plain syscall; an invalid id is a query.
    unsafe { libc::setfsgid(u32::MAX) as u32 }
}

/// `setgroups` for the calling thread only.
fn thread_setgroups(groups: &[libc::gid_t]) -> io::Result<()> {
    // SAFETY: the kernel reads `groups.len()` gids from the pointer, which `groups` provides.
    let r = unsafe { libc::syscall(libc::SYS_setgroups, groups.len(), groups.as_ptr()) };
    if r == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Checks a `[run_as]` mapping as configured: user keys are subject tokens or `*`, accounts are
/// non-empty names. Accounts are looked up per request, not here: they may be created later.
pub fn check_mapping(mapping: &BTreeMap<String, Vec<String>>) -> Vec<String> {
    let mut problems = Vec::new();
    for (user, accounts) in mapping {
        if user != ANY_USER
            && let Err(e) = Token::parse("user", user)
        {
            problems.push(format!(
                "run_as.{user}: {e} (or `\"*\"` for every other user)"
            ));
        }
        if accounts.is_empty() {
            problems.push(format!("run_as.{user}: names no account"));
        }
        for account in accounts {
            if account.is_empty()
                || account.contains(['/', ':', '\0'])
                || account.chars().any(char::is_whitespace)
            {
                problems.push(format!(
                    "run_as.{user}: `{}` is not a unix account name",
                    account.escape_debug()
                ));
            }
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host() -> Token {
        Token::parse("host id", "web-1").expect("token")
    }

    fn user(name: &str) -> Token {
        Token::parse("user", name).expect("token")
    }

    fn mapping(pairs: &[(&str, &[&str])]) -> BTreeMap<String, Vec<String>> {
        pairs
            .iter()
            .map(|(u, a)| (u.to_string(), a.iter().map(|s| s.to_string()).collect()))
            .collect()
    }

    #[test]
    fn without_a_mapping_everything_runs_as_the_agent() {
        let run_as = RunAs::new(&BTreeMap::new());
        assert_eq!(run_as.resolve(&host(), &user("alice"), ""), Ok(None));
        let own = Account::agent().expect("agent account").name;
        assert_eq!(run_as.resolve(&host(), &user("alice"), &own), Ok(None));
        let r = run_as
            .resolve(&host(), &user("alice"), "someone-else")
            .unwrap_err();
        assert_eq!(r.code, ErrorCode::RunAs);
        assert!(r.message.contains("[run_as] is empty"), "{r:?}");
    }

    #[test]
    fn users_map_to_their_accounts_or_the_default() {
        let own = Account::agent().expect("agent account").name;
        let run_as = RunAs::new(&mapping(&[
            ("alice", &[own.as_str(), "daemon"]),
            ("*", &[own.as_str()]),
        ]));
        let alice = run_as
            .resolve(&host(), &user("alice"), "")
            .expect("mapped")
            .expect("an account");
        assert_eq!(alice.name, own);
        assert!(!alice.switches());
        match run_as.resolve(&host(), &user("alice"), "daemon") {
            Ok(Some(daemon)) => assert!(geteuid().is_root() && daemon.name == "daemon"),
            Ok(None) => panic!("a mapped request runs as an account"),
            Err(r) => assert!(
                !geteuid().is_root() && r.message.contains("not root"),
                "{r:?}"
            ),
        }
        let bob = run_as
            .resolve(&host(), &user("bob"), "")
            .expect("default")
            .expect("an account");
        assert_eq!(bob.name, own);
        let r = run_as.resolve(&host(), &user("bob"), "daemon").unwrap_err();
        assert!(
            r.message.contains(&format!("may run as {own}")) && r.message.contains("not as daemon"),
            "{r:?}"
        );
    }

    #[test]
    fn an_unmapped_user_or_missing_account_is_refused_naming_user_and_host() {
        let run_as = RunAs::new(&mapping(&[("alice", &["no-such-account-x"])]));
        let r = run_as.resolve(&host(), &user("bob"), "").unwrap_err();
        assert_eq!(r.code, ErrorCode::RunAs);
        assert!(
            r.message.contains("web-1") && r.message.contains("user bob"),
            "{r:?}"
        );
        let r = run_as.resolve(&host(), &user("alice"), "").unwrap_err();
        assert!(r.message.contains("does not exist"), "{r:?}");
    }

    #[test]
    fn bad_mappings_are_named() {
        let problems = check_mapping(&mapping(&[
            ("Alice", &["alice"]),
            ("bob", &[]),
            ("carol", &["a b"]),
            ("*", &["nobody"]),
        ]));
        assert_eq!(problems.len(), 3, "{problems:#?}");
    }

    #[test]
    fn an_account_brings_its_login_environment() {
        let nobody = Account::lookup("nobody").expect("nobody exists");
        let env = nobody.login_env();
        assert!(env.contains(&("USER", "nobody".to_string())));
        assert!(Account::kept_env().iter().any(|(k, _)| k == "PATH"));
    }

    #[test]
    fn a_file_worker_thread_acts_as_the_account_and_gets_its_rights_back() {
        if !geteuid().is_root() {
            // Switching accounts needs root; the scenario tests run as root.
            return;
        }
        let nobody = Account::lookup("nobody").expect("nobody exists");
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("made-by-nobody");
        std::thread::scope(|s| {
            s.spawn(|| {
                {
                    let _as = FsCredentials::assume(&nobody).expect("switch");
                    // The temp dir is root's, 0700: nobody may not create in it.
                    let denied = std::fs::write(&path, "x").unwrap_err();
                    assert_eq!(denied.kind(), io::ErrorKind::PermissionDenied);
                }
                std::fs::write(&path, "x").expect("root again");
            });
        });
        use std::os::unix::fs::MetadataExt;
        assert_eq!(std::fs::metadata(&path).expect("meta").uid(), 0);
        let open = dir.path().join("open");
        std::fs::create_dir(&open).expect("dir");
        std::fs::set_permissions(&open, std::os::unix::fs::PermissionsExt::from_mode(0o777))
            .expect("chmod");
        let made = open.join("mine");
        std::thread::scope(|s| {
            s.spawn(|| {
                let _as = FsCredentials::assume(&nobody).expect("switch");
                std::fs::write(&made, "x").expect("nobody writes in a 0777 dir");
            });
        });
        assert_eq!(std::fs::metadata(&made).expect("meta").uid(), nobody.uid);
        // Other threads were never affected.
        assert_eq!(current_fsuid(), 0);
    }
}
