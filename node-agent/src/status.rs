//! A job's status record in KV `mesh_jobs`: created once, then updated with compare-and-set, each write signed as this agent.

use std::sync::Arc;

use async_nats::HeaderMap;
use async_nats::jetstream::{
    self,
    kv::{self, Operation},
};
use bytes::Bytes;
use execmesh_proto::pb;
use execmesh_proto::signing::RecordKey;
use execmesh_runtime::kv_write::{self, Expect, KvWriteError};
use prost::Message as _;
use tokio_util::sync::CancellationToken;
use tracing::{error, warn};

use crate::error::BoxError;
use crate::node::Node;
use crate::retry::{self, GaveUp};

/// Why the first write of a status failed.
#[derive(Debug, thiserror::Error)]
pub enum CreateStatusError {
    /// A status under this key exists: the job id was used before.
    #[error("job id already exists")]
    Exists,
    #[error("cannot write the job status: {0}")]
    Write(BoxError),
}

/// The status key of one job and the revision this agent last wrote.
#[derive(Debug)]
pub struct StatusRecord {
    js: jetstream::Context,
    kv: kv::Store,
    key: String,
    revision: u64,
    /// Signs each write as this agent (`Node::record_key`).
    signer: Option<Arc<RecordKey>>,
}

// === impl StatusRecord ===

impl StatusRecord {
    /// Writes the first status; refuses if the key holds one already, so a replayed request
    /// cannot start its job twice.
    pub async fn create(
        node: &Node,
        key: String,
        status: &pb::JobStatus,
    ) -> Result<Self, CreateStatusError> {
        let value = Bytes::from(status.encode_to_vec());
        let kv = &node.jobs_kv;
        let signer = node.record_key.as_deref();
        let created =
            kv_write::create(&node.js, kv, &key, value.clone(), HeaderMap::new(), signer).await;
        let revision = match created {
            Ok(revision) => revision,
            Err(KvWriteError::Exists { .. }) => return Err(CreateStatusError::Exists),
            // The write may have landed with only its ack lost: then it is ours to continue.
            Err(e) => match kv.entry(&key).await {
                Ok(Some(entry)) if entry.operation == Operation::Put && entry.value == value => {
                    entry.revision
                }
                _ => return Err(CreateStatusError::Write(Box::new(e))),
            },
        };
        Ok(Self::at(node, key, revision))
    }

    /// Writes the first status of a job that already runs, retried with backoff until it is
    /// stored or `stop` fires. Its request named this agent instance, so the nonce cache has
    /// refused any replay of it; a status already under the key means a gateway used the job
    /// id twice, and the job that ran is the one recorded: it is logged and written over.
    pub async fn create_running(
        node: &Node,
        key: String,
        status: &pb::JobStatus,
        stop: &CancellationToken,
    ) -> Result<Self, GaveUp> {
        let mut backoff = retry::backoff();
        loop {
            match Self::create(node, key.clone(), status).await {
                Ok(record) => return Ok(record),
                Err(CreateStatusError::Exists) => {
                    error!(key = %key, "a status exists for this job id already; writing over it");
                    let mut record = Self::at(node, key, 0);
                    record.update(status, stop).await?;
                    return Ok(record);
                }
                Err(CreateStatusError::Write(e)) => {
                    warn!(key = %key, error = %e, "storing the status of a running job failed; retrying");
                }
            }
            backoff.wait(stop).await?;
        }
    }

    /// A record whose current revision is known (recovery read it).
    pub fn at(node: &Node, key: String, revision: u64) -> Self {
        Self {
            js: node.js.clone(),
            kv: node.jobs_kv.clone(),
            key,
            revision,
            signer: node.record_key.clone(),
        }
    }

    /// Replaces the status at the revision this agent wrote last, retrying with backoff until
    /// it is stored or `stop` fires. If someone else changed the record meanwhile (the gateway
    /// marking the job lost while NATS was partitioned, say), this agent still knows best what
    /// happened to its own job: it logs the conflict and writes over it.
    pub async fn update(
        &mut self,
        status: &pb::JobStatus,
        stop: &CancellationToken,
    ) -> Result<(), GaveUp> {
        let value = Bytes::from(status.encode_to_vec());
        let mut backoff = retry::backoff();
        loop {
            match self.attempt(&value).await {
                Attempt::Stored => return Ok(()),
                Attempt::Changed(found) => {
                    warn!(key = %self.key, expected = self.revision, found,
                          "job status was changed by someone else; overwriting");
                    self.revision = found;
                }
                Attempt::Failed => {}
            }
            backoff.wait(stop).await?;
        }
    }

    /// Replaces the status only if it is still the one at the revision this agent read (a
    /// compare-and-set, retried while NATS fails until `stop` fires). `Ok(false)`: someone
    /// else changed it first (a gateway settled the job), and their write stands. The writer
    /// that wins is the one that records how the job ended.
    pub async fn settle(
        &mut self,
        status: &pb::JobStatus,
        stop: &CancellationToken,
    ) -> Result<bool, GaveUp> {
        let value = Bytes::from(status.encode_to_vec());
        let mut backoff = retry::backoff();
        loop {
            match self.attempt(&value).await {
                Attempt::Stored => return Ok(true),
                Attempt::Changed(_) => return Ok(false),
                Attempt::Failed => {}
            }
            backoff.wait(stop).await?;
        }
    }

    /// One compare-and-set of `value` at this record's revision.
    async fn attempt(&mut self, value: &Bytes) -> Attempt {
        let written = kv_write::write(
            &self.js,
            &self.kv,
            &self.key,
            value.clone(),
            HeaderMap::new(),
            Expect::Revision(self.revision),
            self.signer.as_deref(),
        )
        .await;
        match written {
            Ok(revision) => {
                self.revision = revision;
                Attempt::Stored
            }
            Err(KvWriteError::WrongRevision { .. }) => match self.kv.entry(&self.key).await {
                // A retry of a write that did land (its ack was lost).
                Ok(Some(entry)) if entry.operation == Operation::Put && entry.value == *value => {
                    self.revision = entry.revision;
                    Attempt::Stored
                }
                Ok(entry) => Attempt::Changed(entry.as_ref().map_or(0, |e| e.revision)),
                Err(e) => {
                    warn!(key = %self.key, error = %e, "reading job status failed; retrying");
                    Attempt::Failed
                }
            },
            Err(e) => {
                warn!(key = %self.key, error = %e, "writing job status failed; retrying");
                Attempt::Failed
            }
        }
    }
}

/// How one compare-and-set of a status went.
enum Attempt {
    /// The value is stored (now or by an earlier try whose ack was lost).
    Stored,
    /// Someone else wrote the record; its revision now (0: deleted).
    Changed(u64),
    /// NATS failed; worth another try.
    Failed,
}
