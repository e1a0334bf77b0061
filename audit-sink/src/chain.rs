//! The hash chain: the exact bytes each stored record's hash covers, and how it links to the previous record.
//!
//! ```text
//! hash(n) = sha256( prev_hash(n) ‖ canonical(row n) )          prev_hash(1) = 32 zero bytes
//! canonical(row) = u64be(seq) ‖ u64be(time_ms)
//!                ‖ field(event_id) ‖ field(tenant) ‖ field(source) ‖ field(kind)
//!                ‖ field(user) ‖ field(host) ‖ field(job_id) ‖ field(tool)
//!                ‖ field(trace_id) ‖ field(outcome) ‖ field(payload)
//!                ‖ field(signer)                        (only when signer is not empty)
//! field(bytes)   = u32be(len(bytes)) ‖ bytes            (strings as UTF-8)
//! ```
//!
//! `signer` is the identity whose key signed the event, as checked on arrival (empty when no
//! known key did, or nothing was checked). Records stored before signers were recorded hash as
//! they always did; a signer added to, removed from or changed in a record changes its hash.
//!
//! `prev_hash` is the previous record's 32-byte hash (stored as 64 lower-case hex digits). Every
//! column of a row is covered, so changing any value of a stored record, deleting or inserting a
//! record, or reordering records changes a hash that `verify` recomputes. The length prefixes
//! make the encoding unambiguous: no two different rows have the same bytes.

use sha2::{Digest, Sha256};

/// `prev_hash` of the first record: 64 zeros.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The columns of one stored record that its hash covers (everything but the hashes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    /// Position in the chain, from 1, without gaps.
    pub seq: u64,
    /// The event id (unique in the store).
    pub event_id: String,
    /// The publisher's time of the event, unix ms.
    pub time_ms: u64,
    pub tenant: String,
    /// `gateway` or `agent`.
    pub source: String,
    /// The event kind (`job-finished`, …).
    pub kind: String,
    pub user: String,
    pub host: String,
    pub job_id: String,
    pub tool: String,
    pub trace_id: String,
    pub outcome: String,
    /// The event exactly as it was published (protobuf `AuditEvent`).
    pub payload: Vec<u8>,
    /// The identity (`gateway`, `agent-web-1`, …) whose key signed the event, checked against
    /// the identities file when it arrived; empty when no known key signed it (or the sink
    /// checked nothing).
    pub signer: String,
}

/// The hash (hex) of `row` chained to `prev_hash` (hex). A `prev_hash` that is not 64 hex
/// digits is hashed as its text, so a corrupted link still yields a (mismatching) hash.
pub fn link(prev_hash: &str, row: &Row) -> String {
    let mut hasher = Sha256::new();
    match hex::decode(prev_hash) {
        Ok(bytes) if bytes.len() == 32 => hasher.update(&bytes),
        _ => hasher.update(prev_hash.as_bytes()),
    }
    hasher.update(row.seq.to_be_bytes());
    hasher.update(row.time_ms.to_be_bytes());
    for text in [
        &row.event_id,
        &row.tenant,
        &row.source,
        &row.kind,
        &row.user,
        &row.host,
        &row.job_id,
        &row.tool,
        &row.trace_id,
        &row.outcome,
    ] {
        field(&mut hasher, text.as_bytes());
    }
    field(&mut hasher, &row.payload);
    if !row.signer.is_empty() {
        field(&mut hasher, row.signer.as_bytes());
    }
    hex::encode(hasher.finalize())
}

fn field(hasher: &mut Sha256, bytes: &[u8]) {
    // Rows come from NATS messages (at most a few MiB), so a length always fits in a u32.
    let len = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
    hasher.update(len.to_be_bytes());
    hasher.update(bytes);
}

/// Walks stored records in seq order and finds the first that does not verify.
#[derive(Debug)]
pub struct Verifier {
    /// The hash the next record must name as its `prev_hash`.
    expected_prev: String,
    /// The seq the next record must have.
    expected_seq: u64,
    /// Records checked so far.
    pub records: u64,
}

/// Why a stored record does not verify.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Broken {
    /// The first record (seq) that does not verify.
    pub seq: u64,
    /// What is wrong with it, in words.
    pub problem: String,
}

impl Default for Verifier {
    fn default() -> Self {
        Self {
            expected_prev: GENESIS.to_string(),
            expected_seq: 1,
            records: 0,
        }
    }
}

// === impl Verifier ===

impl Verifier {
    /// Checks the next record: its seq follows the last, its `prev_hash` is the last record's
    /// hash, and its `hash` is what its content hashes to.
    pub fn check(&mut self, row: &Row, prev_hash: &str, hash: &str) -> Result<(), Broken> {
        let broken = |problem: String| Broken {
            seq: row.seq,
            problem,
        };
        if row.seq != self.expected_seq {
            return Err(Broken {
                seq: self.expected_seq,
                problem: if row.seq > self.expected_seq {
                    format!(
                        "record {} is missing (the next stored record is {})",
                        self.expected_seq, row.seq
                    )
                } else {
                    format!("record {} is stored out of order", row.seq)
                },
            });
        }
        if prev_hash != self.expected_prev {
            return Err(broken(format!(
                "its prev_hash {prev_hash} is not the hash of record {} ({}): a record before it was changed, removed or inserted",
                row.seq.saturating_sub(1),
                self.expected_prev
            )));
        }
        let computed = link(prev_hash, row);
        if computed != hash {
            return Err(broken(format!(
                "its content does not match its hash (stored {hash}, computed {computed}): the record was changed"
            )));
        }
        self.expected_prev = computed;
        self.expected_seq += 1;
        self.records += 1;
        Ok(())
    }

    /// The last verified record's seq (0 before any) and hash.
    pub fn head(&self) -> (u64, &str) {
        (self.expected_seq - 1, &self.expected_prev)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(seq: u64, user: &str) -> Row {
        Row {
            seq,
            event_id: format!("ev{seq}"),
            time_ms: 1_700_000_000_000 + seq,
            tenant: "default".into(),
            source: "gateway".into(),
            kind: "call-received".into(),
            user: user.into(),
            host: "web-1".into(),
            job_id: String::new(),
            tool: "bash".into(),
            trace_id: "t".into(),
            outcome: String::new(),
            payload: vec![1, 2, 3],
            signer: String::new(),
        }
    }

    fn chain(n: u64) -> Vec<(Row, String, String)> {
        let mut prev = GENESIS.to_string();
        (1..=n)
            .map(|seq| {
                let r = row(seq, "alice");
                let hash = link(&prev, &r);
                let out = (r, prev.clone(), hash.clone());
                prev = hash;
                out
            })
            .collect()
    }

    #[test]
    fn the_hash_is_sha256_over_the_previous_hash_and_the_length_prefixed_row() {
        let r = row(1, "alice");
        let mut bytes = vec![0u8; 32];
        bytes.extend(1u64.to_be_bytes());
        bytes.extend(r.time_ms.to_be_bytes());
        for s in [
            "ev1",
            "default",
            "gateway",
            "call-received",
            "alice",
            "web-1",
            "",
            "bash",
            "t",
            "",
        ] {
            bytes.extend((s.len() as u32).to_be_bytes());
            bytes.extend(s.as_bytes());
        }
        bytes.extend(3u32.to_be_bytes());
        bytes.extend([1, 2, 3]);
        assert_eq!(link(GENESIS, &r), hex::encode(Sha256::digest(&bytes)));
    }

    #[test]
    fn the_signer_is_covered_and_unsigned_rows_hash_as_before() {
        let unsigned = row(1, "alice");
        let mut signed = unsigned.clone();
        signed.signer = "agent-web-1".into();
        let before = link(GENESIS, &unsigned);
        assert_ne!(before, link(GENESIS, &signed));
        let mut other = signed.clone();
        other.signer = "gateway".into();
        assert_ne!(link(GENESIS, &signed), link(GENESIS, &other));
        // A record stored as signed and then stripped of its signer no longer matches its hash.
        let mut v = Verifier::default();
        let hash = link(GENESIS, &signed);
        assert!(v.check(&unsigned, GENESIS, &hash).is_err());
    }

    #[test]
    fn moving_a_byte_between_fields_changes_the_hash() {
        let mut a = row(1, "ab");
        a.host = "c".into();
        let mut b = row(1, "a");
        b.host = "bc".into();
        assert_ne!(link(GENESIS, &a), link(GENESIS, &b));
    }

    #[test]
    fn an_intact_chain_verifies() {
        let mut v = Verifier::default();
        for (r, prev, hash) in chain(5) {
            v.check(&r, &prev, &hash).unwrap();
        }
        assert_eq!(v.head().0, 5);
        assert_eq!(v.records, 5);
    }

    #[test]
    fn a_changed_record_is_named() {
        let mut rows = chain(5);
        rows[2].0.user = "mallory".into();
        let mut v = Verifier::default();
        let err = rows
            .iter()
            .find_map(|(r, p, h)| v.check(r, p, h).err())
            .unwrap();
        assert_eq!(err.seq, 3);
        assert!(err.problem.contains("changed"), "{}", err.problem);
    }

    #[test]
    fn a_rehashed_record_breaks_the_next_link() {
        let mut rows = chain(5);
        rows[2].0.user = "mallory".into();
        rows[2].2 = link(&rows[2].1, &rows[2].0);
        let mut v = Verifier::default();
        let err = rows
            .iter()
            .find_map(|(r, p, h)| v.check(r, p, h).err())
            .unwrap();
        assert_eq!(err.seq, 4);
        assert!(err.problem.contains("record 3"), "{}", err.problem);
    }

    #[test]
    fn a_removed_record_is_named() {
        let mut rows = chain(5);
        rows.remove(1);
        let mut v = Verifier::default();
        let err = rows
            .iter()
            .find_map(|(r, p, h)| v.check(r, p, h).err())
            .unwrap();
        assert_eq!(err.seq, 2);
        assert!(err.problem.contains("missing"), "{}", err.problem);
    }
}
