//! What every face shares once the gateway has started: its configuration and the core
//! services built from it, read-only after start. A face that needs more keeps its own state
//! next to it (the OAuth face: its store and rate limits).

use std::sync::Arc;

use crate::config::Config;
use crate::core::approvals::Approvals;
use crate::core::audit::Audit;
use crate::core::auth::{Audience, SigningKey};
use crate::core::auth_failures::AuthFailures;
use crate::core::mesh::Mesh;
use crate::core::paging::CursorKey;
use crate::core::policy::LivePolicy;
use crate::core::revocation::Revocations;

/// The configuration and core services every face reads.
pub struct AppState {
    pub config: Config,
    pub mesh: Mesh,
    /// Verifies bearer tokens.
    pub key: SigningKey,
    /// The issuer and resource every token must name.
    pub audience: Audience,
    /// Users, groups, tiers and reach; reloaded in place.
    pub policy: Arc<LivePolicy>,
    /// Publishes the audit events of every call.
    pub audit: Arc<Audit>,
    /// Calls held for a teammate's approval, and the decisions.
    pub approvals: Approvals,
    /// Seals the job cursors handed to clients (derived from `key`, so every replica agrees).
    pub cursors: CursorKey,
    /// Refused bearer tokens, audited coalesced.
    pub auth_failures: Arc<AuthFailures>,
    /// Revoked token ids, as `/mcp` and the admin API check them and the OAuth and admin faces
    /// add to them.
    pub revocations: Revocations,
}
