//! The JetStream streams and KV buckets of the mesh, with their configurations.
//!
//! The node-agent provisions these at start-up (create if missing, otherwise use as they are),
//! so a fresh NATS server works without a separate setup step; the gateway only reads and writes.
//! The definitions live here so both sides, and the tests, agree on names and limits.

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

/// How long output is kept by default.
pub const DEFAULT_OUTPUT_RETENTION: Duration = Duration::from_secs(24 * 3600);
/// How long job statuses are kept by default (a little longer than output, so a status
/// outlives the output it describes and paging can say "expired" rather than "unknown").
pub const DEFAULT_JOB_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);
/// Largest single output record the agent publishes (a chunk plus its framing).
pub const MAX_RECORD_BYTES: i32 = 256 * 1024;
/// Window in which a retried publish with the same `Nats-Msg-Id` is stored once.
pub const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);

/// The MESH_OUT stream: file storage, direct get enabled (paging reads through it).
pub fn out_stream(retention: Duration, replicas: usize) -> stream::Config {
    stream::Config {
        name: OUT_STREAM.to_string(),
        description: Some("execmesh job output records".to_string()),
        subjects: vec![OUT_SUBJECTS.to_string()],
        storage: stream::StorageType::File,
        max_age: retention,
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
/// configuration, and nobody changes an existing one, so every process asks for the same stream
/// and an operator's later edits (`nats stream edit AUDIT --max-age 30d`) stay.
pub fn audit_stream(replicas: usize) -> stream::Config {
    stream::Config {
        name: AUDIT_STREAM.to_string(),
        description: Some("execmesh audit events".to_string()),
        subjects: vec![AUDIT_SUBJECTS.to_string()],
        storage: stream::StorageType::File,
        retention: stream::RetentionPolicy::Limits,
        max_age: AUDIT_RETENTION,
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
pub fn presence_bucket(replicas: usize) -> kv::Config {
    kv::Config {
        // Enables per-message TTL on the bucket's stream and leaves a delete marker when a
        // heartbeat expires, so watchers see a host go away; the marker is kept for a week, as
        // the record of when the host was last seen (one small message per vanished host).
        limit_markers: Some(PRESENCE_MARKER_TTL),
        ..bucket(PRESENCE_BUCKET, "execmesh host heartbeats", replicas)
    }
}

/// `mesh_facts`: the host's registration and fact pack.
pub fn facts_bucket(replicas: usize) -> kv::Config {
    bucket(
        FACTS_BUCKET,
        "execmesh host registrations and facts",
        replicas,
    )
}

/// `mesh_jobs`: job statuses, updated with compare-and-set.
pub fn jobs_bucket(retention: Duration, replicas: usize) -> kv::Config {
    kv::Config {
        max_age: retention,
        ..bucket(JOBS_BUCKET, "execmesh job statuses", replicas)
    }
}

/// `mesh_oauth`: the gateway's OAuth grants; each key carries its own TTL.
pub fn oauth_bucket(replicas: usize) -> kv::Config {
    kv::Config {
        // Enables per-message TTL (codes live a minute, refresh tokens weeks).
        limit_markers: Some(Duration::from_secs(60)),
        ..bucket(
            OAUTH_BUCKET,
            "execmesh OAuth codes, refresh tokens and clients",
            replicas,
        )
    }
}

/// `mesh_revoked`: revoked token ids, each expiring with the token it revokes.
pub fn revoked_bucket(replicas: usize) -> kv::Config {
    kv::Config {
        limit_markers: Some(Duration::from_secs(60)),
        ..bucket(REVOKED_BUCKET, "execmesh revoked access tokens", replicas)
    }
}

/// `mesh_approvals`: approval records, changed by compare-and-set (history 1 is enough: the
/// record carries its own decision trail, and the audit stream has every step).
pub fn approvals_bucket(replicas: usize) -> kv::Config {
    kv::Config {
        max_age: APPROVALS_RETENTION,
        ..bucket(
            APPROVALS_BUCKET,
            "execmesh approval requests and decisions",
            replicas,
        )
    }
}

/// A bucket as the mesh keeps them all: one value per key (history 1), on file, `replicas`
/// copies.
fn bucket(name: &str, description: &str, replicas: usize) -> kv::Config {
    kv::Config {
        bucket: name.to_string(),
        description: description.to_string(),
        history: 1,
        storage: stream::StorageType::File,
        num_replicas: replicas,
        ..Default::default()
    }
}
