//! ApprovalsService: the gRPC face of the approvals store (`crate::core::approvals`): list, get,
//! approve and deny as the person the admin token names (checked against the policy's
//! `[approvers]`, the held call's tier and hosts, at decision time), and a watch of every change.

use futures::StreamExt;
use tonic::{Request, Response, Status};

use execmesh_proto::pb;

use super::{Admin, AdminStream, error};
use crate::core::approvals::{ApprovalRecord, ApprovalState, Authority};
use crate::core::auth::Identity;

/// Approvals a List returns when the request names no limit.
const DEFAULT_LIMIT: usize = 100;

/// The ApprovalsService implementation.
pub struct ApprovalsApi {
    admin: Admin,
}

impl ApprovalsApi {
    pub fn new(admin: Admin) -> Self {
        Self { admin }
    }

    /// Decides approval `id` as `caller`, if the policy lets them: `deny` `None` approves it,
    /// `Some(reason)` denies it. Returns the record as it now stands.
    async fn decide(
        &self,
        caller: &Identity,
        id: &str,
        deny: Option<&str>,
    ) -> Result<pb::Approval, Status> {
        let state = &self.admin.state;
        let policy = state.policy.current();
        let authority = Authority {
            policy: &policy,
            groups: &state.config.groups,
            mesh: &state.mesh,
        };
        let (id, approvals) = (id.trim(), &state.approvals);
        let (decided, decision) = match deny {
            None => (approvals.approve(id, caller, &authority).await, "approved"),
            Some(reason) => (
                approvals.deny(id, caller, &authority, reason).await,
                "denied",
            ),
        };
        let record = decided.map_err(error::approval)?;
        tracing::info!(approval = %record.id, requester = %record.user, "{decision}");
        Ok(approval(&record))
    }
}

#[tonic::async_trait]
impl pb::approvals_service_server::ApprovalsService for ApprovalsApi {
    async fn list(
        &self,
        request: Request<pb::ListApprovalsRequest>,
    ) -> Result<Response<pb::ListApprovalsResponse>, Status> {
        self.admin
            .unary("ApprovalsService.List", request, |_, req| async move {
                let wanted = state_filter(req.state)?;
                let limit = match req.limit {
                    0 => DEFAULT_LIMIT,
                    n => n as usize,
                };
                let approvals = self
                    .admin
                    .state
                    .approvals
                    .list()
                    .await
                    .map_err(error::approval)?
                    .iter()
                    .map(approval)
                    .filter(|a| wanted.is_none_or(|s| a.state() == s))
                    .take(limit)
                    .collect();
                Ok(pb::ListApprovalsResponse { approvals })
            })
            .await
    }

    async fn get(
        &self,
        request: Request<pb::GetApprovalRequest>,
    ) -> Result<Response<pb::GetApprovalResponse>, Status> {
        self.admin
            .unary("ApprovalsService.Get", request, |_, req| async move {
                let record = self
                    .admin
                    .state
                    .approvals
                    .get(req.id.trim())
                    .await
                    .map_err(error::approval)?;
                Ok(pb::GetApprovalResponse {
                    approval: Some(approval(&record)),
                })
            })
            .await
    }

    async fn approve(
        &self,
        request: Request<pb::ApproveRequest>,
    ) -> Result<Response<pb::ApproveResponse>, Status> {
        self.admin
            .unary(
                "ApprovalsService.Approve",
                request,
                |caller, req| async move {
                    Ok(pb::ApproveResponse {
                        approval: Some(self.decide(&caller, &req.id, None).await?),
                    })
                },
            )
            .await
    }

    async fn deny(
        &self,
        request: Request<pb::DenyRequest>,
    ) -> Result<Response<pb::DenyResponse>, Status> {
        self.admin
            .unary("ApprovalsService.Deny", request, |caller, req| async move {
                let approval = self.decide(&caller, &req.id, Some(&req.reason)).await?;
                Ok(pb::DenyResponse {
                    approval: Some(approval),
                })
            })
            .await
    }

    type WatchStream = AdminStream<pb::ApprovalEvent>;

    async fn watch(
        &self,
        request: Request<pb::WatchApprovalsRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        self.admin
            .unary("ApprovalsService.Watch", request, |_, req| async move {
                let wanted = state_filter(req.state)?;
                let approvals = &self.admin.state.approvals;
                // The watch opens before the listing is read, so no change falls between them
                // (a change during the listing may be reported twice, never missed).
                let mut changes = approvals.watch().await.map_err(error::approval)?;
                let initial = if req.include_initial {
                    approvals.list().await.map_err(error::approval)?
                } else {
                    Vec::new()
                };
                let matches = move |a: &pb::Approval| wanted.is_none_or(|s| a.state() == s);
                Ok(self.admin.stream(move |tx| async move {
                    for record in &initial {
                        let approval = approval(record);
                        if matches(&approval) && tx.send(Ok(event(approval, true))).await.is_err() {
                            return;
                        }
                    }
                    while let Some(change) = changes.next().await {
                        let message = match change {
                            Ok(record) => {
                                let approval = approval(&record);
                                if !matches(&approval) {
                                    continue;
                                }
                                Ok(event(approval, false))
                            }
                            Err(e) => Err(error::approval(e)),
                        };
                        let failed = message.is_err();
                        if tx.send(message).await.is_err() || failed {
                            return;
                        }
                    }
                }))
            })
            .await
    }
}

fn event(approval: pb::Approval, initial: bool) -> pb::ApprovalEvent {
    pb::ApprovalEvent {
        approval: Some(approval),
        time_ms: execmesh_proto::now_ms(),
        initial,
    }
}

/// The state filter of a request: `None` for every state.
fn state_filter(value: i32) -> Result<Option<pb::ApprovalState>, Status> {
    match pb::ApprovalState::try_from(value) {
        Ok(pb::ApprovalState::Unspecified) => Ok(None),
        Ok(state) => Ok(Some(state)),
        Err(_) => Err(Status::invalid_argument(format!(
            "unknown approval state {value}"
        ))),
    }
}

/// A stored approval as the admin API shows it.
pub fn approval(record: &ApprovalRecord) -> pb::Approval {
    pb::Approval {
        id: record.id.clone(),
        state: match record.state {
            ApprovalState::Pending => pb::ApprovalState::Pending,
            ApprovalState::Approved => pb::ApprovalState::Approved,
            ApprovalState::Denied => pb::ApprovalState::Denied,
            ApprovalState::Used => pb::ApprovalState::Used,
            ApprovalState::Expired => pb::ApprovalState::Expired,
        } as i32,
        tool: record.tool.clone(),
        action: record.action.clone().unwrap_or_default(),
        hosts: record.hosts.clone(),
        user: record.user.clone(),
        run_as: record.run_as.clone().unwrap_or_default(),
        summary: record.summary.clone(),
        arguments_json: record.arguments.to_string(),
        request_hash: record.request_hash.clone(),
        policy_version: record.policy_version.clone(),
        requested_at_ms: record.requested_at_ms,
        expires_at_ms: record.expires_at_ms,
        decided_by: record.decided_by.clone().unwrap_or_default(),
        decided_at_ms: record.decided_at_ms.unwrap_or(0),
        reason: record.reason.clone().unwrap_or_default(),
        used_at_ms: record.used_at_ms.unwrap_or(0),
        rules: record.rules.clone(),
    }
}
