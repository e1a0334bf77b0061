//! AuditService: the audit trail, asked of the audit-sink over NATS (`core::audit_query`): one
//! page, an export that pages through everything, and a chain check.

use tonic::{Request, Response, Status};

use execmesh_proto::pb;

use super::{Admin, AdminStream};
use crate::core::audit_query::{self, AuditQueryError};

/// Records per page an export asks for when the request names no limit.
const EXPORT_PAGE: u32 = 500;

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
                audit_query::verify(&self.admin.state.mesh, &verify)
                    .await
                    .map_err(|e| status(&e))
            })
            .await
    }
}

/// One page of the audit trail, or the sink's refusal as a status.
async fn query_page(admin: &Admin, query: &pb::AuditQuery) -> Result<pb::AuditPage, Status> {
    let state = &admin.state;
    audit_query::page(&state.mesh, query, state.config.request_timeout)
        .await
        .map_err(|e| status(&e))
}

/// An audit-sink failure as the admin API answers it.
fn status(e: &AuditQueryError) -> Status {
    match e {
        AuditQueryError::Unavailable(m) => Status::unavailable(m.clone()),
        AuditQueryError::TimedOut(m) => Status::deadline_exceeded(m.clone()),
        AuditQueryError::Invalid(m) => Status::invalid_argument(m.clone()),
        AuditQueryError::Internal(m) => Status::internal(m.clone()),
    }
}
