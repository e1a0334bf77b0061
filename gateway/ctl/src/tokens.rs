//! `execmeshctl token mint|revoke|revocations`: bearer tokens for `/mcp` and the admin API.

use serde_json::json;

use execmesh_proto::{Tier, now_ms, pb};

use crate::cli::TokenCommand;
use crate::connect::{Admin, Settings};
use crate::table::{self, Table};
use crate::{CtlError, enum_word, print, print_json};

/// Dispatches `token mint`, `token revoke` and `token revocations`.
pub async fn run(settings: Settings, command: TokenCommand, json: bool) -> Result<(), CtlError> {
    match command {
        TokenCommand::Mint {
            user,
            ttl,
            scopes,
            tier,
        } => {
            let ttl_secs = match ttl {
                None => 0,
                Some(text) => execmesh_proto::duration::parse(&text)
                    .map_err(|e| CtlError::Usage(format!("--ttl: {e}")))?
                    .as_secs()
                    .max(1),
            };
            // No --tier: the gateway gives the token its ceiling.
            let tier = match tier {
                None => pb::Tier::Unspecified,
                Some(text) => text
                    .parse::<Tier>()
                    .map_err(|e| CtlError::Usage(format!("--tier: {e}")))?
                    .to_wire(),
            };
            let request = pb::MintTokenRequest {
                user,
                ttl_secs,
                scopes,
                tier: tier as i32,
            };
            let mut admin = settings.connect().await?;
            mint(&mut admin, request, json).await
        }
        TokenCommand::Revoke { target } => {
            let target = target.trim().to_string();
            // A JWT is three base64url parts; an id never holds a dot.
            let target = if target.matches('.').count() == 2 {
                pb::revoke_token_request::Target::Token(target)
            } else {
                pb::revoke_token_request::Target::TokenId(target)
            };
            let mut admin = settings.connect().await?;
            revoke(&mut admin, target, json).await
        }
        TokenCommand::Revocations => {
            let mut admin = settings.connect().await?;
            revocations(&mut admin, json).await
        }
    }
}

async fn mint(
    admin: &mut Admin,
    request: pb::MintTokenRequest,
    json: bool,
) -> Result<(), CtlError> {
    let minted = admin
        .call(request, async |c, r| c.tokens.mint(r).await)
        .await?;
    let tier = tier_word(minted.tier);
    if json {
        return print_json(&json!({
            "token": minted.token,
            "token_id": minted.token_id,
            "user": minted.user,
            "scopes": minted.scopes,
            "tier": tier,
            "expires_at_ms": minted.expires_at_ms,
        }));
    }
    // The token alone on stdout, so `TOKEN=$(execmeshctl token mint ...)` works; the rest is
    // for the person at the terminal.
    print(&format!("{}\n", minted.token))?;
    eprintln!(
        "token {} for {} (scopes {}, tier {tier}), expires {} ({}); revoke it with `execmeshctl \
         token revoke {}`",
        minted.token_id,
        minted.user,
        minted.scopes.join(" "),
        table::timestamp(minted.expires_at_ms),
        table::ago(minted.expires_at_ms, now_ms()),
        minted.token_id
    );
    Ok(())
}

async fn revoke(
    admin: &mut Admin,
    target: pb::revoke_token_request::Target,
    json: bool,
) -> Result<(), CtlError> {
    let revoked = admin
        .call(
            pb::RevokeTokenRequest {
                target: Some(target),
            },
            async |c, r| c.tokens.revoke(r).await,
        )
        .await?;
    if json {
        return print_json(&json!({
            "token_id": revoked.token_id,
            "expires_at_ms": revoked.expires_at_ms,
        }));
    }
    print(&format!(
        "revoked token {}: every gateway refuses it within about a second (kept on the list \
         until {})\n",
        revoked.token_id,
        table::timestamp(revoked.expires_at_ms)
    ))
}

async fn revocations(admin: &mut Admin, json: bool) -> Result<(), CtlError> {
    let response = admin
        .call(pb::ListRevocationsRequest {}, async |c, r| {
            c.tokens.list_revocations(r).await
        })
        .await?;
    if json {
        return print_json(&json!({
            "revocations": response.revocations.iter().map(|r| json!({
                "token_id": r.token_id,
                "revoked_at_ms": r.revoked_at_ms,
                "expires_at_ms": r.expires_at_ms,
            })).collect::<Vec<_>>(),
        }));
    }
    if response.revocations.is_empty() {
        return print("no revocations in force\n");
    }
    let now = now_ms();
    let mut table = Table::new(&["TOKEN ID", "REVOKED", "KEPT UNTIL"]);
    for r in &response.revocations {
        table.row(vec![
            r.token_id.clone(),
            table::ago(r.revoked_at_ms, now),
            format!(
                "{} ({})",
                table::timestamp(r.expires_at_ms),
                table::ago(r.expires_at_ms, now)
            ),
        ]);
    }
    print(&table.render())
}

fn tier_word(tier: i32) -> String {
    pb::Tier::try_from(tier)
        .map(|t| enum_word(t.as_str_name(), "TIER_"))
        .unwrap_or_else(|_| tier.to_string())
}
