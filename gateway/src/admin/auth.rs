//! Who may call the admin API: a bearer token checked exactly like `/mcp`'s (signature, issuer,
//! audience, expiry, revocation, see [`crate::core::bearer`]), carrying the `admin` scope, for a
//! user of the policy in force.

use tonic::{Request, Status};

use crate::core::auth::{ADMIN_SCOPE, Identity};
use crate::core::auth_failures::Endpoint;
use crate::core::bearer::{Bearer, BearerRefusal};

/// The caller of an admin RPC, narrowed by the policy (tier, groups) like an `/mcp` caller.
///
/// Missing or invalid tokens (bad signature, expired, revoked, another gateway's, a user no
/// longer in the policy) are UNAUTHENTICATED; a valid token without the `admin` scope is
/// PERMISSION_DENIED, with how to get one. Invalid tokens are audited like `/mcp`'s (coalesced,
/// see [`crate::core::auth_failures`]); a missing one is not.
pub async fn authorize<T>(bearer: &Bearer, request: &Request<T>) -> Result<Identity, Status> {
    let addr = request.remote_addr().map(|a| a.ip());
    let token = request
        .metadata()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        });
    let Some(token) = token else {
        return Err(Status::unauthenticated(format!(
            "missing bearer token: send the metadata `authorization: Bearer <token>` with a token \
             that has the `{ADMIN_SCOPE}` scope (execmesh-gateway token mint --user NAME --scope \
             {ADMIN_SCOPE})"
        )));
    };
    bearer
        .check(token, Endpoint::Admin, addr)
        .await
        .map_err(|refusal| match refusal {
            BearerRefusal::Invalid(e) => {
                Status::unauthenticated(format!("invalid bearer token: {e}"))
            }
            BearerRefusal::RevocationUnknown(e) => Status::unavailable(format!(
                "the gateway cannot check token revocation right now ({e}); try again"
            )),
            BearerRefusal::MissingScope { user } => Status::permission_denied(format!(
                "the token of {user} lacks the `{ADMIN_SCOPE}` scope the admin API needs; mint \
                 one with `execmesh-gateway token mint --user {user} --scope {ADMIN_SCOPE}` (or \
                 TokensService.Mint with scopes [\"{ADMIN_SCOPE}\"])"
            )),
            BearerRefusal::UnknownUser { user } => {
                Status::unauthenticated(format!("user {user} is not in this gateway's policy"))
            }
        })
}
