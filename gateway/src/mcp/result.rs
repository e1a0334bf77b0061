//! The MCP boundary of a tool call's outcome: a [`ToolError`] becomes the result a model can
//! act on (an `isError` result naming its code, or the normal result of a call held for
//! approval), every tool's `outputSchema` declares each of those shapes, and a finished result
//! becomes what the audit trail records of it.

use std::sync::Arc;

use rmcp::model::{CallToolResult, ContentBlock, JsonObject};
use schemars::JsonSchema;
use serde::Serialize;
use serde_json::{Map, Value, json};

use crate::core::approvals::Held;
use crate::core::audit::Answer;
use crate::core::error::ToolError;

impl From<ToolError> for CallToolResult {
    /// The `isError` result the client sees; a held call is a normal result with the approval id.
    fn from(e: ToolError) -> Self {
        if let ToolError::ApprovalRequired { text, details, .. } = e {
            let mut result = CallToolResult::success(vec![ContentBlock::text(text)]);
            result.structured_content = serde_json::to_value(*details).ok();
            return result;
        }
        refusal(e.reported_code(), e.to_string())
    }
}

/// The `isError` result of a call that could not do what was asked, with its `code` and
/// `message` as the structured [`Refusal`] every tool's schema admits.
pub fn refusal(code: String, message: String) -> CallToolResult {
    let mut result = CallToolResult::error(vec![ContentBlock::text(message.clone())]);
    let refusal = Refusal {
        error: RefusalReason { code, message },
    };
    result.structured_content = serde_json::to_value(refusal).ok();
    result
}

/// The `structuredContent` of a refused call (`isError: true`), whatever the tool.
#[derive(Debug, Serialize, JsonSchema)]
struct Refusal {
    error: RefusalReason,
}

/// Why a call was refused.
#[derive(Debug, Serialize, JsonSchema)]
struct RefusalReason {
    /// What went wrong, for programs: invalid_arguments, unknown_host, offline, timeout,
    /// unknown_job, bad_cursor, unavailable, internal, tier, denied, not_operator,
    /// approval_unusable, interrupted (a task whose gateway replica stopped), result_too_large,
    /// or a host's own refusal (guard, run_as, outside_roots, …).
    code: String,
    /// What went wrong and what to do, for people and models.
    message: String,
}

/// `own`, a tool's result schema, extended to every outcome a call of the tool can have: its
/// own result, a refusal (`isError`), and for a tool the policy can hold (`gated`), a call held
/// for approval. One `anyOf` at the root, whose variants' definitions share the root `$defs`.
pub fn with_outcomes(own: &JsonObject, gated: bool) -> Arc<JsonObject> {
    let mut defs = Map::new();
    let mut root = Map::new();
    let mut own = own.clone();
    if let Some(dialect) = own.remove("$schema") {
        root.insert("$schema".into(), dialect);
    }
    let mut variants = vec![hoist(own, &mut defs)];
    let mut add = |name: &str, schema: Arc<JsonObject>, defs: &mut Map<String, Value>| {
        let mut schema = (*schema).clone();
        schema.remove("$schema");
        let body = hoist(schema, defs);
        defs.insert(name.into(), body);
        variants.push(json!({ "$ref": format!("#/$defs/{name}") }));
    };
    if gated {
        let held = rmcp::handler::server::common::schema_for_output::<Held>();
        add("HeldForApproval", held, &mut defs);
    }
    let refusal = rmcp::handler::server::common::schema_for_output::<Refusal>();
    add("Refusal", refusal, &mut defs);
    root.insert("type".into(), json!("object"));
    root.insert("anyOf".into(), Value::Array(variants));
    root.insert("$defs".into(), Value::Object(defs));
    Arc::new(root)
}

/// `schema` without its `$defs`, which move into `defs` (every schema here refers to them as
/// `#/$defs/<name>`, the root's).
fn hoist(mut schema: JsonObject, defs: &mut Map<String, Value>) -> Value {
    if let Some(Value::Object(own)) = schema.remove("$defs") {
        defs.extend(own);
    }
    Value::Object(schema)
}

/// A result with text blocks for people and models and the same data as `structuredContent`.
pub fn structured<T: Serialize>(value: &T, text: Vec<String>) -> Result<CallToolResult, ToolError> {
    let structured = serde_json::to_value(value)
        .map_err(|e| ToolError::internal("the result could not be encoded", &e))?;
    let mut result = CallToolResult::success(text.into_iter().map(ContentBlock::text).collect());
    result.structured_content = Some(structured);
    Ok(result)
}

/// What the audit trail records of a result: the code of an `isError` one (`error` when it
/// names none), and the hosts a fan-out result reports `denied` (`hosts: [{host, status,
/// reason}]`), with why.
pub fn answer(result: &CallToolResult) -> Answer {
    let structured = result.structured_content.as_ref();
    let error_code = (result.is_error == Some(true)).then(|| {
        structured
            .and_then(|s| s["error"]["code"].as_str())
            .unwrap_or("error")
            .to_string()
    });
    let denied_hosts = match structured.map(|s| &s["hosts"]) {
        Some(Value::Array(hosts)) => hosts
            .iter()
            .filter(|h| h["status"] == "denied")
            .filter_map(|h| {
                let host = h["host"].as_str()?.to_string();
                Some((host, h["reason"].as_str().unwrap_or_default().to_string()))
            })
            .collect(),
        _ => Vec::new(),
    };
    Answer {
        error_code,
        denied_hosts,
    }
}

#[cfg(test)]
mod tests {
    use execmesh_proto::{Token, pb};

    use super::*;
    use crate::core::mesh::MeshError;

    #[test]
    fn an_internal_mesh_error_is_an_error_result_coded_internal() {
        for e in [
            MeshError::Internal("cannot encode a direct get".into()),
            MeshError::Protocol("direct get reply without Nats-Sequence".into()),
        ] {
            let result = CallToolResult::from(ToolError::from(e));
            assert_eq!(result.is_error, Some(true));
            let code = &result.structured_content.unwrap()["error"]["code"];
            assert_eq!(code, "internal");
        }
    }

    #[test]
    fn a_refusal_result_keeps_the_agents_code_by_its_wire_name() {
        let host = Token::parse("host id", "web-1").unwrap();
        let e = ToolError::refused(
            &host,
            pb::ExecError {
                code: pb::ErrorCode::OutsideRoots as i32,
                message: "refused by rule `rm`".into(),
            },
        );
        let result = CallToolResult::from(e);
        let code = &result.structured_content.unwrap()["error"]["code"];
        assert_eq!(code, "outside_roots");
    }

    #[test]
    fn a_held_call_is_a_normal_result_with_its_details() {
        let held = ToolError::ApprovalRequired {
            id: "apr-0123456789abcdef".into(),
            text: "approval required: bash `ls` on web-1".into(),
            details: Box::new(Held {
                approval_required: true,
                approval_id: "apr-0123456789abcdef".into(),
                state: crate::core::approvals::ApprovalState::Pending,
                summary: "bash `ls` on web-1".into(),
                hosts: vec!["web-1".into()],
                expires_at_ms: 1,
            }),
        };
        let result = CallToolResult::from(held);
        assert_ne!(result.is_error, Some(true));
        assert_eq!(
            result.structured_content.unwrap()["approval_id"],
            "apr-0123456789abcdef"
        );
        assert!(
            answer(&CallToolResult::success(Vec::new()))
                .error_code
                .is_none()
        );
    }

    #[test]
    fn the_audit_reads_error_codes_and_denied_hosts_off_a_result() {
        let mut result = CallToolResult::success(Vec::new());
        result.structured_content = Some(serde_json::json!({ "hosts": [
            { "host": "web-1", "status": "ok" },
            { "host": "web-2", "status": "denied", "reason": "outside your reach" },
        ]}));
        let seen = answer(&result);
        assert_eq!(seen.error_code, None);
        assert_eq!(
            seen.denied_hosts,
            [("web-2".to_string(), "outside your reach".to_string())]
        );
        let failed = CallToolResult::error(Vec::new());
        assert_eq!(answer(&failed).error_code.as_deref(), Some("error"));
    }
}
