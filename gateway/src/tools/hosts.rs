//! `hosts`: which servers the mesh knows, whether each is online, and what it is.

use std::collections::BTreeMap;

use rmcp::model::{JsonObject, Tool, ToolAnnotations};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use execmesh_proto::pb;

use super::{Call, parse_args, structured};
use crate::error::ToolError;
use crate::mesh::HostRecord;

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HostsParams {
    /// Which hosts to show: a host-id glob such as `web-*` or `db-?`, or `*` (the default) for all.
    #[serde(default)]
    pub selector: Option<String>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct HostsResult {
    /// The matching hosts, sorted by id.
    pub hosts: Vec<HostView>,
    pub online: usize,
    pub stale: usize,
    pub offline: usize,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct HostView {
    pub host: String,
    /// `online` (heartbeat current), `stale` (heartbeat late) or `offline` (no agent connected).
    pub state: String,
    pub labels: BTreeMap<String, String>,
    /// Seconds since the last heartbeat, when one is known.
    pub last_seen_secs: Option<u64>,
    pub running_jobs: Option<u32>,
    pub os: Option<String>,
    pub kernel: Option<String>,
    pub arch: Option<String>,
    pub cpus: Option<u32>,
    pub memory_mb: Option<u64>,
}

pub fn definition() -> Tool {
    super::tool::<HostsParams, HostsResult>(
        "hosts",
        "List hosts",
        "List the hosts of the mesh with their state (online, stale, offline), labels, \
         last heartbeat, running jobs and platform. Use it to find a host id for `bash` and to \
         check a host is online first.",
        ToolAnnotations::new()
            .read_only(true)
            .idempotent(true)
            .open_world(false),
    )
}

pub async fn call(
    call: &Call<'_>,
    args: JsonObject,
) -> Result<rmcp::model::CallToolResult, ToolError> {
    let params: HostsParams = parse_args("hosts", args)?;
    let selector = params.selector.unwrap_or_else(|| "*".to_string());
    let records = call.state.mesh.hosts().await?;
    let now = execmesh_proto::now_ms();
    let hosts: Vec<HostView> = records
        .values()
        .filter(|r| glob_match(&selector, r.host.as_str()))
        .map(|r| view(r, now))
        .collect();
    let count = |s: &str| hosts.iter().filter(|h| h.state == s).count();
    let result = HostsResult {
        online: count("online"),
        stale: count("stale"),
        offline: count("offline"),
        hosts,
    };
    let mut text = format!(
        "{} host(s) match `{selector}`: {} online, {} stale, {} offline\n",
        result.hosts.len(),
        result.online,
        result.stale,
        result.offline
    );
    for h in &result.hosts {
        let labels: Vec<String> = h.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let seen = h
            .last_seen_secs
            .map(|s| format!(", seen {s}s ago"))
            .unwrap_or_default();
        let os = h.os.clone().unwrap_or_default();
        text.push_str(&format!(
            "- {} [{}{}] {} {}\n",
            h.host,
            h.state,
            seen,
            os,
            if labels.is_empty() {
                String::new()
            } else {
                format!("({})", labels.join(", "))
            }
        ));
    }
    structured(&result, vec![text])
}

/// The state of a host from its heartbeat: late by more than two intervals is stale.
pub fn state_of(presence: Option<&pb::Presence>, now_ms: u64) -> &'static str {
    match presence {
        None => "offline",
        Some(p) => {
            let interval = p.heartbeat_interval_ms.max(500);
            if now_ms.saturating_sub(p.heartbeat_at_ms) > 2 * interval + 1000 {
                "stale"
            } else {
                "online"
            }
        }
    }
}

fn view(r: &HostRecord, now: u64) -> HostView {
    let facts = r.facts.as_ref();
    HostView {
        host: r.host.to_string(),
        state: state_of(r.presence.as_ref(), now).to_string(),
        labels: facts
            .map(|f| f.labels.clone().into_iter().collect())
            .unwrap_or_default(),
        last_seen_secs: r
            .presence
            .as_ref()
            .map(|p| now.saturating_sub(p.heartbeat_at_ms) / 1000),
        running_jobs: r.presence.as_ref().map(|p| p.running_jobs),
        os: facts.map(|f| f.os.clone()).filter(|s| !s.is_empty()),
        kernel: facts.map(|f| f.kernel.clone()).filter(|s| !s.is_empty()),
        arch: facts.map(|f| f.arch.clone()).filter(|s| !s.is_empty()),
        cpus: facts.map(|f| f.cpus).filter(|c| *c > 0),
        memory_mb: facts
            .map(|f| f.memory_bytes / (1024 * 1024))
            .filter(|m| *m > 0),
    }
}

/// Shell-style glob: `*` any run, `?` one character.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut pi, mut ti, mut star, mut mark) = (0, 0, None, 0);
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob_match("*", "web-1"));
        assert!(glob_match("web-*", "web-12"));
        assert!(glob_match("db-?", "db-1"));
        assert!(!glob_match("db-?", "db-10"));
        assert!(glob_match("*-1", "web-1"));
        assert!(!glob_match("web-*", "db-1"));
        assert!(glob_match("w*b*1", "web-1"));
    }

    #[test]
    fn late_heartbeat_is_stale() {
        let p = pb::Presence {
            heartbeat_at_ms: 10_000,
            heartbeat_interval_ms: 2000,
            ..Default::default()
        };
        assert_eq!(state_of(Some(&p), 11_000), "online");
        assert_eq!(state_of(Some(&p), 20_000), "stale");
        assert_eq!(state_of(None, 20_000), "offline");
    }
}
