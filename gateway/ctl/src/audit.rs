//! `execmeshctl audit`: search the audit trail, `audit export` it as JSON lines, and `audit
//! verify` its hash chain.

use serde_json::{Value, json};

use execmesh_proto::pb;
use execmesh_proto::pb::audit_event::Body;

use crate::cli::{AuditCommand, AuditFilters, AuditPage};
use crate::connect::{Admin, Settings};
use crate::table::{self, Table};
use crate::{CtlError, enum_word, print, print_json, print_json_line};

/// Records per page while exporting.
const EXPORT_PAGE: u32 = 500;

/// Dispatches `audit`, `audit export` and `audit verify`.
pub async fn run(
    settings: Settings,
    filters: AuditFilters,
    page: AuditPage,
    command: Option<AuditCommand>,
    json: bool,
) -> Result<(), CtlError> {
    match command {
        None => {
            let mut query = query(&filters, execmesh_proto::now_ms())?;
            query.limit = page.limit;
            query.newest_first = !page.oldest_first;
            query.cursor = page.cursor.unwrap_or_default();
            let mut admin = settings.connect().await?;
            search(&mut admin, query, &filters, json).await
        }
        Some(AuditCommand::Export { filters }) => {
            let mut query = query(&filters, execmesh_proto::now_ms())?;
            query.limit = EXPORT_PAGE;
            let mut admin = settings.connect().await?;
            export(&mut admin, query).await
        }
        Some(AuditCommand::Verify) => {
            let mut admin = settings.connect().await?;
            verify(&mut admin, json).await
        }
    }
}

/// The AuditQuery for `filters`, times resolved against `now_ms`.
pub fn query(filters: &AuditFilters, now_ms: u64) -> Result<pb::AuditQuery, CtlError> {
    let time = |flag: &str, value: &Option<String>| -> Result<u64, CtlError> {
        match value {
            None => Ok(0),
            Some(text) => {
                parse_time(text, now_ms).map_err(|e| CtlError::Usage(format!("{flag} {e}")))
            }
        }
    };
    let text = |value: &Option<String>| value.clone().unwrap_or_default();
    Ok(pb::AuditQuery {
        since_ms: time("--since", &filters.since)?,
        until_ms: time("--until", &filters.until)?,
        user: text(&filters.user),
        host: text(&filters.host),
        job_id: text(&filters.job),
        tool: text(&filters.tool),
        trace_id: text(&filters.trace),
        outcome: text(&filters.outcome),
        kind: text(&filters.kind),
        cursor: String::new(),
        limit: 0,
        newest_first: false,
    })
}

/// A point in time: a duration back from `now_ms` (`90s`, `30m`, `1h`, `7d`) or RFC 3339.
pub fn parse_time(text: &str, now_ms: u64) -> Result<u64, String> {
    let text = text.trim();
    if text.starts_with(|c: char| c.is_ascii_digit()) && !text.contains('-') && !text.contains(':')
    {
        let back = execmesh_proto::duration::parse(text)
            .map_err(|e| format!("{e}; or give a time such as 2026-05-01T12:00:00Z"))?;
        return Ok(now_ms.saturating_sub(back.as_millis() as u64));
    }
    let time = time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .map_err(|e| {
            format!(
                "`{text}` is neither a duration (30m, 1h, 7d) nor an RFC 3339 time \
                 (2026-05-01T12:00:00Z): {e}"
            )
        })?;
    let ms = time.unix_timestamp_nanos() / 1_000_000;
    u64::try_from(ms).map_err(|_| format!("`{text}` is before 1970"))
}

async fn search(
    admin: &mut Admin,
    query: pb::AuditQuery,
    filters: &AuditFilters,
    json: bool,
) -> Result<(), CtlError> {
    let page = admin
        .call(query, async |c, r| c.audit.query(r).await)
        .await?;
    if json {
        return print_json(&json!({
            "records": page.records.iter().map(record_json).collect::<Vec<_>>(),
            "next_cursor": page.next_cursor,
            "head_seq": page.head_seq,
        }));
    }
    if page.records.is_empty() {
        return print(&format!(
            "no audit events match ({} stored in all)\n",
            page.head_seq
        ));
    }
    let mut table = Table::new(&[
        "SEQ", "TIME", "KIND", "USER", "HOST", "TOOL", "JOB", "OUTCOME", "DETAIL",
    ]);
    for record in &page.records {
        let event = record.event.clone().unwrap_or_default();
        table.row(vec![
            record.seq.to_string(),
            table::timestamp(event.time_ms),
            record.kind.clone(),
            table::or_dash(&event.user),
            table::or_dash(&event.host),
            table::or_dash(&event.tool),
            table::or_dash(&event.job_id),
            table::or_dash(&event.outcome),
            table::clip(&summary(event.body.as_ref()), 100),
        ]);
    }
    let mut text = table.render();
    if !page.next_cursor.is_empty() {
        let mut again = vec!["execmeshctl audit".to_string()];
        again.extend(filter_args(filters));
        text.push_str(&format!(
            "(more: {} --cursor {})\n",
            again.join(" "),
            page.next_cursor
        ));
    }
    print(&text)
}

/// The filter flags as they were given, to repeat them in the "more" hint.
fn filter_args(filters: &AuditFilters) -> Vec<String> {
    let flags = [
        ("--since", &filters.since),
        ("--until", &filters.until),
        ("--user", &filters.user),
        ("--host", &filters.host),
        ("--job", &filters.job),
        ("--trace", &filters.trace),
        ("--tool", &filters.tool),
        ("--kind", &filters.kind),
        ("--outcome", &filters.outcome),
    ];
    flags
        .iter()
        .filter_map(|(flag, value)| value.as_ref().map(|v| format!("{flag} '{v}'")))
        .collect()
}

/// `audit export`: every matching record, oldest first, one JSON object per line.
async fn export(admin: &mut Admin, query: pb::AuditQuery) -> Result<(), CtlError> {
    let mut stream = admin
        .open(query, async |c, r| c.audit.export(r).await)
        .await?;
    while let Some(record) = admin.next(&mut stream).await? {
        print_json_line(&record_json(&record))?;
    }
    Ok(())
}

/// `audit verify`: exit 0 with the chain's head when intact and every event was signed by a
/// known key; else 1 naming the first bad record, or the events no known key signed.
async fn verify(admin: &mut Admin, json: bool) -> Result<(), CtlError> {
    let reply = admin
        .call(pb::AuditVerifyRequest {}, async |c, r| {
            c.audit.verify(r).await
        })
        .await?;
    if !reply.error.is_empty() {
        return Err(CtlError::Refused(format!(
            "the audit-sink cannot read its store: {}",
            reply.error
        )));
    }
    if json {
        print_json(&json!({
            "ok": reply.ok,
            "records": reply.records,
            "head_seq": reply.head_seq,
            "head_hash": reply.head_hash,
            "first_bad_seq": reply.first_bad_seq,
            "problem": reply.problem,
            "unsigned_events": reply.unsigned_events,
            "unsigned_event_ids": reply.unsigned_event_ids,
        }))?;
    } else if reply.ok {
        print(&format!(
            "audit chain intact: {} records, head seq {} hash {}\n",
            reply.records, reply.head_seq, reply.head_hash
        ))?;
    }
    if reply.ok && reply.unsigned_events > 0 {
        let shown = reply.unsigned_event_ids.len() as u64;
        let more = if reply.unsigned_events > shown {
            format!(" and {} more", reply.unsigned_events - shown)
        } else {
            String::new()
        };
        Err(CtlError::Failed(format!(
            "{} audit events were signed by no known key (planted under another identity's \
             subject, or stored while the audit-sink checked no signatures): {}{more}",
            reply.unsigned_events,
            reply.unsigned_event_ids.join(", ")
        )))
    } else if reply.ok {
        Ok(())
    } else {
        Err(CtlError::Failed(format!(
            "the audit chain is broken at seq {}: {} ({} records checked)",
            reply.first_bad_seq, reply.problem, reply.records
        )))
    }
}

/// One line about an event's body for the table.
pub fn summary(body: Option<&Body>) -> String {
    match body {
        Some(Body::CallReceived(b)) => {
            let action = table::optional("", &b.action, " ");
            format!("{action}{}", b.args)
        }
        Some(Body::CallDenied(b)) => format!("{} by {}: {}", b.code, b.by, b.reason),
        Some(Body::CallDispatched(b)) => {
            let error = table::optional(": ", &b.error, "");
            format!("{} in {}{error}", b.request, table::duration(b.duration_ms))
        }
        Some(Body::CallCompleted(b)) => {
            let error = table::optional(&format!(" {}: ", b.error_code), &b.error, "");
            format!("{} in {}{error}", b.status, table::duration(b.duration_ms))
        }
        Some(Body::JobStarted(b)) => {
            let cwd = table::optional(" in ", &b.cwd, "");
            format!("pid {} uid {}{cwd}", b.pid, b.uid)
        }
        Some(Body::JobFinished(b)) => {
            let state = enum_word(b.state().as_str_name(), "JOB_STATE_");
            let code = match (b.exit_code, b.signal.as_str()) {
                (Some(code), _) => format!(" {code}"),
                (None, "") => String::new(),
                (None, signal) => format!(" {signal}"),
            };
            format!(
                "{state}{code} after {}, {} lines",
                table::duration(b.duration_ms),
                b.output_lines
            )
        }
        Some(Body::FileChanged(b)) => {
            let to = table::optional(" → ", &b.to, "");
            format!("{} {}{to}", b.action, b.path)
        }
        Some(Body::OrphanKilled(b)) => {
            let pids: Vec<String> = b.pids.iter().map(u32::to_string).collect();
            format!("killed pid {}: {}", pids.join(", "), b.reason)
        }
        Some(Body::ApprovalRequested(b)) => format!("{}: {}", b.approval_id, b.summary),
        Some(Body::ApprovalDecided(b)) => {
            let reason = table::optional(": ", &b.reason, "");
            format!("{} {} by {}{reason}", b.decision, b.approval_id, b.by)
        }
        Some(Body::JobAccessed(b)) => format!(
            "operator {} of {} job(s) of {} via {}",
            b.action,
            b.jobs,
            b.owners.join(", "),
            b.via
        ),
        Some(Body::TokenMinted(b)) => format!(
            "{} for {} by {} ({}), scopes {}, tier {}, expires {}",
            b.token_id,
            b.for_user,
            b.by,
            b.grounds,
            b.scopes.join(" "),
            b.tier,
            table::timestamp(b.expires_at_ms)
        ),
        Some(Body::TokenRevoked(b)) => {
            let whose = table::optional(" of ", &b.for_user, "");
            format!("{}{whose} by {}", b.token_id, b.by)
        }
        Some(Body::AuthFailed(b)) => {
            let times = if b.count > 1 {
                format!(" ×{}", b.count)
            } else {
                String::new()
            };
            format!("{} from {}{times}: {}", b.endpoint, b.client_addr, b.reason)
        }
        Some(Body::TaskCancelled(b)) => {
            let hosts = match (b.hosts.is_empty(), b.hosts_omitted) {
                (true, _) => "no host".to_string(),
                (false, 0) => b.hosts.join(", "),
                (false, more) => format!("{} and {more} more", b.hosts.join(", ")),
            };
            format!(
                "{}: {} of {} job(s) stopped on {hosts}",
                b.task_id, b.stopped, b.jobs
            )
        }
        None => String::new(),
    }
}

/// A stored record as one JSON object, the same shape as `execmesh-audit-sink export` writes:
/// the columns, the time in RFC 3339, the body as `detail`, the chain hashes.
pub fn record_json(record: &pb::AuditRecord) -> Value {
    let event = record.event.clone().unwrap_or_default();
    let source = match event.source() {
        pb::AuditSource::Gateway => "gateway",
        pb::AuditSource::Agent => "agent",
        pb::AuditSource::Unspecified => "",
    };
    json!({
        "seq": record.seq,
        "id": event.id,
        "time": execmesh_proto::audit_json::time(event.time_ms),
        "time_ms": event.time_ms,
        "tenant": event.tenant,
        "source": source,
        "source_instance": event.source_instance,
        "kind": record.kind,
        "user": event.user,
        "host": event.host,
        "job_id": event.job_id,
        "tool": event.tool,
        "trace_id": event.trace_id,
        "outcome": event.outcome,
        "detail": execmesh_proto::audit_json::body(event.body.as_ref()),
        "prev_hash": record.prev_hash,
        "hash": record.hash,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_takes_a_duration_back_or_an_rfc3339_time() {
        let now = 1_777_636_803_000;
        assert_eq!(parse_time("1h", now), Ok(now - 3_600_000));
        assert_eq!(parse_time("90", now), Ok(now - 90_000));
        assert_eq!(
            parse_time("2026-05-01T12:00:00Z", now),
            Ok(1_777_636_800_000)
        );
        assert_eq!(
            parse_time("2026-05-01T14:00:00+02:00", now),
            Ok(1_777_636_800_000)
        );
        assert!(parse_time("yesterday", now).is_err());
        assert!(parse_time("1y", now).is_err());
    }
}
