//! Audit events as the sink stores and shows them: a stream message becomes a [`Row`], a stored row becomes a protobuf record or a JSON line.

use execmesh_proto::pb;
use execmesh_proto::subject::{self, AUDIT_GATEWAY_SOURCE, audit_kind};
use prost::Message as _;
use serde_json::{Value, json};

use crate::chain::Row;

/// Kind of a message whose payload is not an `AuditEvent`: stored anyway, so nothing published
/// to AUDIT is silently dropped.
pub const UNDECODABLE: &str = "undecodable";

/// A record read back from the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    pub row: Row,
    pub prev_hash: String,
    pub hash: String,
}

/// The row (not yet chained: `seq` 0) for one message of the AUDIT stream.
///
/// Where the subject and the event disagree, the subject wins: NATS permissions decide who may
/// publish on which subject, so the subject's tenant, and an agent's host (its source token),
/// are what the publisher was allowed to speak for. The event id is the event's own, else the
/// message's `Nats-Msg-Id`, else the stream sequence.
pub fn row_from_message(
    subject_name: &str,
    msg_id: Option<&str>,
    stream_seq: u64,
    payload: &[u8],
) -> Row {
    // mesh.v1.<tenant>.audit.<source>.<kind>
    let tokens: Vec<&str> = subject_name.split('.').collect();
    let subject_tenant = subject::tenant_of(subject_name).ok().map(|t| t.to_string());
    let source_token = tokens.get(4).copied().unwrap_or_default();
    let fallback_id = || match msg_id {
        Some(id) if !id.is_empty() => id.to_string(),
        _ => format!("stream-{stream_seq}"),
    };
    let Ok(event) = pb::AuditEvent::decode(payload) else {
        return Row {
            seq: 0,
            event_id: fallback_id(),
            time_ms: execmesh_proto::now_ms(),
            tenant: subject_tenant.unwrap_or_default(),
            source: source_name(source_token, pb::AuditSource::Unspecified).to_string(),
            kind: UNDECODABLE.to_string(),
            user: String::new(),
            host: String::new(),
            job_id: String::new(),
            tool: String::new(),
            trace_id: String::new(),
            outcome: String::new(),
            payload: payload.to_vec(),
            signer: String::new(),
        };
    };
    let source = source_name(source_token, event.source());
    let host = if source == "agent" && !source_token.is_empty() {
        source_token.to_string()
    } else {
        event.host.clone()
    };
    Row {
        seq: 0,
        event_id: if event.id.is_empty() {
            fallback_id()
        } else {
            event.id.clone()
        },
        time_ms: event.time_ms,
        tenant: subject_tenant.unwrap_or_else(|| event.tenant.clone()),
        source: source.to_string(),
        kind: audit_kind::of(event.body.as_ref()).to_string(),
        user: event.user,
        host,
        job_id: event.job_id,
        tool: event.tool,
        trace_id: event.trace_id,
        outcome: event.outcome,
        payload: payload.to_vec(),
        signer: String::new(),
    }
}

/// `gateway` or `agent`: the event's own word, else the subject's source token.
fn source_name(token: &str, source: pb::AuditSource) -> &'static str {
    match source {
        pb::AuditSource::Gateway => "gateway",
        pb::AuditSource::Agent => "agent",
        pb::AuditSource::Unspecified if token == AUDIT_GATEWAY_SOURCE => "gateway",
        pb::AuditSource::Unspecified => "agent",
    }
}

// === impl Stored ===

impl Stored {
    /// The record as the query service returns it.
    pub fn to_pb(&self) -> pb::AuditRecord {
        pb::AuditRecord {
            seq: self.row.seq,
            kind: self.row.kind.clone(),
            prev_hash: self.prev_hash.clone(),
            hash: self.hash.clone(),
            event: pb::AuditEvent::decode(self.row.payload.as_slice()).ok(),
            signer: self.row.signer.clone(),
        }
    }

    /// The record as one JSON object (one line of `export --jsonl`): the columns, the time in
    /// RFC 3339, the event's body as `detail`, and the chain hashes.
    pub fn to_json(&self) -> Value {
        let row = &self.row;
        let event = pb::AuditEvent::decode(row.payload.as_slice()).ok();
        let detail = match &event {
            Some(event) => execmesh_proto::audit_json::body(event.body.as_ref()),
            None => json!({ "payload_hex": hex::encode(&row.payload) }),
        };
        json!({
            "seq": row.seq,
            "id": row.event_id,
            "time": execmesh_proto::audit_json::time(row.time_ms),
            "time_ms": row.time_ms,
            "tenant": row.tenant,
            "source": row.source,
            "source_instance": event.as_ref().map(|e| e.source_instance.as_str()).unwrap_or(""),
            "kind": row.kind,
            "user": row.user,
            "host": row.host,
            "job_id": row.job_id,
            "tool": row.tool,
            "trace_id": row.trace_id,
            "outcome": row.outcome,
            "detail": detail,
            "signer": row.signer,
            "prev_hash": self.prev_hash,
            "hash": self.hash,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use execmesh_proto::pb::audit_event::Body;

    fn event(source: pb::AuditSource, host: &str) -> pb::AuditEvent {
        pb::AuditEvent {
            id: "0190000000001234567890abcdef".into(),
            time_ms: 1_700_000_000_123,
            tenant: "other".into(),
            source: source as i32,
            user: "alice".into(),
            host: host.into(),
            job_id: "echo-abc".into(),
            trace_id: "4bf92f3577b34da6a3ce929d0e0e4736".into(),
            outcome: "ok".into(),
            body: Some(Body::JobFinished(pb::JobFinished {
                state: pb::JobState::Exited as i32,
                exit_code: Some(0),
                ..Default::default()
            })),
            ..Default::default()
        }
    }

    #[test]
    fn the_subject_names_the_tenant_and_an_agents_host() {
        let payload = event(pb::AuditSource::Agent, "somewhere-else").encode_to_vec();
        let row = row_from_message(
            "mesh.v1.default.audit.web-1.job-finished",
            None,
            7,
            &payload,
        );
        assert_eq!(row.tenant, "default");
        assert_eq!(row.host, "web-1");
        assert_eq!(row.source, "agent");
        assert_eq!(row.kind, "job-finished");
        assert_eq!(row.event_id, "0190000000001234567890abcdef");
        assert_eq!(row.payload, payload);
    }

    #[test]
    fn a_gateway_event_keeps_its_host() {
        let payload = event(pb::AuditSource::Gateway, "web-2").encode_to_vec();
        let row = row_from_message(
            "mesh.v1.default.audit.gateway.job-finished",
            None,
            7,
            &payload,
        );
        assert_eq!(
            (row.source.as_str(), row.host.as_str()),
            ("gateway", "web-2")
        );
    }

    #[test]
    fn garbage_is_kept_under_its_message_id() {
        let row = row_from_message(
            "mesh.v1.default.audit.gateway.x",
            Some("m-1"),
            9,
            b"\xff\xff\xff",
        );
        assert_eq!(row.kind, UNDECODABLE);
        assert_eq!(row.event_id, "m-1");
        let row = row_from_message("mesh.v1.default.audit.gateway.x", None, 9, b"\xff\xff");
        assert_eq!(row.event_id, "stream-9");
    }

    #[test]
    fn json_lines_name_enums_and_times() {
        let payload = event(pb::AuditSource::Agent, "web-1").encode_to_vec();
        let row = row_from_message(
            "mesh.v1.default.audit.web-1.job-finished",
            None,
            1,
            &payload,
        );
        let stored = Stored {
            row,
            prev_hash: crate::chain::GENESIS.into(),
            hash: "h".into(),
        };
        let line = stored.to_json();
        assert_eq!(line["detail"]["state"], "exited");
        assert_eq!(line["time"], "2023-11-14T22:13:20.123Z");
        assert_eq!(line["host"], "web-1");
    }
}
