//! The contract between execmesh processes: protobuf types, NATS subjects, JetStream layout, headers,
//! the guard tiers (`tier`), and the NATS permissions of each identity (`permissions`).
//!
//! The contract names and validates; the gateway, the node-agent and the tests share these
//! definitions so that a subject or a bucket is spelled in exactly one place. It also holds the
//! JSON shape of audit events (`audit_json`), the identities file with the check of signed
//! records against it (`identities`), the one redactor of secrets that every process applies
//! before it stores or shows a command, an argument or (optionally) output (`redact`), and the
//! reading of durations operators type (`duration`), and how a job's end is audited (`job_end`).
//! What runs (connections, the audit publisher, KV writes) is in `execmesh-runtime`.

pub mod audit_json;
pub mod duration;
pub mod headers;
pub mod identities;
pub mod jetstream;
pub mod job_end;
pub mod permissions;
pub mod redact;
pub mod signing;
pub mod subject;
pub mod tier;

/// Generated protobuf types (`execmesh.v1`), and the admin API's gRPC clients and servers
/// (`pb::hosts_service_client::HostsServiceClient`, `pb::hosts_service_server::HostsService`, …).
#[allow(clippy::all, missing_docs)]
pub mod pb {
    include!(concat!(env!("OUT_DIR"), "/execmesh.v1.rs"));
}

impl pb::FileRequest {
    /// The name of the file operation (`read`, `append`, `chunk_write`, …), as the gateway's
    /// audit trail (`file.<name>`) and the agent's logs show it.
    pub fn op_name(&self) -> &'static str {
        use pb::file_request::Op;
        match &self.op {
            Some(Op::Read(_)) => "read",
            Some(Op::Stat(_)) => "stat",
            Some(Op::List(_)) => "list",
            Some(Op::Write(w)) if w.append => "append",
            Some(Op::Write(_)) => "write",
            Some(Op::Move(_)) => "move",
            Some(Op::Delete(_)) => "delete",
            Some(Op::ChunkRead(_)) => "chunk_read",
            Some(Op::ChunkWrite(_)) => "chunk_write",
            None => "none",
        }
    }
}

impl pb::OutputUsage {
    /// MESH_OUT is at its byte limit (within 1 %): new output evicts the oldest.
    pub fn stream_full(&self) -> bool {
        self.stream_max_bytes > 0
            && self
                .stream_bytes
                .saturating_add(self.stream_max_bytes / 100)
                >= self.stream_max_bytes
    }

    /// The host's output quota is used up.
    pub fn host_quota_reached(&self) -> bool {
        self.host_quota_bytes > 0 && self.host_bytes >= self.host_quota_bytes
    }

    /// The output limits reached now, in words for a listing; empty when none is.
    pub fn reached(&self) -> Vec<String> {
        let mut reached = Vec::new();
        if !self.users_at_quota.is_empty() {
            reached.push(format!("user quota ({})", self.users_at_quota.join(", ")));
        }
        if self.host_quota_reached() {
            reached.push("host quota".to_string());
        }
        if self.stream_full() {
            reached.push("MESH_OUT full, the oldest output is evicted".to_string());
        }
        reached
    }
}

/// The encoded `FileDescriptorSet` of every `execmesh.v1` file, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/execmesh_descriptor.bin"));

pub use subject::{Token, TokenError};
pub use tier::{Tier, UnknownTier};

/// Milliseconds since the Unix epoch, the time unit of every timestamp in the protocol.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// An audit event id (also its `Nats-Msg-Id`): 12 hex digits of `time_ms`, then 16 of `random`,
/// so ids are unique without coordination and sort roughly by time.
pub fn audit_event_id(time_ms: u64, random: u64) -> String {
    format!("{:012x}{random:016x}", time_ms & 0xffff_ffff_ffff)
}
