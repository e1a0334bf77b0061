//! The host's heartbeat in `mesh_presence` (its registration in `mesh_facts` is the fact pack).
//!
//! async-nats 0.51 has no KV put with a TTL, so a heartbeat is a JetStream publish to the
//! bucket's subject with a `Nats-TTL` header; the server expires the key three heartbeats later
//! and leaves a delete marker, so a host that dies shows offline without anyone cleaning up.
//! Each heartbeat is signed as this agent (TTL included), so nobody else can keep it online.
//! It carries the host's output usage ([`pb::OutputUsage`]): its quotas, and MESH_OUT's fill,
//! looked up every [`STREAM_CHECK_BEATS`] beats rather than every one (one JetStream API call
//! per host and half minute at the default interval).
//!
//! A beat that fails is tried again within a second, not an interval later, and a beat whose
//! ack does not come is given up after an interval (at least a second): when a NATS node dies or
//! a JetStream cluster elects a new leader for `mesh_presence`, the new leader expires every
//! heartbeat that could not be stored meanwhile, and the sooner the next beat lands the shorter
//! the host shows offline (gateways give it `lost_grace_ms` before they mark its jobs lost).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use execmesh_proto::jetstream::OUT_STREAM;
use execmesh_proto::signing::RecordKey;
use execmesh_proto::{headers, pb, subject};
use prost::Message as _;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::error::BoxError;
use crate::facts::AGENT_VERSION;
use crate::node::Node;
use crate::quota::Quotas;
use crate::retry;

/// Every how many beats the heartbeat looks up MESH_OUT's fill.
const STREAM_CHECK_BEATS: u32 = 15;
/// The shortest time a beat may wait for its ack before it is given up and tried again.
const ACK_WAIT_MIN: Duration = Duration::from_secs(1);

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
    /// The output quotas, reported in every beat.
    quotas: Arc<Quotas>,
    /// MESH_OUT's bytes and byte limit as last looked up (zeros until then).
    stream_fill: Mutex<(u64, u64)>,
    /// Signs each heartbeat as this agent (`None`: unsigned).
    signer: Option<Arc<RecordKey>>,
}

// === impl Heartbeat ===

impl Heartbeat {
    /// The heartbeat of `node`'s agent, which started at `started_at_ms`, into `store`.
    pub fn new(node: &Node, store: kv::Store, started_at_ms: u64) -> Self {
        let config = &node.config;
        let key = subject::host_key(&config.tenant, &config.host_id);
        let prefix = store.put_prefix.as_deref().unwrap_or(&store.prefix);
        let subject = format!("{prefix}{key}");
        Self {
            js: node.js.clone(),
            store,
            key,
            subject,
            ttl: format!("{}s", config.presence_ttl().as_secs()),
            interval: config.heartbeat_interval(),
            record: pb::Presence {
                host: config.host_id.to_string(),
                agent_instance: node.instance.clone(),
                started_at_ms,
                heartbeat_at_ms: 0,
                heartbeat_interval_ms: config.heartbeat_interval_ms,
                running_jobs: 0,
                max_jobs: u32::try_from(config.max_jobs).unwrap_or(u32::MAX),
                version: AGENT_VERSION.to_string(),
                output: None,
            },
            permits: Arc::clone(&node.permits),
            quotas: Arc::clone(&node.quotas),
            stream_fill: Mutex::new((0, 0)),
            signer: node.record_key.clone(),
        }
    }

    /// Writes one heartbeat and waits for the server to acknowledge it.
    pub async fn beat(&self) -> Result<(), BoxError> {
        let mut record = self.record.clone();
        record.heartbeat_at_ms = execmesh_proto::now_ms();
        let free = self.permits.available_permits() as u32;
        record.running_jobs = record.max_jobs.saturating_sub(free);
        let mut output = self.quotas.usage();
        (output.stream_bytes, output.stream_max_bytes) =
            *self.stream_fill.lock().unwrap_or_else(|e| e.into_inner());
        record.output = Some(output);
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

    /// Beats every interval until `stop`; a failed beat is logged and tried again after a
    /// backoff (50 ms doubling to the interval, at most a second) until one is stored.
    pub async fn run(&self, stop: CancellationToken) {
        let mut ticks = tokio::time::interval(self.interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticks.tick().await; // the first tick is immediate; the first beat was already sent
        // While beats fail: when the next try is due.
        let mut failing: Option<retry::Backoff> = None;
        let mut beats = 0u32;
        let ack_wait = self.interval.max(ACK_WAIT_MIN);
        loop {
            let retry_in = failing.as_mut().map(retry::Backoff::next_delay);
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = ticks.tick(), if retry_in.is_none() => {}
                _ = tokio::time::sleep(retry_in.unwrap_or_default()), if retry_in.is_some() => {}
            }
            if failing.is_none() && beats.is_multiple_of(STREAM_CHECK_BEATS) {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    () = self.check_stream() => {}
                }
            }
            beats = beats.wrapping_add(1);
            // A beat waiting on an unreachable NATS must not hold up a stop, nor the next try.
            let beat = tokio::select! {
                _ = stop.cancelled() => return,
                beat = tokio::time::timeout(ack_wait, self.beat()) => beat,
            };
            match beat {
                Ok(Ok(())) => {
                    if let Some(retries) = failing.take() {
                        warn!(key = %self.key, attempts = retries.attempts + 1, "heartbeat written again");
                        // The next beat an interval after this one, not after the last tick.
                        ticks.reset();
                    }
                    debug!(key = %self.key, "heartbeat");
                }
                Ok(Err(e)) => {
                    warn!(key = %self.key, error = %e, "heartbeat failed");
                    failing.get_or_insert_with(|| retry::backoff_within(self.interval));
                }
                Err(_) => {
                    warn!(key = %self.key, after = ?ack_wait, "heartbeat not acknowledged; trying again");
                    failing.get_or_insert_with(|| retry::backoff_within(self.interval));
                }
            }
        }
    }

    /// Looks up MESH_OUT's bytes and byte limit for the next beats; a failed lookup keeps the
    /// last values (the heartbeat matters more than the figure).
    async fn check_stream(&self) {
        let info = async {
            let mut stream = self.js.get_stream(OUT_STREAM).await?;
            let info = stream.info().await?;
            Ok::<_, BoxError>((
                info.state.bytes,
                u64::try_from(info.config.max_bytes).unwrap_or(0),
            ))
        };
        match info.await {
            Ok(fill) => {
                let usage = pb::OutputUsage {
                    stream_bytes: fill.0,
                    stream_max_bytes: fill.1,
                    ..Default::default()
                };
                if usage.stream_full() {
                    warn!(
                        stream = OUT_STREAM,
                        bytes = fill.0,
                        max_bytes = fill.1,
                        "MESH_OUT is full: the oldest output is evicted for new output"
                    );
                }
                *self.stream_fill.lock().unwrap_or_else(|e| e.into_inner()) = fill;
            }
            Err(e) => debug!(stream = OUT_STREAM, error = %e, "MESH_OUT not looked up"),
        }
    }

    /// Removes the heartbeat, so the host shows offline at once after a graceful stop.
    pub async fn withdraw(&self) -> Result<(), BoxError> {
        self.store.delete(&self.key).await?;
        Ok(())
    }
}
