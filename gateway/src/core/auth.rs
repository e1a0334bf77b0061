//! Bearer tokens: Ed25519-signed JWTs that every gateway replica holding the same key verifies.
//!
//! The key is a 32-byte Ed25519 seed kept (base64) in the gateway's state directory. Tokens are
//! compact JWS (`alg: EdDSA`), so any JWT library can inspect them; verification needs no shared
//! session state, only the key file.

use std::fmt;
use std::path::Path;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use ed25519_dalek::{Signature, Signer, Verifier};
use serde::{Deserialize, Serialize};

use execmesh_proto::Token;

use crate::core::tier::Tier;

/// The scope a token needs to use `/mcp`.
pub const MCP_SCOPE: &str = "mcp";
/// The scope a token needs to use the admin API.
pub const ADMIN_SCOPE: &str = "admin";
/// The only scope of a console session: a session cookie is a token that `/mcp` and the admin
/// API refuse.
pub const CONSOLE_SCOPE: &str = "console";
/// Longest lifetime (`exp - iat`) a token may have unless `max_token_lifetime_secs` says
/// otherwise: long enough for a quarter's CI token (and the quickstart's 30-day ones), short
/// enough that a forgotten token does not live for years.
pub const DEFAULT_MAX_LIFETIME: Duration = Duration::from_secs(90 * 24 * 3600);
/// The most `max_token_lifetime_secs` may be set to.
pub const LONGEST_MAX_LIFETIME: Duration = Duration::from_secs(366 * 24 * 3600);
/// How far a token's `iat` and `nbf` may lie in the future of this replica's clock: replicas
/// and minting hosts keep their clocks within this of each other (NTP does far better).
pub const CLOCK_SKEW: Duration = Duration::from_secs(60);

/// Why a key could not be loaded or a token could not be minted or verified.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("cannot read key file {path}: {source}")]
    ReadKey {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot write key file {path}: {source}")]
    WriteKey {
        path: String,
        source: std::io::Error,
    },
    #[error("key file {path} does not hold a base64 Ed25519 seed of 32 bytes")]
    BadKey { path: String },
    #[error("invalid user name: {0}")]
    BadUser(#[from] execmesh_proto::TokenError),
    #[error(
        "token lifetime {asked_secs} s is not between 1 second and the longest this gateway \
         allows, {max_secs} s ({} days; max_token_lifetime_secs)",
        .max_secs / 86400
    )]
    BadTtl { asked_secs: u64, max_secs: u64 },
    #[error("the token is malformed")]
    Malformed,
    #[error("the token's signature does not verify with this gateway's key")]
    BadSignature,
    #[error("the token expired {0} seconds ago")]
    Expired(u64),
    #[error("the token is not valid yet: its nbf is {0} seconds in the future")]
    NotYetValid(u64),
    #[error(
        "the token claims to be issued {0} seconds in the future (iat); the clocks of the \
         gateway and of whoever minted it disagree, or it was forged with the key"
    )]
    IssuedInFuture(u64),
    #[error(
        "the token lives {lifetime_secs} s (exp - iat), longer than this gateway allows \
         ({max_secs} s; max_token_lifetime_secs)"
    )]
    LifetimeTooLong { lifetime_secs: u64, max_secs: u64 },
    #[error("the token was issued by `{0}`, not by this gateway")]
    WrongIssuer(String),
    #[error("the token was issued for `{0}`, not for this resource")]
    WrongAudience(String),
    #[error("the token was revoked")]
    Revoked,
}

impl AuthError {
    /// One word for the audit trail's `auth-failed` events and their outcome.
    pub fn code(&self) -> &'static str {
        match self {
            Self::ReadKey { .. } | Self::WriteKey { .. } | Self::BadKey { .. } => "key",
            Self::BadUser(_) => "bad_user",
            Self::BadTtl { .. } => "bad_ttl",
            Self::Malformed => "malformed",
            Self::BadSignature => "bad_signature",
            Self::Expired(_) => "expired",
            Self::NotYetValid(_) => "not_yet_valid",
            Self::IssuedInFuture(_) => "issued_in_future",
            Self::LifetimeTooLong { .. } => "lifetime_too_long",
            Self::WrongIssuer(_) => "wrong_issuer",
            Self::WrongAudience(_) => "wrong_audience",
            Self::Revoked => "revoked",
        }
    }
}

/// Who issues tokens and for which resource: the authorization server's issuer identifier and
/// the canonical URL of `/mcp` (RFC 8707). Every replica behind one public URL shares both.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Audience {
    /// `https://gateway.example.com` (no trailing slash).
    pub issuer: String,
    /// `https://gateway.example.com/mcp`.
    pub resource: String,
}

// === impl Audience ===

impl Audience {
    /// Parses the public URL of `/mcp`: `http(s)://host[:port]/path`, no query or fragment.
    pub fn parse(public_url: &str) -> Result<Self, String> {
        let url = url::Url::parse(public_url).map_err(|e| format!("`{public_url}`: {e}"))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(format!(
                "`{public_url}` must start with https:// or http://"
            ));
        }
        if url.host_str().is_none() || url.query().is_some() || url.fragment().is_some() {
            return Err(format!(
                "`{public_url}` must name a host and have no query or fragment"
            ));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(format!("`{public_url}` must not carry credentials"));
        }
        let issuer = url.origin().ascii_serialization();
        let path = url.path().trim_end_matches('/');
        Ok(Self {
            resource: format!("{issuer}{path}"),
            issuer,
        })
    }

    /// `http://<addr>/mcp`, with 127.0.0.1 (or ::1) for an unspecified address.
    pub fn for_listen(addr: std::net::SocketAddr, https: bool) -> Self {
        let ip = match addr.ip() {
            std::net::IpAddr::V4(ip) if ip.is_unspecified() => {
                std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST)
            }
            std::net::IpAddr::V6(ip) if ip.is_unspecified() => {
                std::net::IpAddr::V6(std::net::Ipv6Addr::LOCALHOST)
            }
            ip => ip,
        };
        let scheme = if https { "https" } else { "http" };
        let issuer = format!("{scheme}://{}", std::net::SocketAddr::new(ip, addr.port()));
        Self {
            resource: format!("{issuer}/mcp"),
            issuer,
        }
    }

    /// The resource's path, e.g. `/mcp`.
    pub fn resource_path(&self) -> &str {
        &self.resource[self.issuer.len()..]
    }

    /// The host name of the public URL (no port), for Host header validation.
    pub fn host(&self) -> String {
        url::Url::parse(&self.issuer)
            .ok()
            .and_then(|u| u.host_str().map(str::to_string))
            .unwrap_or_default()
    }
}

/// What an access token says (besides who signed it).
#[derive(Debug, Clone)]
pub struct TokenSpec<'a> {
    pub user: &'a str,
    pub ttl: Duration,
    /// Space-separated scopes; `mcp` to use the MCP endpoint.
    pub scope: &'a str,
    /// The highest tier the token may act with; the policy may grant less.
    pub tier: Tier,
    /// The OAuth client the token was issued to; `None` for `token mint`.
    pub client_id: Option<&'a str>,
}

/// A freshly signed token and what was put in it.
#[derive(Debug, Clone)]
pub struct Issued {
    pub token: String,
    /// The token's id (`jti`), the key of a revocation.
    pub jti: String,
    /// Unix seconds.
    pub expires_at: u64,
}

/// The verified identity carried by a request: what the token says, then narrowed by the policy
/// in force (see [`Identity::with_grant`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The user, a subject-safe token.
    pub user: Token,
    /// Unix seconds at which the token expires.
    pub expires_at: u64,
    /// The token's id, for revocation and audit.
    pub token_id: String,
    /// The guard tier the caller acts with: the token's tier, capped by the policy's grant.
    pub tier: Tier,
    /// The token's scopes.
    pub scopes: Vec<String>,
    /// The OAuth client the token was issued to, if any.
    pub client_id: Option<String>,
    /// The caller's groups in the policy.
    pub groups: Vec<String>,
    /// Selectors of the hosts the caller may reach (`*`: all; empty: none).
    pub reach: Vec<String>,
    /// The unix account the policy maps the caller to, as a hint for the agents.
    pub run_as: Option<String>,
}

impl Identity {
    /// Narrows the token's identity to what the policy grants now: the lower of the two tiers,
    /// and the policy's groups, reach and run-as.
    pub fn with_grant(mut self, grant: &crate::core::policy::Grant) -> Self {
        self.tier = self.tier.min(grant.tier);
        self.groups = grant.groups.clone();
        self.reach = grant.reach.clone();
        self.run_as = grant.run_as.clone();
        self
    }

    /// Whether the token carries `scope`.
    pub fn has_scope(&self, scope: &str) -> bool {
        self.scopes.iter().any(|s| s == scope)
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    iss: String,
    sub: String,
    aud: String,
    iat: u64,
    exp: u64,
    /// Not before (unix seconds); this gateway does not set it, but honours it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    nbf: Option<u64>,
    jti: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    scope: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    tier: Option<Tier>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    client_id: Option<String>,
}

/// The gateway's token key, and the longest lifetime it signs and accepts. Cloning shares
/// nothing mutable.
#[derive(Clone)]
pub struct SigningKey {
    key: ed25519_dalek::SigningKey,
    /// Tokens living longer (`exp - iat`) are neither issued nor accepted.
    max_lifetime: Duration,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SigningKey(..)")
    }
}

fn now_secs() -> u64 {
    execmesh_proto::now_ms() / 1000
}

// === impl SigningKey ===

impl SigningKey {
    /// Generates a fresh key (not persisted).
    pub fn generate() -> Self {
        let seed: [u8; 32] = rand::random();
        Self {
            key: ed25519_dalek::SigningKey::from_bytes(&seed),
            max_lifetime: DEFAULT_MAX_LIFETIME,
        }
    }

    /// The same key, issuing and accepting tokens that live at most `max` (the gateway's
    /// `max_token_lifetime_secs`).
    pub fn with_max_lifetime(mut self, max: Duration) -> Self {
        self.max_lifetime = max;
        self
    }

    /// The longest lifetime this key issues and accepts.
    pub fn max_lifetime(&self) -> Duration {
        self.max_lifetime
    }

    /// Loads the key from `path`, creating it (mode 0600, parent directories too) if it does
    /// not exist yet, so a first start needs no setup and later starts keep issued tokens valid.
    pub fn load_or_create(path: &Path) -> Result<Self, AuthError> {
        match std::fs::read_to_string(path) {
            Ok(text) => Self::from_base64(text.trim(), path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = Self::generate();
                key.write(path)?;
                Ok(key)
            }
            Err(source) => Err(AuthError::ReadKey {
                path: path.display().to_string(),
                source,
            }),
        }
    }

    /// Loads an existing key; a missing file is an error.
    pub fn load(path: &Path) -> Result<Self, AuthError> {
        let text = std::fs::read_to_string(path).map_err(|source| AuthError::ReadKey {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_base64(text.trim(), path)
    }

    fn from_base64(text: &str, path: &Path) -> Result<Self, AuthError> {
        let bad = || AuthError::BadKey {
            path: path.display().to_string(),
        };
        let bytes = STANDARD.decode(text).map_err(|_| bad())?;
        let seed: [u8; 32] = bytes.try_into().map_err(|_| bad())?;
        Ok(Self {
            key: ed25519_dalek::SigningKey::from_bytes(&seed),
            max_lifetime: DEFAULT_MAX_LIFETIME,
        })
    }

    fn write(&self, path: &Path) -> Result<(), AuthError> {
        crate::core::key_file::write_new(path, &self.key.to_bytes()).map_err(|source| {
            AuthError::WriteKey {
                path: path.display().to_string(),
                source,
            }
        })
    }

    /// A 32-byte secret for `purpose` derived from the key (HMAC-SHA256 of the purpose under the
    /// seed), for other values every replica must agree on (job cursors); the key itself never
    /// leaves this type, and secrets of different purposes are unrelated.
    pub fn derive_secret(&self, purpose: &str) -> [u8; 32] {
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &self.key.to_bytes());
        let tag = ring::hmac::sign(&key, purpose.as_bytes());
        let mut secret = [0u8; 32];
        secret.copy_from_slice(tag.as_ref());
        secret
    }

    /// Signs an access token for `audience` as `spec` says.
    pub fn issue(&self, audience: &Audience, spec: &TokenSpec<'_>) -> Result<Issued, AuthError> {
        let user = Token::parse("user", spec.user)?;
        if spec.ttl.is_zero() || spec.ttl > self.max_lifetime {
            return Err(AuthError::BadTtl {
                asked_secs: spec.ttl.as_secs(),
                max_secs: self.max_lifetime.as_secs(),
            });
        }
        let now = now_secs();
        let jti: [u8; 12] = rand::random();
        let claims = Claims {
            iss: audience.issuer.clone(),
            sub: user.to_string(),
            aud: audience.resource.clone(),
            iat: now,
            exp: now + spec.ttl.as_secs().max(1),
            nbf: None,
            jti: URL_SAFE_NO_PAD.encode(jti),
            scope: Some(spec.scope.to_string()),
            tier: Some(spec.tier),
            client_id: spec.client_id.map(str::to_string),
        };
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"EdDSA","typ":"at+jwt"}"#);
        let payload =
            URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims).map_err(|_| AuthError::Malformed)?);
        let signing_input = format!("{header}.{payload}");
        let signature = self.key.sign(signing_input.as_bytes());
        Ok(Issued {
            token: format!(
                "{signing_input}.{}",
                URL_SAFE_NO_PAD.encode(signature.to_bytes())
            ),
            jti: claims.jti,
            expires_at: claims.exp,
        })
    }

    /// Verifies a token's signature, issuer, audience and times: not expired, not before its
    /// `nbf`, not issued in the future (beyond [`CLOCK_SKEW`]), and not living longer than this
    /// key's maximum lifetime. The identity's tier is the token's; the caller narrows it with the
    /// policy ([`Identity::with_grant`]).
    pub fn verify(&self, token: &str, audience: &Audience) -> Result<Identity, AuthError> {
        let mut parts = token.split('.');
        let (Some(header), Some(payload), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(AuthError::Malformed);
        };
        let header: serde_json::Value = URL_SAFE_NO_PAD
            .decode(header)
            .ok()
            .and_then(|h| serde_json::from_slice(&h).ok())
            .ok_or(AuthError::Malformed)?;
        if header.get("alg").and_then(|a| a.as_str()) != Some("EdDSA") {
            return Err(AuthError::Malformed);
        }
        let signature: [u8; 64] = URL_SAFE_NO_PAD
            .decode(signature)
            .ok()
            .and_then(|s| s.try_into().ok())
            .ok_or(AuthError::Malformed)?;
        let signing_input = &token[..header_len(token)];
        self.key
            .verifying_key()
            .verify(signing_input.as_bytes(), &Signature::from_bytes(&signature))
            .map_err(|_| AuthError::BadSignature)?;
        let claims: Claims = URL_SAFE_NO_PAD
            .decode(payload)
            .ok()
            .and_then(|p| serde_json::from_slice(&p).ok())
            .ok_or(AuthError::Malformed)?;
        if claims.iss != audience.issuer {
            return Err(AuthError::WrongIssuer(claims.iss));
        }
        if claims.aud != audience.resource {
            return Err(AuthError::WrongAudience(claims.aud));
        }
        let now = now_secs();
        if claims.exp <= now {
            return Err(AuthError::Expired(now - claims.exp));
        }
        let skew = CLOCK_SKEW.as_secs();
        if let Some(nbf) = claims.nbf
            && nbf > now + skew
        {
            return Err(AuthError::NotYetValid(nbf - now));
        }
        if claims.iat > now + skew {
            return Err(AuthError::IssuedInFuture(claims.iat - now));
        }
        // A token whose iat is after its exp is malformed, whatever its lifetime.
        let lifetime = claims
            .exp
            .checked_sub(claims.iat)
            .ok_or(AuthError::Malformed)?;
        if lifetime > self.max_lifetime.as_secs() {
            return Err(AuthError::LifetimeTooLong {
                lifetime_secs: lifetime,
                max_secs: self.max_lifetime.as_secs(),
            });
        }
        Ok(Identity {
            user: Token::parse("user", &claims.sub).map_err(|_| AuthError::Malformed)?,
            expires_at: claims.exp,
            token_id: claims.jti,
            // A token without a tier claim is capped by the policy alone.
            tier: claims.tier.unwrap_or(Tier::Dangerous),
            scopes: claims
                .scope
                .as_deref()
                .unwrap_or_default()
                .split_whitespace()
                .map(str::to_string)
                .collect(),
            client_id: claims.client_id,
            groups: Vec::new(),
            reach: Vec::new(),
            run_as: None,
        })
    }
}

/// Length of `header.payload` in a compact JWS (everything before the last dot).
fn header_len(token: &str) -> usize {
    token.rfind('.').unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn audience() -> Audience {
        Audience {
            issuer: "http://127.0.0.1:8420".into(),
            resource: "http://127.0.0.1:8420/mcp".into(),
        }
    }

    fn mint(key: &SigningKey, user: &str, ttl: Duration) -> String {
        let spec = TokenSpec {
            user,
            ttl,
            scope: MCP_SCOPE,
            tier: Tier::Standard,
            client_id: None,
        };
        key.issue(&audience(), &spec).unwrap().token
    }

    #[test]
    fn minted_token_verifies_with_the_same_key_only() {
        let key = SigningKey::generate();
        let token = mint(&key, "alice", Duration::from_secs(60));
        let id = key.verify(&token, &audience()).unwrap();
        assert_eq!(id.user.as_str(), "alice");
        assert_eq!(id.tier, Tier::Standard);
        assert!(id.has_scope(MCP_SCOPE));
        assert!(matches!(
            SigningKey::generate().verify(&token, &audience()),
            Err(AuthError::BadSignature)
        ));
    }

    #[test]
    fn tampered_and_malformed_tokens_are_refused() {
        let key = SigningKey::generate();
        let token = mint(&key, "alice", Duration::from_secs(60));
        let mut parts: Vec<&str> = token.split('.').collect();
        let forged = URL_SAFE_NO_PAD.encode(
            br#"{"iss":"http://127.0.0.1:8420","sub":"root","aud":"http://127.0.0.1:8420/mcp","iat":0,"exp":99999999999,"jti":"x"}"#,
        );
        parts[1] = &forged;
        assert!(matches!(
            key.verify(&parts.join("."), &audience()),
            Err(AuthError::BadSignature)
        ));
        for bad in ["", "a.b", "a.b.c.d", "x.y.z"] {
            assert!(key.verify(bad, &audience()).is_err(), "{bad} accepted");
        }
    }

    /// A token with `claims` as given, signed with `key`: what someone holding the key (or a
    /// minting host with a wrong clock) could make.
    fn signed(key: &SigningKey, claims: serde_json::Value) -> String {
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"EdDSA","typ":"at+jwt"}"#);
        let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims).unwrap());
        let input = format!("{header}.{payload}");
        let signature = key.key.sign(input.as_bytes());
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature.to_bytes()))
    }

    fn claims(iat: u64, exp: u64) -> serde_json::Value {
        serde_json::json!({
            "iss": "http://127.0.0.1:8420",
            "sub": "alice",
            "aud": "http://127.0.0.1:8420/mcp",
            "iat": iat,
            "exp": exp,
            "jti": "j1",
            "scope": "mcp",
        })
    }

    #[test]
    fn future_nbf_future_iat_and_long_lifetimes_are_refused() {
        let key = SigningKey::generate();
        let now = now_secs();
        let day = 86400;
        assert!(
            key.verify(&signed(&key, claims(now, now + 60)), &audience())
                .is_ok()
        );
        // Within the skew a clock a little ahead is fine.
        assert!(
            key.verify(&signed(&key, claims(now + 30, now + 90)), &audience())
                .is_ok()
        );
        let mut nbf = claims(now, now + 600);
        nbf["nbf"] = serde_json::json!(now + 300);
        assert!(matches!(
            key.verify(&signed(&key, nbf), &audience()),
            Err(AuthError::NotYetValid(s)) if s >= 299
        ));
        assert!(matches!(
            key.verify(&signed(&key, claims(now + 3600, now + 7200)), &audience()),
            Err(AuthError::IssuedInFuture(s)) if s >= 3599
        ));
        let long = signed(&key, claims(now, now + 400 * day));
        assert!(matches!(
            key.verify(&long, &audience()),
            Err(AuthError::LifetimeTooLong { max_secs, .. }) if max_secs == 90 * day
        ));
        // A configured maximum is honoured both ways.
        let short = key.clone().with_max_lifetime(Duration::from_secs(3600));
        assert!(matches!(
            short.verify(&signed(&key, claims(now, now + 7200)), &audience()),
            Err(AuthError::LifetimeTooLong { .. })
        ));
        let spec = TokenSpec {
            user: "alice",
            ttl: Duration::from_secs(7200),
            scope: MCP_SCOPE,
            tier: Tier::Standard,
            client_id: None,
        };
        let err = short.issue(&audience(), &spec).unwrap_err();
        assert!(matches!(
            err,
            AuthError::BadTtl {
                asked_secs: 7200,
                max_secs: 3600
            }
        ));
        assert!(err.to_string().contains("max_token_lifetime_secs"), "{err}");
        // The quickstart's 30-day tokens are within the default.
        assert!(
            key.verify(&signed(&key, claims(now, now + 30 * day)), &audience())
                .is_ok()
        );
        assert!(matches!(
            key.verify(&signed(&key, claims(now, now - 1)), &audience()),
            Err(AuthError::Expired(_))
        ));
    }

    #[test]
    fn key_file_is_created_once_and_reloaded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state/gateway.key");
        let a = SigningKey::load_or_create(&path).unwrap();
        let b = SigningKey::load_or_create(&path).unwrap();
        let token = mint(&a, "bob", Duration::from_secs(5));
        assert!(b.verify(&token, &audience()).is_ok());
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn tokens_for_another_resource_or_issuer_are_refused() {
        let key = SigningKey::generate();
        let token = mint(&key, "alice", Duration::from_secs(60));
        let mut other = audience();
        other.resource = "http://127.0.0.1:9999/mcp".into();
        assert!(matches!(
            key.verify(&token, &other),
            Err(AuthError::WrongAudience(_))
        ));
        let mut other = audience();
        other.issuer = "https://evil.example".into();
        assert!(matches!(
            key.verify(&token, &other),
            Err(AuthError::WrongIssuer(_))
        ));
    }

    #[test]
    fn public_urls_become_issuer_and_resource() {
        let a = Audience::parse("https://Gw.Example.com:443/mcp/").unwrap();
        assert_eq!(a.issuer, "https://gw.example.com");
        assert_eq!(a.resource, "https://gw.example.com/mcp");
        assert_eq!(a.resource_path(), "/mcp");
        assert_eq!(a.host(), "gw.example.com");
        assert_eq!(
            Audience::parse("http://[::1]:80/mcp").unwrap().host(),
            "[::1]"
        );
        assert!(Audience::parse("ftp://x/mcp").is_err());
        assert!(Audience::parse("https://x/mcp?a=b").is_err());
        let l = Audience::for_listen("0.0.0.0:8420".parse().unwrap(), false);
        assert_eq!(l.resource, "http://127.0.0.1:8420/mcp");
    }
}
