//! RunbooksService: the runbooks the policy defines, as the caller may run them (operators see
//! all), with their hashes for hosts that pin runbooks.

use tonic::{Request, Response, Status};

use execmesh_proto::pb;

use super::Admin;
use crate::core::runbooks::Runbook;

/// The RunbooksService implementation.
pub struct RunbooksApi {
    admin: Admin,
}

impl RunbooksApi {
    pub fn new(admin: Admin) -> Self {
        Self { admin }
    }
}

#[tonic::async_trait]
impl pb::runbooks_service_server::RunbooksService for RunbooksApi {
    async fn list(
        &self,
        request: Request<pb::ListRunbooksRequest>,
    ) -> Result<Response<pb::ListRunbooksResponse>, Status> {
        self.admin
            .unary("RunbooksService.List", request, |caller, _| async move {
                let policy = self.admin.state.policy.current();
                let everything = policy.is_operator(caller.user.as_str());
                let runbooks = policy
                    .runbooks_for(caller.tier)
                    .chain(
                        policy
                            .runbooks()
                            .filter(|rb| everything && rb.tier > caller.tier),
                    )
                    .map(runbook)
                    .collect::<Vec<_>>();
                let mut runbooks = runbooks;
                runbooks.sort_by(|a, b| a.name.cmp(&b.name));
                Ok(pb::ListRunbooksResponse {
                    runbooks,
                    policy_version: policy.version().to_string(),
                })
            })
            .await
    }
}

fn runbook(rb: &Runbook) -> pb::Runbook {
    pb::Runbook {
        name: rb.name.to_string(),
        description: rb.description.clone(),
        hash: rb.hash.clone(),
        tier: rb.tier.to_wire() as i32,
        hosts: rb.hosts.clone().unwrap_or_default(),
        approval: rb.approval,
        timeout_ms: rb.timeout.map_or(0, |t| t.as_millis() as u64),
        command: rb.command_text(),
        params_schema: rb.params_schema().to_string(),
        source: rb.source.clone(),
    }
}
