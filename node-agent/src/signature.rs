//! Verifies that a request was signed by a gateway key this host trusts, and refuses replays.
//!
//! Keys come from `gateway_keys`: each entry is a base64 Ed25519 public key, or a file holding
//! such keys one per line (`#` starts a comment), as the gateway writes to
//! `<exec_signing_key>.pub`. Several keys may be trusted at once, so a key can be rotated
//! without a gap. What exactly is signed is defined in `execmesh_proto::signing`.
//!
//! Replays: the nonce of every accepted request is remembered until the request expires; a
//! second request with a remembered nonce is refused. The cache is bounded; when it is full of
//! unexpired nonces, new requests are refused as busy rather than forgetting a nonce early.
//! Requests may not expire further ahead than [`MAX_VALIDITY`], which bounds how long a nonce
//! must be kept. The cache lives in memory: after an agent restart a request captured in the
//! last [`MAX_VALIDITY`] could be replayed once — a `run` is still refused then, because its job
//! id is already recorded in `mesh_jobs`.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::path::Path;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use execmesh_proto::Token;
use execmesh_proto::pb::ErrorCode;
use execmesh_proto::signing::{
    self, MAX_NONCE_BYTES, MIN_NONCE_BYTES, SignatureError, SignedRequest, VerifyingKey,
};
use tracing::warn;

use crate::refusal::Refusal;

/// Latest expiry a request may carry, counted from its arrival. The gateway gives its requests
/// 30 s; the slack covers clock skew between gateway and agent.
pub const MAX_VALIDITY: Duration = Duration::from_secs(600);
/// Most nonces remembered at once.
pub const REPLAY_CACHE_ENTRIES: usize = 100_000;

/// Why a `gateway_keys` entry yields no key.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("`{entry}` is neither a base64 Ed25519 public key nor a readable file: {source}")]
    Unreadable {
        entry: String,
        source: std::io::Error,
    },
    #[error("{path} line {line} is not a base64 Ed25519 public key")]
    BadLine { path: String, line: usize },
    #[error("{path} holds no key")]
    Empty { path: String },
}

/// The keys of one `gateway_keys` entry: an inline base64 key, or a file of them.
pub fn keys_of(entry: &str) -> Result<Vec<VerifyingKey>, KeyError> {
    if let Some(key) = signing::public_key_from_base64(entry) {
        return Ok(vec![key]);
    }
    let path = Path::new(entry.trim());
    let text = std::fs::read_to_string(path).map_err(|source| KeyError::Unreadable {
        entry: entry.to_string(),
        source,
    })?;
    let mut keys = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or_default().trim();
        if line.is_empty() {
            continue;
        }
        keys.push(
            signing::public_key_from_base64(line).ok_or_else(|| KeyError::BadLine {
                path: path.display().to_string(),
                line: i + 1,
            })?,
        );
    }
    if keys.is_empty() {
        return Err(KeyError::Empty {
            path: path.display().to_string(),
        });
    }
    Ok(keys)
}

/// The trusted gateway keys and the nonces of accepted requests.
pub struct Verifier {
    /// Trusted keys by [`signing::key_id`].
    keys: HashMap<String, VerifyingKey>,
    nonces: Mutex<NonceCache>,
}

// === impl Verifier ===

impl Verifier {
    /// Trusts the keys of every `gateway_keys` entry. An entry that cannot be read now (it was
    /// checked when the configuration loaded) is logged and skipped: fewer keys, never more.
    pub fn new(entries: &[String]) -> Self {
        let mut keys = HashMap::new();
        for entry in entries {
            match keys_of(entry) {
                Ok(found) => {
                    for key in found {
                        keys.insert(signing::key_id(&key), key);
                    }
                }
                Err(e) => warn!(error = %e, "skipping a gateway key"),
            }
        }
        if keys.is_empty() {
            warn!("no gateway_keys configured: every request will be refused as unsigned");
        }
        Self {
            keys,
            nonces: Mutex::new(NonceCache::new(REPLAY_CACHE_ENTRIES)),
        }
    }

    /// Ids of the trusted keys, sorted.
    pub fn key_ids(&self) -> Vec<&str> {
        let mut ids: Vec<&str> = self.keys.keys().map(String::as_str).collect();
        ids.sort_unstable();
        ids
    }

    /// Checks that `payload` (as received; `request` is its decoding) is signed by a trusted key.
    pub fn verify<R: SignedRequest>(
        &self,
        host: &Token,
        payload: &[u8],
        request: &R,
    ) -> Result<(), Refusal> {
        let refuse =
            |why: String| Refusal::new(ErrorCode::Unauthenticated, format!("host {host}: {why}"));
        if request.signature().is_empty() {
            return Err(refuse(
                "the request is not signed; this host acts only on requests signed by a \
                 gateway key it trusts (gateway_keys)"
                    .into(),
            ));
        }
        let id = request.key_id();
        let Some(key) = self.keys.get(id) else {
            let trusted = self.key_ids();
            return Err(refuse(format!(
                "the request is signed by key `{}`, which this host does not trust (trusted: {})",
                id.escape_debug(),
                if trusted.is_empty() {
                    "none; gateway_keys is empty".to_string()
                } else {
                    trusted.join(", ")
                }
            )));
        };
        signing::verify::<R>(payload, key).map_err(|e| match e {
            SignatureError::Invalid(_) => refuse(format!(
                "the signature does not verify with gateway key {id}: the request was forged \
                 or changed on the way"
            )),
            other => refuse(other.to_string()),
        })
    }

    /// Remembers the nonce of a verified request that expires at `expires_at_ms`, refusing a
    /// nonce seen before, a malformed one, and an expiry too far ahead.
    pub fn remember(
        &self,
        host: &Token,
        nonce: &[u8],
        expires_at_ms: u64,
        now_ms: u64,
    ) -> Result<(), Refusal> {
        if !(MIN_NONCE_BYTES..=MAX_NONCE_BYTES).contains(&nonce.len()) {
            return Err(Refusal::new(
                ErrorCode::Invalid,
                format!(
                    "host {host}: the request's nonce is {} bytes; it must be \
                     {MIN_NONCE_BYTES} to {MAX_NONCE_BYTES} random bytes",
                    nonce.len()
                ),
            ));
        }
        let horizon = now_ms + MAX_VALIDITY.as_millis() as u64;
        if expires_at_ms > horizon {
            return Err(Refusal::new(
                ErrorCode::Invalid,
                format!(
                    "host {host}: the request expires {} s from now; this host accepts at most \
                     {} s",
                    (expires_at_ms - now_ms) / 1000,
                    MAX_VALIDITY.as_secs()
                ),
            ));
        }
        let mut nonces = self.nonces.lock().unwrap_or_else(PoisonError::into_inner);
        match nonces.insert(nonce, expires_at_ms, now_ms) {
            Ok(()) => Ok(()),
            Err(NonceRefusal::Seen) => Err(Refusal::new(
                ErrorCode::Replayed,
                format!(
                    "host {host}: a request with this nonce was already accepted; a replayed \
                     request is not acted on"
                ),
            )),
            Err(NonceRefusal::Full) => Err(Refusal::new(
                ErrorCode::Busy,
                format!(
                    "host {host}: the replay cache holds {REPLAY_CACHE_ENTRIES} unexpired \
                     requests; try again shortly"
                ),
            )),
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum NonceRefusal {
    Seen,
    Full,
}

/// Nonces of accepted requests until they expire, at most `capacity` of them.
struct NonceCache {
    /// Nonce → expiry (unix ms).
    seen: HashMap<Vec<u8>, u64>,
    /// The same entries, soonest expiry first, for pruning.
    by_expiry: BinaryHeap<Reverse<(u64, Vec<u8>)>>,
    capacity: usize,
}

// === impl NonceCache ===

impl NonceCache {
    fn new(capacity: usize) -> Self {
        Self {
            seen: HashMap::new(),
            by_expiry: BinaryHeap::new(),
            capacity,
        }
    }

    fn insert(
        &mut self,
        nonce: &[u8],
        expires_at_ms: u64,
        now_ms: u64,
    ) -> Result<(), NonceRefusal> {
        // An expired request is refused by its expiry before it gets here, so a nonce may be
        // forgotten once its request can no longer be accepted.
        while let Some(Reverse((expiry, _))) = self.by_expiry.peek()
            && *expiry < now_ms
        {
            if let Some(Reverse((_, old))) = self.by_expiry.pop() {
                self.seen.remove(&old);
            }
        }
        if self.seen.contains_key(nonce) {
            return Err(NonceRefusal::Seen);
        }
        if self.seen.len() >= self.capacity {
            return Err(NonceRefusal::Full);
        }
        self.seen.insert(nonce.to_vec(), expires_at_ms);
        self.by_expiry
            .push(Reverse((expires_at_ms, nonce.to_vec())));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use execmesh_proto::pb;
    use execmesh_proto::signing::SigningKey;
    use prost::Message as _;

    use super::*;

    fn host() -> Token {
        Token::parse("host id", "web-1").expect("token")
    }

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    fn verifier(keys: &[&SigningKey]) -> Verifier {
        let entries: Vec<String> = keys
            .iter()
            .map(|k| signing::public_key_to_base64(&k.verifying_key()))
            .collect();
        Verifier::new(&entries)
    }

    fn signed(key: &SigningKey) -> (Vec<u8>, pb::ExecRequest) {
        let request = pb::ExecRequest {
            host: "web-1".into(),
            nonce: vec![9; 16],
            ..Default::default()
        };
        let bytes = signing::encode_signed(request, key);
        let decoded = pb::ExecRequest::decode(bytes.as_slice()).expect("decodes");
        (bytes, decoded)
    }

    #[test]
    fn a_request_signed_by_a_trusted_key_passes() {
        let (bytes, request) = signed(&key(1));
        verifier(&[&key(2), &key(1)])
            .verify(&host(), &bytes, &request)
            .expect("trusted");
    }

    #[test]
    fn unsigned_untrusted_and_forged_requests_are_refused_with_the_reason() {
        let v = verifier(&[&key(1)]);
        let unsigned = pb::ExecRequest::default();
        let r = v
            .verify(&host(), &unsigned.encode_to_vec(), &unsigned)
            .unwrap_err();
        assert_eq!(r.code, ErrorCode::Unauthenticated);
        assert!(r.message.contains("not signed"), "{r:?}");

        let (bytes, request) = signed(&key(3));
        let r = v.verify(&host(), &bytes, &request).unwrap_err();
        assert!(r.message.contains("does not trust"), "{r:?}");

        // A forger who knows the key id but not the key: sign with another key, claim the id.
        let (_, mut forged) = signed(&key(3));
        forged.key_id = signing::key_id(&key(1).verifying_key());
        forged.host = "web-1".into();
        let bytes = forged.encode_to_vec();
        let r = v.verify(&host(), &bytes, &forged).unwrap_err();
        assert!(r.message.contains("forged"), "{r:?}");
    }

    #[test]
    fn keys_come_inline_or_from_files() {
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("gateways.pub");
        let (a, b) = (key(1).verifying_key(), key(2).verifying_key());
        std::fs::write(
            &file,
            format!(
                "# gateways of the fra mesh\n{}\n\n{}  # the next key\n",
                signing::public_key_to_base64(&a),
                signing::public_key_to_base64(&b)
            ),
        )
        .expect("write");
        assert_eq!(keys_of(&file.display().to_string()).expect("file"), [a, b]);
        assert_eq!(
            keys_of(&signing::public_key_to_base64(&a)).expect("inline"),
            [a]
        );
        assert!(keys_of("/nonexistent/key.pub").is_err());
        std::fs::write(&file, "garbage\n").expect("write");
        let err = keys_of(&file.display().to_string())
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 1"), "{err}");
    }

    #[test]
    fn a_nonce_is_accepted_once_until_it_expires() {
        let v = verifier(&[&key(1)]);
        let nonce = [7u8; 16];
        v.remember(&host(), &nonce, 2_000, 1_000).expect("first");
        let r = v.remember(&host(), &nonce, 2_000, 1_500).unwrap_err();
        assert_eq!(r.code, ErrorCode::Replayed);
        // Once expired the request itself is refused as expired; its nonce may go.
        v.remember(&host(), &nonce, 4_000, 2_001)
            .expect("forgotten after expiry");
    }

    #[test]
    fn short_nonces_and_far_expiries_are_refused() {
        let v = verifier(&[&key(1)]);
        assert_eq!(
            v.remember(&host(), &[1; 8], 2_000, 1_000).unwrap_err().code,
            ErrorCode::Invalid
        );
        let far = 1_000 + MAX_VALIDITY.as_millis() as u64 + 1;
        assert_eq!(
            v.remember(&host(), &[1; 16], far, 1_000).unwrap_err().code,
            ErrorCode::Invalid
        );
    }

    #[test]
    fn a_full_cache_refuses_rather_than_forgets() {
        let mut cache = NonceCache::new(2);
        cache.insert(b"a", 10, 0).expect("a");
        cache.insert(b"b", 20, 0).expect("b");
        assert_eq!(cache.insert(b"c", 20, 5), Err(NonceRefusal::Full));
        assert_eq!(cache.insert(b"a", 20, 5), Err(NonceRefusal::Seen));
        // `a` expired at 10: its slot is free again.
        cache.insert(b"c", 30, 11).expect("c");
        assert_eq!(cache.seen.len(), 2);
    }
}
