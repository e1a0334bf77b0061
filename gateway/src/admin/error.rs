//! Turns the errors of the mesh, the tools' shared paths and the stores into gRPC statuses with
//! messages an operator can act on; internals are logged, not sent.

use tonic::Status;
use tracing::{error, warn};

use crate::core::approvals::ApprovalError;
use crate::core::error::ToolError;
use crate::core::fanout::ResolveError;
use crate::core::mesh::{MeshError, MeshErrorKind};

/// NATS or JetStream failed: the mesh is unavailable, try again. A bug of the gateway (or a
/// server breaking the protocol) is an internal error instead: logged, not worth a retry.
pub fn mesh(e: MeshError) -> Status {
    match e.kind() {
        MeshErrorKind::Unavailable | MeshErrorKind::Corrupt => {
            warn!(error = %e, "admin call: mesh unavailable");
            Status::unavailable(format!(
                "the mesh is unavailable right now ({e}); try again shortly"
            ))
        }
        MeshErrorKind::Busy => Status::resource_exhausted(e.to_string()),
        MeshErrorKind::Internal | MeshErrorKind::Setup => {
            error!(error = %e, "admin call: internal error reading the mesh");
            Status::internal(ToolError::Internal("reading the mesh failed".into()).to_string())
        }
    }
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
        ToolError::Internal(_) => Status::internal(message),
        ToolError::HostTimeout { .. } => Status::deadline_exceeded(message),
        ToolError::Tier(_) | ToolError::Denied { .. } | ToolError::NotOperator { .. } => {
            Status::permission_denied(message)
        }
        // The agent's refusal: its code says whose move it is.
        ToolError::Refused { code, .. } => {
            use execmesh_proto::pb::ErrorCode as C;
            match code {
                C::Tier
                | C::Denied
                | C::PermissionDenied
                | C::RunAs
                | C::Guard
                | C::Unauthenticated => Status::permission_denied(message),
                C::Busy | C::ShuttingDown => Status::unavailable(message),
                C::NotFound => Status::not_found(message),
                C::Invalid => Status::invalid_argument(message),
                _ => Status::failed_precondition(message),
            }
        }
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
        ApprovalError::Internal(_) => {
            error!(error = %message, "admin call: approvals store failed");
            Status::internal(message)
        }
    }
}

/// An id the caller sent that is not a subject-safe token.
pub fn bad_id(what: &str, value: &str, e: impl std::fmt::Display) -> Status {
    Status::invalid_argument(format!("`{value}` is not a valid {what}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    #[test]
    fn an_internal_mesh_error_is_an_internal_status() {
        for e in [
            MeshError::Internal("cannot encode a direct get".into()),
            MeshError::Protocol("direct get reply without Nats-Sequence".into()),
        ] {
            let status = mesh(e);
            assert_eq!(status.code(), Code::Internal, "{status:?}");
            assert!(
                status
                    .message()
                    .starts_with("internal error in the gateway; it was logged: "),
                "{status:?}"
            );
            assert!(!status.message().contains("unavailable"), "{status:?}");
        }
        let status = resolve(ResolveError::Mesh(MeshError::Internal("bug".into())));
        assert_eq!(status.code(), Code::Internal, "{status:?}");
        let status = tool(&ToolError::Internal(
            "the result could not be encoded".into(),
        ));
        assert_eq!(status.code(), Code::Internal, "{status:?}");
    }

    #[test]
    fn an_unreadable_approval_is_an_internal_status() {
        let status = approval(ApprovalError::Internal(
            "approval `apr-1` is unreadable".into(),
        ));
        assert_eq!(status.code(), Code::Internal, "{status:?}");
        let status = approval(ApprovalError::Mesh("NATS is not reachable".into()));
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    }

    #[test]
    fn a_transport_failure_is_unavailable() {
        let status = mesh(MeshError::Unavailable {
            what: "watch of mesh_presence".into(),
            reason: "connection closed".into(),
        });
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        assert!(status.message().contains("try again shortly"), "{status:?}");
        let status = tool(&ToolError::Mesh("NATS is not reachable".into()));
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    }

    #[test]
    fn an_agents_refusal_code_picks_the_status() {
        use execmesh_proto::pb::{ErrorCode as C, ExecError};
        let host = execmesh_proto::Token::parse("host id", "web-1").unwrap();
        let status_of = |code: i32| {
            let e = ToolError::refused(
                &host,
                ExecError {
                    code,
                    message: "no".into(),
                },
            );
            tool(&e).code()
        };
        for code in [
            C::Tier,
            C::Denied,
            C::PermissionDenied,
            C::RunAs,
            C::Guard,
            C::Unauthenticated,
        ] {
            assert_eq!(status_of(code as i32), Code::PermissionDenied, "{code:?}");
        }
        assert_eq!(status_of(C::Busy as i32), Code::Unavailable);
        assert_eq!(status_of(C::ShuttingDown as i32), Code::Unavailable);
        assert_eq!(status_of(C::NotFound as i32), Code::NotFound);
        assert_eq!(status_of(C::Invalid as i32), Code::InvalidArgument);
        assert_eq!(status_of(C::OutsideRoots as i32), Code::FailedPrecondition);
        assert_eq!(status_of(C::TooLarge as i32), Code::FailedPrecondition);
        // A code from a newer agent.
        assert_eq!(status_of(999), Code::FailedPrecondition);
    }
}
