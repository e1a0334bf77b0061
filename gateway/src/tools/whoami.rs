//! `whoami`: who the caller is to this gateway, what they may reach, and which relays serve them.

use rmcp::model::{JsonObject, Tool, ToolAnnotations};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{Call, parse_args, structured};
use crate::error::ToolError;

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WhoamiParams {}

#[derive(Debug, Serialize, JsonSchema)]
pub struct WhoamiResult {
    pub user: String,
    /// Unix seconds at which the caller's token expires.
    pub token_expires_at: u64,
    /// Guard tier of the caller.
    pub tier: String,
    /// Selector of the hosts the caller may reach.
    pub reachable_hosts: String,
    /// SSH relays serving this user.
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
        ToolAnnotations::new()
            .read_only(true)
            .idempotent(true)
            .open_world(false),
    )
}

pub async fn call(
    call: &Call<'_>,
    args: JsonObject,
) -> Result<rmcp::model::CallToolResult, ToolError> {
    let _: WhoamiParams = parse_args("whoami", args)?;
    let result = WhoamiResult {
        user: call.identity.user.to_string(),
        token_expires_at: call.identity.expires_at,
        // Without a policy file every authenticated user may use every tool on every host.
        tier: "dangerous".to_string(),
        reachable_hosts: "*".to_string(),
        relays: Vec::new(),
        tenant: call.state.mesh.tenant.to_string(),
        gateway_version: env!("CARGO_PKG_VERSION").to_string(),
        trace_id: call.trace.trace_id.clone(),
    };
    let left = result
        .token_expires_at
        .saturating_sub(execmesh_proto::now_ms() / 1000);
    let text = format!(
        "user {} (tenant {}), tier {}, may reach hosts `{}`; token expires in {} min; no SSH relays",
        result.user,
        result.tenant,
        result.tier,
        result.reachable_hosts,
        left / 60
    );
    structured(&result, vec![text])
}
