//! The JSON shape of audit event bodies, written once so the audit-sink's `export --jsonl` and `execmeshctl audit` print the same `detail` for the same event.

use serde_json::{Value, json};

use crate::pb::audit_event::Body;

/// An event's `time`: unix milliseconds as RFC 3339 in UTC with milliseconds
/// (`2026-05-01T12:00:00.123Z`), printed next to the `time_ms` value; the bare number when the
/// time cannot be represented.
pub fn time(ms: u64) -> String {
    let nanos = i128::from(ms) * 1_000_000;
    time::OffsetDateTime::from_unix_timestamp_nanos(nanos)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| ms.to_string())
}

/// The body of an event as JSON, with enum values by name.
pub fn body(body: Option<&Body>) -> Value {
    match body {
        Some(Body::CallReceived(b)) => json!({
            // The summary is JSON text; shown as JSON when it parses.
            "args": serde_json::from_str::<Value>(&b.args).unwrap_or_else(|_| Value::String(b.args.clone())),
            "hosts": b.hosts,
            "hosts_omitted": b.hosts_omitted,
            "action": b.action,
        }),
        Some(Body::CallDenied(b)) => json!({ "reason": b.reason, "by": b.by, "code": b.code }),
        Some(Body::CallDispatched(b)) => json!({
            "request": b.request,
            "error": b.error,
            "duration_ms": b.duration_ms,
        }),
        Some(Body::CallCompleted(b)) => json!({
            "status": b.status,
            "error_code": b.error_code,
            "error": b.error,
            "duration_ms": b.duration_ms,
            "hosts": b.hosts,
            "hosts_omitted": b.hosts_omitted,
        }),
        Some(Body::JobStarted(b)) => json!({
            "pid": b.pid,
            "uid": b.uid,
            "gid": b.gid,
            "cwd": b.cwd,
            "title": b.title,
        }),
        Some(Body::JobFinished(b)) => json!({
            "state": b.state().as_str_name().trim_start_matches("JOB_STATE_").to_lowercase(),
            "exit_code": b.exit_code,
            "signal": b.signal,
            "duration_ms": b.duration_ms,
            "output_bytes": b.output_bytes,
            "output_lines": b.output_lines,
            "dropped_bytes": b.dropped_bytes,
            "reason": b.reason,
        }),
        Some(Body::FileChanged(b)) => json!({
            "action": b.action,
            "path": b.path,
            "to": b.to,
            "size": b.size,
            "sha256": b.sha256,
            "detail": b.detail,
        }),
        Some(Body::OrphanKilled(b)) => json!({ "pids": b.pids, "reason": b.reason }),
        Some(Body::ApprovalRequested(b)) => json!({
            "approval_id": b.approval_id,
            "summary": b.summary,
            "hosts": b.hosts,
            "hosts_omitted": b.hosts_omitted,
            "request_hash": b.request_hash,
            "expires_at_ms": b.expires_at_ms,
        }),
        Some(Body::ApprovalDecided(b)) => json!({
            "approval_id": b.approval_id,
            "decision": b.decision,
            "by": b.by,
            "reason": b.reason,
            "requested_by": b.requested_by,
        }),
        Some(Body::JobAccessed(b)) => json!({
            "owners": b.owners,
            "action": b.action,
            "via": b.via,
            "jobs": b.jobs,
        }),
        Some(Body::TokenMinted(b)) => json!({
            "token_id": b.token_id,
            "for_user": b.for_user,
            "scopes": b.scopes,
            "tier": b.tier,
            "expires_at_ms": b.expires_at_ms,
            "by": b.by,
            "grounds": b.grounds,
        }),
        Some(Body::TokenRevoked(b)) => json!({
            "token_id": b.token_id,
            "for_user": b.for_user,
            "kept_until_ms": b.kept_until_ms,
            "by": b.by,
        }),
        Some(Body::AuthFailed(b)) => json!({
            "code": b.code,
            "reason": b.reason,
            "client_addr": b.client_addr,
            "endpoint": b.endpoint,
            "count": b.count,
            "first_ms": b.first_ms,
            "last_ms": b.last_ms,
            "token_id": b.token_id,
        }),
        Some(Body::TaskCancelled(b)) => json!({
            "task_id": b.task_id,
            "hosts": b.hosts,
            "hosts_omitted": b.hosts_omitted,
            "jobs": b.jobs,
            "stopped": b.stopped,
        }),
        None => Value::Null,
    }
}
