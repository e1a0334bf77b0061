//! The Tokens page: for the policy's token admins, a form to mint a token (for themselves or
//! another user of the policy, with scopes, a tier at or below that user's, and a lifetime),
//! showing the token once; the revocations in force; and a form to revoke a token by its id or
//! the whole token. Others see why they cannot, and no forms.
//!
//! Who may is the core's rule (`minting`): a console session carries only the `console` scope,
//! so here the grounds are the policy's `[token_admins]` alone, with the tier ceiling the policy
//! gives the token's user. Every post is checked again, CSRF first, and audited as the admin
//! API audits it (`token-minted`, `token-revoked`; a refusal is `admin-denied`).

use std::sync::Arc;
use std::time::Duration;

use axum::Form;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use maud::{Markup, html};
use serde::Deserialize;

use execmesh_proto::pb;

use super::ConsoleState;
use super::page::{self, Section};
use super::session::Session;
use crate::core::auth::{Issued, TokenSpec};
use crate::core::minting::{self, Grounds};
use crate::core::revocation;
use crate::core::tier::Tier;

/// The mint form.
#[derive(Debug, Default, Deserialize)]
pub struct MintForm {
    #[serde(default)]
    csrf: String,
    /// The token's user; the signed-in person when empty.
    #[serde(default)]
    user: String,
    /// Present when the `mcp` scope is ticked.
    #[serde(default)]
    scope_mcp: Option<String>,
    /// Present when the `admin` scope is ticked.
    #[serde(default)]
    scope_admin: Option<String>,
    /// A tier name; the user's ceiling when empty.
    #[serde(default)]
    tier: String,
    /// Lifetime in hours; the default when empty.
    #[serde(default)]
    hours: String,
}

/// The revoke form: a token id or a whole token.
#[derive(Debug, Default, Deserialize)]
pub struct RevokeForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    token_id: String,
    #[serde(default)]
    token: String,
}

/// What to show above the page after an action.
enum Outcome {
    Minted {
        issued: Issued,
        user: String,
        scope: String,
        tier: Tier,
    },
    Revoked {
        token_id: String,
    },
    Failed(String),
}

/// GET `/console/tokens`.
pub async fn show(State(state): State<Arc<ConsoleState>>, session: Session) -> Response {
    render(&state, &session, StatusCode::OK, None).await
}

/// POST `/console/tokens/mint`.
pub async fn mint(
    State(state): State<Arc<ConsoleState>>,
    session: Session,
    Form(form): Form<MintForm>,
) -> Response {
    if let Err(refused) = session.check_csrf(&state, &form.csrf) {
        return refused;
    }
    let me = session.identity.user.as_str();
    let policy = state.policy.current();
    if let Err(refused) = allowed(&state, &session, "mint") {
        return refused;
    }
    let user = match form.user.trim() {
        "" => me.to_string(),
        user => user.to_string(),
    };
    let mut scopes = Vec::new();
    if form.scope_mcp.is_some() {
        scopes.push("mcp".to_string());
    }
    if form.scope_admin.is_some() {
        scopes.push("admin".to_string());
    }
    let failed = |status, why: String| (status, Outcome::Failed(why));
    let outcome = async {
        let scope =
            minting::token_scope(&scopes).map_err(|e| failed(StatusCode::BAD_REQUEST, e))?;
        let asked_ttl = match form.hours.trim() {
            "" => None,
            hours => match hours.parse::<u64>() {
                Ok(h) if h > 0 => Some(Duration::from_secs(h * 3600)),
                _ => {
                    return Err(failed(
                        StatusCode::BAD_REQUEST,
                        format!("`{hours}` is not a lifetime in whole hours"),
                    ));
                }
            },
        };
        let ttl = minting::lifetime(asked_ttl, state.bearer.key.max_lifetime())
            .map_err(|e| failed(StatusCode::BAD_REQUEST, e))?;
        let asked = match form.tier.trim() {
            "" => None,
            tier => Some(
                tier.parse::<Tier>()
                    .map_err(|e| failed(StatusCode::BAD_REQUEST, e.to_string()))?,
            ),
        };
        let refused = |e: minting::MintRefusal| {
            let status = match e {
                minting::MintRefusal::UnknownUser { .. } => StatusCode::BAD_REQUEST,
                _ => {
                    state
                        .audit
                        .admin_denied(me, "console mint token", &e.to_string());
                    StatusCode::FORBIDDEN
                }
            };
            failed(status, e.to_string())
        };
        let (grounds, ceiling) =
            minting::entitlement_as_token_admin(&policy, me, &user).map_err(refused)?;
        let tier = minting::tier_within(me, &user, grounds, asked, ceiling).map_err(refused)?;
        let issued = state
            .bearer
            .key
            .issue(
                &state.bearer.audience,
                &TokenSpec {
                    user: &user,
                    ttl,
                    scope: &scope,
                    tier,
                    client_id: None,
                },
            )
            .map_err(|e| {
                failed(
                    StatusCode::BAD_REQUEST,
                    format!("cannot mint the token: {e}"),
                )
            })?;
        audit_minted(&state, me, &user, &scope, tier, grounds, &issued);
        Ok(Outcome::Minted {
            issued,
            user,
            scope,
            tier,
        })
    }
    .await;
    match outcome {
        Ok(outcome) => render(&state, &session, StatusCode::OK, Some(outcome)).await,
        Err((status, outcome)) => render(&state, &session, status, Some(outcome)).await,
    }
}

/// POST `/console/tokens/revoke`.
pub async fn revoke(
    State(state): State<Arc<ConsoleState>>,
    session: Session,
    Form(form): Form<RevokeForm>,
) -> Response {
    if let Err(refused) = session.check_csrf(&state, &form.csrf) {
        return refused;
    }
    if let Err(refused) = allowed(&state, &session, "revoke") {
        return refused;
    }
    let me = session.identity.user.as_str();
    let target = if !form.token.trim().is_empty() {
        match state
            .bearer
            .key
            .verify(form.token.trim(), &state.bearer.audience)
        {
            Ok(identity) => Ok((
                identity.token_id,
                identity.expires_at,
                identity.user.to_string(),
            )),
            Err(e) => Err(format!(
                "cannot revoke that token: {e} (an expired token needs no revocation; revoke by \
                 token id otherwise)"
            )),
        }
    } else {
        let id = form.token_id.trim();
        if minting::is_token_id(id) {
            // The token's expiry is not known from its id: keep the revocation as long as any
            // token this gateway accepts can live.
            let until = execmesh_proto::now_ms() / 1000 + state.bearer.key.max_lifetime().as_secs();
            Ok((id.to_string(), until, String::new()))
        } else {
            Err(format!(
                "`{id}` is not a token id (the `jti` of a token: letters, digits, `-` and `_`)"
            ))
        }
    };
    let (jti, expires_at, for_user) = match target {
        Ok(target) => target,
        Err(why) => {
            return render(
                &state,
                &session,
                StatusCode::BAD_REQUEST,
                Some(Outcome::Failed(why)),
            )
            .await;
        }
    };
    if let Err(e) = state.revocations.revoke(&jti, expires_at).await {
        let why = format!("cannot write the revocation list ({e}); try again shortly");
        return render(
            &state,
            &session,
            StatusCode::SERVICE_UNAVAILABLE,
            Some(Outcome::Failed(why)),
        )
        .await;
    }
    state.audit.token_revoked(
        me,
        pb::TokenRevoked {
            token_id: jti.clone(),
            for_user,
            kept_until_ms: expires_at * 1000,
            by: me.to_string(),
        },
    );
    tracing::info!(jti = %jti, by = %me, "token revoked in the console");
    render(
        &state,
        &session,
        StatusCode::OK,
        Some(Outcome::Revoked { token_id: jti }),
    )
    .await
}

/// `Ok` when the signed-in person may manage tokens here; otherwise the refusal (403), audited.
fn allowed(state: &ConsoleState, session: &Session, action: &str) -> Result<(), Response> {
    let me = session.identity.user.as_str();
    let policy = state.policy.current();
    if minting::may_manage_tokens(&policy, me) {
        return Ok(());
    }
    let why = format!(
        "{me} may not {action} tokens in the console: only the policy's [token_admins] may \
         (token admins: {})",
        policy.token_admins().describe()
    );
    state
        .audit
        .admin_denied(me, &format!("console {action} token"), &why);
    Err(page::error(
        StatusCode::FORBIDDEN,
        "Tokens",
        &why,
        Some(session),
    ))
}

fn audit_minted(
    state: &ConsoleState,
    me: &str,
    user: &str,
    scope: &str,
    tier: Tier,
    grounds: Grounds,
    issued: &Issued,
) {
    state.audit.token_minted(
        me,
        pb::TokenMinted {
            token_id: issued.jti.clone(),
            for_user: user.to_string(),
            scopes: scope.split(' ').map(str::to_string).collect(),
            tier: tier.to_string(),
            expires_at_ms: issued.expires_at * 1000,
            by: me.to_string(),
            grounds: grounds.as_str().to_string(),
        },
    );
    tracing::info!(for_user = %user, jti = %issued.jti, scope = %scope, tier = %tier, by = %me, grounds = grounds.as_str(), "token minted in the console");
}

/// The page, with `outcome` above it.
async fn render(
    state: &ConsoleState,
    session: &Session,
    status: StatusCode,
    outcome: Option<Outcome>,
) -> Response {
    let me = session.identity.user.as_str();
    let policy = state.policy.current();
    let body = if minting::may_manage_tokens(&policy, me) {
        let ceiling = policy.grant(me).map(|g| g.tier).unwrap_or(Tier::Readonly);
        let revocations = revocation::in_force(&state.mesh).await;
        html! {
            (outcome_markup(outcome.as_ref()))
            h2 { "Mint a token" }
            (mint_form(session, ceiling))
            h2 { "Revoke a token" }
            (revoke_form(session))
            h2 { "Revocations in force" }
            @match &revocations {
                Ok(list) if list.is_empty() => p.muted #no-revocations { "No token is revoked." },
                Ok(list) => table #revocations {
                    thead { tr {
                        th scope="col" { "Token id" } th scope="col" { "Revoked" } th scope="col" { "Kept until" }
                    } }
                    tbody {
                        @for r in list {
                            tr data-token=(r.token_id) {
                                td { code { (r.token_id) } }
                                td { (page::time(r.revoked_at_ms)) }
                                td { (page::time(r.expires_at_ms)) }
                            }
                        }
                    }
                },
                Err(e) => p.error role="alert" { "Cannot read the revocation list (" (e) "); try again shortly." },
            }
        }
    } else {
        html! {
            (outcome_markup(outcome.as_ref()))
            p.muted #not-token-admin {
                "Minting and revoking tokens in the console is for the policy's token admins ("
                (policy.token_admins().describe()) "). Ask one of them, or the key holder "
                "(" code { "execmesh-gateway token mint" } ")."
            }
        }
    };
    page::respond(
        status,
        page::frame(Section::Tokens, "Tokens", Some(session), body),
    )
}

fn outcome_markup(outcome: Option<&Outcome>) -> Markup {
    match outcome {
        None => html! {},
        Some(Outcome::Minted {
            issued,
            user,
            scope,
            tier,
        }) => html! {
            section #minted role="status" {
                p.notice {
                    "Minted a " (tier) " token for " strong { (user) } " with scope " code { (scope) }
                    ", id " code #minted-id { (issued.jti) } ", expiring " (page::time(issued.expires_at * 1000))
                    ". Copy it now: it is shown only once."
                }
                pre #minted-token { (issued.token) }
            }
        },
        Some(Outcome::Revoked { token_id }) => html! {
            p.notice role="status" #revoked { "Revoked token " code { (token_id) } "." }
        },
        Some(Outcome::Failed(why)) => html! {
            p.error role="alert" #token-error { (why) }
        },
    }
}

fn mint_form(session: &Session, ceiling: Tier) -> Markup {
    html! {
        form.stack #mint method="post" action="/console/tokens/mint" {
            (page::csrf(session))
            label { "User (empty for yourself) " input #mint-user type="text" name="user" placeholder=(session.identity.user); }
            fieldset {
                legend { "Scopes" }
                label { input type="checkbox" name="scope_mcp" value="on" checked; " mcp (tools)" }
                label { input type="checkbox" name="scope_admin" value="on"; " admin (admin API, execmeshctl)" }
            }
            label { "Tier (at most the user's tier in the policy) "
                select #mint-tier name="tier" {
                    option value="" selected { "the user's tier" }
                    @for tier in Tier::ALL {
                        option value=(tier) { (tier) @if tier > ceiling { " (above yours)" } }
                    }
                }
            }
            label { "Lifetime in hours (empty for 12) " input #mint-hours type="number" name="hours" min="1"; }
            button type="submit" { "Mint" }
        }
    }
}

fn revoke_form(session: &Session) -> Markup {
    html! {
        form.stack #revoke method="post" action="/console/tokens/revoke" {
            (page::csrf(session))
            label { "Token id " input #revoke-id type="text" name="token_id"; }
            label { "or the whole token " textarea #revoke-token name="token" rows="3" {} }
            button type="submit" { "Revoke" }
        }
    }
}
