//! `hosts`: which servers a selector matches (the dry run of a fan-out), whether each is online,
//! and what it is.

use std::collections::BTreeMap;

use rmcp::model::Tool;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{Call, structured};
use crate::core::error::ToolError;
use crate::core::fanout::{ResolveError, Targets};
use crate::core::hosts::{self, HostRecord, HostState, MAX_PAGE_HOSTS};
use execmesh_proto::Token;

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HostsParams {
    /// Which hosts to show (default `*`): host globs (`web-*`, `db-?`), `key=value` on labels and
    /// facts (`role=web`, `os_id=debian*`, `service=nginx*`, `cpus>=8`), `@group`, combined with
    /// `and`, `or`, `not` and parentheses. The same selector in `bash`/`grep` `hosts` targets
    /// exactly these hosts.
    #[serde(default)]
    pub selector: Option<String>,
    /// Most hosts in the answer (default and at most 5,000): a larger fleet is listed page by
    /// page, `cursor` taking the `next_cursor` of the page before. The counts are always of every
    /// matching host.
    #[serde(default)]
    pub limit: Option<usize>,
    /// The `next_cursor` of the previous page, unchanged: the listing goes on after it.
    #[serde(default)]
    pub cursor: Option<String>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct HostsResult {
    /// The selector as given.
    pub selector: String,
    /// How many hosts match, on every page: the counts below are of all of them too.
    pub total: usize,
    /// The matching hosts, sorted by id: this page of them (see `limit`).
    pub hosts: Vec<HostView>,
    /// More hosts match after this page: pass this back as `cursor` for the next one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
    /// Matching hosts outside the hosts you may reach: a fan-out reports them `denied`.
    pub denied: Vec<String>,
    pub online: usize,
    pub stale: usize,
    pub offline: usize,
    /// Hosts whose records are not signed by their agent's key (see `unverified` of each).
    pub unverified: usize,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct HostView {
    pub host: String,
    /// `online` (heartbeat current), `stale` (heartbeat late), `offline` (no agent connected) or
    /// `unverified` (its heartbeat is not signed by the host's agent key, so it is ignored).
    pub state: String,
    /// Why the host's facts or heartbeat are ignored: not signed by its agent's key (an agent
    /// running without its NATS seed, or records forged by someone else).
    pub unverified: Option<String>,
    /// `agent` (a node-agent runs on the host) or `relay` (an SSH target that a user's relay
    /// serves; each user needs a relay of their own to reach it).
    pub kind: String,
    /// For a relay target: the user whose relay last registered it.
    pub relay_user: Option<String>,
    /// For a relay target whose SSH connection is down: why (unreachable, auth failed, host
    /// key mismatch), as its relay reported.
    pub relay_offline_reason: Option<String>,
    pub labels: BTreeMap<String, String>,
    /// Seconds since the last heartbeat, when one is known: also for an offline host, read off
    /// the marker its expired heartbeat left.
    pub last_seen_secs: Option<u64>,
    pub running_jobs: Option<u32>,
    pub os: Option<String>,
    pub kernel: Option<String>,
    pub arch: Option<String>,
    pub cpus: Option<u32>,
    pub memory_mb: Option<u64>,
    /// 1-minute load average, when facts are known.
    pub load1: Option<f64>,
    /// Seconds since the facts were collected.
    pub facts_age_secs: Option<u64>,
    /// The host's output limits, when one is reached or output was dropped.
    pub output: Option<OutputLimitsView>,
}

/// Output limits of one host, from its heartbeat.
#[derive(Debug, Serialize, JsonSchema)]
pub struct OutputLimitsView {
    /// Users whose output quota on this host is used up now.
    pub users_at_quota: Vec<String>,
    /// The host's output quota is used up now.
    pub host_quota_reached: bool,
    /// MESH_OUT is at its byte limit: new output evicts the oldest.
    pub stream_full: bool,
    /// Output bytes dropped on the host since its agent started, past job caps and quotas.
    pub dropped_bytes: u64,
    /// The limits reached now, in words.
    pub reached: Vec<String>,
}

/// Hosts described line by line in the text of a listing: a model reads no further, and the
/// structured result lists every one of the page.
const MAX_TEXT_HOSTS: usize = 200;

pub fn definition() -> Tool {
    super::tool::<HostsParams, HostsResult>(
        "hosts",
        "List hosts",
        "Resolve a host selector: the matching hosts with their state (online, stale, offline), \
         labels, last heartbeat, running jobs and platform. It is the dry run of a fan-out: \
         `bash`/`grep`/`facts` with the same `hosts` selector target exactly these hosts. \
         Selectors: host globs (`web-*`), `key=value` on labels and facts (`role=web`, \
         `os_id=debian`, `cpus>=8`), `@group`, with `and`/`or`/`not`/parentheses; `*` is all. \
         Counts are of every match; hosts come up to `limit` (5,000) a page, `next_cursor` \
         leading to the next.",
        super::reads(false),
    )
}

pub async fn call(
    call: &Call<'_>,
    params: HostsParams,
) -> Result<rmcp::model::CallToolResult, ToolError> {
    let selector = params.selector.unwrap_or_else(|| "*".to_string());
    let limit = params.limit.unwrap_or(MAX_PAGE_HOSTS);
    if !(1..=MAX_PAGE_HOSTS).contains(&limit) {
        return Err(ToolError::invalid(
            "hosts",
            format!("limit must be 1 to {MAX_PAGE_HOSTS}, not {limit}"),
        ));
    }
    let after = match params.cursor.as_deref() {
        None => None,
        Some(cursor) => Some(Token::parse("cursor", cursor).map_err(|_| {
            ToolError::invalid(
                "hosts",
                format!(
                    "cursor {cursor:?} is not one a listing gave: pass `next_cursor` back unchanged"
                ),
            )
        })?),
    };
    let reach = super::reach::of(call);
    let config = &call.state.config;
    let targets = Targets::resolve(
        &call.state.mesh,
        &selector,
        &config.groups,
        &reach,
        usize::MAX,
    )
    .await
    .map_err(|e| match e {
        ResolveError::Mesh(e) => ToolError::from(e),
        other => ToolError::invalid("hosts", other.to_string()),
    })?;
    let now = execmesh_proto::now_ms();
    // The counts are of every matching host; only the page is described.
    let states: Vec<HostState> = targets
        .hosts
        .values()
        .map(|r| HostState::of_record(r, now))
        .collect();
    let count = |s: HostState| states.iter().filter(|state| **state == s).count();
    let (page, next) = hosts::page(&targets.hosts, after, limit);
    let hosts: Vec<HostView> = page.into_iter().map(|r| view(r, now)).collect();
    let result = HostsResult {
        selector: selector.clone(),
        total: targets.hosts.len(),
        denied: targets.denied.iter().map(|h| h.to_string()).collect(),
        online: count(HostState::Online),
        stale: count(HostState::Stale),
        offline: count(HostState::Offline),
        unverified: count(HostState::Unverified),
        hosts,
        next_cursor: next.map(|host| host.to_string()),
    };
    let mut text = format!(
        "{} host(s) match `{selector}`: {} online, {} stale, {} offline\n",
        result.total, result.online, result.stale, result.offline
    );
    if result.unverified > 0 {
        text.push_str(&format!(
            "{} host(s) unverified: their records are not signed by their agent's key and are \
             ignored (an agent without its NATS seed, or forged records)\n",
            result.unverified
        ));
    }
    if !result.denied.is_empty() {
        text.push_str(&format!(
            "{} more match but are outside the hosts you may reach (a fan-out reports them denied): {}\n",
            result.denied.len(),
            result.denied.join(", ")
        ));
    }
    for h in result.hosts.iter().take(MAX_TEXT_HOSTS) {
        let labels: Vec<String> = h.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let seen = h
            .last_seen_secs
            .map(|s| format!(", seen {s}s ago"))
            .unwrap_or_default();
        let os = h.os.clone().unwrap_or_default();
        let why = h
            .unverified
            .as_ref()
            .or(h.relay_offline_reason.as_ref())
            .map(|r| format!(": {r}"))
            .unwrap_or_default();
        let relay = h
            .relay_user
            .as_ref()
            .map(|u| format!(" via {u}'s SSH relay"))
            .unwrap_or_default();
        text.push_str(&format!(
            "- {}{relay} [{}{why}{}] {} {}\n",
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
        if let Some(reached) = h.output.as_ref().filter(|o| !o.reached.is_empty()) {
            text.push_str(&format!(
                "  output limits reached: {}\n",
                reached.reached.join("; ")
            ));
        }
    }
    if result.hosts.len() > MAX_TEXT_HOSTS {
        text.push_str(&format!(
            "… and {} more host(s), listed in the structured result (a narrower selector lists \
             them here)\n",
            result.hosts.len() - MAX_TEXT_HOSTS
        ));
    }
    if let Some(next) = &result.next_cursor {
        text.push_str(&format!(
            "This page lists {} of them; more follow: pass `cursor` {next:?} for the next page\n",
            result.hosts.len()
        ));
    }
    structured(&result, vec![text])
}

fn view(r: &HostRecord, now: u64) -> HostView {
    let facts = r.facts.as_ref();
    HostView {
        host: r.host.to_string(),
        state: HostState::of_record(r, now).to_string(),
        unverified: r.unverified.clone(),
        kind: if r.relay_user().is_some() {
            "relay"
        } else {
            "agent"
        }
        .to_string(),
        relay_user: r.relay_user().map(str::to_owned),
        relay_offline_reason: r.relay_offline_reason().map(str::to_owned),
        labels: facts
            .map(|f| f.labels.clone().into_iter().collect())
            .unwrap_or_default(),
        last_seen_secs: r
            .last_heartbeat_ms()
            .map(|at| now.saturating_sub(at) / 1000),
        running_jobs: r.presence.as_ref().map(|p| p.running_jobs),
        os: facts.map(|f| f.os.clone()).filter(|s| !s.is_empty()),
        kernel: facts.map(|f| f.kernel.clone()).filter(|s| !s.is_empty()),
        arch: facts.map(|f| f.arch.clone()).filter(|s| !s.is_empty()),
        cpus: facts.map(|f| f.cpus).filter(|c| *c > 0),
        memory_mb: facts
            .map(|f| f.memory_bytes / (1024 * 1024))
            .filter(|m| *m > 0),
        load1: facts
            .filter(|f| f.collected_at_ms > 0 && f.uptime_secs > 0)
            .map(|f| f.load1),
        facts_age_secs: facts
            .filter(|f| f.collected_at_ms > 0)
            .map(|f| now.saturating_sub(f.collected_at_ms) / 1000),
        output: r
            .presence
            .as_ref()
            .and_then(|p| p.output.as_ref())
            .map(|o| OutputLimitsView {
                users_at_quota: o.users_at_quota.clone(),
                host_quota_reached: o.host_quota_reached(),
                stream_full: o.stream_full(),
                dropped_bytes: o.dropped_job_cap_bytes
                    + o.dropped_user_quota_bytes
                    + o.dropped_host_quota_bytes,
                reached: o.reached(),
            })
            .filter(|o| {
                !o.users_at_quota.is_empty()
                    || o.host_quota_reached
                    || o.stream_full
                    || o.dropped_bytes > 0
            }),
    }
}
