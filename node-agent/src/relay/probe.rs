//! Parses the output of the relay's fixed, read-only facts probe into the fact pack an agent would write.

use execmesh_proto::pb;

/// Fills `facts` from the probe's sections (`== uname`, `== os-release`, `== cpus`,
/// `== meminfo`, `== uptime`, `== loadavg`); a missing or odd section leaves its fields unset.
pub fn parse(text: &str, facts: &mut pb::HostFacts) {
    let mut section = "";
    let mut pretty = None;
    for line in text.lines() {
        if let Some(name) = line.strip_prefix("== ") {
            section = name.trim();
            continue;
        }
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        match section {
            "uname" => {
                let mut words = line.split_whitespace();
                if let (Some(host), Some(kernel), Some(arch)) =
                    (words.next(), words.next(), words.next())
                {
                    facts.hostname = host.to_string();
                    facts.kernel = kernel.to_string();
                    facts.arch = arch.to_string();
                }
            }
            "os-release" => {
                let Some((key, value)) = line.split_once('=') else {
                    continue;
                };
                let value = value.trim_matches('"').to_string();
                match key {
                    "PRETTY_NAME" => pretty = Some(value),
                    "ID" => facts.os_id = value,
                    "VERSION_ID" => facts.os_version = value,
                    _ => {}
                }
            }
            "cpus" => facts.cpus = line.parse().unwrap_or(facts.cpus),
            "meminfo" => {
                let mut words = line.split_whitespace();
                let (Some(key), Some(kib)) = (words.next(), words.next()) else {
                    continue;
                };
                let bytes = kib.parse::<u64>().unwrap_or(0).saturating_mul(1024);
                match key {
                    "MemTotal:" => facts.memory_bytes = bytes,
                    "MemAvailable:" => facts.memory_available_bytes = bytes,
                    "SwapTotal:" => facts.swap_total_bytes = bytes,
                    "SwapFree:" => facts.swap_free_bytes = bytes,
                    _ => {}
                }
            }
            "uptime" => {
                if let Some(secs) = line.split_whitespace().next() {
                    facts.uptime_secs = secs.parse::<f64>().map_or(0, |s| s as u64);
                }
            }
            "loadavg" => {
                let loads: Vec<f64> = line
                    .split_whitespace()
                    .take(3)
                    .filter_map(|w| w.parse().ok())
                    .collect();
                if let [l1, l5, l15] = loads[..] {
                    (facts.load1, facts.load5, facts.load15) = (l1, l5, l15);
                }
            }
            _ => {}
        }
    }
    facts.os = pretty.unwrap_or_else(|| "linux".to_string());
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
