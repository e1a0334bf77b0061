//! The reach check of single-host calls (`bash` with `host`, `file`, `job` kill): a host outside
//! the hosts the policy lets the caller reach is refused as `denied`, naming the host, before
//! anything is sent to it. Fan-outs check reach while resolving their targets.

use execmesh_proto::Token;

use super::Call;
use crate::core::error::ToolError;
use crate::core::fanout::Reach;
use crate::core::hosts::HostState;
use crate::core::selector::Candidate;

/// The caller's reach, from the policy (every host without one).
pub fn of(call: &Call<'_>) -> Reach {
    Reach::of(&call.identity.reach, &call.state.config.groups)
}

/// `Ok` when the caller may reach `host`. Costs one KV read unless the caller reaches `*`.
pub async fn check(call: &Call<'_>, host: &Token) -> Result<(), ToolError> {
    if call.identity.reach.iter().any(|s| s.trim() == "*") {
        return Ok(());
    }
    check_within(call, host, &of(call)).await
}

/// `Ok` when `reach` (the caller's, perhaps narrowed by a runbook) allows `host`.
pub async fn check_within(call: &Call<'_>, host: &Token, reach: &Reach) -> Result<(), ToolError> {
    if reach.is_everything() {
        return Ok(());
    }
    let record = call.state.mesh.host(host).await?;
    let now = execmesh_proto::now_ms();
    let candidate = Candidate {
        host: host.as_str(),
        facts: record.as_ref().and_then(|r| r.facts.as_ref()),
        state: HostState::of(record.as_ref().and_then(|r| r.presence.as_ref()), now),
    };
    if reach.allows(&candidate) {
        Ok(())
    } else {
        Err(ToolError::Denied {
            host: host.to_string(),
            reach: reach.text.clone(),
        })
    }
}
