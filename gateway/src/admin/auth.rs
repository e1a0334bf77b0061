//! Who may call the admin API: a bearer token verified exactly like `/mcp`'s (signature, issuer,
//! audience, expiry, revocation), carrying the `admin` scope, for a user of the policy in force.

use tonic::{Request, Status};
use tracing::{debug, warn};

use crate::core::auth::ADMIN_SCOPE;
use crate::core::auth::{AuthError, Identity};
use crate::core::auth_failures::{Endpoint, Failure, Refusal};
use crate::state::AppState;

/// The caller of an admin RPC, narrowed by the policy (tier, groups) like an `/mcp` caller.
///
/// Missing or invalid tokens (bad signature, expired, revoked, another gateway's, a user no
/// longer in the policy) are UNAUTHENTICATED; a valid token without the `admin` scope is
/// PERMISSION_DENIED, with how to get one. Invalid tokens are audited like `/mcp`'s (coalesced,
/// see [`crate::core::auth_failures`]); a missing one is not.
pub async fn authorize<T>(state: &AppState, request: &Request<T>) -> Result<Identity, Status> {
    let addr = request.remote_addr().map(|a| a.ip());
    let failed = |refusal: Refusal<'_>, user: Option<&str>, token_id: Option<&str>| {
        state.auth_failures.record(&Failure {
            endpoint: Endpoint::Admin,
            addr,
            refusal,
            user,
            token_id,
        });
    };
    let token = request
        .metadata()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim);
    let Some(token) = token else {
        return Err(Status::unauthenticated(format!(
            "missing bearer token: send the metadata `authorization: Bearer <token>` with a token \
             that has the `{ADMIN_SCOPE}` scope (execmesh-gateway token mint --user NAME --scope \
             {ADMIN_SCOPE})"
        )));
    };
    let identity = state.key.verify(token, &state.audience).map_err(|e| {
        debug!(error = %e, "admin bearer token refused");
        failed(Refusal::Token(&e), None, None);
        Status::unauthenticated(format!("invalid bearer token: {e}"))
    })?;
    match state.revocations.is_revoked(&identity.token_id).await {
        Ok(false) => {}
        Ok(true) => {
            debug!(user = %identity.user, jti = %identity.token_id, "revoked admin token refused");
            failed(
                Refusal::Token(&AuthError::Revoked),
                Some(identity.user.as_str()),
                Some(&identity.token_id),
            );
            return Err(Status::unauthenticated(
                "invalid bearer token: the token was revoked",
            ));
        }
        Err(e) => {
            warn!(error = %e, "cannot read the revocation list; refusing the admin token");
            return Err(Status::unavailable(
                "the gateway cannot check token revocation right now; try again",
            ));
        }
    }
    if !identity.has_scope(ADMIN_SCOPE) {
        return Err(Status::permission_denied(format!(
            "the token of {user} lacks the `{ADMIN_SCOPE}` scope the admin API needs; mint one \
             with `execmesh-gateway token mint --user {user} --scope {ADMIN_SCOPE}` (or \
             TokensService.Mint with scopes [\"{ADMIN_SCOPE}\"])",
            user = identity.user
        )));
    }
    let policy = state.policy.current();
    let Some(grant) = policy.grant(identity.user.as_str()) else {
        failed(
            Refusal::UnknownUser,
            Some(identity.user.as_str()),
            Some(&identity.token_id),
        );
        return Err(Status::unauthenticated(format!(
            "user {} is not in this gateway's policy",
            identity.user
        )));
    };
    Ok(identity.with_grant(&grant))
}
