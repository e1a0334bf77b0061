//! `facts`: the cached fact pack ("server memory") of the hosts a selector matches, or a fresh
//! one collected now (`refresh`).

use std::collections::BTreeMap;
use std::time::Duration;

use rmcp::model::{CallToolResult, Tool};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use execmesh_proto::{Token, pb};

use super::{Call, dispatch, structured};
use crate::core::error::ToolError;
use crate::core::fanout::{self, HostStatus, Outcome, Plan, Targets};
use crate::core::hosts::HostRecord;

/// How long one host may take to collect its facts on `refresh`.
const REFRESH_TIMEOUT: Duration = Duration::from_secs(20);
/// Hosts described in full in the text rendering.
const TEXT_HOSTS: usize = 100;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum FactsAction {
    /// The facts as last collected (every agent refreshes them on an interval).
    Get,
    /// Ask each host to collect its facts now and return the fresh pack.
    Refresh,
}

// === impl FactsAction ===

impl FactsAction {
    /// The action's name, as the schema and the tier table write it.
    pub fn as_str(self) -> &'static str {
        match self {
            FactsAction::Get => "get",
            FactsAction::Refresh => "refresh",
        }
    }
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FactsParams {
    /// get (default) or refresh.
    #[serde(default, deserialize_with = "super::strict::optional_name")]
    pub action: Option<FactsAction>,
    /// Which hosts: a selector (default `*`); see `hosts`.
    #[serde(default)]
    pub hosts: Option<String>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct FactsResult {
    pub action: String,
    pub selector: String,
    pub summary: String,
    pub hosts: Vec<HostFactsView>,
}

#[derive(Debug, Default, Serialize, JsonSchema)]
pub struct HostFactsView {
    pub host: String,
    /// get: online, stale or offline; refresh: the fan-out status (ok, offline, timeout, …).
    pub status: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Unix milliseconds when the facts were collected.
    pub collected_at_ms: u64,
    /// Seconds since then.
    pub age_secs: u64,
    /// Facts are older than twice the host's collection interval.
    pub stale: bool,
    pub labels: BTreeMap<String, String>,
    pub hostname: String,
    pub os: String,
    pub os_id: String,
    pub os_version: String,
    pub kernel: String,
    pub arch: String,
    pub cpus: u32,
    pub memory_mb: u64,
    pub memory_available_mb: u64,
    pub swap_total_mb: u64,
    pub swap_free_mb: u64,
    pub uptime_secs: u64,
    pub load: [f64; 3],
    pub disks: Vec<DiskView>,
    pub ip_addresses: Vec<String>,
    /// `tcp 0.0.0.0:22`.
    pub listening: Vec<String>,
    pub services: Vec<String>,
    pub package_count: u64,
    pub package_manager: String,
    pub agent_version: String,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct DiskView {
    pub mount: String,
    pub device: String,
    pub fs_type: String,
    pub total_mb: u64,
    pub used_mb: u64,
    pub available_mb: u64,
    /// Used share in percent.
    pub used_pct: f64,
}

pub fn definition() -> Tool {
    super::tool::<FactsParams, FactsResult>(
        "facts",
        "Host facts",
        "The fact pack of the hosts a selector matches: OS and version, kernel, architecture, \
         CPUs, memory, disks and usage, uptime, load, IP addresses, listening ports, running \
         services and package count, with when they were collected. action `refresh` asks \
         the hosts to collect them now.",
        super::reads(false),
    )
}

pub async fn call(call: &Call<'_>, params: FactsParams) -> Result<CallToolResult, ToolError> {
    let action = params.action.unwrap_or(FactsAction::Get);
    let selector = params.hosts.unwrap_or_else(|| "*".to_string());
    let targets = super::fleet::targets(call, "facts", &selector).await?;
    let action_name = action.as_str();
    crate::core::approvals::gate(
        &call.gate(),
        crate::core::approvals::Request::for_targets(
            &targets,
            Some(action_name),
            format!(
                "facts {action_name} on {} host(s) matching `{selector}`",
                targets.hosts.len()
            ),
        ),
    )
    .await?;
    let now = execmesh_proto::now_ms();
    let (hosts, summary) = match action {
        FactsAction::Get => {
            let mut hosts: Vec<HostFactsView> = targets
                .hosts
                .values()
                .map(|record| from_record(record, now))
                .collect();
            for denied in &targets.denied {
                hosts.push(HostFactsView {
                    host: denied.to_string(),
                    status: "denied".into(),
                    reason: Some("outside the hosts you may reach".into()),
                    ..Default::default()
                });
            }
            hosts.sort_by(|a, b| a.host.cmp(&b.host));
            let known = hosts.iter().filter(|h| h.collected_at_ms > 0).count();
            let stale = hosts.iter().filter(|h| h.stale).count();
            let summary = format!(
                "{} host(s) match `{selector}`: facts for {known}, {stale} of them stale",
                hosts.len()
            );
            (hosts, summary)
        }
        FactsAction::Refresh => refresh(call, targets, now).await,
    };
    let text = render(&summary, &hosts);
    let result = FactsResult {
        action: action_name.into(),
        selector,
        summary,
        hosts,
    };
    structured(&result, vec![text])
}

async fn refresh(call: &Call<'_>, targets: Targets, now: u64) -> (Vec<HostFactsView>, String) {
    let plan = Plan {
        window: call.state.config.fanout_window,
        max_failures: None,
        cancel: call.context.ct.clone(),
    };
    let report = super::fleet::run(call, targets, &plan, "hosts refreshed", |host| async move {
        let id = dispatch::request_id("facts");
        let body = pb::exec_request::Body::Facts(pb::FactsRequest { refresh: true });
        let wait = REFRESH_TIMEOUT + call.state.config.request_timeout;
        match dispatch::send(call, &host, &id, body, wait).await {
            Ok(pb::exec_reply::Body::Facts(pb::FactsReply { facts: Some(facts) })) => {
                Outcome::new(host, HostStatus::Ok, "facts collected").with_value(facts)
            }
            Ok(_) => {
                let reason = format!("host {host} sent no facts");
                Outcome::new(host, HostStatus::Error, reason)
            }
            Err(e) => fanout::classify(host, e),
        }
    })
    .await;
    let summary = report.summary();
    let hosts = report
        .outcomes
        .into_iter()
        .map(|o| {
            let mut view = match &o.value {
                Some(facts) => from_facts(&o.host, facts, now),
                None => HostFactsView {
                    host: o.host.to_string(),
                    ..Default::default()
                },
            };
            view.status = o.status.as_str().to_string();
            if o.status != HostStatus::Ok {
                view.reason = Some(o.reason);
            }
            view
        })
        .collect();
    (hosts, summary)
}

fn from_record(record: &HostRecord, now: u64) -> HostFactsView {
    let state = crate::core::hosts::HostState::of(record.presence.as_ref(), now);
    let mut view = match &record.facts {
        Some(facts) => from_facts(&record.host, facts, now),
        None => HostFactsView {
            host: record.host.to_string(),
            reason: Some("no facts collected yet".into()),
            ..Default::default()
        },
    };
    view.status = state.to_string();
    view
}

fn from_facts(host: &Token, f: &pb::HostFacts, now: u64) -> HostFactsView {
    const MB: u64 = 1024 * 1024;
    let age_secs = now.saturating_sub(f.collected_at_ms) / 1000;
    HostFactsView {
        host: host.to_string(),
        status: String::new(),
        reason: None,
        collected_at_ms: f.collected_at_ms,
        age_secs,
        stale: f.interval_secs > 0 && age_secs > 2 * f.interval_secs,
        labels: f.labels.clone().into_iter().collect(),
        hostname: f.hostname.clone(),
        os: f.os.clone(),
        os_id: f.os_id.clone(),
        os_version: f.os_version.clone(),
        kernel: f.kernel.clone(),
        arch: f.arch.clone(),
        cpus: f.cpus,
        memory_mb: f.memory_bytes / MB,
        memory_available_mb: f.memory_available_bytes / MB,
        swap_total_mb: f.swap_total_bytes / MB,
        swap_free_mb: f.swap_free_bytes / MB,
        uptime_secs: f.uptime_secs,
        load: [f.load1, f.load5, f.load15],
        disks: f
            .disks
            .iter()
            .map(|d| DiskView {
                mount: d.mount.clone(),
                device: d.device.clone(),
                fs_type: d.fs_type.clone(),
                total_mb: d.total_bytes / MB,
                used_mb: d.used_bytes / MB,
                available_mb: d.available_bytes / MB,
                used_pct: if d.total_bytes > 0 {
                    (d.used_bytes as f64 * 1000.0 / d.total_bytes as f64).round() / 10.0
                } else {
                    0.0
                },
            })
            .collect(),
        ip_addresses: f.ip_addresses.clone(),
        listening: f
            .listening_ports
            .iter()
            .map(|p| format!("{} {}:{}", p.protocol, p.address, p.port))
            .collect(),
        services: f.services.clone(),
        package_count: f.package_count,
        package_manager: f.package_manager.clone(),
        agent_version: f.agent_version.clone(),
    }
}

fn render(summary: &str, hosts: &[HostFactsView]) -> String {
    let mut text = format!("{summary}\n");
    for h in hosts.iter().take(TEXT_HOSTS) {
        if h.collected_at_ms == 0 {
            text.push_str(&format!(
                "- {} [{}]: {}\n",
                h.host,
                h.status,
                h.reason.as_deref().unwrap_or("no facts")
            ));
            continue;
        }
        let disks: Vec<String> = h
            .disks
            .iter()
            .take(4)
            .map(|d| format!("{} {:.0}% of {} GB", d.mount, d.used_pct, d.total_mb / 1024))
            .collect();
        let ports: Vec<&str> = h.listening.iter().take(10).map(String::as_str).collect();
        text.push_str(&format!(
            "- {} [{}{}] {} ({} {}), {} CPU, {} MB RAM ({} MB free), load {:.2}/{:.2}/{:.2}, up {} h\n  disks: {}\n  ips: {}; listening: {}; {} service(s) running; {} package(s); facts {} s old\n",
            h.host,
            h.status,
            if h.stale { ", facts stale" } else { "" },
            h.os,
            h.kernel,
            h.arch,
            h.cpus,
            h.memory_mb,
            h.memory_available_mb,
            h.load[0],
            h.load[1],
            h.load[2],
            h.uptime_secs / 3600,
            if disks.is_empty() { "unknown".into() } else { disks.join(", ") },
            h.ip_addresses.join(", "),
            if ports.is_empty() { "none".into() } else { ports.join(", ") },
            h.services.len(),
            h.package_count,
            h.age_secs,
        ));
    }
    if hosts.len() > TEXT_HOSTS {
        text.push_str(&format!(
            "… {} more host(s) in structuredContent.hosts\n",
            hosts.len() - TEXT_HOSTS
        ));
    }
    text
}
