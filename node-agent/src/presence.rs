//! The host's heartbeat in `mesh_presence` (its registration in `mesh_facts` is the fact pack).
//!
//! async-nats 0.51 has no KV put with a TTL, so a heartbeat is a JetStream publish to the
//! bucket's subject with a `Nats-TTL` header; the server expires the key three heartbeats later
//! and leaves a delete marker, so a host that dies shows offline without anyone cleaning up.
//! Each heartbeat is signed as this agent (TTL included), so nobody else can keep it online.

use std::sync::Arc;
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use execmesh_proto::signing::RecordKey;
use execmesh_proto::{headers, pb, subject};
use prost::Message as _;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::config::Config;
use crate::error::BoxError;
use crate::facts::AGENT_VERSION;

/// Publishes the agent's heartbeat.
pub struct Heartbeat {
    js: jetstream::Context,
    store: kv::Store,
    /// `<tenant>.<host>`.
    key: String,
    /// The bucket's subject for `key`.
    subject: String,
    /// `Nats-TTL` header value, e.g. `6s`.
    ttl: String,
    interval: Duration,
    /// The heartbeat record; its timestamp and job count change on every beat.
    record: pb::Presence,
    /// Job permits; the running count is what is taken from them.
    permits: Arc<Semaphore>,
    /// Signs each heartbeat as this agent (`None`: unsigned).
    signer: Option<Arc<RecordKey>>,
}

// === impl Heartbeat ===

impl Heartbeat {
    pub fn new(
        js: jetstream::Context,
        store: kv::Store,
        config: &Config,
        instance: &str,
        started_at_ms: u64,
        permits: Arc<Semaphore>,
        signer: Option<Arc<RecordKey>>,
    ) -> Self {
        let key = subject::host_key(&config.tenant, &config.host_id);
        let prefix = store.put_prefix.as_deref().unwrap_or(&store.prefix);
        let subject = format!("{prefix}{key}");
        Self {
            js,
            store,
            key,
            subject,
            ttl: format!("{}s", config.presence_ttl().as_secs()),
            interval: config.heartbeat_interval(),
            record: pb::Presence {
                host: config.host_id.to_string(),
                agent_instance: instance.to_string(),
                started_at_ms,
                heartbeat_at_ms: 0,
                heartbeat_interval_ms: config.heartbeat_interval_ms,
                running_jobs: 0,
                max_jobs: u32::try_from(config.max_jobs).unwrap_or(u32::MAX),
                version: AGENT_VERSION.to_string(),
            },
            permits,
            signer,
        }
    }

    /// Writes one heartbeat and waits for the server to acknowledge it.
    pub async fn beat(&self) -> Result<(), BoxError> {
        let mut record = self.record.clone();
        record.heartbeat_at_ms = execmesh_proto::now_ms();
        let free = self.permits.available_permits() as u32;
        record.running_jobs = record.max_jobs.saturating_sub(free);
        let mut headers = HeaderMap::new();
        headers.insert(headers::TTL, self.ttl.as_str());
        let payload = Bytes::from(record.encode_to_vec());
        if let Some(signer) = &self.signer {
            signer.sign(&self.subject, &mut headers, &payload);
        }
        let ack = self
            .js
            .publish_with_headers(self.subject.clone(), headers, payload)
            .await?;
        ack.await?;
        Ok(())
    }

    /// Beats every interval until `stop`; a failed beat is logged and the next one tried.
    pub async fn run(&self, stop: CancellationToken) {
        let mut ticks = tokio::time::interval(self.interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticks.tick().await; // the first tick is immediate; the first beat was already sent
        let mut failing = false;
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = ticks.tick() => {}
            }
            // A beat waiting on an unreachable NATS must not hold up a stop.
            let beat = tokio::select! {
                _ = stop.cancelled() => return,
                beat = self.beat() => beat,
            };
            match beat {
                Ok(()) => {
                    if failing {
                        warn!(key = %self.key, "heartbeat written again");
                    }
                    failing = false;
                    debug!(key = %self.key, "heartbeat");
                }
                Err(e) => {
                    failing = true;
                    warn!(key = %self.key, error = %e, "heartbeat failed");
                }
            }
        }
    }

    /// Removes the heartbeat, so the host shows offline at once after a graceful stop.
    pub async fn withdraw(&self) -> Result<(), BoxError> {
        self.store.delete(&self.key).await?;
        Ok(())
    }
}
