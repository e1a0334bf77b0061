//! Why a tool call could not do what was asked: the domain's errors as a caller is told them.
//!
//! Internals (NATS error chains, stream sequences) are logged here once and summarised for the
//! caller; every message names the host or job it is about and, where there is one, the next step.
//! Each face turns a [`ToolError`] into its own answer (an MCP tool result, a gRPC status).

use tracing::{error, warn};

use execmesh_proto::{Token, pb};

use crate::core::mesh::{DispatchError, MeshError, MeshErrorKind};
use crate::core::paging::CursorError;

/// Why a tool call could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    #[error("invalid arguments for `{tool}`: {reason}")]
    InvalidArguments { tool: String, reason: String },
    #[error(
        "unknown tool `{0}`; the tools are hosts, bash, job, file, grep, facts, whoami and runbook"
    )]
    UnknownTool(String),
    #[error("unknown host `{host}`: no agent has ever registered it{}", known_hosts(.known))]
    UnknownHost { host: String, known: Vec<String> },
    #[error("host {host} is offline: {}{}", offline_cause(.relay), last_seen(*.last_seen_ms))]
    OfflineHost {
        host: Token,
        last_seen_ms: Option<u64>,
        /// Set when the host is an SSH target served by personal relays: nobody else's relay
        /// can serve the caller, so the message says how to start theirs.
        relay: Option<RelayOffline>,
    },
    #[error("host {host} did not answer within {secs:.1} s; its agent may be overloaded, hung or gone{}", job_hint(.job))]
    HostTimeout {
        host: Token,
        secs: f64,
        /// The job the request was to start, if any: it may exist.
        job: Option<Token>,
    },
    #[error("host {host} refused the request: {message}")]
    Refused {
        host: Token,
        /// The agent's code as it came on the wire (`UNSPECIFIED` for a code this gateway does
        /// not know yet).
        code: pb::ErrorCode,
        message: String,
    },
    #[error(
        "unknown job `{0}`: no host has a job with this id (ids look like `title-abc12def`; `job` with action `list` shows yours)"
    )]
    UnknownJob(String),
    #[error(
        "bad cursor: {0}. Pass the `next_cursor` of the previous page unchanged, or omit it to start at the beginning"
    )]
    BadCursor(#[from] CursorError),
    /// NATS or an agent's transport failed: trying again shortly may work.
    #[error("the mesh is unavailable right now ({0}); try again shortly")]
    Mesh(String),
    /// A bug or broken invariant in the gateway (or a server breaking the protocol): logged
    /// with its detail where it was made, summarised here; retrying does not help.
    #[error("internal error in the gateway; it was logged: {0}")]
    Internal(String),
    /// The call needs a higher guard tier than the caller's.
    #[error(transparent)]
    Tier(#[from] crate::core::tier::TierError),
    /// The host is outside the hosts the caller may reach.
    #[error("denied: host {host} is outside the hosts you may reach ({reach})")]
    Denied { host: String, reach: String },
    /// The call acts on other users' jobs, which needs operator rights the caller lacks.
    #[error(
        "denied: to {action} you need operator rights (the policy's `operators`); without them you see your own jobs only"
    )]
    NotOperator { action: String },
    /// Not a failure: the policy holds the call until a teammate approves it. The client sees
    /// a normal (non-error) result: `text` for the model, `details` (the approval id, its state,
    /// summary, hosts and expiry) as structured data.
    #[error("approval {id} required before this call runs")]
    ApprovalRequired {
        id: String,
        text: String,
        details: Box<crate::core::held::Held>,
    },
    /// The call carries an approval that cannot be used for it.
    #[error("approval {id} cannot be used: {reason}")]
    ApprovalUnusable { id: String, reason: String },
}

impl ToolError {
    /// Whether the call was refused for what the client sent (its arguments, its cursor, the
    /// tool's name), rather than for the mesh's state or the caller's rights.
    pub fn is_clients_fault(&self) -> bool {
        matches!(
            self,
            Self::InvalidArguments { .. } | Self::UnknownTool(_) | Self::BadCursor(_)
        )
    }

    /// A short machine-readable code for the error.
    pub fn code(&self) -> &'static str {
        match self {
            Self::InvalidArguments { .. } => "invalid_arguments",
            Self::UnknownTool(_) => "unknown_tool",
            Self::UnknownHost { .. } => "unknown_host",
            Self::OfflineHost { .. } => "offline",
            Self::HostTimeout { .. } => "timeout",
            Self::Refused { .. } => "refused",
            Self::UnknownJob(_) => "unknown_job",
            Self::BadCursor(_) => "bad_cursor",
            Self::Mesh(_) => "unavailable",
            Self::Internal(_) => "internal",
            Self::Tier(_) => "tier",
            Self::Denied { .. } => "denied",
            Self::NotOperator { .. } => "not_operator",
            Self::ApprovalRequired { .. } => "approval_required",
            Self::ApprovalUnusable { .. } => "approval_unusable",
        }
    }

    /// The code a client and the audit trail are given: [`Self::code`], except that a host's
    /// refusal keeps the agent's own code by its wire name (`guard`, `run_as`, `outside_roots`).
    pub fn reported_code(&self) -> String {
        match self {
            Self::Refused { code, .. } => code_name(*code),
            other => other.code().to_string(),
        }
    }

    /// An internal error: logs `detail` as an error and tells the caller `summary`.
    pub fn internal(summary: impl Into<String>, detail: &dyn std::fmt::Display) -> Self {
        let summary = summary.into();
        error!(error = %detail, "internal error: {summary}");
        Self::Internal(summary)
    }

    /// An agent broke the protocol (an empty or undecodable reply): not a transport failure,
    /// so not "unavailable"; logged and reported as internal, naming the host.
    pub fn bad_reply(host: &Token, reason: &dyn std::fmt::Display) -> Self {
        Self::internal(format!("host {host} broke the protocol: {reason}"), reason)
    }

    pub fn invalid(tool: &str, reason: impl Into<String>) -> Self {
        Self::InvalidArguments {
            tool: tool.to_string(),
            reason: reason.into(),
        }
    }

    /// The host and the agent's code when this is a host refusing the call by its own policy
    /// (tier cap, run-as, CommandGuard, denied paths): a denied call, audited as one.
    pub fn node_denial(&self) -> Option<(&Token, pb::ErrorCode)> {
        match self {
            Self::Refused { host, code, .. } if is_node_denial(*code) => Some((host, *code)),
            _ => None,
        }
    }

    /// Maps an agent's refusal.
    pub fn refused(host: &Token, error: pb::ExecError) -> Self {
        let code = error.code();
        if code == pb::ErrorCode::UnknownJob {
            return Self::UnknownJob(error.message);
        }
        Self::Refused {
            host: host.clone(),
            code,
            message: error.message,
        }
    }
}

impl From<MeshError> for ToolError {
    fn from(e: MeshError) -> Self {
        match e.kind() {
            MeshErrorKind::Internal | MeshErrorKind::Setup => {
                Self::internal("reading the mesh failed", &e)
            }
            MeshErrorKind::Busy => Self::Mesh(e.to_string()),
            MeshErrorKind::Unavailable | MeshErrorKind::Corrupt => {
                warn!(error = %e, "mesh read failed");
                match e {
                    MeshError::Timeout(_) => Self::Mesh("JetStream did not answer in time".into()),
                    MeshError::Corrupt { .. } => {
                        Self::Mesh("a stored record could not be read".into())
                    }
                    _ => Self::Mesh("NATS is not reachable".into()),
                }
            }
        }
    }
}

impl From<DispatchError> for ToolError {
    fn from(e: DispatchError) -> Self {
        match e {
            DispatchError::NoResponders(host) => Self::OfflineHost {
                host,
                last_seen_ms: None,
                relay: None,
            },
            DispatchError::TimedOut { host, after } => Self::HostTimeout {
                host,
                secs: after.as_secs_f64(),
                job: None,
            },
            DispatchError::BadReply { host, reason } => Self::bad_reply(&host, &reason),
            other => {
                warn!(error = %other, "dispatch failed");
                Self::Mesh(other.to_string())
            }
        }
    }
}

/// Whether an agent's refusal code is its own policy refusing the call (not a failure): the
/// host's tier cap, its run-as mapping, its CommandGuard, its denied paths or allowed roots.
pub fn is_node_denial(code: pb::ErrorCode) -> bool {
    use pb::ErrorCode as C;
    matches!(
        code,
        C::Denied | C::Tier | C::RunAs | C::Guard | C::OutsideRoots | C::RunbookNotPinned
    )
}

/// An agent's refusal code as structured results and the audit trail spell it: its protobuf
/// name without the prefix, lowercased (`tier`, `run_as`, `outside_roots`).
pub fn code_name(code: pb::ErrorCode) -> String {
    code.as_str_name()
        .trim_start_matches("ERROR_CODE_")
        .to_lowercase()
}

fn known_hosts(known: &[String]) -> String {
    if known.is_empty() {
        "; no hosts are registered yet".to_string()
    } else {
        let more = if known.len() > 10 {
            format!(" and {} more", known.len() - 10)
        } else {
            String::new()
        };
        let list: Vec<&str> = known.iter().take(10).map(String::as_str).collect();
        format!("; known hosts: {}{more}", list.join(", "))
    }
}

fn job_hint(job: &Option<Token>) -> String {
    match job {
        Some(job) => {
            format!("; the job may have started: check `job` action \"poll\" with job \"{job}\"")
        }
        None => String::new(),
    }
}

/// Why a relay target did not answer the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayOffline {
    /// The caller, whose relay would serve the request.
    pub user: Token,
    /// Why the target's SSH connection is down, as the last relay serving it reported.
    pub reason: String,
}

fn offline_cause(relay: &Option<RelayOffline>) -> String {
    match relay {
        None => "its agent is not connected".to_string(),
        Some(RelayOffline { user, reason }) => {
            let why = if reason.is_empty() {
                String::new()
            } else {
                format!(" (the relay reported: {reason})")
            };
            format!(
                "it is an SSH target served by personal relays, and no relay of user {user} \
                 serves it now{why}; start yours on the machine that holds your SSH keys with \
                 `execmesh-node-agent relay --config ~/.config/execmesh/relay.toml`, listing \
                 this host under [[targets]] (see docs/relay.md)"
            )
        }
    }
}

fn last_seen(ms: Option<u64>) -> String {
    match ms {
        Some(ms) => {
            let ago = execmesh_proto::now_ms().saturating_sub(ms) / 1000;
            format!(" (last seen {ago} s ago)")
        }
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn internal_errors() -> Vec<MeshError> {
        vec![
            MeshError::Internal("cannot encode a direct get".into()),
            MeshError::Protocol("direct get reply without Nats-Sequence".into()),
        ]
    }

    #[test]
    fn an_internal_mesh_error_is_not_reported_as_unavailable() {
        for e in internal_errors() {
            assert!(!e.is_unavailable(), "{e}");
            let tool = ToolError::from(e);
            assert!(matches!(tool, ToolError::Internal(_)), "{tool:?}");
            assert_eq!(tool.code(), "internal");
            let text = tool.to_string();
            assert!(
                text.starts_with("internal error in the gateway; it was logged: "),
                "{text}"
            );
            assert!(!text.contains("unavailable"), "{text}");
            assert!(!text.contains("try again"), "{text}");
            assert_eq!(tool.reported_code(), "internal");
        }
    }

    fn assert_internal_naming(tool: &ToolError, host: &str) {
        assert!(matches!(tool, ToolError::Internal(_)), "{tool:?}");
        assert_eq!(tool.code(), "internal");
        let text = tool.to_string();
        assert!(text.contains(&format!("host {host} ")), "{text}");
        assert!(!text.contains("unavailable"), "{text}");
        assert!(!text.contains("try again"), "{text}");
    }

    #[test]
    fn an_agent_breaking_the_protocol_is_internal_and_names_the_host() {
        let host = Token::parse("host id", "web-1").unwrap();
        let tool = ToolError::from(DispatchError::BadReply {
            host: host.clone(),
            reason: "invalid wire type".into(),
        });
        assert_internal_naming(&tool, "web-1");
        assert!(tool.to_string().contains("invalid wire type"));
        let tool = ToolError::bad_reply(&host, &"an empty reply");
        assert_internal_naming(&tool, "web-1");
        assert!(tool.to_string().contains("an empty reply"));
    }

    #[test]
    fn a_transport_failure_of_a_dispatch_is_reported_as_unavailable() {
        let host = Token::parse("host id", "web-1").unwrap();
        let tool = ToolError::from(DispatchError::Nats {
            host,
            reason: "connection closed".into(),
        });
        assert!(matches!(tool, ToolError::Mesh(_)), "{tool:?}");
        assert_eq!(tool.code(), "unavailable");
    }

    #[test]
    fn a_transport_failure_is_reported_as_unavailable() {
        for e in [
            MeshError::Unavailable {
                what: "direct get on KV_mesh_jobs".into(),
                reason: "subscription closed".into(),
            },
            MeshError::Timeout(std::time::Duration::from_secs(5)),
        ] {
            assert!(e.is_unavailable(), "{e}");
            let tool = ToolError::from(e);
            assert!(matches!(tool, ToolError::Mesh(_)), "{tool:?}");
            assert_eq!(tool.code(), "unavailable");
            assert!(tool.to_string().contains("try again shortly"));
        }
    }

    #[test]
    fn a_refusal_keeps_the_agents_code_by_its_wire_name() {
        let host = Token::parse("host id", "web-1").unwrap();
        let refused = |code: pb::ErrorCode| {
            ToolError::refused(
                &host,
                pb::ExecError {
                    code: code as i32,
                    message: "refused by rule `rm`".into(),
                },
            )
        };
        let e = refused(pb::ErrorCode::OutsideRoots);
        assert_eq!(
            e.to_string(),
            "host web-1 refused the request: refused by rule `rm`"
        );
        assert_eq!(e.node_denial(), Some((&host, pb::ErrorCode::OutsideRoots)));
        assert_eq!(e.reported_code(), "outside_roots");
        assert_eq!(code_name(pb::ErrorCode::RunAs), "run_as");
        assert_eq!(code_name(pb::ErrorCode::IsADirectory), "is_a_directory");
        assert!(refused(pb::ErrorCode::Busy).node_denial().is_none());
        assert!(matches!(
            refused(pb::ErrorCode::UnknownJob),
            ToolError::UnknownJob(_)
        ));
    }
}
