//! KV writes that carry headers — a signed record's signature, a per-key TTL — as one acknowledged JetStream publish to the key's subject: put, create and compare-and-set, because async-nats's KV API takes no headers.
//!
//! A KV key is the subject `$KV.<bucket>.<key>`; a compare-and-set is a publish with
//! `Nats-Expected-Last-Subject-Sequence` (the server refuses it when the key's last revision is
//! another), and "create" is a compare-and-set against revision 0 (no message yet), or against a
//! delete marker's revision.

use async_nats::HeaderMap;
use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::{self, kv};
use bytes::Bytes;

use execmesh_proto::signing::RecordKey;

/// The header of a compare-and-set: the revision the key must be at.
const EXPECTED_LAST_SUBJECT_SEQUENCE: &str = "Nats-Expected-Last-Subject-Sequence";

/// What the key must hold for the write to happen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// Whatever it holds (a put).
    Any,
    /// Exactly this revision; 0: the key holds nothing at all.
    Revision(u64),
}

/// The headers of a write whose key lives `ttl` (a `Nats-TTL` header, at least a second): the
/// bucket must allow per-message TTLs (its `limit_markers` set).
pub fn ttl_headers(ttl: std::time::Duration) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(
        execmesh_proto::headers::TTL,
        format!("{}s", ttl.as_secs().max(1)).as_str(),
    );
    headers
}

/// Why a KV write did not happen.
#[derive(Debug, thiserror::Error)]
pub enum KvWriteError {
    /// The key is not at the expected revision (someone wrote it meanwhile).
    #[error("`{key}` changed: it is no longer at revision {expected}")]
    WrongRevision { key: String, expected: u64 },
    /// Create found a value under the key.
    #[error("`{key}` exists already")]
    Exists { key: String },
    /// The publish failed or was not acknowledged.
    #[error("writing `{key}` failed: {reason}")]
    Write { key: String, reason: String },
}

/// The subject a put to `key` of `store` is published on.
pub fn subject(store: &kv::Store, key: &str) -> String {
    format!(
        "{}{key}",
        store.put_prefix.as_deref().unwrap_or(&store.prefix)
    )
}

/// Writes `value` under `key` with `headers` (signed by `signer` when given) if the key is as
/// `expect` says; returns the new revision.
pub async fn write(
    js: &jetstream::Context,
    store: &kv::Store,
    key: &str,
    value: Bytes,
    mut headers: HeaderMap,
    expect: Expect,
    signer: Option<&RecordKey>,
) -> Result<u64, KvWriteError> {
    let subject = subject(store, key);
    if let Expect::Revision(revision) = expect {
        headers.insert(
            EXPECTED_LAST_SUBJECT_SEQUENCE,
            revision.to_string().as_str(),
        );
    }
    if let Some(signer) = signer {
        signer.sign(&subject, &mut headers, &value);
    }
    let failed = |reason: String| KvWriteError::Write {
        key: key.to_string(),
        reason,
    };
    let ack = js
        .publish_with_headers(subject.clone(), headers, value)
        .await
        .map_err(|e| failed(e.to_string()))?;
    match ack.await {
        Ok(ack) => Ok(ack.sequence),
        Err(e) if e.kind() == PublishErrorKind::WrongLastSequence => {
            Err(KvWriteError::WrongRevision {
                key: key.to_string(),
                expected: match expect {
                    Expect::Revision(r) => r,
                    Expect::Any => 0,
                },
            })
        }
        Err(e) => Err(failed(e.to_string())),
    }
}

/// Writes `value` under `key` only if the key holds no value (never written, or deleted);
/// returns the new revision.
pub async fn create(
    js: &jetstream::Context,
    store: &kv::Store,
    key: &str,
    value: Bytes,
    headers: HeaderMap,
    signer: Option<&RecordKey>,
) -> Result<u64, KvWriteError> {
    match write(
        js,
        store,
        key,
        value.clone(),
        headers.clone(),
        Expect::Revision(0),
        signer,
    )
    .await
    {
        Err(KvWriteError::WrongRevision { .. }) => {}
        other => return other,
    }
    let entry = store.entry(key).await.map_err(|e| KvWriteError::Write {
        key: key.to_string(),
        reason: e.to_string(),
    })?;
    match entry {
        // Deleted or purged: it may be created again, over the marker.
        Some(entry) if entry.operation != kv::Operation::Put => {
            write(
                js,
                store,
                key,
                value,
                headers,
                Expect::Revision(entry.revision),
                signer,
            )
            .await
        }
        _ => Err(KvWriteError::Exists {
            key: key.to_string(),
        }),
    }
}
