//! Where each fact comes from: os-release, /proc, statvfs, getifaddrs, systemctl, the package database; each source optional.
//!
//! Every reader returns an empty value when its source is missing or unreadable: facts describe
//! a host, they never stop an agent. Big sources (/var/lib/dpkg/status, /proc/net/tcp on a busy
//! server) are streamed line by line, so a collection holds no large buffer. Commands run with a
//! timeout and a cap on their output.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use execmesh_proto::pb;

/// Longest a command (systemctl, rpm) may run.
const COMMAND_LIMIT: Duration = Duration::from_secs(5);
/// Most output read from a command.
const COMMAND_OUTPUT: u64 = 1024 * 1024;
/// Most entries kept in the lists of a fact pack, so one odd host cannot bloat it.
const MAX_DISKS: usize = 64;
const MAX_ADDRESSES: usize = 256;
const MAX_PORTS: usize = 1024;
const MAX_SERVICES: usize = 1024;

/// Filesystems that hold no user data (kernel interfaces, memory, containers' plumbing).
const PSEUDO_FS: &[&str] = &[
    "autofs",
    "binfmt_misc",
    "bpf",
    "cgroup",
    "cgroup2",
    "configfs",
    "debugfs",
    "devpts",
    "devtmpfs",
    "efivarfs",
    "fusectl",
    "fuse.gvfsd-fuse",
    "fuse.lxcfs",
    "fuse.portal",
    "hugetlbfs",
    "mqueue",
    "nsfs",
    "proc",
    "pstore",
    "ramfs",
    "rpc_pipefs",
    "securityfs",
    "selinuxfs",
    "squashfs",
    "sysfs",
    "tmpfs",
    "tracefs",
];
/// Remote filesystems: not local disks, and statvfs on a dead server can hang.
const NETWORK_FS: &[&str] = &[
    "9p",
    "afs",
    "ceph",
    "cifs",
    "fuse.sshfs",
    "glusterfs",
    "lustre",
    "nfs",
    "nfs4",
    "smb3",
    "smbfs",
];

/// `/etc/os-release`: the pretty name, `ID` and `VERSION_ID`.
#[derive(Debug, Default, PartialEq)]
pub struct OsRelease {
    pub pretty: Option<String>,
    pub id: String,
    pub version: String,
}

pub fn os_release() -> OsRelease {
    ["/etc/os-release", "/usr/lib/os-release"]
        .iter()
        .find_map(|p| std::fs::read_to_string(p).ok())
        .map(|text| parse_os_release(&text))
        .unwrap_or_default()
}

pub fn parse_os_release(text: &str) -> OsRelease {
    let mut os = OsRelease::default();
    for line in text.lines() {
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        let value = value
            .trim()
            .trim_matches('"')
            .trim_matches('\'')
            .to_string();
        match key.trim() {
            "PRETTY_NAME" if !value.is_empty() => os.pretty = Some(value),
            "ID" => os.id = value,
            "VERSION_ID" => os.version = value,
            _ => {}
        }
    }
    os
}

/// `/proc/meminfo`, in bytes.
#[derive(Debug, Default, PartialEq)]
pub struct Memory {
    pub total: u64,
    pub available: u64,
    pub swap_total: u64,
    pub swap_free: u64,
}

pub fn memory() -> Memory {
    std::fs::read_to_string("/proc/meminfo")
        .map(|text| parse_meminfo(&text))
        .unwrap_or_default()
}

pub fn parse_meminfo(text: &str) -> Memory {
    let mut memory = Memory::default();
    for line in text.lines() {
        let mut fields = line.split_whitespace();
        let (Some(key), Some(kib)) = (fields.next(), fields.next()) else {
            continue;
        };
        let Ok(kib) = kib.parse::<u64>() else {
            continue;
        };
        let bytes = kib.saturating_mul(1024);
        match key {
            "MemTotal:" => memory.total = bytes,
            "MemAvailable:" => memory.available = bytes,
            "SwapTotal:" => memory.swap_total = bytes,
            "SwapFree:" => memory.swap_free = bytes,
            _ => {}
        }
    }
    memory
}

/// Whole seconds since boot, from `/proc/uptime`.
pub fn uptime_secs() -> u64 {
    std::fs::read_to_string("/proc/uptime")
        .ok()
        .and_then(|text| parse_uptime(&text))
        .unwrap_or(0)
}

pub fn parse_uptime(text: &str) -> Option<u64> {
    let secs: f64 = text.split_whitespace().next()?.parse().ok()?;
    (secs.is_finite() && secs >= 0.0).then_some(secs as u64)
}

/// Load averages over 1, 5 and 15 minutes, from `/proc/loadavg`.
pub fn load() -> (f64, f64, f64) {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|text| parse_loadavg(&text))
        .unwrap_or_default()
}

pub fn parse_loadavg(text: &str) -> Option<(f64, f64, f64)> {
    let mut fields = text.split_whitespace().map(str::parse::<f64>);
    Some((
        fields.next()?.ok()?,
        fields.next()?.ok()?,
        fields.next()?.ok()?,
    ))
}

/// A line of `/proc/mounts` that may be a local disk.
#[derive(Debug, PartialEq)]
pub struct Mount {
    pub device: String,
    pub mount: String,
    pub fs_type: String,
}

/// Local filesystems with their sizes: `/proc/mounts` without pseudo and network filesystems
/// and without mounts of single files (a container's /etc/hosts), each measured with statvfs.
// statvfs counts are 64-bit here but 32-bit on some targets: the conversions are for those.
#[allow(clippy::useless_conversion)]
pub fn disks() -> Vec<pb::Disk> {
    let Ok(file) = File::open("/proc/mounts") else {
        return Vec::new();
    };
    let mut disks: Vec<pb::Disk> = Vec::new();
    for mount in parse_mounts(BufReader::new(file)) {
        if !Path::new(&mount.mount).is_dir() {
            continue;
        }
        let Ok(stat) = nix::sys::statvfs::statvfs(mount.mount.as_str()) else {
            continue;
        };
        let unit = u64::from(stat.fragment_size());
        let total = u64::from(stat.blocks()).saturating_mul(unit);
        if total == 0 {
            continue;
        }
        let free = u64::from(stat.blocks_free()).saturating_mul(unit);
        let disk = pb::Disk {
            total_bytes: total,
            used_bytes: total.saturating_sub(free),
            available_bytes: u64::from(stat.blocks_available()).saturating_mul(unit),
            mount: mount.mount,
            device: mount.device,
            fs_type: mount.fs_type,
        };
        // A later mount on the same point hides the earlier one.
        if let Some(old) = disks.iter_mut().find(|d| d.mount == disk.mount) {
            *old = disk;
        } else if disks.len() < MAX_DISKS {
            disks.push(disk);
        }
    }
    disks
}

pub fn parse_mounts(reader: impl BufRead) -> Vec<Mount> {
    reader
        .lines()
        .map_while(Result::ok)
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let device = unescape(fields.next()?);
            let mount = unescape(fields.next()?);
            let fs_type = fields.next()?.to_string();
            let skip = PSEUDO_FS.contains(&fs_type.as_str())
                || NETWORK_FS.contains(&fs_type.as_str())
                || fs_type.starts_with("fuse.")
                    && !matches!(fs_type.as_str(), "fuse.zfs" | "fuse.ntfs-3g")
                || ["/proc", "/sys", "/dev", "/run"]
                    .iter()
                    .any(|p| Path::new(&mount).starts_with(p));
            (!skip).then_some(Mount {
                device,
                mount,
                fs_type,
            })
        })
        .collect()
}

/// Undoes `/proc/mounts`' octal escapes (`\040` for a space).
fn unescape(field: &str) -> String {
    if !field.contains('\\') {
        return field.to_string();
    }
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && let Some(digits) = b.get(i + 1..i + 4)
            && let Ok(digits) = std::str::from_utf8(digits)
            && let Ok(byte) = u8::from_str_radix(digits, 8)
        {
            out.push(byte);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Addresses of the host's interfaces, loopback excluded, in interface order.
pub fn ip_addresses() -> Vec<String> {
    use nix::net::if_::InterfaceFlags;
    let Ok(interfaces) = nix::ifaddrs::getifaddrs() else {
        return Vec::new();
    };
    let mut seen = BTreeSet::new();
    let mut addresses = Vec::new();
    for interface in interfaces {
        if interface.flags.contains(InterfaceFlags::IFF_LOOPBACK) {
            continue;
        }
        let Some(address) = interface.address else {
            continue;
        };
        let ip = if let Some(v4) = address.as_sockaddr_in() {
            IpAddr::V4(v4.ip())
        } else if let Some(v6) = address.as_sockaddr_in6() {
            IpAddr::V6(v6.ip())
        } else {
            continue;
        };
        if ip.is_loopback() || ip.is_unspecified() {
            continue;
        }
        if seen.insert(ip) && addresses.len() < MAX_ADDRESSES {
            addresses.push(ip.to_string());
        }
    }
    addresses
}

/// TCP sockets in LISTEN and bound, unconnected UDP sockets, from /proc/net; sorted by
/// protocol, port and address, without duplicates.
pub fn listening_ports() -> Vec<pb::ListeningPort> {
    let mut ports = BTreeSet::new();
    for (protocol, path) in [
        ("tcp", "/proc/net/tcp"),
        ("tcp6", "/proc/net/tcp6"),
        ("udp", "/proc/net/udp"),
        ("udp6", "/proc/net/udp6"),
    ] {
        if let Ok(file) = File::open(path) {
            parse_net(protocol, BufReader::new(file), &mut ports);
        }
    }
    ports
        .into_iter()
        .take(MAX_PORTS)
        .map(|(protocol, port, address)| pb::ListeningPort {
            protocol: protocol.to_string(),
            address,
            port: u32::from(port),
        })
        .collect()
}

/// Adds the listening sockets of one /proc/net table: `(protocol, port, address)`.
pub fn parse_net(
    protocol: &'static str,
    mut reader: impl BufRead,
    out: &mut BTreeSet<(&'static str, u16, String)>,
) {
    // TCP_LISTEN for TCP; TCP_CLOSE is how the kernel shows a bound, unconnected UDP socket.
    let wanted = if protocol.starts_with("tcp") {
        "0A"
    } else {
        "07"
    };
    let mut line = String::new();
    let mut first = true;
    loop {
        line.clear();
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        if std::mem::take(&mut first) {
            continue; // the header
        }
        let mut fields = line.split_whitespace();
        let (Some(_slot), Some(local), Some(_remote), Some(state)) =
            (fields.next(), fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        if state != wanted || out.len() >= MAX_PORTS * 4 {
            continue;
        }
        if let Some((address, port)) = local_address(local) {
            out.insert((protocol, port, address.to_string()));
        }
    }
}

/// `0100007F:0035` or a 32-digit IPv6 form: the address words are in the kernel's byte order.
fn local_address(field: &str) -> Option<(IpAddr, u16)> {
    let (address, port) = field.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let ip = match address.len() {
        8 => IpAddr::V4(Ipv4Addr::from(
            u32::from_str_radix(address, 16).ok()?.to_le_bytes(),
        )),
        32 => {
            let mut bytes = [0u8; 16];
            for (i, chunk) in bytes.chunks_mut(4).enumerate() {
                let word = u32::from_str_radix(address.get(i * 8..i * 8 + 8)?, 16).ok()?;
                chunk.copy_from_slice(&word.to_le_bytes());
            }
            IpAddr::V6(Ipv6Addr::from(bytes))
        }
        _ => return None,
    };
    Some((ip, port))
}

/// Running systemd services, only when systemd is PID 1; empty otherwise.
pub fn services() -> Vec<String> {
    let pid1 = std::fs::read_to_string("/proc/1/comm").unwrap_or_default();
    if pid1.trim() != "systemd" {
        return Vec::new();
    }
    output_of(
        "systemctl",
        &[
            "list-units",
            "--type=service",
            "--state=running",
            "--no-legend",
            "--plain",
            "--no-pager",
        ],
    )
    .map(|out| parse_services(&String::from_utf8_lossy(&out)))
    .unwrap_or_default()
}

pub fn parse_services(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|line| line.split_whitespace().next())
        .filter(|unit| unit.ends_with(".service"))
        .take(MAX_SERVICES)
        .map(str::to_string)
        .collect()
}

/// Installed packages and the database counted: dpkg's status file, else `rpm -qa`.
pub fn packages() -> (u64, &'static str) {
    if let Ok(file) = File::open("/var/lib/dpkg/status") {
        return (count_dpkg(BufReader::new(file)), "dpkg");
    }
    if Path::new("/var/lib/rpm").is_dir()
        && let Some(out) = output_of("rpm", &["-qa", "--queryformat", "%{NAME}\\n"])
    {
        return (out.iter().filter(|&&b| b == b'\n').count() as u64, "rpm");
    }
    (0, "")
}

/// Packages whose status is `install ok installed`, read line by line.
pub fn count_dpkg(mut reader: impl BufRead) -> u64 {
    let mut line = Vec::new();
    let mut count = 0;
    loop {
        line.clear();
        match reader.read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => return count,
            Ok(_) => {}
        }
        if line.trim_ascii_end() == b"Status: install ok installed" {
            count += 1;
        }
    }
}

/// The standard output of a command that succeeded within [`COMMAND_LIMIT`]; `None` when it is
/// missing, fails or takes too long (it is killed then).
fn output_of(program: &str, args: &[&str]) -> Option<Vec<u8>> {
    let mut child = Command::new(program)
        .args(args)
        .env("LC_ALL", "C")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let stdout = child.stdout.take()?;
    // Read while waiting, so a full pipe cannot stall the child.
    let reader = std::thread::spawn(move || {
        let mut out = Vec::new();
        let _ = stdout.take(COMMAND_OUTPUT).read_to_end(&mut out);
        out
    });
    let deadline = Instant::now() + COMMAND_LIMIT;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => {
                let out = reader.join().ok()?;
                return status.success().then_some(out);
            }
            Ok(None) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10));
            }
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn os_release_memory_uptime_and_load_parse() {
        let os = parse_os_release(
            "NAME=\"Debian GNU/Linux\"\nPRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nID=debian\nVERSION_ID=\"12\"\n",
        );
        assert_eq!(
            os,
            OsRelease {
                pretty: Some("Debian GNU/Linux 12 (bookworm)".into()),
                id: "debian".into(),
                version: "12".into(),
            }
        );
        let mem = parse_meminfo(
            "MemTotal:       16318480 kB\nMemFree:         1000 kB\nMemAvailable:    8000000 kB\nSwapTotal:       2097148 kB\nSwapFree:        2097000 kB\n",
        );
        assert_eq!(
            mem,
            Memory {
                total: 16318480 * 1024,
                available: 8000000 * 1024,
                swap_total: 2097148 * 1024,
                swap_free: 2097000 * 1024,
            }
        );
        assert_eq!(parse_uptime("12345.67 45678.90\n"), Some(12345));
        assert_eq!(
            parse_loadavg("0.52 0.58 0.59 2/789 12345\n"),
            Some((0.52, 0.58, 0.59))
        );
        assert_eq!(parse_loadavg("garbage"), None);
    }

    #[test]
    fn mounts_leave_out_pseudo_and_network_filesystems() {
        let text = "\
proc /proc proc rw,relatime 0 0
sysfs /sys sysfs rw 0 0
/dev/vda1 / ext4 rw,relatime 0 0
tmpfs /run tmpfs rw 0 0
/dev/vdb1 /srv/my\\040data xfs rw 0 0
srv:/export /mnt/nfs nfs4 rw 0 0
overlay /var/lib/docker/overlay2/x/merged overlay rw 0 0
/dev/loop0 /snap/core/1 squashfs ro 0 0
";
        let mounts = parse_mounts(text.as_bytes());
        let points: Vec<(&str, &str)> = mounts
            .iter()
            .map(|m| (m.mount.as_str(), m.fs_type.as_str()))
            .collect();
        assert_eq!(
            points,
            [
                ("/", "ext4"),
                ("/srv/my data", "xfs"),
                ("/var/lib/docker/overlay2/x/merged", "overlay"),
            ]
        );
    }

    #[test]
    fn proc_net_tables_give_listening_sockets() {
        let tcp = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
   0: 0100007F:0035 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1066 1\n\
   1: 00000000:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1067 1\n\
   2: 0500000A:0016 0600000A:C350 01 00000000:00000000 00:00000000 00000000     0        0 1068 1\n";
        let tcp6 = "  sl  local_address                         remote_address                        st\n\
   0: 00000000000000000000000000000000:1F90 00000000000000000000000000000000:0000 0A 0\n\
   1: 00000000000000000000000001000000:0277 00000000000000000000000000000000:0000 0A 0\n";
        let udp = "  sl  local_address rem_address   st\n\
   0: 00000000:0044 00000000:0000 07 0\n\
   1: 0100007F:A000 0100007F:0035 01 0\n";
        let mut ports = BTreeSet::new();
        parse_net("tcp", tcp.as_bytes(), &mut ports);
        parse_net("tcp6", tcp6.as_bytes(), &mut ports);
        parse_net("udp", udp.as_bytes(), &mut ports);
        let got: Vec<(&str, u16, &str)> = ports
            .iter()
            .map(|(p, port, a)| (*p, *port, a.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                ("tcp", 22, "0.0.0.0"),
                ("tcp", 53, "127.0.0.1"),
                ("tcp6", 631, "::1"),
                ("tcp6", 8080, "::"),
                ("udp", 68, "0.0.0.0"),
            ]
        );
    }

    #[test]
    fn services_and_dpkg_packages_are_counted() {
        let out = "cron.service loaded active running Regular background program processing daemon\n\
nginx.service loaded active running A high performance web server\n";
        assert_eq!(parse_services(out), ["cron.service", "nginx.service"]);
        let status = "Package: a\nStatus: install ok installed\n\nPackage: b\nStatus: deinstall ok config-files\n\nPackage: c\nStatus: install ok installed\n";
        assert_eq!(count_dpkg(status.as_bytes()), 2);
    }

    #[test]
    fn commands_give_their_output_only_when_they_succeed() {
        assert_eq!(output_of("true", &[]), Some(Vec::new()));
        assert_eq!(output_of("false", &[]), None);
        assert_eq!(output_of("/nonexistent/command", &[]), None);
        assert_eq!(output_of("echo", &["hi"]).as_deref(), Some(&b"hi\n"[..]));
    }
}
