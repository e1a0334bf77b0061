//! Starts a job's shell without copying the agent's memory: `clone(CLONE_VM | CLONE_VFORK)` runs the child on a stack of its own until it execs, as `posix_spawn` does, and a pidfd waits for it.
//!
//! A `fork` copies the agent's page tables, write-protects every page it has written, and the
//! child tears the copy down again at exec; measured on the roundtrip benchmark that was about
//! 1 ms of CPU per job, more than the shell itself spends. `posix_spawn` avoids it but cannot set
//! `PR_SET_PDEATHSIG`, change ids as a run-as account needs, or put a pipe on fd 3 as a warm
//! shell needs, so the same few steps are taken here. The child shares the agent's memory until
//! exec: everything it uses is prepared before the clone, and it only makes system calls (no
//! allocation, no locks, no panics).

use std::ffi::{CString, OsStr, OsString};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::ExitStatus;
use std::sync::atomic::{AtomicI32, Ordering};

use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::net::unix::pipe;

/// The child's stack until exec, above a guard page. The child runs a few system-call wrappers
/// (a few KiB even in a debug build); the rest is margin, reserved but never made resident
/// unless touched. Should the child ever overrun it, the guard page kills the child alone
/// instead of letting it write over the agent's memory, which it shares.
const CHILD_STACK_BYTES: usize = 256 * 1024;

/// The lowest descriptor a source of the child's stdio or fd 3 may have: above every target, so
/// that no `dup2` overwrites a source still to be copied.
const FIRST_FREE_FD: RawFd = 4;

/// [`Step`]s of the child, as it reports them.
const STEP_SETUP: i32 = 1;
const STEP_CWD: i32 = 2;
const STEP_EXEC: i32 = 3;

/// The highest signal number on Linux (`_NSIG - 1`).
const MAX_SIGNAL: libc::c_int = 64;

/// What to start.
pub struct Command<'a> {
    /// An absolute path.
    pub program: &'a Path,
    /// Arguments after the program's name (which is `argv[0]`).
    pub args: &'a [&'a OsStr],
    /// The child's whole environment.
    pub env: Vec<(OsString, OsString)>,
    /// Changed into after the ids, so that it is checked as the account.
    pub cwd: Option<&'a Path>,
    /// The account's ids, taken on before anything else.
    pub ids: Option<Ids<'a>>,
    /// Becomes the child's fd 3.
    pub fd3: Option<OwnedFd>,
}

/// The ids a child takes on (a run-as account's).
#[derive(Debug, Clone, Copy)]
pub struct Ids<'a> {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups.
    pub groups: &'a [u32],
}

/// The step at which the child gave up, and why.
#[derive(Debug, thiserror::Error)]
#[error("{source}")]
pub struct Failed {
    pub step: Step,
    pub source: io::Error,
}

/// A step of starting the child.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Before the clone (arguments, pipes, the clone itself).
    Prepare,
    /// Taking on the account's ids, the process group or the parent-death signal.
    Setup,
    /// Changing into the working directory.
    Cwd,
    /// Executing the program.
    Exec,
}

impl From<Failed> for io::Error {
    fn from(failed: Failed) -> io::Error {
        failed.source
    }
}

/// A child started by [`spawn`], leader of its own process group, with its stdout and stderr
/// piped. Dropping it unreaped leaves a task that reaps it.
#[derive(Debug)]
pub struct Child {
    pid: u32,
    pidfd: Option<AsyncFd<OwnedFd>>,
    status: Option<ExitStatus>,
    pub stdout: Option<pipe::Receiver>,
    pub stderr: Option<pipe::Receiver>,
}

/// Everything the child reads, laid out before the clone.
struct ChildArgs<'a> {
    program: CString,
    argv: Vec<*const libc::c_char>,
    envp: Vec<*const libc::c_char>,
    /// (source in the agent, target in the child), sources at or above [`FIRST_FREE_FD`];
    /// a source of -1 is skipped.
    fds: [(RawFd, RawFd); 4],
    cwd: Option<CString>,
    /// uid, gid and supplementary groups.
    ids: Option<(libc::uid_t, libc::gid_t, &'a [libc::gid_t])>,
    /// The agent's pid: the parent the child must have.
    die_with: u32,
    /// The errno of the step that failed in the child, 0 while none has.
    error: AtomicI32,
    /// Which step that was (a [`Step`] as a number); `STEP_EXEC` with no error once the child
    /// is about to exec, so that a child that ended before (by a signal) is told apart.
    step: AtomicI32,
}

/// Whether this kernel has what [`spawn`] needs: `CLONE_PIDFD` (Linux 5.2), pidfds that poll
/// (5.3) and `waitid(P_PIDFD)` (5.4). Probed once, on a pidfd of this process; where it is
/// missing (an older kernel), callers fork instead, and the agent says so once.
pub fn supported() -> bool {
    static SUPPORTED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *SUPPORTED.get_or_init(|| {
        // SAFETY: pidfd_open and waitid touch no memory of ours but `info`; the descriptor is
        // ours alone and closed by OwnedFd.
        let supported = unsafe {
            let fd = libc::syscall(libc::SYS_pidfd_open, libc::getpid(), 0);
            if fd < 0 {
                false
            } else {
                let fd = OwnedFd::from_raw_fd(fd as RawFd);
                let mut info: libc::siginfo_t = std::mem::zeroed();
                // Not a child of ours: ECHILD where P_PIDFD is known, EINVAL where it is not.
                libc::waitid(
                    libc::P_PIDFD,
                    fd.as_raw_fd() as libc::id_t,
                    &mut info,
                    libc::WEXITED | libc::WNOHANG,
                ) == 0
                    || io::Error::last_os_error().raw_os_error() == Some(libc::ECHILD)
            }
        };
        if !supported {
            tracing::warn!(
                "this kernel has no pidfds (Linux 5.4 or later has them): job shells are \
                 forked from the agent, and no warm shells are kept"
            );
        }
        supported
    })
}

/// Starts `command` with stdin from /dev/null, stdout and stderr piped, in a process group of
/// its own. Only where [`supported`]. The child is killed when the thread that starts it ends
/// (see [`die_with_agent`]), so this must run on a thread that lives as long as the agent.
pub fn spawn(command: Command<'_>) -> Result<Child, Failed> {
    let (mut child, outcome) = start(command).map_err(|source| Failed {
        step: Step::Prepare,
        source,
    })?;
    match outcome {
        None => Ok(child),
        Some((step, source)) => {
            // The child has exited: reap it before saying why.
            let _ = child.reap(0);
            Err(Failed { step, source })
        }
    }
}

/// Prepares everything, clones the child and takes it in; with the step it gave up at and why,
/// when it did.
fn start(command: Command<'_>) -> io::Result<(Child, Option<(Step, io::Error)>)> {
    let program = cstring(command.program.as_os_str())?;
    let mut strings = Vec::with_capacity(1 + command.args.len());
    strings.push(program.clone());
    for arg in command.args {
        strings.push(cstring(arg)?);
    }
    let mut env = Vec::with_capacity(command.env.len());
    for (key, value) in &command.env {
        let mut pair = key.as_bytes().to_vec();
        pair.push(b'=');
        pair.extend_from_slice(value.as_bytes());
        env.push(CString::new(pair).map_err(|_| nul_error())?);
    }
    let cwd = command
        .cwd
        .map(|cwd| cstring(cwd.as_os_str()))
        .transpose()?;

    let stdin = high(OwnedFd::from(std::fs::File::open("/dev/null")?))?;
    let (out_read, out_write) = io::pipe()?;
    let (err_read, err_write) = io::pipe()?;
    let (out_write, err_write) = (high(out_write.into())?, high(err_write.into())?);
    let fd3 = command.fd3.map(high).transpose()?;

    let args = ChildArgs {
        program,
        argv: null_terminated(&strings),
        envp: null_terminated(&env),
        fds: [
            (stdin.as_raw_fd(), 0),
            (out_write.as_raw_fd(), 1),
            (err_write.as_raw_fd(), 2),
            (fd3.as_ref().map_or(-1, AsRawFd::as_raw_fd), 3),
        ],
        cwd,
        ids: command.ids.map(|ids| (ids.uid, ids.gid, ids.groups)),
        die_with: std::process::id(),
        error: AtomicI32::new(0),
        step: AtomicI32::new(0),
    };
    let stack = ChildStack::new()?;
    let (pid, pidfd) = clone_child(&args, &stack)?;
    // The child has exec'd or exited: the agent's copies of its ends, and its stack, go.
    drop((stdin, out_write, err_write, fd3, stack));

    // SAFETY: the AsyncFd owns the pidfd, which stays open and the same until it is dropped.
    let pidfd = match unsafe { AsyncFd::register_with_interest(pidfd, Interest::READABLE) } {
        Ok(pidfd) => pidfd,
        Err(e) => {
            stop_unwaitable(pid);
            return Err(e.into_parts().1);
        }
    };
    let child = Child {
        pid,
        pidfd: Some(pidfd),
        status: None,
        stdout: Some(pipe::Receiver::from_owned_fd(out_read.into())?),
        stderr: Some(pipe::Receiver::from_owned_fd(err_read.into())?),
    };
    let outcome = match args.error.load(Ordering::Acquire) {
        0 if args.step.load(Ordering::Acquire) == STEP_EXEC => None,
        // Neither exec'd nor said why: a signal ended it (a stack overrun, say).
        0 => Some((
            Step::Setup,
            io::Error::other("the shell was killed before it could start"),
        )),
        errno => {
            let step = match args.step.load(Ordering::Acquire) {
                STEP_CWD => Step::Cwd,
                STEP_EXEC => Step::Exec,
                _ => Step::Setup,
            };
            Some((step, io::Error::from_raw_os_error(errno)))
        }
    };
    Ok((child, outcome))
}

/// Clones the child and waits (the kernel suspends this thread) until it has exec'd or exited.
/// Every signal is blocked meanwhile so that no handler of the agent's runs on the child's stack.
fn clone_child(args: &ChildArgs, stack: &ChildStack) -> io::Result<(u32, OwnedFd)> {
    let top = stack.top();
    let mut pidfd: libc::c_int = -1;
    // SAFETY: `args` and `stack` outlive the child's use of them: with CLONE_VFORK this thread
    // does not return from clone until the child has exec'd or exited. The child only reads
    // `args` (and writes its atomic error) and runs on `stack`. The signal masks are this
    // thread's own and restored before returning.
    let pid = unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        let mut before: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut before);
        let pid = libc::clone(
            child_main,
            top as *mut libc::c_void,
            libc::CLONE_VM | libc::CLONE_VFORK | libc::CLONE_PIDFD | libc::SIGCHLD,
            std::ptr::from_ref(args).cast_mut().cast(),
            &mut pidfd as *mut libc::c_int,
        );
        let cloned = io::Error::last_os_error();
        libc::pthread_sigmask(libc::SIG_SETMASK, &before, std::ptr::null_mut());
        if pid == -1 {
            return Err(cloned);
        }
        pid
    };
    if pidfd < 0 {
        // A kernel that ignored CLONE_PIDFD (callers check `supported` first).
        stop_unwaitable(pid as u32);
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "the kernel gave no pidfd for the child",
        ));
    }
    // SAFETY: CLONE_PIDFD stored a fresh descriptor, ours alone.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
    Ok((pid as u32, pidfd))
}

/// Kills and reaps a child that nothing could wait for (its pidfd is missing or could not be
/// registered), rather than leave it running unsupervised.
fn stop_unwaitable(pid: u32) {
    let pid = pid as libc::pid_t;
    // SAFETY: kill and waitpid touch no memory of ours.
    unsafe {
        libc::kill(pid, libc::SIGKILL);
        libc::waitpid(pid, std::ptr::null_mut(), 0);
    }
}

/// The child's stack: [`CHILD_STACK_BYTES`] mapped on their own, with a page below them that
/// faults when touched.
struct ChildStack {
    base: *mut libc::c_void,
    len: usize,
}

impl ChildStack {
    fn new() -> io::Result<ChildStack> {
        // SAFETY: sysconf reads a constant.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
        let len = CHILD_STACK_BYTES + page;
        // SAFETY: a fresh anonymous mapping that no other memory overlaps; only this struct
        // holds it and unmaps it on drop.
        unsafe {
            let base = libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK | libc::MAP_NORESERVE,
                -1,
                0,
            );
            if base == libc::MAP_FAILED {
                return Err(io::Error::last_os_error());
            }
            let stack = ChildStack { base, len };
            // The stack grows down: its lowest page is the guard.
            if libc::mprotect(base, page, libc::PROT_NONE) == -1 {
                return Err(io::Error::last_os_error());
            }
            Ok(stack)
        }
    }

    /// Where the child's stack pointer starts: the end of the mapping, 16-byte aligned.
    fn top(&self) -> usize {
        (self.base as usize + self.len) & !15
    }
}

impl Drop for ChildStack {
    fn drop(&mut self) {
        // SAFETY: the mapping is this struct's own, and the child that ran on it has exec'd
        // or exited.
        unsafe {
            libc::munmap(self.base, self.len);
        }
    }
}

/// The child until exec. Only system calls: it shares the agent's memory.
extern "C" fn child_main(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` is the `ChildArgs` that `clone_child` passed, alive until this child
    // execs or exits. Every call below is a system-call wrapper that is async-signal-safe.
    unsafe {
        let args = &*(arg as *const ChildArgs);
        // Handlers are the agent's and must not run here; SIGPIPE, which the agent ignores,
        // is the default again for the shell. Signals are still blocked (see clone_child).
        // Signals the C library keeps to itself refuse the change, which is fine.
        for signal in 1..=MAX_SIGNAL {
            let mut action: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(signal, std::ptr::null(), &mut action) == 0
                && (action.sa_sigaction != libc::SIG_IGN || signal == libc::SIGPIPE)
                && action.sa_sigaction != libc::SIG_DFL
            {
                action.sa_sigaction = libc::SIG_DFL;
                libc::sigaction(signal, &action, std::ptr::null_mut());
            }
        }
        if libc::setpgid(0, 0) == -1 {
            fail(args, STEP_SETUP);
        }
        // Groups, gid, uid, in this order: each step needs the privileges the next one drops.
        // Raw system calls: the C library's wrappers would try to change the ids of every
        // thread of the agent, whose memory this child shares.
        if let Some((uid, gid, groups)) = args.ids {
            if libc::syscall(libc::SYS_setgroups, groups.len(), groups.as_ptr()) == -1
                || libc::syscall(libc::SYS_setresgid, gid, gid, gid) == -1
                || libc::syscall(libc::SYS_setresuid, uid, uid, uid) == -1
            {
                fail(args, STEP_SETUP);
            }
            if libc::syscall(libc::SYS_getuid) as libc::uid_t != uid
                || libc::syscall(libc::SYS_geteuid) as libc::uid_t != uid
            {
                *libc::__errno_location() = libc::EPERM;
                fail(args, STEP_SETUP);
            }
        }
        // After the ids, which would clear it.
        if let Err(e) = die_with_agent(args.die_with) {
            *libc::__errno_location() = e.raw_os_error().unwrap_or(libc::EINVAL);
            fail(args, STEP_SETUP);
        }
        if let Some(cwd) = &args.cwd
            && libc::chdir(cwd.as_ptr()) == -1
        {
            fail(args, STEP_CWD);
        }
        for &(source, target) in &args.fds {
            // dup2 clears close-on-exec on the target, so it is inherited.
            if source >= 0 && libc::dup2(source, target) == -1 {
                fail(args, STEP_SETUP);
            }
        }
        let mut none: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut none);
        libc::pthread_sigmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
        // Tells the parent, if nothing else comes, that the child got this far.
        args.step.store(STEP_EXEC, Ordering::Release);
        libc::execve(
            args.program.as_ptr(),
            args.argv.as_ptr(),
            args.envp.as_ptr(),
        );
        fail(args, STEP_EXEC)
    }
}

/// In the child: tells the parent why it gives up (the errno of the last call), and exits.
///
/// # Safety
/// Only in the child of [`clone_child`], right after the call that failed.
unsafe fn fail(args: &ChildArgs, step: i32) -> ! {
    // SAFETY: errno is readable; _exit ends the child without running anything of the agent's.
    unsafe {
        args.step.store(step, Ordering::Release);
        args.error
            .store((*libc::__errno_location()).max(1), Ordering::Release);
        libc::_exit(127)
    }
}

/// In the child: ask the kernel for SIGKILL when the agent dies, so a crashed agent leaves no
/// shell behind (grandchildren are found by recovery through their `EXECMESH_JOB`). The signal
/// follows the *thread* that started the child, which is a runtime worker living as long as the
/// agent. If the agent died before the prctl, the parent is already someone else: give up
/// instead of running. Set after any change of ids, which would clear it.
pub fn die_with_agent(agent: u32) -> io::Result<()> {
    // SAFETY: prctl(PR_SET_PDEATHSIG) and getppid are async-signal-safe and touch no memory of
    // ours; the errors made here do not allocate.
    unsafe {
        if libc::prctl(
            libc::PR_SET_PDEATHSIG,
            libc::SIGKILL as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
        ) == -1
        {
            return Err(io::Error::last_os_error());
        }
        if libc::getppid() as u32 != agent {
            return Err(io::Error::from_raw_os_error(libc::ESRCH));
        }
    }
    Ok(())
}

fn cstring(s: &OsStr) -> io::Result<CString> {
    CString::new(s.as_bytes()).map_err(|_| nul_error())
}

fn nul_error() -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        "an argument or environment variable holds a NUL byte",
    )
}

fn null_terminated(strings: &[CString]) -> Vec<*const libc::c_char> {
    strings
        .iter()
        .map(|s| s.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect()
}

/// `fd`, moved to [`FIRST_FREE_FD`] or above (close-on-exec) when it is lower.
fn high(fd: OwnedFd) -> io::Result<OwnedFd> {
    if fd.as_raw_fd() >= FIRST_FREE_FD {
        return Ok(fd);
    }
    // SAFETY: F_DUPFD_CLOEXEC only creates a descriptor, which we take ownership of below.
    let raw = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, FIRST_FREE_FD) };
    if raw == -1 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` is a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

// === impl Child ===

impl Child {
    /// The child's pid, which is also its process group id; `None` once it was reaped (the pid
    /// may then belong to another process).
    pub fn id(&self) -> Option<u32> {
        self.status.is_none().then_some(self.pid)
    }

    /// Its exit status, reaping it, if it has exited.
    pub fn try_wait(&mut self) -> io::Result<Option<ExitStatus>> {
        self.reap(libc::WNOHANG)
    }

    /// Waits for it to exit and reaps it. Cancel-safe.
    pub async fn wait(&mut self) -> io::Result<ExitStatus> {
        loop {
            if let Some(status) = self.try_wait()? {
                return Ok(status);
            }
            let pidfd = self
                .pidfd
                .as_ref()
                .ok_or_else(|| io::Error::other("the child has no pidfd"))?;
            // A pidfd polls readable once its process has exited.
            let mut ready = pidfd.readable().await?;
            ready.clear_ready();
        }
    }

    fn reap(&mut self, flags: libc::c_int) -> io::Result<Option<ExitStatus>> {
        if let Some(status) = self.status {
            return Ok(Some(status));
        }
        let Some(pidfd) = &self.pidfd else {
            return Err(io::Error::other("the child has no pidfd"));
        };
        self.status = reap(pidfd.get_ref(), flags)?;
        Ok(self.status)
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        if self.status.is_some() || matches!(self.try_wait(), Ok(Some(_))) {
            return;
        }
        // Still running: whoever dropped it has killed it or left it to its job; reap it when
        // it ends rather than leave a zombie. The task holds the pidfd alone, not a Child: a
        // runtime shutting down drops the task at once, and a Child there would spawn another
        // from its own drop, again and again until the stack ran out.
        let (Ok(runtime), Some(pidfd)) = (tokio::runtime::Handle::try_current(), self.pidfd.take())
        else {
            return;
        };
        runtime.spawn(async move {
            // A pidfd polls readable once its process has exited.
            while let Ok(None) = reap(pidfd.get_ref(), libc::WNOHANG) {
                match pidfd.readable().await {
                    Ok(mut ready) => ready.clear_ready(),
                    Err(_) => return,
                }
            }
        });
    }
}

/// Reaps the child behind `pidfd`: its status once it has exited, `None` while it runs (with
/// `WNOHANG` in `flags`).
fn reap(pidfd: &OwnedFd, flags: libc::c_int) -> io::Result<Option<ExitStatus>> {
    // SAFETY: waitid writes only `info`, which is ours and zeroed.
    let info = unsafe {
        let mut info: libc::siginfo_t = std::mem::zeroed();
        if libc::waitid(
            libc::P_PIDFD,
            pidfd.as_raw_fd() as libc::id_t,
            &mut info,
            libc::WEXITED | flags,
        ) == -1
        {
            return Err(io::Error::last_os_error());
        }
        info
    };
    // SAFETY: for a SIGCHLD-kind siginfo from waitid these fields are set (si_pid is 0 when
    // WNOHANG found the child still running).
    let (pid, code, value) = unsafe { (info.si_pid(), info.si_code, info.si_status()) };
    if pid == 0 {
        return Ok(None);
    }
    let raw = match code {
        libc::CLD_EXITED => (value & 0xff) << 8,
        libc::CLD_DUMPED => value | 0x80,
        _ => value,
    };
    Ok(Some(ExitStatus::from_raw(raw)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt as _;

    fn sh(script: &str, fd3: OwnedFd) -> Result<Child, Failed> {
        let args = [OsStr::new("-c"), OsStr::new(script)];
        spawn(Command {
            program: Path::new("/bin/sh"),
            args: &args,
            env: vec![("GREETING".into(), "hello".into())],
            cwd: Some(Path::new("/")),
            ids: None,
            fd3: Some(fd3),
        })
    }

    /// `sh -c script` with nothing else: no environment, directory or fd 3.
    fn bare_sh(script: &str) -> Result<Child, Failed> {
        let args = [OsStr::new("-c"), OsStr::new(script)];
        spawn(Command {
            program: Path::new("/bin/sh"),
            args: &args,
            env: Vec::new(),
            cwd: None,
            ids: None,
            fd3: None,
        })
    }

    async fn read_all(pipe: Option<pipe::Receiver>) -> String {
        let mut s = String::new();
        if let Some(mut pipe) = pipe {
            pipe.read_to_string(&mut s).await.expect("read the pipe");
        }
        s
    }

    #[test]
    fn this_kernel_has_pidfds() {
        // The test machines run Linux 6; on them every job shell must take this path.
        assert!(supported());
    }

    #[tokio::test]
    async fn a_child_gets_its_fds_environment_and_group_and_is_reaped_with_its_status() {
        let (reader, writer) = io::pipe().expect("pipe");
        let mut writer = std::fs::File::from(OwnedFd::from(writer));
        std::io::Write::write_all(&mut writer, b"from fd 3\n").expect("write");
        drop(writer);
        let mut child = sh(
            "echo \"$GREETING $(cat <&3) in $PWD\"; echo err >&2; \
             [ \"$(cut -d' ' -f5 /proc/$$/stat)\" = $$ ] || exit 9; \
             read line || exit 7",
            reader.into(),
        )
        .expect("spawn");
        let pid = child.id().expect("unreaped");
        let (out, err) = (child.stdout.take(), child.stderr.take());
        let (out, err) = (read_all(out).await, read_all(err).await);
        let status = child.wait().await.expect("wait");
        assert_eq!(out, "hello from fd 3 in /\n");
        assert_eq!(err, "err\n");
        assert_eq!(
            status.code(),
            Some(7),
            "stdin is /dev/null, and the group its own"
        );
        assert_eq!(child.id(), None, "reaped");
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "no zombie left"
        );
    }

    #[tokio::test]
    async fn a_killed_child_reports_its_signal_and_a_failed_exec_its_error() {
        let (reader, _writer) = io::pipe().expect("pipe");
        let mut child = sh("read line <&3", reader.into()).expect("spawn");
        assert!(
            child.try_wait().expect("try_wait").is_none(),
            "still waits on fd 3"
        );
        let pid = child.id().expect("pid");
        nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .expect("signal its group");
        let status = child.wait().await.expect("wait");
        assert_eq!(status.signal(), Some(libc::SIGTERM));

        let (reader, _writer) = io::pipe().expect("pipe");
        let missing = spawn(Command {
            program: Path::new("/nonexistent/shell"),
            args: &[],
            env: Vec::new(),
            cwd: None,
            ids: None,
            fd3: Some(reader.into()),
        });
        let e = missing.expect_err("no such program");
        assert_eq!(e.step, Step::Exec);
        assert_eq!(e.source.kind(), io::ErrorKind::NotFound, "{e}");

        let nowhere = spawn(Command {
            program: Path::new("/bin/sh"),
            args: &[],
            env: Vec::new(),
            cwd: Some(Path::new("/nonexistent/dir")),
            ids: None,
            fd3: None,
        });
        let e = nowhere.expect_err("no such directory");
        assert_eq!(e.step, Step::Cwd);
        assert_eq!(e.source.kind(), io::ErrorKind::NotFound, "{e}");
    }

    #[test]
    fn the_childs_stack_has_a_guard_page_below_it() {
        let stack = ChildStack::new().expect("map a stack");
        let base = stack.base as usize;
        let maps = std::fs::read_to_string("/proc/self/maps").expect("read maps");
        let perms_at = |addr: usize| {
            maps.lines().find_map(|line| {
                let (range, rest) = line.split_once(' ')?;
                let (lo, hi) = range.split_once('-')?;
                let (lo, hi) = (
                    usize::from_str_radix(lo, 16).ok()?,
                    usize::from_str_radix(hi, 16).ok()?,
                );
                (lo <= addr && addr < hi).then(|| rest[..4].to_string())
            })
        };
        assert_eq!(perms_at(base).as_deref(), Some("---p"), "the guard page");
        assert_eq!(perms_at(stack.top() - 16).as_deref(), Some("rw-p"));
        assert!(stack.top() - base > CHILD_STACK_BYTES);
    }

    /// Many children started at once from every worker thread, as a busy agent does: each gets
    /// its own arguments and output, and the agent (whose memory each child shares until exec)
    /// is unharmed.
    #[test]
    fn children_started_at_once_from_many_threads_each_get_their_own_output() {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(4)
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async {
            let mut tasks = tokio::task::JoinSet::new();
            for task in 0..32 {
                tasks.spawn(async move {
                    for round in 0..20 {
                        let script = format!("echo {task}-{round}; echo e{round} >&2");
                        let mut child = bare_sh(&script).expect("spawn");
                        let (out, err) = (child.stdout.take(), child.stderr.take());
                        let (out, err) = tokio::join!(read_all(out), read_all(err));
                        assert!(child.wait().await.expect("wait").success());
                        assert_eq!(
                            (out, err),
                            (format!("{task}-{round}\n"), format!("e{round}\n"))
                        );
                    }
                });
            }
            while let Some(done) = tasks.join_next().await {
                done.expect("every task finished without a panic");
            }
        });
    }

    /// A child dropped while it runs is left to a task that reaps it. A runtime shut down
    /// meanwhile drops that task at once: before, the task held a Child whose drop spawned the
    /// next task, recursing until the thread's stack overflowed and the agent aborted.
    #[test]
    fn a_runtime_shut_down_with_a_running_child_left_to_reap_stops_cleanly() {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let pid = runtime.block_on(async {
            let child = bare_sh("exec sleep 30").expect("spawn");
            let pid = child.id().expect("running");
            drop(child);
            pid
        });
        drop(runtime);
        // Still ours to stop and reap.
        let pid = nix::unistd::Pid::from_raw(pid as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL).expect("kill");
        let reaped = nix::sys::wait::waitpid(pid, None).expect("reap");
        assert!(
            matches!(
                reaped,
                nix::sys::wait::WaitStatus::Signaled(_, nix::sys::signal::Signal::SIGKILL, _)
            ),
            "{reaped:?}"
        );
    }

    #[tokio::test]
    async fn a_child_takes_on_the_accounts_ids_and_only_then_its_directory() {
        let args = [OsStr::new("-c"), OsStr::new("id -u; id -g; id -G; pwd")];
        let groups = [65534, 4];
        let as_nobody_in = |cwd| {
            spawn(Command {
                program: Path::new("/bin/sh"),
                args: &args,
                env: vec![("PATH".into(), "/usr/bin:/bin".into())],
                cwd: Some(cwd),
                ids: Some(Ids {
                    uid: 65534,
                    gid: 65534,
                    groups: &groups,
                }),
                fd3: None,
            })
        };
        let child = as_nobody_in(Path::new("/"));
        if !nix::unistd::geteuid().is_root() {
            let e = child.expect_err("only root changes ids");
            assert_eq!(
                (e.step, e.source.raw_os_error()),
                (Step::Setup, Some(libc::EPERM))
            );
            return;
        }
        let mut child = child.expect("spawn");
        let out = read_all(child.stdout.take()).await;
        assert!(child.wait().await.expect("wait").success());
        assert_eq!(out, "65534\n65534\n65534 4\n/\n");

        // A directory the account may not enter is refused at that step, not run elsewhere.
        let private = tempfile::tempdir().expect("temp dir");
        std::fs::set_permissions(
            private.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o700),
        )
        .expect("chmod");
        let e = as_nobody_in(private.path()).expect_err("not the account's to enter");
        assert_eq!(e.step, Step::Cwd);
        assert_eq!(e.source.kind(), io::ErrorKind::PermissionDenied, "{e}");
    }
}
