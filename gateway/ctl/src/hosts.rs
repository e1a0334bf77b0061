//! `execmeshctl hosts`: the fleet by selector, and `hosts watch`, presence changes as they happen.

use serde_json::{Value, json};

use execmesh_proto::{now_ms, pb};

use crate::connect::Admin;
use crate::table::{self, Table};
use crate::{CtlError, enum_word, print, print_json, print_json_line};

/// `hosts [SELECTOR]`: a table of the matching hosts and a count by state, or the response as
/// JSON.
pub async fn list(
    admin: &mut Admin,
    selector: String,
    page_size: u32,
    json: bool,
) -> Result<(), CtlError> {
    let response = list_all(admin, selector, page_size).await?;
    if json {
        return print_json(&json!({
            "hosts": response.hosts.iter().map(host_json).collect::<Vec<_>>(),
            "online": response.online,
            "stale": response.stale,
            "offline": response.offline,
        }));
    }
    let now = now_ms();
    let mut table = Table::new(&[
        "HOST",
        "SERVED BY",
        "STATE",
        "HEARTBEAT",
        "JOBS",
        "OS",
        "CPUS",
        "MEMORY",
        "LOAD",
        "LABELS",
    ]);
    for host in &response.hosts {
        let facts = host.facts.as_ref();
        table.row(vec![
            host.host.clone(),
            served_by(facts),
            state_word(host.state),
            table::ago(host.last_heartbeat_ms, now),
            host.presence
                .as_ref()
                .map(|p| p.running_jobs.to_string())
                .unwrap_or_else(|| "-".into()),
            facts.map(os).unwrap_or_else(|| "-".into()),
            facts
                .filter(|f| f.cpus > 0)
                .map(|f| f.cpus.to_string())
                .unwrap_or_else(|| "-".into()),
            facts
                .filter(|f| f.memory_bytes > 0)
                .map(|f| table::bytes(f.memory_bytes))
                .unwrap_or_else(|| "-".into()),
            facts
                .filter(|f| f.collected_at_ms > 0)
                .map(|f| format!("{:.2}", f.load1))
                .unwrap_or_else(|| "-".into()),
            labels(host),
        ]);
    }
    let count = response.hosts.len();
    let summary = format!(
        "{count} host{}: {} online, {} stale, {} offline\n",
        if count == 1 { "" } else { "s" },
        response.online,
        response.stale,
        response.offline
    );
    if table.is_empty() {
        return print(&summary);
    }
    // Output limits reached, one line per host, under the table where on-call reads.
    let limits: String = (response.hosts.iter())
        .filter_map(|h| Some((&h.host, h.presence.as_ref()?.output.as_ref()?.reached())))
        .filter(|(_, reached)| !reached.is_empty())
        .map(|(host, reached)| format!("{host}: output limits reached: {}\n", reached.join("; ")))
        .collect();
    print(&format!("{}\n{summary}{limits}", table.render()))
}

/// Every matching host, asked for `page_size` at a time: one answer of a large fleet would pass
/// the 4 MiB a gRPC client accepts. The counts are the last page's (each has all of them).
async fn list_all(
    admin: &mut Admin,
    selector: String,
    page_size: u32,
) -> Result<pb::ListHostsResponse, CtlError> {
    let mut all = pb::ListHostsResponse::default();
    let mut page_token = String::new();
    loop {
        let request = pb::ListHostsRequest {
            selector: selector.clone(),
            page_size,
            page_token,
        };
        let mut page = admin
            .call(request, async |c, r| c.hosts.list(r).await)
            .await?;
        all.hosts.append(&mut page.hosts);
        (all.online, all.stale, all.offline, all.total) =
            (page.online, page.stale, page.offline, page.total);
        if page.next_page_token.is_empty() {
            return Ok(all);
        }
        page_token = page.next_page_token;
    }
}

/// `hosts watch`: one line per presence change until interrupted (JSON lines with --json).
pub async fn watch(
    admin: &mut Admin,
    selector: String,
    include_initial: bool,
    json: bool,
) -> Result<(), CtlError> {
    let mut stream = admin
        .open(
            pb::WatchHostsRequest {
                selector,
                include_initial,
            },
            async |c, r| c.hosts.watch(r).await,
        )
        .await?;
    if !json {
        // Lines arrive one by one, so the columns have fixed widths instead of measured ones.
        print(&format!(
            "{:<20}  {:<16}  {:<17}  {}\n",
            "TIME", "HOST", "STATE", "DETAIL"
        ))?;
    }
    loop {
        let event = admin.next_event(&mut stream).await?;
        if json {
            print_json_line(&event_json(&event))?;
            continue;
        }
        let change = if event.initial {
            state_word(event.state)
        } else {
            format!(
                "{} → {}",
                state_word(event.previous),
                state_word(event.state)
            )
        };
        let detail = match (&event.detail, event.initial) {
            (Some(host), true) => format!("(at start) {}", labels(host)),
            (Some(host), false) => labels(host),
            (None, _) => String::new(),
        };
        print(&format!(
            "{:<20}  {:<16}  {:<17}  {}\n",
            table::timestamp(event.time_ms),
            event.host,
            change,
            detail.trim_end()
        ))?;
    }
}

/// A host state as a word (`online`, `stale`, `offline`; `new` for an unknown previous state).
fn state_word(state: i32) -> String {
    match pb::HostState::try_from(state) {
        Ok(pb::HostState::Unspecified) => "new".into(),
        Ok(s) => enum_word(s.as_str_name(), "HOST_STATE_"),
        Err(_) => format!("state {state}"),
    }
}

fn state_json(state: i32) -> String {
    pb::HostState::try_from(state)
        .map(|s| enum_word(s.as_str_name(), "HOST_STATE_"))
        .unwrap_or_else(|_| state.to_string())
}

/// `role=web,env=prod`, sorted by key.
fn labels(host: &pb::Host) -> String {
    let mut labels: Vec<_> = host.labels.iter().collect();
    labels.sort();
    labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// `debian 12`, else the OS line, clipped.
/// `agent`, or `relay of <user>` for a target one user's SSH relay reaches (only that user's
/// calls go there).
fn served_by(facts: Option<&pb::HostFacts>) -> String {
    match facts.map(|f| f.relay_user.as_str()) {
        Some(user) if !user.is_empty() => format!("relay of {user}"),
        _ => "agent".into(),
    }
}

fn os(facts: &pb::HostFacts) -> String {
    let text = if !facts.os_id.is_empty() {
        format!("{} {}", facts.os_id, facts.os_version)
    } else {
        facts.os.clone()
    };
    table::or_dash(&table::clip(text.trim(), 24))
}

/// A host as JSON: proto field names, enum values as words.
pub fn host_json(host: &pb::Host) -> Value {
    json!({
        "host": host.host,
        "state": state_json(host.state),
        "labels": host.labels,
        "last_heartbeat_ms": host.last_heartbeat_ms,
        "presence": host.presence.as_ref().map(presence_json),
        "facts": host.facts.as_ref().map(facts_json),
    })
}

fn event_json(event: &pb::HostEvent) -> Value {
    json!({
        "host": event.host,
        "state": state_json(event.state),
        "previous": state_json(event.previous),
        "time_ms": event.time_ms,
        "initial": event.initial,
        "detail": event.detail.as_ref().map(host_json),
    })
}

fn presence_json(p: &pb::Presence) -> Value {
    json!({
        "host": p.host,
        "agent_instance": p.agent_instance,
        "started_at_ms": p.started_at_ms,
        "heartbeat_at_ms": p.heartbeat_at_ms,
        "heartbeat_interval_ms": p.heartbeat_interval_ms,
        "running_jobs": p.running_jobs,
        "max_jobs": p.max_jobs,
        "version": p.version,
        "output": p.output.as_ref().map(output_json),
    })
}

fn output_json(o: &pb::OutputUsage) -> Value {
    json!({
        "host_bytes": o.host_bytes,
        "host_quota_bytes": o.host_quota_bytes,
        "user_quota_bytes": o.user_quota_bytes,
        "window_secs": o.window_secs,
        "users_at_quota": o.users_at_quota,
        "dropped_job_cap_bytes": o.dropped_job_cap_bytes,
        "dropped_user_quota_bytes": o.dropped_user_quota_bytes,
        "dropped_host_quota_bytes": o.dropped_host_quota_bytes,
        "stream_bytes": o.stream_bytes,
        "stream_max_bytes": o.stream_max_bytes,
        "reached": o.reached(),
    })
}

fn facts_json(f: &pb::HostFacts) -> Value {
    json!({
        "host": f.host,
        "labels": f.labels,
        "hostname": f.hostname,
        "os": f.os,
        "os_id": f.os_id,
        "os_version": f.os_version,
        "kernel": f.kernel,
        "arch": f.arch,
        "cpus": f.cpus,
        "memory_bytes": f.memory_bytes,
        "memory_available_bytes": f.memory_available_bytes,
        "swap_total_bytes": f.swap_total_bytes,
        "swap_free_bytes": f.swap_free_bytes,
        "uptime_secs": f.uptime_secs,
        "load1": f.load1,
        "load5": f.load5,
        "load15": f.load15,
        "disks": f.disks.iter().map(|d| json!({
            "mount": d.mount,
            "device": d.device,
            "fs_type": d.fs_type,
            "total_bytes": d.total_bytes,
            "used_bytes": d.used_bytes,
            "available_bytes": d.available_bytes,
        })).collect::<Vec<_>>(),
        "ip_addresses": f.ip_addresses,
        "listening_ports": f.listening_ports.iter().map(|p| json!({
            "protocol": p.protocol,
            "address": p.address,
            "port": p.port,
        })).collect::<Vec<_>>(),
        "services": f.services,
        "package_count": f.package_count,
        "package_manager": f.package_manager,
        "collected_at_ms": f.collected_at_ms,
        "interval_secs": f.interval_secs,
        "agent_version": f.agent_version,
        "relay_user": f.relay_user,
        "relay_offline_reason": f.relay_offline_reason,
    })
}
