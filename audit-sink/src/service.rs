//! The NATS service `execmesh-audit`: audit queries and chain checks by request/reply, for the gateway, the admin API and operators.
//!
//! Endpoints (protobuf, see `audit.proto`), for every tenant, each request on its own task:
//! `mesh.v1.<tenant>.svc.audit.query` (AuditQuery → AuditQueryReply) and
//! `mesh.v1.<tenant>.svc.audit.verify` (AuditVerifyRequest → AuditVerifyReply). Only the
//! subject's tenant is ever queried. Sinks share a queue group, so any one of them answers.
//! It is a NATS micro service, so `nats micro info execmesh-audit` finds it.

use std::sync::Arc;

use async_nats::service::{self, ServiceExt};
use bytes::Bytes;
use execmesh_proto::{pb, subject};
use futures::StreamExt;
use prost::Message as _;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, info_span, warn};

use crate::SinkError;
use crate::store::{Filter, Store};

/// Records in a page when the query names no limit.
const DEFAULT_LIMIT: usize = 100;
/// Reply room kept under the server's max payload for the envelope.
const REPLY_HEADROOM: usize = 16 * 1024;

/// The running service.
pub struct Service {
    service: service::Service,
    query: service::endpoint::Endpoint,
    verify: service::endpoint::Endpoint,
    client: async_nats::Client,
    store: Arc<Store>,
    /// Cap on records per page.
    max_limit: usize,
}

/// Why a query was not run.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum QueryError {
    #[error("the subject `{0}` names no valid tenant")]
    Tenant(String),
    #[error("bad cursor `{0}`: pass the next_cursor of the previous page unchanged")]
    Cursor(String),
    #[error("until_ms ({until}) is not after since_ms ({since})")]
    Range { since: u64, until: u64 },
}

// === impl Service ===

impl Service {
    /// Subscribes the endpoints.
    pub async fn start(
        client: &async_nats::Client,
        store: Arc<Store>,
        max_limit: usize,
    ) -> Result<Service, SinkError> {
        let err = |e: async_nats::Error| SinkError::Service(e.to_string());
        let service = client
            .service_builder()
            .description("execmesh audit queries and chain checks")
            .queue_group("execmesh-audit")
            .start("execmesh-audit", env!("CARGO_PKG_VERSION"))
            .await
            .map_err(err)?;
        let query = service
            .endpoint_builder()
            .name("query")
            .add(subject::AUDIT_QUERY_ALL_TENANTS)
            .await
            .map_err(err)?;
        let verify = service
            .endpoint_builder()
            .name("verify")
            .add(subject::AUDIT_VERIFY_ALL_TENANTS)
            .await
            .map_err(err)?;
        Ok(Service {
            service,
            query,
            verify,
            client: client.clone(),
            store,
            max_limit,
        })
    }

    /// Answers requests until `shutdown`, then waits for the answers in flight.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let tasks = TaskTracker::new();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                Some(request) = self.query.next() => {
                    let store = Arc::clone(&self.store);
                    let max_payload = self.client.server_info().max_payload;
                    let max_limit = self.max_limit;
                    let span = info_span!("audit_query", subject = %request.message.subject);
                    tasks.spawn(async move {
                        let reply = query(&store, &request.message, max_limit, max_payload).await;
                        respond(&request, reply.encode_to_vec()).await;
                    }.instrument(span));
                }
                Some(request) = self.verify.next() => {
                    let store = Arc::clone(&self.store);
                    tasks.spawn(async move {
                        let reply = verify(&store).await;
                        respond(&request, reply.encode_to_vec()).await;
                    }.instrument(info_span!("audit_verify")));
                }
                else => break,
            }
        }
        tasks.close();
        tasks.wait().await;
        if let Err(e) = self.service.stop().await {
            debug!(error = %e, "stopping the audit service");
        }
    }
}

async fn respond(request: &service::Request, payload: Vec<u8>) {
    if let Err(e) = request.respond(Ok(Bytes::from(payload))).await {
        warn!(error = %e, "answering an audit request failed");
    }
}

/// Answers one query: the page, cut to fit the server's max payload.
async fn query(
    store: &Store,
    msg: &async_nats::Message,
    max_limit: usize,
    max_payload: usize,
) -> pb::AuditQueryReply {
    let error = |message: String| pb::AuditQueryReply {
        body: Some(pb::audit_query_reply::Body::Error(message)),
    };
    let request = match pb::AuditQuery::decode(msg.payload.as_ref()) {
        Ok(request) => request,
        Err(e) => return error(format!("malformed AuditQuery: {e}")),
    };
    let filter = match filter(msg.subject.as_str(), request, max_limit) {
        Ok(filter) => filter,
        Err(e) => return error(e.to_string()),
    };
    let page = match store.query(&filter).await {
        Ok(page) => page,
        Err(e) => {
            warn!(error = %e, "audit query failed");
            return error(format!("the audit store failed: {e}"));
        }
    };
    let budget = max_payload.saturating_sub(REPLY_HEADROOM);
    let mut out = pb::AuditPage {
        records: Vec::with_capacity(page.records.len()),
        next_cursor: page.next_cursor.clone().unwrap_or_default(),
        head_seq: page.head_seq,
    };
    let mut used = 0;
    for stored in &page.records {
        let record = stored.to_pb();
        let len = record.encoded_len() + 8;
        if used + len > budget && !out.records.is_empty() {
            // The rest comes with the next page.
            out.next_cursor = out
                .records
                .last()
                .map(|r| r.seq.to_string())
                .unwrap_or_default();
            break;
        }
        used += len;
        out.records.push(record);
    }
    pb::AuditQueryReply {
        body: Some(pb::audit_query_reply::Body::Page(out)),
    }
}

/// The store filter for a query received on `subject_name`: the subject's tenant, the query's
/// filters (empty strings and zero times mean "any"), its cursor and a capped limit.
pub fn filter(
    subject_name: &str,
    q: pb::AuditQuery,
    max_limit: usize,
) -> Result<Filter, QueryError> {
    let tenant = subject::tenant_of(subject_name)
        .map_err(|_| QueryError::Tenant(subject_name.to_string()))?;
    let text = |s: String| (!s.is_empty()).then_some(s);
    let time = |t: u64| (t > 0).then_some(t);
    if q.since_ms > 0 && q.until_ms > 0 && q.until_ms <= q.since_ms {
        return Err(QueryError::Range {
            since: q.since_ms,
            until: q.until_ms,
        });
    }
    let after_seq = match q.cursor.as_str() {
        "" => None,
        cursor => Some(
            cursor
                .parse::<u64>()
                .map_err(|_| QueryError::Cursor(cursor.chars().take(80).collect()))?,
        ),
    };
    let limit = match q.limit {
        0 => DEFAULT_LIMIT,
        n => n as usize,
    }
    .min(max_limit);
    Ok(Filter {
        tenant: Some(tenant.to_string()),
        since_ms: time(q.since_ms),
        until_ms: time(q.until_ms),
        user: text(q.user),
        host: text(q.host),
        job_id: text(q.job_id),
        tool: text(q.tool),
        trace_id: text(q.trace_id),
        outcome: text(q.outcome),
        kind: text(q.kind),
        after_seq,
        limit,
        newest_first: q.newest_first,
    })
}

async fn verify(store: &Store) -> pb::AuditVerifyReply {
    match store.verify().await {
        Ok(report) => pb::AuditVerifyReply {
            ok: report.broken.is_none(),
            records: report.records,
            head_seq: report.head_seq,
            head_hash: report.head_hash,
            first_bad_seq: report.broken.as_ref().map_or(0, |b| b.seq),
            problem: report.broken.map(|b| b.problem).unwrap_or_default(),
            error: String::new(),
            unsigned_events: report.unsigned,
            unsigned_event_ids: report.unsigned_ids,
        },
        Err(e) => pb::AuditVerifyReply {
            error: format!("the audit store failed: {e}"),
            ..Default::default()
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_subject_decides_the_tenant_and_limits_are_capped() {
        let q = pb::AuditQuery {
            user: "alice".into(),
            limit: 5000,
            cursor: "42".into(),
            ..Default::default()
        };
        let f = filter("mesh.v1.acme.svc.audit.query", q, 1000).unwrap();
        assert_eq!(f.tenant.as_deref(), Some("acme"));
        assert_eq!(f.user.as_deref(), Some("alice"));
        assert_eq!(f.host, None);
        assert_eq!(f.limit, 1000);
        assert_eq!(f.after_seq, Some(42));
        let f = filter(
            "mesh.v1.acme.svc.audit.query",
            pb::AuditQuery::default(),
            1000,
        )
        .unwrap();
        assert_eq!(f.limit, DEFAULT_LIMIT);
    }

    #[test]
    fn bad_cursors_and_ranges_are_refused() {
        let q = pb::AuditQuery {
            cursor: "x".into(),
            ..Default::default()
        };
        assert!(matches!(
            filter("mesh.v1.acme.svc.audit.query", q, 10),
            Err(QueryError::Cursor(_))
        ));
        let q = pb::AuditQuery {
            since_ms: 10,
            until_ms: 10,
            ..Default::default()
        };
        assert!(matches!(
            filter("mesh.v1.acme.svc.audit.query", q, 10),
            Err(QueryError::Range { .. })
        ));
    }
}
