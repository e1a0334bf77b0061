//! Signs every ExecRequest and ControlRequest the gateway sends with the mesh's Ed25519 command key.
//!
//! The command key is not the token key (`key_file`): agents are given its public half only
//! (`gateway_keys`), it is rotated on its own schedule, and a leaked token key cannot sign
//! commands. It is a 32-byte seed in base64 in `exec_signing_key`, created (mode 0600) on the
//! first start like the token key; every replica must use the same file. Next to it the gateway
//! writes `<file>.pub`, the public key in the form agents read, and it logs the key id at start.
//! What exactly is signed is defined in `execmesh_proto::signing`.

use std::fmt;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use execmesh_proto::signing::{self, SignedRequest, SigningKey, VerifyingKey};

/// Random bytes in each request's nonce.
const NONCE_BYTES: usize = 16;

/// Why the command key could not be loaded or created.
#[derive(Debug, thiserror::Error)]
pub enum SignerError {
    #[error("cannot read the exec signing key {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write the exec signing key {}: {source}", path.display())]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the exec signing key {} does not hold a base64 Ed25519 seed of 32 bytes", path.display())]
    Bad { path: PathBuf },
}

/// The gateway's command key. Cheap to share behind an `Arc`; holds nothing mutable.
#[derive(Clone)]
pub struct Signer {
    key: SigningKey,
    /// [`signing::key_id`] of the public half, written into every request.
    key_id: String,
}

impl fmt::Debug for Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Signer(key id {})", self.key_id)
    }
}

// === impl Signer ===

impl Signer {
    /// A signer with `key`.
    pub fn new(key: SigningKey) -> Self {
        let key_id = signing::key_id(&key.verifying_key());
        Self { key, key_id }
    }

    /// Loads the key from `path`, creating it (mode 0600, parent directories too) when missing,
    /// and (re)writes `<path>.pub` when it does not hold the public key.
    pub fn load_or_create(path: &Path) -> Result<Self, SignerError> {
        let signer = match std::fs::read_to_string(path) {
            Ok(text) => Self::from_seed_base64(text.trim(), path)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let signer = Self::new(SigningKey::from_bytes(&rand::random()));
                signer.write_seed(path)?;
                signer
            }
            Err(source) => {
                return Err(SignerError::Read {
                    path: path.to_path_buf(),
                    source,
                });
            }
        };
        signer.write_public(&public_path(path));
        Ok(signer)
    }

    fn from_seed_base64(text: &str, path: &Path) -> Result<Self, SignerError> {
        let bad = || SignerError::Bad {
            path: path.to_path_buf(),
        };
        let bytes = STANDARD.decode(text).map_err(|_| bad())?;
        let seed: [u8; 32] = bytes.try_into().map_err(|_| bad())?;
        Ok(Self::new(SigningKey::from_bytes(&seed)))
    }

    fn write_seed(&self, path: &Path) -> Result<(), SignerError> {
        crate::core::key_file::write_new(path, &self.key.to_bytes()).map_err(|source| {
            SignerError::Write {
                path: path.to_path_buf(),
                source,
            }
        })
    }

    /// Writes the public key for agents, unless the file already holds it. A failure is only
    /// logged: the file is a convenience, the key itself is what matters.
    fn write_public(&self, path: &Path) {
        let text = format!("{}\n", self.public_key_base64());
        if std::fs::read_to_string(path).is_ok_and(|old| old == text) {
            return;
        }
        if let Err(e) = std::fs::write(path, text) {
            tracing::warn!(path = %path.display(), error = %e,
                           "cannot write the public exec signing key for agents");
        }
    }

    /// The id agents know this key by.
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// The public half.
    pub fn verifying_key(&self) -> VerifyingKey {
        self.key.verifying_key()
    }

    /// The public half as agents' `gateway_keys` take it (base64 of 32 bytes).
    pub fn public_key_base64(&self) -> String {
        signing::public_key_to_base64(&self.verifying_key())
    }

    /// The request (an ExecRequest or ControlRequest) with a fresh nonce, encoded and signed.
    pub fn sign<R: SignedRequest>(&self, mut request: R) -> Vec<u8> {
        request.set_nonce(rand::random::<[u8; NONCE_BYTES]>().to_vec());
        signing::encode_signed(request, &self.key)
    }
}

/// Where the public half of the key at `path` is written: `<path>.pub`.
pub fn public_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".pub");
    PathBuf::from(name)
}

#[cfg(test)]
mod tests {
    use prost::Message as _;

    use super::*;
    use execmesh_proto::pb;

    #[test]
    fn the_key_file_is_created_once_with_its_public_half_beside_it() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("state/exec-signing.key");
        let a = Signer::load_or_create(&path).expect("created");
        let b = Signer::load_or_create(&path).expect("loaded");
        assert_eq!(a.key_id(), b.key_id());
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let public = std::fs::read_to_string(public_path(&path)).expect("public key file");
        assert_eq!(
            signing::public_key_from_base64(&public),
            Some(a.verifying_key())
        );
    }

    #[test]
    fn a_bad_key_file_is_named() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("exec.key");
        std::fs::write(&path, "not base64\n").expect("write");
        let err = Signer::load_or_create(&path).unwrap_err().to_string();
        assert!(err.contains("exec.key"), "{err}");
    }

    #[test]
    fn signed_requests_carry_a_fresh_nonce_and_verify() {
        let signer = Signer::new(SigningKey::from_bytes(&[3; 32]));
        let request = pb::ExecRequest {
            host: "web-1".into(),
            tier: execmesh_proto::Tier::Standard.to_wire() as i32,
            ..Default::default()
        };
        let one = signer.sign(request.clone());
        let two = signer.sign(request);
        let (a, b) = (
            pb::ExecRequest::decode(one.as_slice()).expect("decodes"),
            pb::ExecRequest::decode(two.as_slice()).expect("decodes"),
        );
        assert_eq!(a.nonce.len(), NONCE_BYTES);
        assert_ne!(a.nonce, b.nonce);
        assert_eq!(a.key_id, signer.key_id());
        signing::verify::<pb::ExecRequest>(&one, &signer.verifying_key()).expect("verifies");
        let kill = signer.sign(pb::ControlRequest::default());
        signing::verify::<pb::ControlRequest>(&kill, &signer.verifying_key()).expect("verifies");
    }
}
