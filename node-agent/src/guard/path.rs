//! Paths as the guard judges them: made absolute and lexically normal, with `/proc/<pid>/root` and `/proc/<pid>/cwd` followed, and classified (system path, disk device, power switch).
//!
//! Normalising folds `//`, `.` and `..`, resolves a relative path against the working
//! directory when it is known, replaces `/proc/self/root` (any pid, `thread-self`, a task) by
//! `/` and `/proc/self/cwd` by the working directory, and applies the symlinks the command
//! itself made (`ln -s / /tmp/x`). Symlinks that already exist on the host are not read: the
//! guard judges what is written, the account's permissions judge the rest.

use super::glob::{globs_intersect, is_glob, matches_everything};
use super::word::{Field, Invocation, Piece};

/// Top-level directories whose recursive delete (or chmod/chown) is denied, besides `/`.
pub const SYSTEM_DIRS: &[&str] = &[
    "bin", "boot", "dev", "etc", "home", "lib", "lib32", "lib64", "libx32", "media", "mnt", "opt",
    "proc", "root", "run", "sbin", "snap", "srv", "sys", "usr", "var",
];

/// Directories one level further down that are as vital as the top-level ones.
const SYSTEM_SUBDIRS: &[(&str, &[&str])] = &[
    (
        "usr",
        &[
            "bin", "sbin", "lib", "lib32", "lib64", "libx32", "libexec", "share", "include",
            "local", "src",
        ],
    ),
    ("var", &["lib", "log", "spool", "mail", "backups", "opt"]),
    (
        "etc",
        &[
            "ssh",
            "ssl",
            "pam.d",
            "systemd",
            "security",
            "sudoers.d",
            "default",
            "network",
            "init.d",
            "apt",
            "yum.repos.d",
        ],
    ),
    ("boot", &["grub", "grub2", "efi", "loader"]),
];

/// Device names under `/dev` that are disks (or raw memory), as globs over the path after
/// `/dev/`.
const DISK_DEVICES: &[&str] = &[
    "sd*",
    "hd*",
    "vd*",
    "xvd*",
    "nvme*",
    "mmcblk*",
    "md*",
    "dm-*",
    "loop*",
    "nbd*",
    "zram*",
    "rbd*",
    "sr[0-9]*",
    "sg[0-9]*",
    "st[0-9]*",
    "nst[0-9]*",
    "zd*",
    "bcache*",
    "drbd*",
    "ubi*",
    "mtd*",
    "root",
    "mem",
    "kmem",
    "port",
    "mapper/*",
    "disk/*",
    "block/*",
    "char/*",
    "md/*",
    "zvol/*",
];

/// Directories under `/dev` that hold no disks; any other directory there may be a volume
/// group (`/dev/<vg>/<lv>`).
const NON_DISK_DIRS: &[&str] = &[
    "pts",
    "shm",
    "fd",
    "mqueue",
    "hugepages",
    "input",
    "snd",
    "dri",
    "net",
    "bus",
    "cpu",
    "usb",
    "vfio",
    "serial",
    "v4l",
    "hidraw",
    "log",
    "dma_heap",
    "vhost-net",
    "tty",
];

/// Files whose writing takes the host down.
pub const POWER_FILES: &[&str] = &["/proc/sysrq-trigger", "/sys/power/state"];

/// A working directory: the directories the command may be in at one point (`None`: one
/// that is not known).
pub type Cwd = [Option<String>];

/// Symlinks (and bind mounts) the command makes: the link's normal path and its target's.
pub type Links = [(String, String)];

/// A path as the guard judges it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum View {
    /// An absolute, lexically normal path (it may hold glob characters).
    Abs(String),
    /// A path that only climbs (`..`, `../..`, `../*`) from a working directory that is not
    /// known: it may be `/`.
    Ancestor(String),
}

/// Whether `component` of `/proc/<component>/…` names a process.
fn pid_like(component: &str) -> bool {
    matches!(component, "self" | "thread-self")
        || (!component.is_empty() && component.bytes().all(|b| b.is_ascii_digit()))
        || is_glob(component)
}

/// `path` made absolute and normal; `None` when it is relative (or goes through
/// `/proc/*/cwd`) and the working directory is not known.
pub fn normalise(path: &str, cwd: Option<&str>, links: &Links) -> Option<String> {
    let joined;
    let path = if path.starts_with('/') {
        path
    } else {
        joined = format!("{}/{path}", cwd?);
        &joined
    };
    let mut stack: Vec<String> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                stack.pop();
            }
            "root" | "cwd" if is_proc_process(&stack) => {
                if part == "root" {
                    stack.clear();
                } else {
                    stack = normalise(cwd?, None, &[])?
                        .split('/')
                        .filter(|s| !s.is_empty())
                        .map(str::to_string)
                        .collect();
                }
            }
            other => stack.push(other.to_string()),
        }
    }
    let mut normal = format!("/{}", stack.join("/"));
    // The command's own symlinks, a few levels deep.
    for _ in 0..8 {
        let Some((link, target)) = links.iter().find(|(link, _)| {
            normal == *link || normal.starts_with(&format!("{}/", link.trim_end_matches('/')))
        }) else {
            break;
        };
        let rest = &normal[link.len().min(normal.len())..];
        normal = normalise(&format!("{target}/{rest}"), None, &[])?;
    }
    Some(normal)
}

/// `/proc/<pid>` or `/proc/<pid>/task/<tid>`.
fn is_proc_process(stack: &[String]) -> bool {
    match stack {
        [proc, pid] => proc == "proc" && pid_like(pid),
        [proc, pid, task, tid] => {
            proc == "proc" && pid_like(pid) && task == "task" && pid_like(tid)
        }
        _ => false,
    }
}

// === impl Invocation ===

// Kept with the path logic it calls, so that the word types stay below `path`.
impl Invocation {
    /// The paths `field` may name, judged from where this command runs.
    pub fn views(&self, field: &Field) -> Vec<View> {
        views(field, &self.cwd, &self.links)
    }
}

/// The paths a command argument may name, as far as they can be told before it runs.
///
/// A word only known at run time is judged as it would be with its unknown parts empty
/// (`/usr/$SUBDIR` → `/usr/`) when they may be, and as any process or any device where it
/// reads `/proc/$$/root` or `/dev/$DISK`.
pub fn views(field: &Field, cwd: &Cwd, links: &Links) -> Vec<View> {
    let texts: Vec<String> = match field {
        Field::Static(s) => vec![s.clone()],
        Field::Dynamic(d) => {
            let mut texts = Vec::new();
            if d.parts.iter().all(|p| match p {
                Piece::Text(_) => true,
                Piece::Unknown { maybe_empty } => *maybe_empty,
            }) && d
                .parts
                .iter()
                .any(|p| matches!(p, Piece::Text(t) if !t.is_empty()))
            {
                texts.push(d.text_if_empty());
            }
            let wild = d.text_with_unknown_as("*");
            if wild.starts_with("/proc/") || wild.starts_with("/dev/") {
                texts.push(wild);
            }
            texts
        }
    };
    let cwds: Vec<Option<&str>> = if cwd.is_empty() {
        vec![None]
    } else {
        cwd.iter().map(Option::as_deref).collect()
    };
    let mut views = Vec::new();
    for text in &texts {
        if text.is_empty() {
            continue;
        }
        for cwd in &cwds {
            let view = match normalise(text, *cwd, links) {
                Some(abs) => View::Abs(abs),
                None if climbs_only(text) => View::Ancestor(text.clone()),
                None => continue,
            };
            if !views.contains(&view) {
                views.push(view);
            }
        }
    }
    views
}

/// A relative path made only of `..` (and `.`), perhaps ending in a glob that matches
/// everything: an ancestor of the working directory, or everything in one.
fn climbs_only(path: &str) -> bool {
    let parts: Vec<&str> = path
        .split('/')
        .filter(|p| !p.is_empty() && *p != ".")
        .collect();
    let (last, before) = match parts.split_last() {
        Some(split) => split,
        None => return false,
    };
    let climbs = |p: &&str| *p == "..";
    !path.starts_with('/')
        && before.iter().all(climbs)
        && (*last == ".." || (!before.is_empty() && matches_everything(last)))
}

/// The system path `view` is, or can reach through its globs (`/u*/l*` reaches `/usr/lib`),
/// or everything in one (`/usr/*`); `None` when it is none of these.
pub fn protected(view: &View) -> Option<String> {
    let path = match view {
        View::Ancestor(_) => return Some("/".into()),
        View::Abs(path) => path,
    };
    let mut parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    // `**` (globstar) reaches any depth: judge the directory it starts in and everything in it.
    if let Some(at) = parts.iter().position(|p| *p == "**") {
        parts.truncate(at);
        parts.push("*");
    }
    let matches = |part: &str, name: &str| globs_intersect(part, name, is_glob(part));
    match parts.as_slice() {
        [] => Some("/".into()),
        [top] => SYSTEM_DIRS
            .iter()
            .find(|dir| matches(top, dir))
            .map(|dir| format!("/{dir}")),
        [top, sub, rest @ ..] => {
            for dir in SYSTEM_DIRS.iter().filter(|dir| matches(top, dir)) {
                // Everything in a top-level system directory: `/usr/*`.
                if rest.is_empty() && matches_everything(sub) {
                    return Some(format!("/{dir}/*"));
                }
                for (parent, children) in SYSTEM_SUBDIRS {
                    if parent != dir {
                        continue;
                    }
                    for child in children.iter().filter(|child| matches(sub, child)) {
                        match rest {
                            [] => return Some(format!("/{dir}/{child}")),
                            [all] if matches_everything(all) => {
                                return Some(format!("/{dir}/{child}/*"));
                            }
                            _ => {}
                        }
                    }
                }
            }
            None
        }
    }
}

/// Whether `view` is, or can be, a disk device (or raw memory).
pub fn is_disk(view: &View) -> bool {
    let View::Abs(path) = view else {
        return false;
    };
    let Some(device) = path.strip_prefix("/dev/") else {
        return false;
    };
    if device.is_empty() {
        return false;
    }
    if DISK_DEVICES
        .iter()
        .any(|pattern| globs_intersect(device, pattern, false))
    {
        return true;
    }
    // `/dev/<volume group>/<volume>`.
    match device.split('/').collect::<Vec<_>>().as_slice() {
        [dir, name] => {
            !name.is_empty() && !NON_DISK_DIRS.iter().any(|d| globs_intersect(dir, d, false))
        }
        _ => false,
    }
}

/// The power switch file `view` names (`/proc/sysrq-trigger`, `/sys/power/state`), if any.
pub fn power_file(view: &View) -> Option<&'static str> {
    let View::Abs(path) = view else {
        return None;
    };
    POWER_FILES
        .iter()
        .copied()
        .find(|file| globs_intersect(path, file, false))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn abs(path: &str) -> View {
        View::Abs(normalise(path, None, &[]).expect("absolute"))
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
            "/usr/lib",
            "/u*/l*",
            "/*/lib",
            "/proc/self/root",
            "/proc/1/root/etc",
            "/proc/self/task/12/root/usr",
            "/var/lib/*",
            "/**",
            "/usr/[a-z]*",
        ] {
            assert!(protected(&abs(path)).is_some(), "{path}");
        }
        for path in [
            "/tmp/build",
            "/etc/nginx/conf.d",
            "/usr/local/src/app",
            "/usr/*.bak",
            "/tm*",
            "/home/alice",
            "/var/lib/apt/lists/*",
            "/var/log/nginx/x.gz",
            "/proc/1/status",
        ] {
            assert!(protected(&abs(path)).is_none(), "{path}");
        }
    }

    #[test]
    fn relative_paths_use_the_working_directory() {
        assert_eq!(normalise("*", Some("/"), &[]).as_deref(), Some("/*"));
        assert_eq!(
            normalise("../..", Some("/var/tmp"), &[]).as_deref(),
            Some("/")
        );
        assert_eq!(normalise("x", None, &[]), None);
        assert_eq!(
            normalise("/proc/self/cwd/x", Some("/etc"), &[]).as_deref(),
            Some("/etc/x")
        );
        let links = [("/tmp/root".to_string(), "/".to_string())];
        assert_eq!(
            normalise("/tmp/root/etc", None, &links).as_deref(),
            Some("/etc")
        );
        assert!(climbs_only("../../.."));
        assert!(climbs_only("../*"));
        assert!(!climbs_only("../build"));
        assert!(!climbs_only("."));
    }

    #[test]
    fn disks_are_told_from_other_devices() {
        for path in [
            "/dev/sda",
            "/dev/nvme0n1p1",
            "/dev/mapper/vg-root",
            "//dev/./vda",
            "/dev/../dev/sda",
            "/dev/block/8:0",
            "/dev/disk/by-id/ata-x",
            "/dev/ubuntu-vg/root",
            "/dev/sd?",
            "/dev/char/1:1",
        ] {
            assert!(is_disk(&abs(path)), "{path}");
        }
        for path in [
            "/dev/null",
            "/dev/zero",
            "/dev/stdout",
            "/tmp/sda",
            "/dev/",
            "/dev/shm/x",
            "/dev/fd/1",
            "/dev/pts/0",
        ] {
            assert!(!is_disk(&abs(path)), "{path}");
        }
    }
}
