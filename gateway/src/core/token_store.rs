//! The OAuth state every replica shares, in the `mesh_oauth` KV bucket: authorization codes,
//! refresh tokens (by hash), token families, registered clients. Codes and refresh tokens are
//! single-use: the first redemption creates a `used.` marker, which only one writer can create.
//!
//! Keys: `code.<sha256>`, `refresh.<sha256>`, `used.<sha256>`, `family.<id>`,
//! `family-revoked.<id>`, `client.<id>`. Secrets never appear in keys or values, only their
//! sha256.
//!
//! Every record is signed as the gateway and read back through the checks of `Mesh`: a grant
//! nobody but the gateway may write (a code, a refresh token, a client) that the gateway did not
//! sign is treated as absent. Marks whose absence would grant something (a revoked token, a
//! revoked family, a used code) are the other way round: any record at all under such a key
//! counts, signed or not, because NATS cannot stop a stolen credential from planting one that
//! erases the real mark (docs/security.md), and the gateway never deletes them itself.

use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tracing::debug;

use execmesh_proto::jetstream as layout;
use execmesh_proto::subject;
use execmesh_runtime::kv_write::{self, Expect, KvWriteError};

use crate::core::consumers::WatchFor;
use crate::core::mesh::{DirectGet, KvWatch, Mesh, WatchFrom};

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
    /// Reads (checked) and signs through the mesh.
    mesh: Mesh,
    oauth: kv::Store,
    revoked: kv::Store,
}

/// What one key holds, as read.
enum Held {
    /// No record at all.
    Nothing,
    /// A delete, purge or expiry marker.
    Gone,
    /// A value the gateway signed (any value in development).
    Value(Bytes),
    /// A record the gateway did not write (logged where it was read).
    Rejected,
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
    pub async fn open(mesh: &Mesh, replicas: usize) -> Result<Self, StoreError> {
        let oauth = bucket(&mesh.js, layout::oauth_bucket(&mesh.limits, replicas)).await?;
        let revoked = bucket(&mesh.js, layout::revoked_bucket(&mesh.limits, replicas)).await?;
        Ok(Self {
            mesh: mesh.clone(),
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

    /// Whether the family is revoked: any record under its mark counts (see the module docs).
    pub async fn family_revoked(&self, id: &str) -> Result<bool, StoreError> {
        let held = self
            .read(&self.oauth, &format!("family-revoked.{id}"))
            .await?;
        Ok(!matches!(held, Held::Nothing))
    }

    pub async fn put_client(&self, client: &RegisteredClient) -> Result<(), StoreError> {
        let key = format!("client.{}", client.client_id);
        let value = encode(&key, client)?;
        self.write(&self.oauth, &key, value, HeaderMap::new(), Expect::Any)
            .await
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

    /// Every record of the revocation list, the latest per token first, then each new one as
    /// it is written: what [`crate::core::revocation::Revocations`] keeps its copy current
    /// with. Also says whether the list held no record when the watch began (then nothing
    /// arrives to say the copy is complete).
    pub async fn watch_revoked(&self) -> Result<(KvWatch, bool), StoreError> {
        let held = self
            .revoked
            .status()
            .await
            .map_err(|e| kv_err("status", ">", e))?
            .values();
        let watch = self
            .mesh
            .watch_kv(
                &self.revoked.name,
                ">",
                WatchFrom::LastPerKey,
                WatchFor::Upkeep("revoked"),
            )
            .await
            .map_err(|e| kv_err("watch", ">", e))?;
        Ok((watch, held == 0))
    }

    /// The latest record under `key`, checked: see [`Held`].
    async fn read(&self, store: &kv::Store, key: &str) -> Result<Held, StoreError> {
        let request = DirectGet {
            last_by_subj: Some(subject::kv(&store.name, key)),
            ..Default::default()
        };
        let msg = self
            .mesh
            .direct_get(&store.stream_name, &request)
            .await
            .map_err(|e| kv_err("get", key, e))?
            .pop();
        Ok(match msg {
            None => Held::Nothing,
            Some(m) if m.rejected.is_some() => Held::Rejected,
            // An expired key leaves an empty marker behind.
            Some(m) if m.is_tombstone() || m.payload.is_empty() => Held::Gone,
            Some(m) => Held::Value(m.payload),
        })
    }

    /// The value under `key` if the gateway wrote it.
    async fn get<T: DeserializeOwned>(
        &self,
        store: &kv::Store,
        key: &str,
    ) -> Result<Option<T>, StoreError> {
        match self.read(store, key).await? {
            Held::Value(bytes) => {
                serde_json::from_slice(&bytes)
                    .map(Some)
                    .map_err(|e| StoreError::Corrupt {
                        key: key.to_string(),
                        reason: e.to_string(),
                    })
            }
            Held::Nothing | Held::Gone | Held::Rejected => Ok(None),
        }
    }

    /// Writes `value` under `key`, signed as the gateway, if the key is as `expect` says.
    async fn write(
        &self,
        store: &kv::Store,
        key: &str,
        value: Bytes,
        headers: HeaderMap,
        expect: Expect,
    ) -> Result<(), StoreError> {
        kv_write::write(
            &self.mesh.js,
            store,
            key,
            value,
            headers,
            expect,
            self.mesh.records.key(),
        )
        .await
        .map(|_| ())
        .map_err(|e| kv_err("put", key, e))
    }

    /// Creates `key` with a TTL, signed as the gateway. `false` if any record is there already
    /// (a mark that something was used must not be overwritten, whoever wrote it).
    async fn create<T: Serialize>(
        &self,
        store: &kv::Store,
        key: &str,
        value: &T,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let bytes = encode(key, value)?;
        match kv_write::create(
            &self.mesh.js,
            store,
            key,
            bytes,
            kv_write::ttl_headers(ttl),
            self.mesh.records.key(),
        )
        .await
        {
            Ok(_) => Ok(true),
            Err(KvWriteError::Exists { .. }) => Ok(false),
            Err(e) => Err(kv_err("create", key, e)),
        }
    }

    /// A put with a per-key TTL (a `Nats-TTL` header), signed as the gateway.
    async fn put_with_ttl<T: Serialize>(
        &self,
        store: &kv::Store,
        key: &str,
        value: &T,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        let bytes = encode(key, value)?;
        self.write(store, key, bytes, kv_write::ttl_headers(ttl), Expect::Any)
            .await
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
