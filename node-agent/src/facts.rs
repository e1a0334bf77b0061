//! Collects the host's registration (platform, size, labels) from the local system.

use execmesh_proto::pb;

use crate::config::Config;

/// The agent's version, published in facts and heartbeats.
pub const AGENT_VERSION: &str = env!("CARGO_PKG_VERSION");

/// What this host is: read from `/etc/os-release`, `uname`, `/proc/meminfo`. Missing sources
/// leave their field empty rather than failing: facts describe, they do not gate.
pub fn collect(config: &Config) -> pb::HostFacts {
    let uname = nix::sys::utsname::uname().ok();
    pb::HostFacts {
        host: config.host_id.to_string(),
        labels: config
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        hostname: nix::unistd::gethostname()
            .map(|h| h.to_string_lossy().into_owned())
            .unwrap_or_default(),
        os: std::fs::read_to_string("/etc/os-release")
            .ok()
            .and_then(|text| os_pretty_name(&text))
            .unwrap_or_else(|| std::env::consts::OS.to_string()),
        kernel: uname
            .as_ref()
            .map(|u| u.release().to_string_lossy().into_owned())
            .unwrap_or_default(),
        arch: std::env::consts::ARCH.to_string(),
        cpus: online_cpus(),
        memory_bytes: std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|text| mem_total_bytes(&text))
            .unwrap_or(0),
        collected_at_ms: execmesh_proto::now_ms(),
        agent_version: AGENT_VERSION.to_string(),
        ..Default::default()
    }
}

fn online_cpus() -> u32 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::_NPROCESSORS_ONLN)
        .ok()
        .flatten()
        .and_then(|n| u32::try_from(n).ok())
        .or_else(|| {
            std::thread::available_parallelism()
                .ok()
                .and_then(|n| u32::try_from(n.get()).ok())
        })
        .unwrap_or(0)
}

/// `PRETTY_NAME` from os-release text, unquoted.
fn os_pretty_name(os_release: &str) -> Option<String> {
    os_release.lines().find_map(|line| {
        let value = line.strip_prefix("PRETTY_NAME=")?;
        let value = value.trim().trim_matches('"').trim_matches('\'');
        (!value.is_empty()).then(|| value.to_string())
    })
}

/// `MemTotal` from /proc/meminfo, in bytes.
fn mem_total_bytes(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_pretty_name_and_memory() {
        let os = "NAME=\"Debian GNU/Linux\"\nPRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\n";
        assert_eq!(
            os_pretty_name(os).as_deref(),
            Some("Debian GNU/Linux 12 (bookworm)")
        );
        let mem = "MemTotal:       16318480 kB\nMemFree:         1000 kB\n";
        assert_eq!(mem_total_bytes(mem), Some(16318480 * 1024));
    }
}
