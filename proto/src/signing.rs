//! The signed-command contract: which bytes of an ExecRequest or ControlRequest the gateway's Ed25519 key signs, how the signature travels, and how keys are named and written.
//!
//! The signed message is `domain || unsigned`: `domain` names the message type (so a signed kill
//! is never valid as an exec request), `unsigned` is the request's protobuf encoding as it
//! travels with every top-level field [`SIGNATURE_FIELD`] cut out. The signer encodes the
//! request without a signature, signs, and appends the signature field; the verifier cuts that
//! field out of the bytes it received and checks exactly what is left. Nothing is re-encoded,
//! because re-encoding is not deterministic: prost writes map entries (`RunRequest.env`) in
//! hash-map order, and a parser drops fields it does not know. `exec.proto` says the same at
//! `SIGNATURE`.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use sha2::{Digest, Sha256};

pub use ed25519_dalek::{Signature, SigningKey, VerifyingKey};

use crate::pb;

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

impl SignedRequest for pb::ExecRequest {
    const DOMAIN: &'static [u8] = b"execmesh.v1.ExecRequest\0";
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

impl SignedRequest for pb::ControlRequest {
    const DOMAIN: &'static [u8] = b"execmesh.v1.ControlRequest\0";
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
}
