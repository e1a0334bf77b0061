//! What a call held for approval answers with: where its approval stands and the [`Held`] shape every gated tool's `outputSchema` admits. Apart from the approvals store so that errors can carry it without importing the store that raises them.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Where an approval stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ApprovalState {
    /// Waiting for an approver.
    Pending,
    /// Approved; the requester may run the call once.
    Approved,
    /// Refused by an approver, with a reason.
    Denied,
    /// Approved and spent by the call it was granted for.
    Used,
    /// Not decided (or not used) in time.
    Expired,
}

impl fmt::Display for ApprovalState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Pending => "pending",
            Self::Approved => "approved",
            Self::Denied => "denied",
            Self::Used => "used",
            Self::Expired => "expired",
        })
    }
}

/// What a call held for approval answers as its structured result (not an error): the approval,
/// where it stands and what it holds. Every gated tool's `outputSchema` admits this shape.
#[derive(Debug, Clone, PartialEq, Serialize, schemars::JsonSchema)]
pub struct Held {
    /// Always true: tells this shape from the tool's own result.
    #[schemars(extend("const" = true))]
    pub approval_required: bool,
    /// Pass it back as `approval_id`, with the same arguments, once it is approved.
    pub approval_id: String,
    /// pending (waiting for an approver), approved, denied, used or expired.
    pub state: ApprovalState,
    /// The call in one line: tool, arguments, hosts.
    pub summary: String,
    /// The host ids the call resolved to, which the approval is bound to.
    pub hosts: Vec<String>,
    /// When the approval request expires (Unix ms).
    pub expires_at_ms: u64,
}
