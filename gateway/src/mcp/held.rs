//! Calls held for approval, shown to clients that can show them: a URL-mode elicitation inside
//! an `input_required` result (multi round-trip requests, protocol 2026-07-28) tells the user
//! what waits for whom and links the approval; the client's retry waits for the decision and
//! continues the call, so the model does not send it again.
//!
//! The retry's `requestState` is only a handle (the approval id): whatever a client echoes, the
//! call still passes the approval gate, which checks the approval is this user's, for these
//! exact arguments, and decided. Clients without URL elicitation, or on an older protocol, get
//! the held result and re-call with `approval_id` as before.

use std::sync::Arc;
use std::time::Duration;

use rmcp::model::{
    CallToolRequestParams, CallToolResponse, ElicitRequest, ElicitRequestParams, InputRequest,
    InputRequests, InputRequiredResult, ProtocolVersion,
};
use rmcp::service::RequestContext;
use rmcp::{ErrorData as McpError, RoleServer};
use serde_json::Value;
use tracing::info;

use super::McpState;
use crate::core::approvals::{self, ApprovalState, Held};
use crate::core::auth::Identity;

/// How long a retry waits for the approval to be decided before it asks the client again.
const DECISION_WAIT: Duration = Duration::from_secs(20);
/// How often a waiting retry reads the approval.
const DECISION_POLL: Duration = Duration::from_millis(200);

/// Whether the client can be shown a held call: it declared URL-mode elicitation, and speaks a
/// protocol with `input_required` results.
pub fn shown_to(context: &RequestContext<RoleServer>) -> bool {
    let url_mode = context
        .client_capabilities()
        .and_then(|caps| caps.elicitation)
        .is_some_and(|elicitation| elicitation.url.is_some());
    let mrtr = context
        .protocol_version()
        .is_some_and(|v| v.as_str() >= ProtocolVersion::V_2026_07_28.as_str());
    url_mode && mrtr
}

/// Runs the call; held, it answers `input_required` with the approval to show. A retry (its
/// `requestState` an approval id) first waits for that approval's decision, then runs the call
/// with it. A user who declined to look gets the held result, to re-call with `approval_id`.
pub async fn call(
    state: &Arc<McpState>,
    mut request: CallToolRequestParams,
    context: &RequestContext<RoleServer>,
    identity: &Identity,
) -> Result<CallToolResponse, McpError> {
    let retry = request.request_state.take();
    let responses = request.input_responses.take().unwrap_or_default();
    let declined = responses
        .values()
        .any(|answer| answer.get("action").and_then(Value::as_str) != Some("accept"));
    if let Some(id) = &retry {
        if !approvals::is_id(id) {
            return Err(McpError::invalid_params(
                "`requestState` is not one this server gave: send the call again without it",
                None,
            ));
        }
        if !declined {
            wait_for_decision(state, id).await;
        }
        let args = request.arguments.get_or_insert_with(Default::default);
        args.insert(approvals::ARG.into(), Value::String(id.clone()));
    }
    let ran = super::run(state, request, context, identity, None).await;
    match ran.held {
        Some(held) if !declined && held.state == ApprovalState::Pending => {
            info!(approval = %held.approval_id, "held call shown to the client");
            Ok(CallToolResponse::InputRequired(input_required(
                state, context, &held,
            )))
        }
        _ => Ok(CallToolResponse::Complete(ran.result)),
    }
}

/// Waits (at most [`DECISION_WAIT`]) until approval `id` is no longer pending, so a retry
/// answers with the call's result as soon as an approver decides.
async fn wait_for_decision(state: &McpState, id: &str) {
    let deadline = tokio::time::Instant::now() + DECISION_WAIT;
    loop {
        match state.approvals.get(id).await {
            Ok(record) if record.state != ApprovalState::Pending => return,
            // Unknown, unreadable: the gate says why when the call runs.
            Err(_) => return,
            Ok(_) => {}
        }
        if tokio::time::Instant::now() >= deadline {
            return;
        }
        tokio::time::sleep(DECISION_POLL).await;
    }
}

/// The `input_required` answer for a held call: one URL-mode elicitation saying what waits,
/// for whom, until when, and linking the approval's page; the approval id as `requestState`.
fn input_required(
    state: &McpState,
    context: &RequestContext<RoleServer>,
    held: &Held,
) -> InputRequiredResult {
    let id = &held.approval_id;
    let policy = state.policy.current();
    let approvers = policy
        .approvers()
        .map(|a| a.describe())
        .unwrap_or_else(|| "nobody: the policy names no approvers".to_string());
    let minutes = held
        .expires_at_ms
        .saturating_sub(execmesh_proto::now_ms())
        .div_ceil(60_000);
    let message = format!(
        "{summary} waits for approval {id} by an approver other than you ({approvers}). They \
         approve it at the link, or with `execmeshctl approve {id}`; it expires in {minutes} \
         min. The call continues by itself once it is approved.",
        summary = held.summary,
    );
    let params = ElicitRequestParams::UrlElicitationParams {
        meta: None,
        message,
        url: approval_url(state, context, id),
        elicitation_id: id.clone(),
    };
    let mut requests = InputRequests::new();
    requests.insert(
        format!("approval-{id}"),
        InputRequest::Elicitation(ElicitRequest::new(params)),
    );
    InputRequiredResult::new(Some(requests), Some(id.clone()))
}

/// The approval's page: under the gateway's `public_url`, else the origin the request came to.
fn approval_url(state: &McpState, context: &RequestContext<RoleServer>, id: &str) -> String {
    let base = match &state.config.public_url {
        Some(url) => url.trim_end_matches('/').to_string(),
        None => {
            let host = context
                .extensions
                .get::<http::request::Parts>()
                .and_then(|p| p.headers.get(http::header::HOST))
                .and_then(|h| h.to_str().ok())
                .unwrap_or("127.0.0.1:8420");
            let scheme = if state.config.tls.is_some() {
                "https"
            } else {
                "http"
            };
            format!("{scheme}://{host}")
        }
    };
    format!("{base}/console/approvals/{id}")
}
