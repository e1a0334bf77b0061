//! Parses the output of the relay's fixed, read-only facts probe into the fact pack an agent would write.

use std::collections::HashMap;

use execmesh_proto::pb;

use crate::facts::sources;

/// Fills `facts` from the probe's sections (`== uname`, `== os-release`, `== cpus`,
/// `== meminfo`, `== uptime`, `== loadavg`), each read by the parser the agent uses for the
/// same file; a missing or odd section leaves its fields unset.
pub fn parse(text: &str, facts: &mut pb::HostFacts) {
    let mut sections: HashMap<&str, String> = HashMap::new();
    let mut section = "";
    for line in text.lines() {
        if let Some(name) = line.strip_prefix("== ") {
            section = name.trim();
            continue;
        }
        let body = sections.entry(section).or_default();
        body.push_str(line);
        body.push('\n');
    }
    let part = |name: &str| sections.get(name).map_or("", String::as_str);

    let mut uname = part("uname").split_whitespace();
    if let (Some(host), Some(kernel), Some(arch)) = (uname.next(), uname.next(), uname.next()) {
        facts.hostname = host.to_string();
        facts.kernel = kernel.to_string();
        facts.arch = arch.to_string();
    }
    let os = sources::parse_os_release(part("os-release"));
    facts.os = os.pretty.unwrap_or_else(|| "linux".to_string());
    facts.os_id = os.id;
    facts.os_version = os.version;
    facts.cpus = part("cpus").trim().parse().unwrap_or(facts.cpus);
    let memory = sources::parse_meminfo(part("meminfo"));
    facts.memory_bytes = memory.total;
    facts.memory_available_bytes = memory.available;
    facts.swap_total_bytes = memory.swap_total;
    facts.swap_free_bytes = memory.swap_free;
    facts.uptime_secs = sources::parse_uptime(part("uptime")).unwrap_or(0);
    if let Some((l1, l5, l15)) = sources::parse_loadavg(part("loadavg")) {
        (facts.load1, facts.load5, facts.load15) = (l1, l5, l15);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_probe_becomes_a_fact_pack() {
        let text = "== uname\nbox-1 6.1.0-18-amd64 x86_64\n== os-release\nPRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nID=debian\nVERSION_ID=\"12\"\n== cpus\n4\n== meminfo\nMemTotal:       16318412 kB\nMemAvailable:    8000000 kB\nSwapTotal: 0 kB\n== uptime\n12345.67 40000.00\n== loadavg\n0.50 0.25 0.10 1/200 999\n";
        let mut facts = pb::HostFacts::default();
        parse(text, &mut facts);
        assert_eq!(facts.hostname, "box-1");
        assert_eq!(facts.kernel, "6.1.0-18-amd64");
        assert_eq!(facts.arch, "x86_64");
        assert_eq!(facts.os, "Debian GNU/Linux 12 (bookworm)");
        assert_eq!(
            (facts.os_id.as_str(), facts.os_version.as_str()),
            ("debian", "12")
        );
        assert_eq!(facts.cpus, 4);
        assert_eq!(facts.memory_bytes, 16318412 * 1024);
        assert_eq!(facts.memory_available_bytes, 8000000 * 1024);
        assert_eq!(facts.uptime_secs, 12345);
        assert_eq!(facts.load5, 0.25);
    }
}
