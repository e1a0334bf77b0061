//! The bearer check of `/mcp` and the admin API: a token verified (signature, issuer, audience,
//! expiry), not revoked, carrying the scope the endpoint needs, for a user of the policy in
//! force, who gets the policy's grant. Invalid tokens are audited (coalesced, see
//! [`crate::core::auth_failures`]); each face words a refusal for its own protocol.

use std::net::IpAddr;
use std::sync::Arc;

use tracing::debug;

use crate::core::auth::{ADMIN_SCOPE, Audience, AuthError, Identity, MCP_SCOPE, SigningKey};
use crate::core::auth_failures::{AuthFailures, Endpoint, Failure, Refusal};
use crate::core::policy::LivePolicy;
use crate::core::revocation::{RevocationUnknown, Revocations};
use crate::core::verified_tokens::VerifiedTokens;

/// What the bearer check reads: the key and audience tokens must verify against, the
/// revocation list, the policy, and the record of refused tokens.
pub struct Bearer {
    /// Verifies bearer tokens.
    pub key: SigningKey,
    /// The issuer and resource every token must name.
    pub audience: Audience,
    /// Revoked token ids.
    pub revocations: Arc<Revocations>,
    /// Users and their grants; reloaded in place.
    pub policy: Arc<LivePolicy>,
    /// Refused bearer tokens, audited coalesced.
    pub failures: Arc<AuthFailures>,
    /// Tokens whose signature and claims were checked already.
    pub verified: VerifiedTokens,
}

/// Why a presented bearer token was refused.
#[derive(Debug)]
pub enum BearerRefusal {
    /// It did not verify, or it was revoked.
    Invalid(AuthError),
    /// The revocation list cannot be trusted (NATS away too long): refused rather than risk
    /// honouring a revoked token.
    RevocationUnknown(RevocationUnknown),
    /// A valid token of `user` without the scope the endpoint needs.
    MissingScope { user: String },
    /// A valid token of a user the policy does not have.
    UnknownUser { user: String },
}

/// The scope a token needs for `endpoint`.
pub fn scope_of(endpoint: Endpoint) -> &'static str {
    match endpoint {
        Endpoint::Mcp => MCP_SCOPE,
        Endpoint::Admin => ADMIN_SCOPE,
    }
}

// === impl Bearer ===

impl Bearer {
    /// Checks `token`, presented to `endpoint` from `addr`, and returns the caller narrowed by
    /// the policy's grant (tier, groups, run-as).
    pub async fn check(
        &self,
        token: &str,
        endpoint: Endpoint,
        addr: Option<IpAddr>,
    ) -> Result<Identity, BearerRefusal> {
        let failed = |refusal: Refusal<'_>, identity: Option<&Identity>| {
            self.failures.record(&Failure {
                endpoint,
                addr,
                refusal,
                user: identity.map(|i| i.user.as_str()),
                token_id: identity.map(|i| i.token_id.as_str()),
            });
        };
        let token = token.trim();
        let now = execmesh_proto::now_ms() / 1000;
        let verified = self
            .verified
            .get_or_verify(token, now, || self.key.verify(token, &self.audience));
        let identity = match verified {
            Ok(identity) => identity,
            Err(e) => {
                debug!(?endpoint, error = %e, "bearer token refused");
                failed(Refusal::Token(&e), None);
                return Err(BearerRefusal::Invalid(e));
            }
        };
        match self.revocations.is_revoked(&identity.token_id) {
            Ok(false) => {}
            Ok(true) => {
                debug!(?endpoint, user = %identity.user, jti = %identity.token_id, "revoked token refused");
                failed(Refusal::Token(&AuthError::Revoked), Some(&identity));
                return Err(BearerRefusal::Invalid(AuthError::Revoked));
            }
            Err(e) => {
                // Each face logs its refusals (rate-limited): an outage would repeat this per call.
                debug!(?endpoint, user = %identity.user, error = %e, "token refused: the revocation list cannot be trusted");
                return Err(BearerRefusal::RevocationUnknown(e));
            }
        }
        let user = identity.user.to_string();
        if !identity.has_scope(scope_of(endpoint)) {
            debug!(?endpoint, user, "bearer token lacks the scope");
            return Err(BearerRefusal::MissingScope { user });
        }
        let policy = self.policy.current();
        let Some(grant) = policy.grant(&user) else {
            debug!(?endpoint, user, "token of a user the policy does not know");
            failed(Refusal::UnknownUser, Some(&identity));
            return Err(BearerRefusal::UnknownUser { user });
        };
        Ok(identity.with_grant(&grant))
    }
}
