//! The JetStream streams and KV buckets of the mesh, with their configurations.
//!
//! The node-agent provisions these at start-up (create if missing, and bring their byte limits
//! to its configured [`StoreLimits`]), so a fresh NATS server works without a separate setup
//! step. The definitions live here so every service, and the tests, agree on names and limits.
//!
//! Every stream and bucket is bounded in bytes and age: MESH_OUT discards its oldest records
//! when full (output is the only thing a user can make grow at will), and it has a share of the
//! budget of its own, so it can never take the disk from heartbeats, KV or AUDIT.

use std::time::Duration;

use async_nats::jetstream::{kv, stream};

/// Stream of job output records.
pub const OUT_STREAM: &str = "MESH_OUT";
/// Subjects of [`OUT_STREAM`].
pub const OUT_SUBJECTS: &str = "mesh.v1.*.out.>";

/// Stream of audit events, consumed by the audit-sink.
pub const AUDIT_STREAM: &str = "AUDIT";
/// Subjects of [`AUDIT_STREAM`]: `mesh.v1.<tenant>.audit.<source>.<kind>`.
pub const AUDIT_SUBJECTS: &str = "mesh.v1.*.audit.>";
/// The audit-sink's durable consumer on [`AUDIT_STREAM`].
pub const AUDIT_CONSUMER: &str = "audit-sink";
/// How long audit events stay in [`AUDIT_STREAM`]: the longest the audit-sink may be down
/// without losing events. They stay after the sink stored them too (limits retention), so a
/// second consumer (a SIEM forwarder) can read the same week.
pub const AUDIT_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);
/// Largest audit event (an event carries a redacted, shortened argument summary).
pub const MAX_AUDIT_EVENT_BYTES: i32 = 64 * 1024;

/// KV bucket of host heartbeats (per-key TTL).
pub const PRESENCE_BUCKET: &str = "mesh_presence";
/// KV bucket of host registrations and facts (no TTL).
pub const FACTS_BUCKET: &str = "mesh_facts";
/// KV bucket of job statuses.
pub const JOBS_BUCKET: &str = "mesh_jobs";
/// KV bucket of the gateway's OAuth state: authorization codes, hashed refresh tokens, token
/// families, registered clients (per-key TTL). Created by the gateway.
pub const OAUTH_BUCKET: &str = "mesh_oauth";
/// KV bucket of revoked access tokens, keyed by `jti`, each kept until the token would have
/// expired (per-key TTL). Created by the gateway; every replica honours it.
pub const REVOKED_BUCKET: &str = "mesh_revoked";

/// KV bucket of approval requests and decisions, keyed `<tenant>.<approval id>`. Created by
/// the gateway; records are kept a week after their last change for the record.
pub const APPROVALS_BUCKET: &str = "mesh_approvals";
/// How long an approval record is kept after its last change.
pub const APPROVALS_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);

/// KV bucket of MCP Tasks (`io.modelcontextprotocol/tasks`), keyed `<tenant>.<task id>`: each
/// task's owner, status, the jobs it started and, once done, its result. Created by the
/// gateway; every key carries its own TTL (the task's `ttlMs`), so any replica answers for a
/// task until it expires, whichever replica created it.
pub const TASKS_BUCKET: &str = "mesh_tasks";

/// How long output is kept by default.
pub const DEFAULT_OUTPUT_RETENTION: Duration = Duration::from_secs(24 * 3600);
/// How long job statuses are kept by default (a little longer than output, so a status
/// outlives the output it describes and paging can say "expired" rather than "unknown").
pub const DEFAULT_JOB_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);
/// Largest single output record the agent publishes (a chunk plus its framing).
pub const MAX_RECORD_BYTES: i32 = 256 * 1024;
/// Window in which a retried publish with the same `Nats-Msg-Id` is stored once.
pub const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);

/// The JetStream disk budget of a mesh when its operator names none: 2 GiB, of which MESH_OUT
/// gets 1.5 GiB (six jobs that each hit the default 256 MiB per-job cap). Small on purpose:
/// nats-server reserves every stream's byte limit against its store (by default 75 % of the disk
/// free when it starts) and refuses a stream it cannot reserve, so a larger default would keep a
/// mesh on a small machine from starting. A fleet names its budget.
pub const DEFAULT_STORE_BUDGET_BYTES: u64 = 2 * 1024 * 1024 * 1024;
/// The smallest budget: below it the small buckets' floors would leave MESH_OUT almost nothing.
pub const MIN_STORE_BUDGET_BYTES: u64 = 16 * 1024 * 1024;
/// The least a bucket gets, however small the budget: room for thousands of records.
const MIN_BUCKET_BYTES: u64 = 1024 * 1024;
/// The buckets that each get a small share: OAuth, revoked tokens, approvals and tasks.
const SMALL_BUCKETS: u64 = 4;
/// The buckets of one record per host, each with its share: presence and facts.
const HOST_BUCKETS: u64 = 2;

/// The byte limits of every stream and bucket of the mesh, derived from one disk budget: what
/// an operator knows is the disk JetStream may use, not the mix of what is stored in it. AUDIT
/// gets 10 %, `mesh_jobs` 5 %, each of the two host buckets (presence, facts) 3 %, each of the
/// four small buckets (OAuth, revoked tokens, approvals, tasks) 1 % (all at least 1 MiB), and
/// MESH_OUT the rest (75 %). Each is a limit of its own stream, so output filling MESH_OUT evicts
/// only older output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreLimits {
    /// MESH_OUT: the rest of the budget. Full: its oldest records are discarded.
    pub out_bytes: i64,
    /// AUDIT. Full: its oldest events are discarded (the audit-sink stores each within
    /// seconds; only a sink down for long loses events to this, as it does to the age limit).
    pub audit_bytes: i64,
    /// `mesh_jobs`. Full: new statuses are refused (KV buckets discard new values), which
    /// at 5 % of the budget takes hundreds of thousands of statuses inside the retention.
    pub jobs_bytes: i64,
    /// Each of `mesh_presence` and `mesh_facts`: one record per host (a fact pack and its
    /// signature take about 600 bytes, so 3 % of the default budget holds 100,000 hosts). Full:
    /// a new host's registration is refused.
    pub host_bucket_bytes: i64,
    /// Each of `mesh_oauth`, `mesh_revoked`, `mesh_approvals`, `mesh_tasks`: one small record
    /// per grant, revocation, approval or task.
    pub small_bucket_bytes: i64,
}

impl Default for StoreLimits {
    fn default() -> Self {
        Self::from_budget(DEFAULT_STORE_BUDGET_BYTES)
    }
}

// === impl StoreLimits ===

impl StoreLimits {
    /// The limits for a budget of `budget` bytes (raised to [`MIN_STORE_BUDGET_BYTES`]).
    pub fn from_budget(budget: u64) -> Self {
        let budget = budget.max(MIN_STORE_BUDGET_BYTES);
        let percent = |p: u64| budget / 100 * p;
        let audit = percent(10);
        let jobs = percent(5).max(MIN_BUCKET_BYTES);
        let host = percent(3).max(MIN_BUCKET_BYTES);
        let small = percent(1).max(MIN_BUCKET_BYTES);
        let out = budget.saturating_sub(audit + jobs + HOST_BUCKETS * host + SMALL_BUCKETS * small);
        let bytes = |b: u64| i64::try_from(b).unwrap_or(i64::MAX);
        Self {
            out_bytes: bytes(out),
            audit_bytes: bytes(audit),
            jobs_bytes: bytes(jobs),
            host_bucket_bytes: bytes(host),
            small_bucket_bytes: bytes(small),
        }
    }

    /// The byte limit of the stream `name` (a KV bucket's is `KV_<bucket>`), `None` for a
    /// stream that is not the mesh's.
    pub fn of_stream(&self, name: &str) -> Option<i64> {
        let bucket = name.strip_prefix("KV_");
        match (name, bucket) {
            (OUT_STREAM, _) => Some(self.out_bytes),
            (AUDIT_STREAM, _) => Some(self.audit_bytes),
            (_, Some(JOBS_BUCKET)) => Some(self.jobs_bytes),
            (_, Some(PRESENCE_BUCKET | FACTS_BUCKET)) => Some(self.host_bucket_bytes),
            (_, Some(OAUTH_BUCKET | REVOKED_BUCKET | APPROVALS_BUCKET | TASKS_BUCKET)) => {
                Some(self.small_bucket_bytes)
            }
            _ => None,
        }
    }
}

/// The MESH_OUT stream: file storage, direct get enabled (paging reads through it), bounded by
/// `limits.out_bytes`; when full the oldest records go first, so new output (and whatever else
/// the server stores) is never refused for it.
pub fn out_stream(retention: Duration, limits: &StoreLimits, replicas: usize) -> stream::Config {
    stream::Config {
        name: OUT_STREAM.to_string(),
        description: Some("execmesh job output records".to_string()),
        subjects: vec![OUT_SUBJECTS.to_string()],
        storage: stream::StorageType::File,
        max_age: retention,
        max_bytes: limits.out_bytes,
        discard: stream::DiscardPolicy::Old,
        max_message_size: MAX_RECORD_BYTES,
        duplicate_window: DUPLICATE_WINDOW,
        allow_direct: true,
        num_replicas: replicas,
        ..Default::default()
    }
}

/// The AUDIT stream: file storage, [`AUDIT_RETENTION`], duplicate window for retried publishes.
///
/// Whoever starts first (gateway, agent or audit-sink) creates it with exactly this
/// configuration; afterwards only its byte limit is changed (by an agent, to its budget's
/// share), so an operator's later edits of anything else (`nats stream edit AUDIT --max-age
/// 30d`) stay.
pub fn audit_stream(limits: &StoreLimits, replicas: usize) -> stream::Config {
    stream::Config {
        name: AUDIT_STREAM.to_string(),
        description: Some("execmesh audit events".to_string()),
        subjects: vec![AUDIT_SUBJECTS.to_string()],
        storage: stream::StorageType::File,
        retention: stream::RetentionPolicy::Limits,
        max_age: AUDIT_RETENTION,
        max_bytes: limits.audit_bytes,
        discard: stream::DiscardPolicy::Old,
        max_message_size: MAX_AUDIT_EVENT_BYTES,
        duplicate_window: DUPLICATE_WINDOW,
        num_replicas: replicas,
        ..Default::default()
    }
}

/// How long the marker of an expired heartbeat stays in `mesh_presence`: how long an offline
/// host's "last seen" stays known.
pub const PRESENCE_MARKER_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

/// `mesh_presence`: one heartbeat per host; keys expire by per-message TTL.
pub fn presence_bucket(limits: &StoreLimits, replicas: usize) -> kv::Config {
    kv::Config {
        // Enables per-message TTL on the bucket's stream and leaves a delete marker when a
        // heartbeat expires, so watchers see a host go away; the marker is kept for a week, as
        // the record of when the host was last seen (one small message per vanished host).
        limit_markers: Some(PRESENCE_MARKER_TTL),
        ..bucket(
            PRESENCE_BUCKET,
            "execmesh host heartbeats",
            limits.host_bucket_bytes,
            replicas,
        )
    }
}

/// `mesh_facts`: the host's registration and fact pack.
pub fn facts_bucket(limits: &StoreLimits, replicas: usize) -> kv::Config {
    bucket(
        FACTS_BUCKET,
        "execmesh host registrations and facts",
        limits.host_bucket_bytes,
        replicas,
    )
}

/// `mesh_jobs`: job statuses, updated with compare-and-set.
pub fn jobs_bucket(retention: Duration, limits: &StoreLimits, replicas: usize) -> kv::Config {
    kv::Config {
        max_age: retention,
        ..bucket(
            JOBS_BUCKET,
            "execmesh job statuses",
            limits.jobs_bytes,
            replicas,
        )
    }
}

/// `mesh_oauth`: the gateway's OAuth grants; each key carries its own TTL.
pub fn oauth_bucket(limits: &StoreLimits, replicas: usize) -> kv::Config {
    kv::Config {
        // Enables per-message TTL (codes live a minute, refresh tokens weeks).
        limit_markers: Some(Duration::from_secs(60)),
        ..bucket(
            OAUTH_BUCKET,
            "execmesh OAuth codes, refresh tokens and clients",
            limits.small_bucket_bytes,
            replicas,
        )
    }
}

/// `mesh_revoked`: revoked token ids, each expiring with the token it revokes.
pub fn revoked_bucket(limits: &StoreLimits, replicas: usize) -> kv::Config {
    kv::Config {
        limit_markers: Some(Duration::from_secs(60)),
        ..bucket(
            REVOKED_BUCKET,
            "execmesh revoked access tokens",
            limits.small_bucket_bytes,
            replicas,
        )
    }
}

/// `mesh_approvals`: approval records, changed by compare-and-set (history 1 is enough: the
/// record carries its own decision trail, and the audit stream has every step).
pub fn approvals_bucket(limits: &StoreLimits, replicas: usize) -> kv::Config {
    kv::Config {
        max_age: APPROVALS_RETENTION,
        ..bucket(
            APPROVALS_BUCKET,
            "execmesh approval requests and decisions",
            limits.small_bucket_bytes,
            replicas,
        )
    }
}

/// `mesh_tasks`: MCP Tasks, changed by compare-and-set; each key expires with its task's TTL
/// (per-message TTL), leaving a short-lived delete marker.
pub fn tasks_bucket(limits: &StoreLimits, replicas: usize) -> kv::Config {
    kv::Config {
        limit_markers: Some(Duration::from_secs(60)),
        ..bucket(
            TASKS_BUCKET,
            "execmesh MCP tasks",
            limits.small_bucket_bytes,
            replicas,
        )
    }
}

/// A bucket as the mesh keeps them all: one value per key (history 1), on file, at most
/// `max_bytes`, `replicas` copies.
fn bucket(name: &str, description: &str, max_bytes: i64, replicas: usize) -> kv::Config {
    kv::Config {
        bucket: name.to_string(),
        description: description.to_string(),
        history: 1,
        max_bytes,
        storage: stream::StorageType::File,
        num_replicas: replicas,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_budget_is_shared_out_with_every_stream_and_bucket_bounded() {
        let l = StoreLimits::from_budget(DEFAULT_STORE_BUDGET_BYTES);
        let total = l.out_bytes
            + l.audit_bytes
            + l.jobs_bytes
            + HOST_BUCKETS as i64 * l.host_bucket_bytes
            + SMALL_BUCKETS as i64 * l.small_bucket_bytes;
        assert!(total <= DEFAULT_STORE_BUDGET_BYTES as i64);
        assert_eq!(l.audit_bytes, DEFAULT_STORE_BUDGET_BYTES as i64 / 100 * 10);
        assert!(l.out_bytes >= DEFAULT_STORE_BUDGET_BYTES as i64 / 100 * 75);
        // Six jobs at the default per-job cap (256 MiB) fit MESH_OUT.
        assert!(l.out_bytes >= 6 * 256 * 1024 * 1024, "{}", l.out_bytes);
        // 50,000 hosts' records (about 600 bytes each) fit the host buckets.
        assert!(
            l.host_bucket_bytes >= 50_000 * 600,
            "{}",
            l.host_bucket_bytes
        );

        // The smallest budget still gives every bucket its floor and MESH_OUT the most.
        let small = StoreLimits::from_budget(0);
        assert_eq!(small, StoreLimits::from_budget(MIN_STORE_BUDGET_BYTES));
        assert_eq!(small.small_bucket_bytes, MIN_BUCKET_BYTES as i64);
        assert_eq!(small.host_bucket_bytes, MIN_BUCKET_BYTES as i64);
        assert!(small.out_bytes > small.audit_bytes + small.jobs_bytes);

        let out = out_stream(DEFAULT_OUTPUT_RETENTION, &l, 1);
        assert_eq!(
            (out.max_bytes, out.discard),
            (l.out_bytes, stream::DiscardPolicy::Old)
        );
        assert_eq!(audit_stream(&l, 1).max_bytes, l.audit_bytes);
        assert_eq!(l.of_stream("KV_mesh_jobs"), Some(l.jobs_bytes));
        assert_eq!(l.of_stream("KV_mesh_presence"), Some(l.host_bucket_bytes));
        assert_eq!(l.of_stream("KV_mesh_approvals"), Some(l.small_bucket_bytes));
        assert_eq!(l.of_stream("KV_other"), None);
        for bucket in [presence_bucket(&l, 1), facts_bucket(&l, 1)] {
            assert_eq!(bucket.max_bytes, l.host_bucket_bytes, "{}", bucket.bucket);
        }
        for bucket in [
            oauth_bucket(&l, 1),
            revoked_bucket(&l, 1),
            approvals_bucket(&l, 1),
            tasks_bucket(&l, 1),
        ] {
            assert_eq!(bucket.max_bytes, l.small_bucket_bytes, "{}", bucket.bucket);
        }
    }
}
