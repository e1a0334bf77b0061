//! TokensService: mints bearer tokens, revokes them through the revocation list every replica
//! reads (`mesh_revoked`), and lists the revocations in force. Every mint and revoke is audited
//! (`token-minted`, `token-revoked`), with the token's id, never the token.
//!
//! Minting through the API is for yourself: the caller's own user, never above the tier the
//! caller acts with, never with a scope the caller's token lacks. A user the policy's
//! `[token_admins]` names may also mint for other users of the policy, never above the tier the
//! policy gives that user. Anything else is PERMISSION_DENIED, naming the user, the tier or scope
//! and why; a tier above the ceiling is refused, never silently lowered. (Minting with the key
//! file, `execmesh-gateway token mint`, is the key holder's act and not bound by this.)

use std::time::Duration;

use tonic::{Request, Response, Status};
use tracing::info;

use execmesh_proto::pb;

use super::Admin;
use crate::core::auth::TokenSpec;
use crate::core::minting::{self, MintRefusal};
use crate::core::revocation;
use crate::core::tier::Tier;

/// The TokensService implementation.
pub struct TokensApi {
    admin: Admin,
}

impl TokensApi {
    pub fn new(admin: Admin) -> Self {
        Self { admin }
    }
}

/// A refused mint as a status: an unknown user is a precondition, the rest is the policy's
/// refusal.
fn refused(e: MintRefusal) -> Status {
    match e {
        MintRefusal::UnknownUser { .. } => Status::failed_precondition(e.to_string()),
        _ => Status::permission_denied(e.to_string()),
    }
}

#[tonic::async_trait]
impl pb::tokens_service_server::TokensService for TokensApi {
    async fn mint(
        &self,
        request: Request<pb::MintTokenRequest>,
    ) -> Result<Response<pb::MintTokenResponse>, Status> {
        self.admin
            .unary("TokensService.Mint", request, |caller, req| async move {
                let state = &self.admin.state;
                let scope =
                    minting::token_scope(&req.scopes).map_err(Status::invalid_argument)?;
                let asked_ttl = (req.ttl_secs != 0).then(|| Duration::from_secs(req.ttl_secs));
                let ttl = minting::lifetime(asked_ttl, state.key.max_lifetime())
                    .map_err(Status::invalid_argument)?;
                let asked = match Tier::from_wire(req.tier) {
                    Some(tier) => Some(tier),
                    None if req.tier == pb::Tier::Unspecified as i32 => None,
                    None => {
                        return Err(Status::invalid_argument(format!(
                            "unknown tier {}",
                            req.tier
                        )));
                    }
                };
                // No user: the caller's own token.
                let user = match req.user.trim() {
                    "" => caller.user.to_string(),
                    user => user.to_string(),
                };
                let policy = state.policy.current();
                let (grounds, ceiling) =
                    minting::entitlement(&policy, &caller, &user, &scope).map_err(refused)?;
                let tier = minting::tier_within(caller.user.as_str(), &user, grounds, asked, ceiling)
                    .map_err(refused)?;
                let spec = TokenSpec {
                    user: &user,
                    ttl,
                    scope: &scope,
                    tier,
                    client_id: None,
                };
                let issued = state
                    .key
                    .issue(&state.audience, &spec)
                    .map_err(|e| Status::invalid_argument(format!("cannot mint the token: {e}")))?;
                let scopes: Vec<String> = scope.split(' ').map(str::to_string).collect();
                state.audit.token_minted(
                    caller.user.as_str(),
                    pb::TokenMinted {
                        token_id: issued.jti.clone(),
                        for_user: user.clone(),
                        scopes: scopes.clone(),
                        tier: tier.to_string(),
                        expires_at_ms: issued.expires_at * 1000,
                        by: caller.user.to_string(),
                        grounds: grounds.as_str().to_string(),
                    },
                );
                info!(for_user = %user, jti = %issued.jti, scope = %scope, tier = %tier, by = %caller.user, grounds = grounds.as_str(), "token minted");
                Ok(pb::MintTokenResponse {
                    token: issued.token,
                    token_id: issued.jti,
                    user,
                    scopes,
                    tier: tier.to_wire() as i32,
                    expires_at_ms: issued.expires_at * 1000,
                })
            })
            .await
    }

    async fn revoke(
        &self,
        request: Request<pb::RevokeTokenRequest>,
    ) -> Result<Response<pb::RevokeTokenResponse>, Status> {
        self.admin
            .unary("TokensService.Revoke", request, |caller, req| async move {
                let state = &self.admin.state;
                let (jti, expires_at, for_user) = match req.target {
                    Some(pb::revoke_token_request::Target::Token(token)) => {
                        let identity =
                            state
                                .key
                                .verify(token.trim(), &state.audience)
                                .map_err(|e| {
                                    Status::invalid_argument(format!(
                                        "cannot revoke that token: {e} (an expired token needs no \
                                     revocation; revoke by token_id otherwise)"
                                    ))
                                })?;
                        (
                            identity.token_id,
                            identity.expires_at,
                            identity.user.to_string(),
                        )
                    }
                    Some(pb::revoke_token_request::Target::TokenId(id)) => {
                        let id = id.trim().to_string();
                        if !minting::is_token_id(&id) {
                            return Err(Status::invalid_argument(format!(
                                "`{id}` is not a token id (the `jti` of a token: letters, digits, \
                                 `-` and `_`)"
                            )));
                        }
                        // The token's expiry is not known from its id: keep the revocation as
                        // long as any token this gateway accepts can live.
                        let until =
                            execmesh_proto::now_ms() / 1000 + state.key.max_lifetime().as_secs();
                        (id, until, String::new())
                    }
                    None => {
                        return Err(Status::invalid_argument(
                            "say which token: set `token_id` or `token`",
                        ));
                    }
                };
                state
                    .revocations
                    .revoke(&jti, expires_at)
                    .await
                    .map_err(|e| {
                        Status::unavailable(format!(
                            "cannot write the revocation list ({e}); try again shortly"
                        ))
                    })?;
                state.audit.token_revoked(
                    caller.user.as_str(),
                    pb::TokenRevoked {
                        token_id: jti.clone(),
                        for_user,
                        kept_until_ms: expires_at * 1000,
                        by: caller.user.to_string(),
                    },
                );
                info!(jti = %jti, by = %caller.user, "token revoked");
                Ok(pb::RevokeTokenResponse {
                    token_id: jti,
                    expires_at_ms: expires_at * 1000,
                })
            })
            .await
    }

    async fn list_revocations(
        &self,
        request: Request<pb::ListRevocationsRequest>,
    ) -> Result<Response<pb::ListRevocationsResponse>, Status> {
        self.admin
            .unary(
                "TokensService.ListRevocations",
                request,
                |_, _| async move {
                    let revocations =
                        revocation::in_force(&self.admin.state.mesh)
                            .await
                            .map_err(|e| {
                                Status::unavailable(format!(
                                    "cannot read the revocation list ({e}); try again shortly"
                                ))
                            })?;
                    Ok(pb::ListRevocationsResponse { revocations })
                },
            )
            .await
    }
}
