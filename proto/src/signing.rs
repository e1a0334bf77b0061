//! The signed-command contract: which bytes of an ExecRequest or ControlRequest the gateway's Ed25519 key signs, how the signature travels, and how keys are named and written; and the signed-record contract: which bytes of a record written into JetStream its source's identity key signs.
//!
//! The signed message is `domain || unsigned`: `domain` names the message type (so a signed kill
//! is never valid as an exec request), `unsigned` is the request's protobuf encoding as it
//! travels with every top-level field [`SIGNATURE_FIELD`] cut out. The signer encodes the
//! request without a signature, signs, and appends the signature field; the verifier cuts that
//! field out of the bytes it received and checks exactly what is left. Nothing is re-encoded,
//! because re-encoding is not deterministic: prost writes map entries (`RunRequest.env`) in
//! hash-map order, and a parser drops fields it does not know. `exec.proto` says the same at
//! `SIGNATURE`.
//!
//! Records (output chunks and exit records, job statuses, heartbeats, fact packs, approvals,
//! revocations, audit events) are signed differently, because they are not requests and the
//! key is not the gateway's command key: each is signed by the identity that wrote it, with the
//! Ed25519 key of its NATS nkey seed, over its subject, its payload and the headers that carry
//! meaning. See [`record_message`].

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use std::path::{Path, PathBuf};

use async_nats::HeaderMap;
use sha2::{Digest, Sha256};

pub use ed25519_dalek::{Signature, SigningKey, VerifyingKey};

use crate::{headers, pb};

/// Field number of `signature` in both ExecRequest and ControlRequest.
pub const SIGNATURE_FIELD: u32 = 21;
/// Fewest random bytes a request's nonce may have.
pub const MIN_NONCE_BYTES: usize = 16;
/// Most bytes a request's nonce may have.
pub const MAX_NONCE_BYTES: usize = 64;
/// Length of a key id in hex digits.
pub const KEY_ID_LEN: usize = 16;

/// A request type the gateway signs.
pub trait SignedRequest: prost::Message + Sized {
    /// Prefix of the signed message: the protobuf type name and a zero byte.
    const DOMAIN: &'static [u8];
    /// The id of the key that signed it (see [`key_id`]).
    fn key_id(&self) -> &str;
    /// Sets the id of the signing key.
    fn set_key_id(&mut self, id: String);
    /// The signature as carried.
    fn signature(&self) -> &[u8];
    /// Empties the signature, so that encoding leaves the field out.
    fn clear_signature(&mut self);
    /// The request's nonce.
    fn nonce(&self) -> &[u8];
    /// Sets the request's nonce (random, [`MIN_NONCE_BYTES`] to [`MAX_NONCE_BYTES`]).
    fn set_nonce(&mut self, nonce: Vec<u8>);
}

/// Implements [`SignedRequest`] for request messages, each with `key_id`, `signature` and
/// `nonce` fields, signed under its own domain.
macro_rules! signed_request {
    ($($message:ty => $domain:literal),+ $(,)?) => {$(
        impl SignedRequest for $message {
            const DOMAIN: &'static [u8] = $domain;
            fn key_id(&self) -> &str {
                &self.key_id
            }
            fn set_key_id(&mut self, id: String) {
                self.key_id = id;
            }
            fn signature(&self) -> &[u8] {
                &self.signature
            }
            fn clear_signature(&mut self) {
                self.signature.clear();
            }
            fn nonce(&self) -> &[u8] {
                &self.nonce
            }
            fn set_nonce(&mut self, nonce: Vec<u8>) {
                self.nonce = nonce;
            }
        }
    )+};
}

signed_request!(
    pb::ExecRequest => b"execmesh.v1.ExecRequest\0",
    pb::ControlRequest => b"execmesh.v1.ControlRequest\0",
);

/// Why a payload's signature could not be checked or did not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// No signature field at all.
    #[error("the request is not signed")]
    Unsigned,
    /// More than one signature field: which one counts would depend on the parser.
    #[error("the request carries {0} signature fields; a signed request has exactly one")]
    Ambiguous(usize),
    /// The bytes are not a sequence of protobuf fields.
    #[error("the request is not valid protobuf ({0})")]
    Malformed(&'static str),
    /// The signature field is not 64 bytes long.
    #[error("the signature is {0} bytes long, not 64")]
    BadLength(usize),
    /// The signature does not verify with the key.
    #[error("the signature does not verify with gateway key {0}")]
    Invalid(String),
}

/// The id of a public key: the first 8 bytes of its SHA-256, in lower-case hex.
pub fn key_id(key: &VerifyingKey) -> String {
    let digest = Sha256::digest(key.as_bytes());
    digest[..KEY_ID_LEN / 2]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A public key as written for agents (`gateway_keys`): the 32 bytes in standard base64.
pub fn public_key_to_base64(key: &VerifyingKey) -> String {
    STANDARD.encode(key.as_bytes())
}

/// Reads a public key written by [`public_key_to_base64`] (surrounding space ignored). `None`
/// when it is not base64 of 32 bytes or not a valid Ed25519 point.
pub fn public_key_from_base64(text: &str) -> Option<VerifyingKey> {
    let bytes = STANDARD.decode(text.trim()).ok()?;
    let bytes: [u8; 32] = bytes.try_into().ok()?;
    VerifyingKey::from_bytes(&bytes).ok()
}

/// Encodes `request` signed with `key`: sets its key id, encodes it without a signature, signs
/// `DOMAIN || bytes` and appends the signature field. The result decodes to `request` with
/// `key_id` and `signature` set.
pub fn encode_signed<R: SignedRequest>(mut request: R, key: &SigningKey) -> Vec<u8> {
    use ed25519_dalek::Signer as _;
    request.set_key_id(key_id(&key.verifying_key()));
    request.clear_signature();
    let mut bytes = request.encode_to_vec();
    let signature = key.sign(&message(R::DOMAIN, &bytes));
    append_signature(&mut bytes, &signature.to_bytes());
    bytes
}

/// Checks that `payload`, as received, carries exactly one signature and that it verifies with
/// `key` over `R::DOMAIN || payload-without-the-signature-field`.
pub fn verify<R: SignedRequest>(payload: &[u8], key: &VerifyingKey) -> Result<(), SignatureError> {
    let (unsigned, signature) = split_signature(payload)?;
    key.verify_strict(&message(R::DOMAIN, &unsigned), &signature)
        .map_err(|_| SignatureError::Invalid(key_id(key)))
}

/// Splits a received payload into the bytes that were signed (every top-level field except
/// [`SIGNATURE_FIELD`], in place) and the signature.
pub fn split_signature(payload: &[u8]) -> Result<(Vec<u8>, Signature), SignatureError> {
    let mut unsigned = Vec::with_capacity(payload.len());
    let mut signatures = Vec::new();
    let mut at = 0;
    while at < payload.len() {
        let start = at;
        let tag = varint(payload, &mut at)?;
        let field = tag >> 3;
        let value_start;
        match tag & 7 {
            0 => {
                value_start = at;
                varint(payload, &mut at)?;
            }
            1 => {
                value_start = at;
                at = skip(payload, at, 8)?;
            }
            2 => {
                let len = varint(payload, &mut at)?;
                let len = usize::try_from(len).map_err(|_| SignatureError::Malformed("length"))?;
                value_start = at;
                at = skip(payload, at, len)?;
            }
            5 => {
                value_start = at;
                at = skip(payload, at, 4)?;
            }
            _ => return Err(SignatureError::Malformed("unsupported wire type")),
        }
        if field == 0 {
            return Err(SignatureError::Malformed("field number 0"));
        }
        if field == u64::from(SIGNATURE_FIELD) {
            if tag & 7 != 2 {
                return Err(SignatureError::Malformed(
                    "the signature is not a bytes field",
                ));
            }
            signatures.push(&payload[value_start..at]);
        } else {
            unsigned.extend_from_slice(&payload[start..at]);
        }
    }
    match signatures.as_slice() {
        [] => Err(SignatureError::Unsigned),
        [one] => {
            let bytes: [u8; 64] = (*one)
                .try_into()
                .map_err(|_| SignatureError::BadLength(one.len()))?;
            Ok((unsigned, Signature::from_bytes(&bytes)))
        }
        many => Err(SignatureError::Ambiguous(many.len())),
    }
}

fn message(domain: &[u8], unsigned: &[u8]) -> Vec<u8> {
    let mut message = Vec::with_capacity(domain.len() + unsigned.len());
    message.extend_from_slice(domain);
    message.extend_from_slice(unsigned);
    message
}

/// Appends field [`SIGNATURE_FIELD`] (wire type 2) holding `signature`.
fn append_signature(bytes: &mut Vec<u8>, signature: &[u8; 64]) {
    push_varint(bytes, u64::from(SIGNATURE_FIELD) << 3 | 2);
    push_varint(bytes, signature.len() as u64);
    bytes.extend_from_slice(signature);
}

fn push_varint(bytes: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        bytes.push((value as u8) | 0x80);
        value >>= 7;
    }
    bytes.push(value as u8);
}

fn varint(bytes: &[u8], at: &mut usize) -> Result<u64, SignatureError> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *bytes
            .get(*at)
            .ok_or(SignatureError::Malformed("truncated varint"))?;
        *at += 1;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err(SignatureError::Malformed("varint longer than 10 bytes"))
}

fn skip(bytes: &[u8], at: usize, len: usize) -> Result<usize, SignatureError> {
    let end = at
        .checked_add(len)
        .filter(|end| *end <= bytes.len())
        .ok_or(SignatureError::Malformed("truncated field"))?;
    Ok(end)
}

// === signed records ===

/// Prefix of a signed record's message: never a valid request message.
pub const RECORD_DOMAIN: &[u8] = b"execmesh.v1.Record\0";

/// Headers a record's signature covers besides its subject and payload, in this order: the
/// per-message TTL (how long a heartbeat or a revocation lives), the KV operation (a delete or
/// purge marker means "gone") and the message id (JetStream's dedupe).
pub const RECORD_SIGNED_HEADERS: [&str; 3] = [headers::TTL, headers::KV_OPERATION, headers::MSG_ID];

/// The bytes a record's signature covers:
///
/// ```text
/// RECORD_DOMAIN
/// ‖ field(subject)      the subject the record is published on (for KV, `$KV.<bucket>.<key>`)
/// ‖ field(signer)       the signer's public nkey (`U…`), as in the `Execmesh-Signer` header
/// ‖ for each name in RECORD_SIGNED_HEADERS: 0x00 when absent, 0x01 ‖ field(value) when present
/// ‖ sha256(payload)
/// field(bytes) = u32be(len(bytes)) ‖ bytes
/// ```
///
/// The subject is inside, so a record copied onto another subject (the answer to a JetStream
/// request sent to a reply subject of the requester's choosing, a push consumer's delivery)
/// no longer verifies there; the signer is inside, so the header cannot be swapped for another
/// identity's. The payload is covered through its SHA-256, so signing a 32 KiB output chunk is
/// one hash pass and a signature over a few hundred bytes.
pub fn record_message(
    subject: &str,
    signer: &str,
    headers: Option<&HeaderMap>,
    payload: &[u8],
) -> Vec<u8> {
    let mut message = Vec::with_capacity(RECORD_DOMAIN.len() + subject.len() + 160);
    message.extend_from_slice(RECORD_DOMAIN);
    length_prefixed(&mut message, subject.as_bytes());
    length_prefixed(&mut message, signer.as_bytes());
    for name in RECORD_SIGNED_HEADERS {
        match headers.and_then(|h| h.get(name)) {
            Some(value) => {
                message.push(1);
                length_prefixed(&mut message, value.as_str().as_bytes());
            }
            None => message.push(0),
        }
    }
    message.extend_from_slice(&Sha256::digest(payload));
    message
}

fn length_prefixed(out: &mut Vec<u8>, bytes: &[u8]) {
    // Subjects, keys and header values are far below 4 GiB.
    let len = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(bytes);
}

/// The identity key a service signs its records with: the Ed25519 key of its NATS nkey seed
/// (`nats_nkey_seed`), so an identity has one secret for connecting and for signing.
#[derive(Clone)]
pub struct RecordKey {
    signing: SigningKey,
    /// The public nkey (`U…`), as written in the identities file and the `Execmesh-Signer`
    /// header.
    public: String,
}

impl std::fmt::Debug for RecordKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RecordKey({})", self.public)
    }
}

/// Why a seed cannot be used to sign records.
#[derive(Debug, thiserror::Error)]
pub enum RecordKeyError {
    /// The seed file cannot be read.
    #[error("cannot read the seed file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The text is not an nkey user seed.
    #[error("{what} holds no nkey user seed (`SU…`): {reason}")]
    NotASeed { what: String, reason: String },
}

/// Why a record's signature is missing or does not hold.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordSignatureError {
    /// No `Execmesh-Signer` or no `Execmesh-Signature` header.
    #[error("not signed")]
    Unsigned,
    /// A header the signature depends on appears more than once: which value counts would depend
    /// on the reader.
    #[error("header {0} appears more than once")]
    Repeated(&'static str),
    /// The signature header is not base64 of 64 bytes.
    #[error("the signature header is not base64 of 64 bytes")]
    Malformed,
    /// The signature does not verify with the signer's key over this subject and content.
    #[error(
        "the signature by {signer} does not verify: the record was changed, or copied from another subject"
    )]
    Invalid { signer: String },
}

// === impl RecordKey ===

impl RecordKey {
    /// The key of an nkey user seed (`SU…`).
    pub fn from_seed(seed: &str) -> Result<Self, RecordKeyError> {
        Self::parse(seed, "the seed")
    }

    /// Reads the seed from `path`: a bare seed file (what `nats-config` writes) or a `.creds`
    /// file (its `USER NKEY SEED` block).
    pub fn load(path: &Path) -> Result<Self, RecordKeyError> {
        let text = std::fs::read_to_string(path).map_err(|source| RecordKeyError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let what = path.display().to_string();
        let seed = text
            .lines()
            .map(str::trim)
            .find(|line| line.starts_with("SU"))
            .ok_or_else(|| RecordKeyError::NotASeed {
                what: what.clone(),
                reason: "no line starts with `SU`".into(),
            })?;
        Self::parse(seed, &what)
    }

    fn parse(seed: &str, what: &str) -> Result<Self, RecordKeyError> {
        let fail = |reason: String| RecordKeyError::NotASeed {
            what: what.to_string(),
            reason,
        };
        let pair = nkeys::KeyPair::from_seed(seed.trim()).map_err(|e| fail(e.to_string()))?;
        let public = pair.public_key();
        if !public.starts_with('U') {
            return Err(fail("not a user seed".into()));
        }
        let (_, raw) = nkeys::decode_seed(seed.trim()).map_err(|e| fail(e.to_string()))?;
        Ok(Self {
            signing: SigningKey::from_bytes(&raw),
            public,
        })
    }

    /// The public nkey (`U…`).
    pub fn public_key(&self) -> &str {
        &self.public
    }

    /// Signs a record about to be published on `subject` with `payload`: sets the
    /// `Execmesh-Signer` and `Execmesh-Signature` headers. Set every other header first (those in
    /// [`RECORD_SIGNED_HEADERS`] are covered).
    pub fn sign(&self, subject: &str, headers: &mut HeaderMap, payload: &[u8]) {
        use ed25519_dalek::Signer as _;
        let message = record_message(subject, &self.public, Some(headers), payload);
        let signature = self.signing.sign(&message);
        headers.insert(crate::headers::SIGNER, self.public.as_str());
        headers.insert(
            crate::headers::SIGNATURE,
            STANDARD.encode(signature.to_bytes()).as_str(),
        );
    }
}

/// A received record's signature, read from its headers, ready to be checked against the key
/// of the identity it names.
#[derive(Debug, Clone)]
pub struct SignedRecord {
    /// The public nkey the record claims as its signer.
    pub signer: String,
    message: Vec<u8>,
    signature: Signature,
}

impl SignedRecord {
    /// Reads the signature headers of a record stored on `subject`. Fails when it is not
    /// signed, or when a header the signature covers is repeated.
    pub fn read(
        subject: &str,
        headers: Option<&HeaderMap>,
        payload: &[u8],
    ) -> Result<Self, RecordSignatureError> {
        let headers = headers.ok_or(RecordSignatureError::Unsigned)?;
        for name in [crate::headers::SIGNER, crate::headers::SIGNATURE]
            .into_iter()
            .chain(RECORD_SIGNED_HEADERS)
        {
            if headers.get_all(name).count() > 1 {
                return Err(RecordSignatureError::Repeated(name));
            }
        }
        let (Some(signer), Some(signature)) = (
            headers.get(crate::headers::SIGNER),
            headers.get(crate::headers::SIGNATURE),
        ) else {
            return Err(RecordSignatureError::Unsigned);
        };
        let bytes = STANDARD
            .decode(signature.as_str().trim())
            .map_err(|_| RecordSignatureError::Malformed)?;
        let bytes: [u8; 64] = bytes
            .try_into()
            .map_err(|_| RecordSignatureError::Malformed)?;
        let signer = signer.as_str().to_string();
        Ok(Self {
            message: record_message(subject, &signer, Some(headers), payload),
            signer,
            signature: Signature::from_bytes(&bytes),
        })
    }

    /// Checks the signature with `key`, the public key of the identity [`SignedRecord::signer`]
    /// names.
    pub fn verify(&self, key: &VerifyingKey) -> Result<(), RecordSignatureError> {
        key.verify_strict(&self.message, &self.signature)
            .map_err(|_| RecordSignatureError::Invalid {
                signer: self.signer.clone(),
            })
    }

    /// A digest of exactly what [`SignedRecord::verify`] checks (message and signature), for a
    /// cache of records already verified: the same digest means the same verdict.
    pub fn digest(&self) -> [u8; 32] {
        let mut hasher = Sha256::new();
        hasher.update(&self.message);
        hasher.update(self.signature.to_bytes());
        hasher.finalize().into()
    }
}

/// The Ed25519 key inside a public nkey (`U…`), or why it is not one.
pub fn nkey_public_key(public: &str) -> Result<VerifyingKey, String> {
    let (_, bytes) = nkeys::from_public_key(public).map_err(|e| e.to_string())?;
    VerifyingKey::from_bytes(&bytes).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use prost::Message as _;

    use super::*;

    fn key() -> SigningKey {
        SigningKey::from_bytes(&[7; 32])
    }

    fn request() -> pb::ExecRequest {
        pb::ExecRequest {
            tenant: "default".into(),
            host: "web-1".into(),
            job_id: "build-abc".into(),
            user: "alice".into(),
            expires_at_ms: 2_000,
            tier: pb::Tier::Standard as i32,
            nonce: vec![1; 16],
            body: Some(pb::exec_request::Body::Run(pb::RunRequest {
                cmd: "echo hi".into(),
                env: HashMap::from([
                    ("A".to_string(), "1".to_string()),
                    ("B".to_string(), "2".to_string()),
                    ("C".to_string(), "3".to_string()),
                ]),
                ..Default::default()
            })),
            ..Default::default()
        }
    }

    #[test]
    fn a_signed_request_decodes_with_its_key_id_and_verifies() {
        let bytes = encode_signed(request(), &key());
        let decoded = pb::ExecRequest::decode(bytes.as_slice()).expect("decodes");
        assert_eq!(decoded.key_id, key_id(&key().verifying_key()));
        assert_eq!(decoded.signature.len(), 64);
        assert_eq!(decoded.host, "web-1");
        verify::<pb::ExecRequest>(&bytes, &key().verifying_key()).expect("verifies");
    }

    #[test]
    fn any_changed_byte_or_another_key_fails() {
        let bytes = encode_signed(request(), &key());
        let other = SigningKey::from_bytes(&[8; 32]).verifying_key();
        assert!(matches!(
            verify::<pb::ExecRequest>(&bytes, &other),
            Err(SignatureError::Invalid(_))
        ));
        let mut decoded = pb::ExecRequest::decode(bytes.as_slice()).expect("decodes");
        decoded.host = "web-2".into();
        // Re-encoding with the old signature: the host changed, the signature no longer fits.
        let forged = decoded.encode_to_vec();
        assert!(verify::<pb::ExecRequest>(&forged, &key().verifying_key()).is_err());
        for i in 0..bytes.len() - 64 {
            let mut flipped = bytes.clone();
            flipped[i] ^= 1;
            assert!(
                verify::<pb::ExecRequest>(&flipped, &key().verifying_key()).is_err(),
                "byte {i} flipped still verified"
            );
        }
    }

    #[test]
    fn an_exec_signature_is_not_valid_for_a_control_request() {
        let bytes = encode_signed(request(), &key());
        assert!(verify::<pb::ControlRequest>(&bytes, &key().verifying_key()).is_err());
    }

    #[test]
    fn unsigned_double_signed_and_garbage_payloads_are_told_apart() {
        let unsigned = request().encode_to_vec();
        assert_eq!(
            verify::<pb::ExecRequest>(&unsigned, &key().verifying_key()),
            Err(SignatureError::Unsigned)
        );
        let mut twice = encode_signed(request(), &key());
        let tail = twice[twice.len() - 67..].to_vec();
        twice.extend_from_slice(&tail);
        assert_eq!(
            verify::<pb::ExecRequest>(&twice, &key().verifying_key()),
            Err(SignatureError::Ambiguous(2))
        );
        assert!(matches!(
            split_signature(b"\xff\xff\xff"),
            Err(SignatureError::Malformed(_))
        ));
    }

    #[test]
    fn the_signature_may_travel_anywhere_in_the_payload() {
        let bytes = encode_signed(request(), &key());
        let (unsigned, _) = split_signature(&bytes).expect("split");
        let field = bytes[unsigned.len()..].to_vec();
        let mut moved = field.clone();
        moved.extend_from_slice(&unsigned);
        verify::<pb::ExecRequest>(&moved, &key().verifying_key()).expect("verifies");
    }

    #[test]
    fn public_keys_round_trip_through_base64() {
        let public = key().verifying_key();
        let text = public_key_to_base64(&public);
        assert_eq!(public_key_from_base64(&format!(" {text}\n")), Some(public));
        assert_eq!(public_key_from_base64("not a key"), None);
        assert_eq!(key_id(&public).len(), KEY_ID_LEN);
    }

    fn record_key() -> RecordKey {
        RecordKey::from_seed(&nkeys::KeyPair::new_user().seed().expect("a seed")).expect("a key")
    }

    fn signed(key: &RecordKey, subject: &str, payload: &[u8]) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(crate::headers::TTL, "6s");
        key.sign(subject, &mut h, payload);
        h
    }

    fn check(
        key: &RecordKey,
        subject: &str,
        h: &HeaderMap,
        payload: &[u8],
    ) -> Result<(), RecordSignatureError> {
        let record = SignedRecord::read(subject, Some(h), payload)?;
        assert_eq!(record.signer, key.public_key());
        record.verify(&nkey_public_key(key.public_key()).expect("a public nkey"))
    }

    #[test]
    fn a_signed_record_verifies_on_its_own_subject_only() {
        let key = record_key();
        let subject = "$KV.mesh_presence.default.web-1";
        let h = signed(&key, subject, b"beat");
        check(&key, subject, &h, b"beat").expect("verifies");
        let moved = check(&key, "$KV.mesh_presence.default.web-2", &h, b"beat");
        assert!(
            matches!(moved, Err(RecordSignatureError::Invalid { .. })),
            "{moved:?}"
        );
        assert!(
            check(&key, subject, &h, b"beat!").is_err(),
            "changed payload"
        );
    }

    #[test]
    fn the_signed_headers_and_the_signer_are_covered() {
        let key = record_key();
        let subject = "$KV.mesh_revoked.abc";
        let h = signed(&key, subject, b"1");
        let mut longer = h.clone();
        longer.insert(crate::headers::TTL, "600s");
        assert!(check(&key, subject, &longer, b"1").is_err(), "changed TTL");
        let mut deleted = h.clone();
        deleted.insert(crate::headers::KV_OPERATION, "PURGE");
        assert!(
            check(&key, subject, &deleted, b"1").is_err(),
            "added KV-Operation"
        );
        // Another identity's name over this signature does not verify with its key either.
        let other = record_key();
        let mut swapped = h.clone();
        swapped.insert(crate::headers::SIGNER, other.public_key());
        let record = SignedRecord::read(subject, Some(&swapped), b"1").expect("readable");
        let other_key = nkey_public_key(other.public_key()).expect("public nkey");
        assert!(record.verify(&other_key).is_err());
    }

    #[test]
    fn unsigned_repeated_and_malformed_signatures_are_told_apart() {
        let key = record_key();
        let subject = "mesh.v1.default.out.web-1.job-1";
        assert_eq!(
            SignedRecord::read(subject, None, b"x").unwrap_err(),
            RecordSignatureError::Unsigned
        );
        let mut h = signed(&key, subject, b"x");
        h.append(crate::headers::SIGNER, key.public_key());
        assert_eq!(
            SignedRecord::read(subject, Some(&h), b"x").unwrap_err(),
            RecordSignatureError::Repeated(crate::headers::SIGNER)
        );
        let mut h = signed(&key, subject, b"x");
        h.insert(crate::headers::SIGNATURE, "bm90IDY0IGJ5dGVz");
        assert_eq!(
            SignedRecord::read(subject, Some(&h), b"x").unwrap_err(),
            RecordSignatureError::Malformed
        );
    }

    #[test]
    fn record_keys_load_from_seed_and_creds_files() {
        let dir = tempfile::tempdir().expect("temp dir");
        let pair = nkeys::KeyPair::new_user();
        let seed = pair.seed().expect("seed");
        let bare = dir.path().join("agent.nk");
        std::fs::write(&bare, format!("{seed}\n")).expect("write");
        assert_eq!(
            RecordKey::load(&bare).expect("bare seed").public_key(),
            pair.public_key()
        );
        let creds = dir.path().join("agent.creds");
        std::fs::write(
            &creds,
            format!(
                "-----BEGIN NATS USER JWT-----\neyJ0eXAiOi\n------END NATS USER JWT------\n\n\
                 -----BEGIN USER NKEY SEED-----\n{seed}\n------END USER NKEY SEED------\n"
            ),
        )
        .expect("write");
        assert_eq!(
            RecordKey::load(&creds).expect("creds").public_key(),
            pair.public_key()
        );
        let account = nkeys::KeyPair::new_account().seed().expect("seed");
        assert!(RecordKey::from_seed(&account).is_err(), "an account seed");
        assert!(RecordKey::load(&dir.path().join("missing")).is_err());
    }
}
