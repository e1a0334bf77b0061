//! The OAuth state every replica shares, in the `mesh_oauth` KV bucket: authorization codes,
//! refresh tokens (by hash), token families, registered clients. Codes and refresh tokens are
//! single-use: the first redemption creates a `used.` marker, which only one writer can create.
//!
//! Keys: `code.<sha256>`, `refresh.<sha256>`, `used.<sha256>`, `family.<id>`,
//! `family-revoked.<id>`, `client.<id>`. Secrets never appear in keys or values, only their
//! sha256.

use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tracing::debug;

use execmesh_proto::jetstream as layout;

/// A KV operation failed (NATS unreachable, a corrupt record).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open KV bucket {bucket}: {reason}")]
    Open { bucket: String, reason: String },
    #[error("KV {op} of `{key}` failed: {reason}")]
    Kv {
        op: &'static str,
        key: String,
        reason: String,
    },
    #[error("KV record `{key}` is not readable: {reason}")]
    Corrupt { key: String, reason: String },
}

/// An issued authorization code, waiting to be exchanged (at most once).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CodeGrant {
    pub client_id: String,
    pub redirect_uri: String,
    pub user: String,
    pub scope: String,
    pub resource: String,
    /// BASE64URL(SHA256(code_verifier)).
    pub code_challenge: String,
    /// The family the tokens of this code will belong to (revoked if the code is replayed).
    pub family: String,
    pub expires_at: u64,
}

/// A refresh token, by hash. Immutable; its redemption is the `used.` marker.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RefreshGrant {
    pub family: String,
    pub client_id: String,
    pub user: String,
    pub scope: String,
    pub resource: String,
    pub expires_at: u64,
}

/// The access tokens issued in one family (one login), so revoking the family revokes them.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Family {
    pub user: String,
    pub client_id: String,
    /// `(jti, expires_at)` of access tokens that may still be valid.
    pub access: Vec<(String, u64)>,
}

/// A client registered through `/register` (RFC 7591).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RegisteredClient {
    pub client_id: String,
    pub client_name: Option<String>,
    pub redirect_uris: Vec<String>,
    pub issued_at: u64,
}

/// Handles on `mesh_oauth` and `mesh_revoked`.
#[derive(Clone)]
pub struct Store {
    js: jetstream::Context,
    oauth: kv::Store,
    revoked: kv::Store,
}

/// sha256 of a secret, hex: what keys name instead of the secret.
pub fn digest(secret: &str) -> String {
    Sha256::digest(secret.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

// === impl Store ===

impl Store {
    /// Creates the buckets if missing (otherwise uses them as they are) and opens them.
    pub async fn open(js: &jetstream::Context, replicas: usize) -> Result<Self, StoreError> {
        let oauth = bucket(js, layout::oauth_bucket(replicas)).await?;
        let revoked = bucket(js, layout::revoked_bucket(replicas)).await?;
        Ok(Self {
            js: js.clone(),
            oauth,
            revoked,
        })
    }

    /// Stores a new code; it lives `ttl`.
    pub async fn put_code(
        &self,
        code: &str,
        grant: &CodeGrant,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        self.create(&self.oauth, &format!("code.{}", digest(code)), grant, ttl)
            .await
            .map(|_| ())
    }

    pub async fn code(&self, code: &str) -> Result<Option<CodeGrant>, StoreError> {
        self.get(&self.oauth, &format!("code.{}", digest(code)))
            .await
    }

    /// Marks a code or refresh token used. `false`: it was used before (a replay).
    pub async fn mark_used(&self, secret: &str, ttl: Duration) -> Result<bool, StoreError> {
        self.create(&self.oauth, &format!("used.{}", digest(secret)), &true, ttl)
            .await
    }

    pub async fn put_refresh(
        &self,
        token: &str,
        grant: &RefreshGrant,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        self.create(
            &self.oauth,
            &format!("refresh.{}", digest(token)),
            grant,
            ttl,
        )
        .await
        .map(|_| ())
    }

    pub async fn refresh(&self, token: &str) -> Result<Option<RefreshGrant>, StoreError> {
        self.get(&self.oauth, &format!("refresh.{}", digest(token)))
            .await
    }

    pub async fn family(&self, id: &str) -> Result<Option<Family>, StoreError> {
        self.get(&self.oauth, &format!("family.{id}")).await
    }

    /// Records `family` (replacing the previous record); it lives `ttl` from now.
    pub async fn put_family(
        &self,
        id: &str,
        family: &Family,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        self.put_with_ttl(&self.oauth, &format!("family.{id}"), family, ttl)
            .await
    }

    /// Marks a family revoked: its refresh tokens stop working.
    pub async fn revoke_family(&self, id: &str, ttl: Duration) -> Result<(), StoreError> {
        self.put_with_ttl(&self.oauth, &format!("family-revoked.{id}"), &true, ttl)
            .await
    }

    pub async fn family_revoked(&self, id: &str) -> Result<bool, StoreError> {
        Ok(self
            .get::<bool>(&self.oauth, &format!("family-revoked.{id}"))
            .await?
            .unwrap_or(false))
    }

    pub async fn put_client(&self, client: &RegisteredClient) -> Result<(), StoreError> {
        let key = format!("client.{}", client.client_id);
        let value = encode(&key, client)?;
        self.oauth
            .put(&key, value)
            .await
            .map_err(|e| kv_err("put", &key, e))
            .map(|_| ())
    }

    pub async fn client(&self, client_id: &str) -> Result<Option<RegisteredClient>, StoreError> {
        if !is_key_safe(client_id) {
            return Ok(None);
        }
        self.get(&self.oauth, &format!("client.{client_id}")).await
    }

    /// Adds `jti` to the revocation list until `expires_at` (unix seconds).
    pub async fn revoke_token(&self, jti: &str, expires_at: u64) -> Result<(), StoreError> {
        if !is_key_safe(jti) {
            return Ok(());
        }
        let now = execmesh_proto::now_ms() / 1000;
        // Kept a little past the expiry so clock skew between replicas cannot reopen it.
        let ttl = Duration::from_secs(expires_at.saturating_sub(now) + 60);
        self.put_with_ttl(&self.revoked, jti, &expires_at, ttl)
            .await
    }

    /// Whether `jti` is on the revocation list.
    pub async fn is_revoked(&self, jti: &str) -> Result<bool, StoreError> {
        if !is_key_safe(jti) {
            return Ok(false);
        }
        Ok(self.get::<u64>(&self.revoked, jti).await?.is_some())
    }

    async fn get<T: DeserializeOwned>(
        &self,
        store: &kv::Store,
        key: &str,
    ) -> Result<Option<T>, StoreError> {
        match store.get(key).await {
            // An expired key leaves an empty marker behind.
            Ok(Some(bytes)) if bytes.is_empty() => Ok(None),
            Ok(Some(bytes)) => {
                serde_json::from_slice(&bytes)
                    .map(Some)
                    .map_err(|e| StoreError::Corrupt {
                        key: key.to_string(),
                        reason: e.to_string(),
                    })
            }
            Ok(None) => Ok(None),
            Err(e) => Err(kv_err("get", key, e)),
        }
    }

    /// Creates `key` with a TTL. `false` if it exists already.
    async fn create<T: Serialize>(
        &self,
        store: &kv::Store,
        key: &str,
        value: &T,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let bytes = encode(key, value)?;
        match store
            .create_with_ttl(key, bytes, ttl.max(Duration::from_secs(1)))
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(kv_err("create", key, e)),
        }
    }

    /// A put with a per-key TTL (async-nats has none): a JetStream publish to the key's subject
    /// with a `Nats-TTL` header, acknowledged.
    async fn put_with_ttl<T: Serialize>(
        &self,
        store: &kv::Store,
        key: &str,
        value: &T,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        let bytes = encode(key, value)?;
        let prefix = store.put_prefix.as_deref().unwrap_or(&store.prefix);
        let mut headers = HeaderMap::new();
        headers.insert(
            execmesh_proto::headers::TTL,
            format!("{}s", ttl.as_secs().max(1)).as_str(),
        );
        let ack = self
            .js
            .publish_with_headers(format!("{prefix}{key}"), headers, bytes)
            .await
            .map_err(|e| kv_err("put", key, e))?;
        ack.await.map_err(|e| kv_err("put", key, e))?;
        Ok(())
    }
}

/// Characters a KV key may hold (client ids and jtis we issued are within them).
fn is_key_safe(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= 200
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '='))
}

fn encode<T: Serialize>(key: &str, value: &T) -> Result<Bytes, StoreError> {
    serde_json::to_vec(value)
        .map(Bytes::from)
        .map_err(|e| StoreError::Corrupt {
            key: key.to_string(),
            reason: e.to_string(),
        })
}

fn kv_err(op: &'static str, key: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Kv {
        op,
        key: key.to_string(),
        reason: e.to_string(),
    }
}

/// Creates the bucket, or opens it when it exists already (possibly with another
/// configuration, which is left alone: the operator may have tuned it).
async fn bucket(js: &jetstream::Context, config: kv::Config) -> Result<kv::Store, StoreError> {
    let name = config.bucket.clone();
    match js.create_key_value(config).await {
        Ok(store) => Ok(store),
        Err(create) => {
            debug!(bucket = %name, error = %create, "create failed; opening the existing bucket");
            js.get_key_value(&name)
                .await
                .map_err(|open| StoreError::Open {
                    bucket: name.clone(),
                    reason: format!("create failed ({create}), open failed ({open})"),
                })
        }
    }
}
