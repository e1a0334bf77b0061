//! `whoami`: who the caller is to this gateway, what they may reach, and which relays serve them.

use rmcp::model::Tool;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{Call, structured};
use crate::core::error::ToolError;
use crate::core::hosts::HostState;

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WhoamiParams {}

#[derive(Debug, Serialize, JsonSchema)]
pub struct WhoamiResult {
    pub user: String,
    /// Unix seconds at which the caller's token expires.
    pub token_expires_at: u64,
    /// Guard tier of the caller: readonly, standard or dangerous.
    pub tier: String,
    /// The caller's groups in the policy.
    pub groups: Vec<String>,
    /// Selectors of the hosts the caller may reach (`*`: every host; empty: none).
    pub reachable_hosts: Vec<String>,
    /// The unix account the policy maps the caller to, if any (the host's agent decides).
    pub run_as: Option<String>,
    /// Whether the policy names the caller an operator, who may see, follow and kill other
    /// users' jobs (every such use is audited).
    pub operator: bool,
    /// Version (sha256) of the policy in force, or `development` without a policy file.
    pub policy_version: String,
    /// The SSH targets this user's relays registered, with their state: `box-1: online`,
    /// `db-2: offline (auth failed: …)`.
    pub relays: Vec<String>,
    pub tenant: String,
    pub gateway_version: String,
    pub trace_id: String,
}

pub fn definition() -> Tool {
    super::tool::<WhoamiParams, WhoamiResult>(
        "whoami",
        "Who am I",
        "Show the caller's identity, token expiry, guard tier, reachable hosts and relay status.",
        super::reads(false),
    )
}

pub async fn call(
    call: &Call<'_>,
    _params: WhoamiParams,
) -> Result<rmcp::model::CallToolResult, ToolError> {
    let identity = call.identity;
    let policy = call.state.policy.current();
    let result = WhoamiResult {
        user: identity.user.to_string(),
        token_expires_at: identity.expires_at,
        tier: identity.tier.to_string(),
        groups: identity.groups.clone(),
        reachable_hosts: identity.reach.clone(),
        run_as: identity.run_as.clone(),
        operator: policy.is_operator(identity.user.as_str()),
        policy_version: policy.version().to_string(),
        relays: relay_targets(call, identity.user.as_str()).await,
        tenant: call.state.mesh.tenant.to_string(),
        gateway_version: env!("CARGO_PKG_VERSION").to_string(),
        trace_id: call.trace.trace_id.clone(),
    };
    let left = result
        .token_expires_at
        .saturating_sub(execmesh_proto::now_ms() / 1000);
    let reach = if result.reachable_hosts.is_empty() {
        "no hosts".to_string()
    } else {
        format!("hosts `{}`", result.reachable_hosts.join("`, `"))
    };
    let groups = if result.groups.is_empty() {
        String::new()
    } else {
        format!(", groups {}", result.groups.join(", "))
    };
    let operator = if result.operator {
        ", operator (may follow other users' jobs)"
    } else {
        ""
    };
    let relays = if result.relays.is_empty() {
        "no SSH relays".to_string()
    } else {
        format!("SSH relay targets: {}", result.relays.join(", "))
    };
    let text = format!(
        "user {} (tenant {}), tier {}{groups}{operator}, may reach {reach}; token expires in {} min; {relays}",
        result.user,
        result.tenant,
        result.tier,
        left / 60
    );
    structured(&result, vec![text])
}

/// The targets `user`'s relays registered (their fact packs name the user), with their state.
async fn relay_targets(call: &Call<'_>, user: &str) -> Vec<String> {
    let Ok(hosts) = call.state.mesh.hosts().await else {
        return Vec::new();
    };
    let now = execmesh_proto::now_ms();
    hosts
        .values()
        .filter_map(|r| {
            if r.relay_user() != Some(user) {
                return None;
            }
            let state = HostState::of_record(r, now);
            Some(match r.relay_offline_reason() {
                None => format!("{}: {state}", r.host),
                Some(why) => format!("{}: {state} ({why})", r.host),
            })
        })
        .collect()
}
