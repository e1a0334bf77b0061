//! Signed records on the gateway's side: what it writes into JetStream that decides security (approvals, revocations, OAuth grants, the job statuses it settles, its audit events) is signed with the gateway identity's key, and every record it reads is checked against the identity entitled to its subject.
//!
//! NATS permissions confine what each identity publishes itself, but not the reply subject of
//! its JetStream requests, so a stolen agent credential can have the server store bytes of its
//! choosing on any subject (docs/security.md). A record that its subject's owner did not sign is
//! therefore treated like a missing one, and logged (rate-limited) with the subject and why.
//!
//! Without an identities file (development) records are accepted unsigned, and the gateway says
//! at start what that means.

use std::collections::HashSet;
use std::path::Path;
use std::sync::{Arc, Mutex};

use async_nats::HeaderMap;
use tracing::{info, warn};

use execmesh_proto::headers;
use execmesh_proto::identities::{
    Identities, LiveIdentities, OPEN_MESH_WARNING, RecordError, Rejections, is_planted,
};
use execmesh_proto::signing::{RecordKey, RecordKeyError, SignedRecord};

/// Signatures remembered as verified; beyond, the memory starts over.
const VERIFIED_CACHE: usize = 200_000;

/// Why a record read from JetStream is ignored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// It was stored as the answer to a JetStream request whose requester named its subject as
    /// the reply subject: it carries the server's answer headers of another read.
    #[error(
        "planted through a JetStream reply subject (it carries another answer's stream headers)"
    )]
    Planted,
    /// Not signed by the identity entitled to its subject.
    #[error(transparent)]
    Record(#[from] RecordError),
}

/// Why the gateway cannot sign or check records as configured.
#[derive(Debug, thiserror::Error)]
pub enum RecordsError {
    /// The seed cannot sign.
    #[error(transparent)]
    Key(#[from] RecordKeyError),
    /// The identities file cannot be used.
    #[error(transparent)]
    Identities(#[from] execmesh_proto::identities::IdentitiesError),
    /// The identities file names another key as the gateway's.
    #[error(
        "the identities file {path} names {listed} as the gateway, but this gateway's NATS seed \
         is {own}: regenerate the file with nats-config, or give the gateway its seed"
    )]
    NotTheGateway {
        path: String,
        listed: String,
        own: String,
    },
    /// Records are checked, but the gateway has no key to sign its own.
    #[error(
        "identities_file is set but the gateway has no NATS seed (nats_nkey_seed or nats_creds) \
         to sign its own records (approvals, revocations, audit events) with"
    )]
    NoKey,
}

/// The gateway's signing key and the identities it trusts.
pub struct Records {
    /// Signs what this gateway writes; `None`: writes go out unsigned (development).
    key: Option<RecordKey>,
    /// The identities trusted; `None`: development, every record is accepted.
    trust: Option<Arc<LiveIdentities>>,
    /// Digests of records whose signature verified (see `SignedRecord::digest`): paging and
    /// listings read the same records again and again.
    verified: Mutex<HashSet<[u8; 32]>>,
    /// Rate-limited warnings about ignored records.
    rejections: Rejections,
}

impl std::fmt::Debug for Records {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Records")
            .field("key", &self.key)
            .field("secured", &self.trust.is_some())
            .finish()
    }
}

// === impl Records ===

impl Records {
    /// Loads the signing key from `seed` (a seed or `.creds` file) and the identities from
    /// `identities_file`; says at start what the combination means.
    pub fn load(seed: Option<&Path>, identities_file: Option<&Path>) -> Result<Self, RecordsError> {
        let key = seed.map(RecordKey::load).transpose()?;
        let trust = match identities_file {
            None => {
                warn!("{OPEN_MESH_WARNING}");
                None
            }
            Some(path) => {
                let live = LiveIdentities::load(path)?;
                let Some(key) = &key else {
                    return Err(RecordsError::NoKey);
                };
                let identities = live.current();
                let listed = identities
                    .by_key(key.public_key())
                    .filter(|i| i.name == "gateway");
                if listed.is_none() {
                    let gateway = gateway_key(&identities).unwrap_or_default();
                    return Err(RecordsError::NotTheGateway {
                        path: path.display().to_string(),
                        listed: gateway,
                        own: key.public_key().to_string(),
                    });
                }
                Some(Arc::new(live))
            }
        };
        if let Some(key) = &key {
            info!(
                signer = key.public_key(),
                "signing the gateway's records with the key of its NATS seed"
            );
        }
        Ok(Self {
            key,
            trust,
            verified: Mutex::new(HashSet::new()),
            rejections: Rejections::default(),
        })
    }

    /// A gateway that neither signs nor checks (tests of the core without NATS accounts).
    pub fn open() -> Self {
        Self {
            key: None,
            trust: None,
            verified: Mutex::new(HashSet::new()),
            rejections: Rejections::default(),
        }
    }

    /// The key the gateway signs with, if any.
    pub fn key(&self) -> Option<&RecordKey> {
        self.key.as_ref()
    }

    /// Whether records are checked (an identities file is in force).
    pub fn is_secured(&self) -> bool {
        self.trust.is_some()
    }

    /// The live identities, to reload on change.
    pub fn trust(&self) -> Option<&Arc<LiveIdentities>> {
        self.trust.as_ref()
    }

    /// Signs a record about to be published on `subject` (nothing without a key).
    pub fn sign(&self, subject: &str, headers: &mut HeaderMap, payload: &[u8]) {
        if let Some(key) = &self.key {
            key.sign(subject, headers, payload);
        }
    }

    /// Checks a stored record, read as `what` (`job status`, `facts`, …): `Ok` when its
    /// subject's owner signed it (or in development). A rejection is logged here.
    pub fn check(&self, what: &str, stored: Stored<'_>) -> Result<(), Rejection> {
        let Some(trust) = &self.trust else {
            return Ok(());
        };
        let mut verdict = self.verify(&trust.current(), stored);
        if matches!(verdict, Err(RecordError::UnknownSigner { .. })) {
            // A host added since the file was read: read it again if it changed.
            trust.reload_if_changed();
            verdict = self.verify(&trust.current(), stored);
        }
        match verdict {
            Ok(()) => Ok(()),
            Err(e) => {
                self.rejections.note(what, stored.subject, e.reason(), &e);
                Err(Rejection::Record(e))
            }
        }
    }

    fn verify(&self, identities: &Identities, stored: Stored<'_>) -> Result<(), RecordError> {
        let record = SignedRecord::read(stored.subject, stored.headers, stored.payload)?;
        let identity = identities.entitled_signer(stored.subject, &record.signer)?;
        let digest = record.digest();
        if self.verified.lock().is_ok_and(|v| v.contains(&digest)) {
            return Ok(());
        }
        Identities::verify(identity, &record)?;
        if let Ok(mut verified) = self.verified.lock() {
            if verified.len() >= VERIFIED_CACHE {
                verified.clear();
            }
            verified.insert(digest);
        }
        Ok(())
    }

    /// Checks a record delivered by a consumer (a watch): one stored with the stream headers of
    /// a direct-get answer was planted, whatever else it carries; otherwise [`Records::check`].
    pub fn check_delivered(&self, what: &str, stored: Stored<'_>) -> Result<(), Rejection> {
        let planted = stored
            .headers
            .is_some_and(|h| h.get(headers::NATS_STREAM).is_some());
        self.check_unless_planted(what, planted, stored)
    }

    /// Checks a record answered by a direct get: planted (its answer headers appear twice), or
    /// [`Records::check`] on the subject the server names.
    pub fn check_answer(&self, what: &str, stored: Stored<'_>) -> Result<(), Rejection> {
        self.check_unless_planted(what, is_planted(stored.headers), stored)
    }

    fn check_unless_planted(
        &self,
        what: &str,
        planted: bool,
        stored: Stored<'_>,
    ) -> Result<(), Rejection> {
        if planted {
            self.rejections
                .note(what, stored.subject, "planted", &Rejection::Planted);
            return Err(Rejection::Planted);
        }
        self.check(what, stored)
    }
}

/// A record as JetStream holds it: the subject it is stored on, its headers and its payload.
#[derive(Debug, Clone, Copy)]
pub struct Stored<'a> {
    pub subject: &'a str,
    pub headers: Option<&'a HeaderMap>,
    pub payload: &'a [u8],
}

fn gateway_key(identities: &Identities) -> Option<String> {
    // The gateway's entry is the one named `gateway`; identities are keyed by public key.
    identities
        .all()
        .find(|i| i.name == "gateway")
        .map(|i| i.public_key.clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use execmesh_proto::identities::IdentitiesDoc;

    fn stored<'a>(
        subject: &'a str,
        headers: Option<&'a HeaderMap>,
        payload: &'a [u8],
    ) -> Stored<'a> {
        Stored {
            subject,
            headers,
            payload,
        }
    }

    fn seed() -> String {
        nkeys::KeyPair::new_user().seed().expect("a seed")
    }

    /// A gateway seed file, an agent key for web-1, and the identities file naming both.
    fn mesh(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf, RecordKey) {
        let (gateway, agent) = (seed(), seed());
        let gateway_file = dir.join("gateway.nk");
        std::fs::write(&gateway_file, &gateway).expect("write");
        let key = |s: &str| RecordKey::from_seed(s).expect("a key");
        let doc = IdentitiesDoc {
            tenant: "default".into(),
            gateway: key(&gateway).public_key().into(),
            audit_sink: key(&seed()).public_key().into(),
            agents: [("web-1".to_string(), key(&agent).public_key().to_string())].into(),
            relays: Default::default(),
        };
        let identities = dir.join("identities.toml");
        std::fs::write(&identities, doc.render("test")).expect("write");
        (gateway_file, identities, key(&agent))
    }

    #[test]
    fn records_are_accepted_only_from_their_owner_and_the_verdict_is_cached() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (gateway, identities, agent) = mesh(dir.path());
        let records = Records::load(Some(&gateway), Some(&identities)).expect("secured");
        assert!(records.is_secured());
        let subject = "$KV.mesh_facts.default.web-1";
        let mut h = HeaderMap::new();
        agent.sign(subject, &mut h, b"facts");
        records
            .check("facts", stored(subject, Some(&h), b"facts"))
            .expect("the agent's own facts");
        records
            .check("facts", stored(subject, Some(&h), b"facts"))
            .expect("again, from the cache");
        assert!(records.verified.lock().expect("lock").len() == 1);
        assert!(
            records
                .check("facts", stored(subject, Some(&h), b"forged"))
                .is_err()
        );
        assert!(
            records
                .check("facts", stored(subject, None, b"facts"))
                .is_err()
        );
        // The gateway's own writes verify as the gateway's.
        let mut own = HeaderMap::new();
        records.sign("$KV.mesh_revoked.jti", &mut own, b"1");
        records
            .check(
                "revocation",
                stored("$KV.mesh_revoked.jti", Some(&own), b"1"),
            )
            .expect("the gateway's own revocation");
        let err = records
            .check(
                "facts",
                stored("$KV.mesh_facts.default.web-1", Some(&own), b"1"),
            )
            .expect_err("the gateway may not write facts");
        assert!(err.to_string().contains("gateway"), "{err}");
    }

    #[test]
    fn a_gateway_whose_seed_the_identities_file_does_not_name_refuses_to_start() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (_, identities, _) = mesh(dir.path());
        let stranger = dir.path().join("stranger.nk");
        std::fs::write(&stranger, seed()).expect("write");
        let err = Records::load(Some(&stranger), Some(&identities)).expect_err("refused");
        assert!(matches!(err, RecordsError::NotTheGateway { .. }), "{err}");
        let err = Records::load(None, Some(&identities)).expect_err("refused");
        assert!(matches!(err, RecordsError::NoKey), "{err}");
        // Development: nothing is checked.
        let open = Records::load(None, None).expect("development");
        assert!(
            open.check("facts", stored("$KV.mesh_facts.default.x", None, b""))
                .is_ok()
        );
    }
}
