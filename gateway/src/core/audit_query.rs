//! Asking the audit-sink about the audit trail over NATS (`svc.audit.query`,
//! `svc.audit.verify`): one page of records, and the hash-chain check. Every face that shows the
//! trail (the admin API, the console) asks through here.

use std::time::Duration;

use bytes::Bytes;
use prost::Message as _;
use tracing::warn;

use execmesh_proto::{pb, subject};

use crate::core::mesh::Mesh;

/// How long a chain check may take: it reads the whole store.
pub const VERIFY_TIMEOUT: Duration = Duration::from_secs(300);

/// Why the audit-sink could not answer.
#[derive(Debug, thiserror::Error)]
pub enum AuditQueryError {
    /// No sink runs, the store failed, or the request failed on the way: try again.
    #[error("{0}")]
    Unavailable(String),
    /// The sink did not answer in time.
    #[error("{0}")]
    TimedOut(String),
    /// The sink refused the query (a bad filter or cursor), in its words.
    #[error("{0}")]
    Invalid(String),
    /// The sink's reply could not be read.
    #[error("{0}")]
    Internal(String),
}

/// One page of the audit trail that `query` selects.
pub async fn page(
    mesh: &Mesh,
    query: &pb::AuditQuery,
    timeout: Duration,
) -> Result<pb::AuditPage, AuditQueryError> {
    let payload = ask(
        mesh,
        subject::audit_query(&mesh.tenant),
        query.encode_to_vec().into(),
        timeout,
    )
    .await?;
    let reply = pb::AuditQueryReply::decode(payload).map_err(|e| {
        AuditQueryError::Internal(format!("the audit-sink's reply is malformed: {e}"))
    })?;
    match reply.body {
        Some(pb::audit_query_reply::Body::Page(page)) => Ok(page),
        // The sink words its refusals; a store failure is the sink's, anything else the query's.
        Some(pb::audit_query_reply::Body::Error(e)) if e.starts_with("the audit store failed") => {
            Err(AuditQueryError::Unavailable(e))
        }
        Some(pb::audit_query_reply::Body::Error(e)) => Err(AuditQueryError::Invalid(e)),
        None => Err(AuditQueryError::Internal(
            "the audit-sink sent an empty reply".to_string(),
        )),
    }
}

/// The audit-sink's check of the hash chain.
pub async fn verify(
    mesh: &Mesh,
    request: &pb::AuditVerifyRequest,
) -> Result<pb::AuditVerifyReply, AuditQueryError> {
    let payload = ask(
        mesh,
        subject::audit_verify(&mesh.tenant),
        request.encode_to_vec().into(),
        VERIFY_TIMEOUT,
    )
    .await?;
    let reply = pb::AuditVerifyReply::decode(payload).map_err(|e| {
        AuditQueryError::Internal(format!("the audit-sink's verify reply is malformed: {e}"))
    })?;
    if !reply.error.is_empty() {
        return Err(AuditQueryError::Unavailable(format!(
            "the audit-sink could not check the chain: {}",
            reply.error
        )));
    }
    Ok(reply)
}

/// A request to the audit-sink's service on `subject`.
async fn ask(
    mesh: &Mesh,
    subject: String,
    payload: Bytes,
    timeout: Duration,
) -> Result<Bytes, AuditQueryError> {
    let request = async_nats::Request::new()
        .payload(payload)
        .timeout(Some(timeout));
    match mesh.client.send_request(subject.clone(), request).await {
        Ok(message) => Ok(message.payload),
        Err(e) => match e.kind() {
            async_nats::RequestErrorKind::NoResponders => {
                Err(AuditQueryError::Unavailable(format!(
                    "no audit-sink answers on {subject}: start execmesh-audit-sink (it serves \
                     the audit queries) and try again"
                )))
            }
            async_nats::RequestErrorKind::TimedOut => Err(AuditQueryError::TimedOut(format!(
                "the audit-sink did not answer on {subject} within {timeout:?}; it may be busy, \
                 try again or narrow the query"
            ))),
            _ => {
                warn!(error = %e, %subject, "audit request failed");
                Err(AuditQueryError::Unavailable(format!(
                    "the audit request on {subject} failed ({e}); try again shortly"
                )))
            }
        },
    }
}
