//! The composition of the faces: the core services the gateway builds once at start, and the
//! part of them each face is given. The MCP tools, the admin API, the OAuth server and the
//! bearer check in front of `/mcp` each get a state of their own holding only what they use.

use std::sync::Arc;

use crate::admin::AdminState;
use crate::config::Config;
use crate::core::approvals::Approvals;
use crate::core::audit::Audit;
use crate::core::bearer::Bearer;
use crate::core::mesh::Mesh;
use crate::core::paging::CursorKey;
use crate::core::policy::LivePolicy;
use crate::core::revocation::Revocations;
use crate::core::tasks::Tasks;
use crate::mcp::McpState;
use crate::oauth::{OAuth, OAuthState};

/// The configuration and the core services, read-only after start.
pub struct Services {
    pub config: Arc<Config>,
    pub mesh: Mesh,
    /// Verifies bearer tokens (and holds the key and audience they are issued with).
    pub bearer: Arc<Bearer>,
    /// Users, groups, tiers and reach; reloaded in place.
    pub policy: Arc<LivePolicy>,
    /// Publishes the audit events of every call.
    pub audit: Arc<Audit>,
    /// Calls held for a teammate's approval, and the decisions.
    pub approvals: Approvals,
    /// MCP tasks, readable by every replica.
    pub tasks: Tasks,
    /// Seals the job cursors handed to clients (derived from the token key, so every replica
    /// agrees).
    pub cursors: CursorKey,
    /// Revoked token ids, as `/mcp` and the admin API check them and the OAuth and admin faces
    /// add to them.
    pub revocations: Arc<Revocations>,
}

// === impl Services ===

impl Services {
    /// What the MCP tools act through.
    pub fn mcp(&self) -> Arc<McpState> {
        Arc::new(McpState {
            config: self.config.clone(),
            mesh: self.mesh.clone(),
            policy: self.policy.clone(),
            audit: self.audit.clone(),
            approvals: self.approvals.clone(),
            tasks: self.tasks.clone(),
            cursors: self.cursors.clone(),
        })
    }

    /// What the admin API's services read and act through.
    pub fn admin(&self) -> Arc<AdminState> {
        Arc::new(AdminState {
            config: self.config.clone(),
            mesh: self.mesh.clone(),
            bearer: self.bearer.clone(),
            key: self.bearer.key.clone(),
            audience: self.bearer.audience.clone(),
            policy: self.policy.clone(),
            audit: self.audit.clone(),
            approvals: self.approvals.clone(),
            cursors: self.cursors.clone(),
            revocations: self.revocations.clone(),
        })
    }

    /// What the OAuth endpoints read, with the authorization server's own state.
    pub fn oauth(&self, oauth: OAuth) -> Arc<OAuthState> {
        Arc::new(OAuthState {
            key: self.bearer.key.clone(),
            audience: self.bearer.audience.clone(),
            policy: self.policy.clone(),
            revocations: self.revocations.clone(),
            access_token_ttl: self.config.access_token_ttl,
            refresh_token_ttl: self.config.refresh_token_ttl,
            oauth,
        })
    }
}
