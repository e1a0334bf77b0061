//! Turns the errors of the mesh, the tools' shared paths and the stores into gRPC statuses with
//! messages an operator can act on; internals are logged, not sent.

use tonic::Status;
use tracing::warn;

use crate::core::approvals::ApprovalError;
use crate::core::error::ToolError;
use crate::core::fanout::ResolveError;
use crate::core::mesh::MeshError;

/// NATS or JetStream failed: the mesh is unavailable, try again.
pub fn mesh(e: MeshError) -> Status {
    warn!(error = %e, "admin call: mesh unavailable");
    Status::unavailable(format!(
        "the mesh is unavailable right now ({e}); try again shortly"
    ))
}

/// A selector that does not parse is the caller's to fix; the mesh failing is not.
pub fn resolve(e: ResolveError) -> Status {
    match e {
        ResolveError::Mesh(e) => mesh(e),
        other => Status::invalid_argument(other.to_string()),
    }
}

/// An error of the paths the admin API shares with the MCP tools (dispatch, kill, paging).
pub fn tool(e: &ToolError) -> Status {
    let message = e.to_string();
    match e {
        ToolError::InvalidArguments { .. } | ToolError::BadCursor(_) => {
            Status::invalid_argument(message)
        }
        ToolError::UnknownHost { .. } | ToolError::UnknownJob(_) | ToolError::UnknownTool(_) => {
            Status::not_found(message)
        }
        ToolError::OfflineHost { .. } | ToolError::Mesh(_) => Status::unavailable(message),
        ToolError::HostTimeout { .. } => Status::deadline_exceeded(message),
        ToolError::Tier(_) | ToolError::Denied { .. } | ToolError::NotOperator { .. } => {
            Status::permission_denied(message)
        }
        // The agent's refusal: its code says whose move it is.
        ToolError::Refused { code, .. } => match code.as_str() {
            "tier" | "denied" | "permission_denied" | "run_as" | "guard" | "unauthenticated" => {
                Status::permission_denied(message)
            }
            "busy" | "shutting_down" => Status::unavailable(message),
            "not_found" => Status::not_found(message),
            "invalid" => Status::invalid_argument(message),
            _ => Status::failed_precondition(message),
        },
        ToolError::ApprovalRequired { .. } | ToolError::ApprovalUnusable { .. } => {
            Status::failed_precondition(message)
        }
    }
}

/// An approvals-store error, with the code its variant calls for.
pub fn approval(e: ApprovalError) -> Status {
    let message = e.to_string();
    match e {
        ApprovalError::NotFound { .. } => Status::not_found(format!(
            "{message}; ApprovalsService.List shows the approvals"
        )),
        ApprovalError::SelfApproval { .. } => {
            Status::permission_denied(format!("{message}; another approver must decide it"))
        }
        ApprovalError::NoApprovers { .. }
        | ApprovalError::NotApprover { .. }
        | ApprovalError::ApproverTier { .. }
        | ApprovalError::ApproverReach { .. } => Status::permission_denied(message),
        ApprovalError::AlreadyDecided { .. } | ApprovalError::Expired { .. } => {
            Status::failed_precondition(message)
        }
        ApprovalError::InvalidId(_) | ApprovalError::MissingReason => {
            Status::invalid_argument(message)
        }
        ApprovalError::Mesh(_) => {
            warn!(error = %message, "admin call: approvals store unavailable");
            Status::unavailable(format!("{message}; try again shortly"))
        }
    }
}

/// An id the caller sent that is not a subject-safe token.
pub fn bad_id(what: &str, value: &str, e: impl std::fmt::Display) -> Status {
    Status::invalid_argument(format!("`{value}` is not a valid {what}: {e}"))
}
