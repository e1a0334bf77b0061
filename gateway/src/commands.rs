//! The one-shot subcommands of `execmesh-gateway`: `token mint` and `user add`.
//!
//! Each returns what to print on success and an error naming what is wrong; `main` maps them to
//! exit codes.

use std::io::Read;

use crate::config::Config;
use crate::core::auth::{SigningKey, TokenSpec};
pub use crate::core::minting::token_scope;
use crate::core::policy::{self, NewUser, Policy};
use crate::core::tier::Tier;

/// Why a subcommand failed. `Usage` errors exit 64 (a bad argument), others 1.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("{0}")]
    Usage(String),
    /// The policy does not allow what was asked (a tier above the user's).
    #[error("{0}")]
    Refused(String),
    #[error(transparent)]
    Policy(#[from] policy::PolicyError),
    #[error(transparent)]
    Auth(#[from] crate::core::auth::AuthError),
    #[error("cannot read the password from standard input: {0}")]
    Stdin(std::io::Error),
}

/// A token `token mint` made, and what it says.
#[derive(Debug, Clone)]
pub struct Minted {
    /// The bearer token.
    pub token: String,
    /// Its id (`jti`), the key of a revocation.
    pub token_id: String,
    /// The user it speaks for.
    pub user: String,
    /// Its tier cap.
    pub tier: Tier,
    /// The resource it is for (the gateway's `public_url`).
    pub resource: String,
    /// Unix seconds.
    pub expires_at: u64,
}

/// `token mint`: a bearer token for `user` valid for `ttl`, for headless clients and CI, signed
/// with the key of the gateway `config` describes and naming its issuer and audience. With a
/// policy the user must exist in it and the token's tier is the user's, or `tier` when that is
/// not above it (above it is refused, never silently lowered); without one (development mode)
/// the token is `dangerous` unless capped. `scopes` says what it may be used for: `mcp` (the MCP
/// endpoint) and/or `admin` (the admin API). The key must exist: a key made here would match no
/// gateway.
pub fn mint(
    config: &Config,
    user: &str,
    ttl: &str,
    tier: Option<&str>,
    scopes: &[String],
) -> Result<Minted, CommandError> {
    let ttl = execmesh_proto::duration::parse(ttl)
        .map_err(|e| CommandError::Usage(format!("invalid --ttl: {e}")))?;
    let max = config.max_token_lifetime;
    if ttl.is_zero() || ttl > max {
        return Err(CommandError::Usage(format!(
            "invalid --ttl: {} s is not between 1 s and the longest lifetime this gateway \
             accepts, {} s ({} days; max_token_lifetime_secs)",
            ttl.as_secs(),
            max.as_secs(),
            max.as_secs() / 86400
        )));
    }
    let scope =
        token_scope(scopes).map_err(|e| CommandError::Usage(format!("invalid --scope: {e}")))?;
    let asked = tier
        .map(|t| t.parse::<Tier>())
        .transpose()
        .map_err(|e| CommandError::Usage(format!("invalid --tier: {e}")))?;
    if !config.audience_explicit {
        return Err(CommandError::Usage(
            "which gateway is the token for? Give that gateway's settings: its `--config FILE`, \
             or `--public-url URL` as it has it (without a public_url, the `--listen ADDR` it \
             serves on, and `--tls-cert`/`--tls-key` when it serves HTTPS). A token names its \
             gateway's issuer and audience, and no other gateway accepts it"
                .to_string(),
        ));
    }
    let policy = match &config.policy_file {
        Some(path) => Policy::load(path)?,
        None => Policy::development(),
    };
    let grant = policy.grant(user).ok_or_else(|| {
        CommandError::Usage(format!(
            "user `{user}` is not in the policy; add it with `execmesh-gateway user add {user}`"
        ))
    })?;
    let tier = match asked {
        None => grant.tier,
        Some(asked) if asked <= grant.tier => asked,
        Some(asked) => {
            return Err(CommandError::Refused(format!(
                "--tier {asked} is above the tier of user `{user}` in the policy ({}); a token \
                 can only lower it",
                grant.tier
            )));
        }
    };
    let key = SigningKey::load(&config.key_file)?.with_max_lifetime(max);
    let audience = config.audience(config.listen);
    let spec = TokenSpec {
        user,
        ttl,
        scope: &scope,
        tier,
        client_id: None,
    };
    let issued = key.issue(&audience, &spec)?;
    Ok(Minted {
        token: issued.token,
        token_id: issued.jti,
        user: user.to_string(),
        tier,
        resource: audience.resource,
        expires_at: issued.expires_at,
    })
}

/// What `user add` did.
#[derive(Debug)]
pub struct Added {
    /// The generated password, when none was given on standard input: shown once.
    pub generated_password: Option<String>,
    /// The user's tier under the new policy.
    pub tier: Tier,
}

/// `user add`: writes `name` into the policy file with an argon2 hash of the password read from
/// `stdin` (one line), or of a generated one.
pub fn add_user(
    config: &Config,
    name: &str,
    tier: Option<&str>,
    groups: Vec<String>,
    password_stdin: Option<&mut dyn Read>,
    replace: bool,
) -> Result<Added, CommandError> {
    let path = config.policy_file.as_ref().ok_or_else(|| {
        CommandError::Usage(
            "no policy file configured: set `policy_file` in the config, --policy-file or \
             EXECMESH_POLICY_FILE"
                .to_string(),
        )
    })?;
    let tier = tier
        .map(|t| t.parse::<Tier>())
        .transpose()
        .map_err(|e| CommandError::Usage(format!("invalid --tier: {e}")))?;
    let (password, generated) = match password_stdin {
        Some(stdin) => {
            let mut text = String::new();
            stdin
                .read_to_string(&mut text)
                .map_err(CommandError::Stdin)?;
            let line = text.lines().next().unwrap_or_default().to_string();
            if line.is_empty() {
                return Err(CommandError::Usage(
                    "the password on standard input is empty".to_string(),
                ));
            }
            (line, None)
        }
        None => {
            let password = policy::password::generate();
            (password.clone(), Some(password))
        }
    };
    let user = NewUser {
        name: name.to_string(),
        password,
        tier,
        groups,
        replace,
    };
    let policy = policy::add_user(path, &user)?;
    // A user the new policy does not grant (it cannot happen for one just added) looks only.
    let tier = policy.grant(name).map(|g| g.tier).unwrap_or(Tier::Readonly);
    Ok(Added {
        generated_password: generated,
        tier,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_scopes_default_to_mcp_and_only_known_ones_are_minted() {
        let scopes =
            |list: &[&str]| token_scope(&list.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert_eq!(scopes(&[]).unwrap(), "mcp");
        assert_eq!(scopes(&["admin"]).unwrap(), "admin");
        assert_eq!(scopes(&["admin", " mcp", "admin"]).unwrap(), "admin mcp");
        assert!(scopes(&["mcp", "root"]).unwrap_err().contains("`root`"));
    }

    /// A gateway configuration with a key and a policy where bob is `standard`.
    fn gateway(dir: &std::path::Path) -> Config {
        let key = dir.join("gateway.key");
        SigningKey::load_or_create(&key).unwrap();
        let policy = dir.join("policy.toml");
        std::fs::write(&policy, "[users.bob]\ntier = \"standard\"\n").unwrap();
        let mut config = Config::new("nats://127.0.0.1:4222", key);
        config.policy_file = Some(policy);
        config.public_url = Some("https://gw.example.com/mcp".into());
        config.audience_explicit = true;
        config
    }

    #[test]
    fn a_tier_above_the_users_is_an_error_not_a_downgrade() {
        let dir = tempfile::tempdir().unwrap();
        let config = gateway(dir.path());
        let err = mint(&config, "bob", "1h", Some("dangerous"), &[]).unwrap_err();
        assert!(matches!(err, CommandError::Refused(_)), "{err:?}");
        let text = err.to_string();
        for needle in ["dangerous", "`bob`", "standard"] {
            assert!(text.contains(needle), "{needle} missing from: {text}");
        }
        let minted = mint(&config, "bob", "1h", Some("readonly"), &[]).unwrap();
        assert_eq!(minted.tier, Tier::Readonly);
        assert_eq!(
            mint(&config, "bob", "1h", None, &[]).unwrap().tier,
            Tier::Standard
        );
    }

    #[test]
    fn the_token_names_the_configured_gateway_and_lives_no_longer_than_allowed() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = gateway(dir.path());
        let minted = mint(&config, "bob", "30d", None, &[]).unwrap();
        assert_eq!(minted.resource, "https://gw.example.com/mcp");
        let key = SigningKey::load(&config.key_file).unwrap();
        let audience = crate::core::auth::Audience::parse("https://gw.example.com/mcp").unwrap();
        assert!(key.verify(&minted.token, &audience).is_ok());
        let err = mint(&config, "bob", "400d", None, &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("max_token_lifetime_secs"), "{err}");
        config.max_token_lifetime = std::time::Duration::from_secs(3600);
        assert!(mint(&config, "bob", "2h", None, &[]).is_err());
        // Without public_url or listen the command does not guess.
        config.audience_explicit = false;
        let err = mint(&config, "bob", "1h", None, &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("--public-url"), "{err}");
        // A missing key is an error, not a fresh key no gateway knows.
        let mut config = gateway(dir.path());
        config.key_file = dir.path().join("missing.key");
        assert!(mint(&config, "bob", "1h", None, &[]).is_err());
        assert!(!config.key_file.exists());
    }
}
