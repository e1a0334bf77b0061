//! AuditService: the audit trail, asked of the audit-sink over NATS (`svc.audit.query`,
//! `svc.audit.verify`): one page, an export that pages through everything, and a chain check.

use std::time::Duration;

use bytes::Bytes;
use prost::Message as _;
use tonic::{Request, Response, Status};
use tracing::warn;

use execmesh_proto::{pb, subject};

use super::{Admin, AdminStream};

/// Records per page an export asks for when the request names no limit.
const EXPORT_PAGE: u32 = 500;
/// How long a chain check may take: it reads the whole store.
const VERIFY_TIMEOUT: Duration = Duration::from_secs(300);

/// The AuditService implementation.
pub struct AuditApi {
    admin: Admin,
}

impl AuditApi {
    pub fn new(admin: Admin) -> Self {
        Self { admin }
    }
}

#[tonic::async_trait]
impl pb::audit_service_server::AuditService for AuditApi {
    async fn query(
        &self,
        request: Request<pb::AuditQuery>,
    ) -> Result<Response<pb::AuditPage>, Status> {
        self.admin
            .unary("AuditService.Query", request, |_, query| async move {
                query_page(&self.admin, &query).await
            })
            .await
    }

    type ExportStream = AdminStream<pb::AuditRecord>;

    async fn export(
        &self,
        request: Request<pb::AuditQuery>,
    ) -> Result<Response<Self::ExportStream>, Status> {
        self.admin
            .unary("AuditService.Export", request, |_, mut query| async move {
                if query.limit == 0 {
                    query.limit = EXPORT_PAGE;
                }
                // The first page is read before the stream starts, so a bad filter or a sink
                // that is down fails the call itself rather than its first message.
                let first = query_page(&self.admin, &query).await?;
                let admin = self.admin.clone();
                Ok(self.admin.stream(move |tx| async move {
                    let mut page = first;
                    loop {
                        // A page without records cannot advance the cursor: stop rather than
                        // ask for the same page forever.
                        let stuck = page.records.is_empty();
                        for record in page.records {
                            if tx.send(Ok(record)).await.is_err() {
                                return;
                            }
                        }
                        if page.next_cursor.is_empty() || stuck {
                            return;
                        }
                        query.cursor = page.next_cursor;
                        page = match query_page(&admin, &query).await {
                            Ok(page) => page,
                            Err(status) => {
                                let _ = tx.send(Err(status)).await;
                                return;
                            }
                        };
                    }
                }))
            })
            .await
    }

    async fn verify(
        &self,
        request: Request<pb::AuditVerifyRequest>,
    ) -> Result<Response<pb::AuditVerifyReply>, Status> {
        self.admin
            .unary("AuditService.Verify", request, |_, verify| async move {
                let state = &self.admin.state;
                let payload = ask(
                    &self.admin,
                    subject::audit_verify(&state.mesh.tenant),
                    verify.encode_to_vec().into(),
                    VERIFY_TIMEOUT,
                )
                .await?;
                let reply = pb::AuditVerifyReply::decode(payload).map_err(|e| {
                    Status::internal(format!("the audit-sink's verify reply is malformed: {e}"))
                })?;
                if !reply.error.is_empty() {
                    return Err(Status::unavailable(format!(
                        "the audit-sink could not check the chain: {}",
                        reply.error
                    )));
                }
                Ok(reply)
            })
            .await
    }
}

/// One page of the audit trail, or the sink's refusal as a status.
async fn query_page(admin: &Admin, query: &pb::AuditQuery) -> Result<pb::AuditPage, Status> {
    let state = &admin.state;
    let payload = ask(
        admin,
        subject::audit_query(&state.mesh.tenant),
        query.encode_to_vec().into(),
        state.config.request_timeout,
    )
    .await?;
    let reply = pb::AuditQueryReply::decode(payload)
        .map_err(|e| Status::internal(format!("the audit-sink's reply is malformed: {e}")))?;
    match reply.body {
        Some(pb::audit_query_reply::Body::Page(page)) => Ok(page),
        // The sink words its refusals; a store failure is the sink's, anything else the query's.
        Some(pb::audit_query_reply::Body::Error(e)) if e.starts_with("the audit store failed") => {
            Err(Status::unavailable(e))
        }
        Some(pb::audit_query_reply::Body::Error(e)) => Err(Status::invalid_argument(e)),
        None => Err(Status::internal("the audit-sink sent an empty reply")),
    }
}

/// A request to the audit-sink's service on `subject`.
async fn ask(
    admin: &Admin,
    subject: String,
    payload: Bytes,
    timeout: Duration,
) -> Result<Bytes, Status> {
    let client = &admin.state.mesh.client;
    let request = async_nats::Request::new()
        .payload(payload)
        .timeout(Some(timeout));
    match client.send_request(subject.clone(), request).await {
        Ok(message) => Ok(message.payload),
        Err(e) => match e.kind() {
            async_nats::RequestErrorKind::NoResponders => Err(Status::unavailable(format!(
                "no audit-sink answers on {subject}: start execmesh-audit-sink (it serves the \
                 audit queries) and try again"
            ))),
            async_nats::RequestErrorKind::TimedOut => Err(Status::deadline_exceeded(format!(
                "the audit-sink did not answer on {subject} within {timeout:?}; it may be busy, \
                 try again or narrow the query"
            ))),
            _ => {
                warn!(error = %e, %subject, "audit request failed");
                Err(Status::unavailable(format!(
                    "the audit request on {subject} failed ({e}); try again shortly"
                )))
            }
        },
    }
}
