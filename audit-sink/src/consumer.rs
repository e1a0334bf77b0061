//! Moves events from the AUDIT stream into the store: a durable pull consumer, batches committed in one transaction each, acknowledged only after the commit.
//!
//! At-least-once delivery plus the store's dedupe by event id gives exactly-once storage: a
//! crash between commit and ack only means the stream delivers the batch again, and the store
//! skips every id it already holds.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream};
use execmesh_proto::identities::{LiveIdentities, Rejections};
use execmesh_proto::{headers, jetstream as layout};
use execmesh_runtime::backoff::Backoff;
use execmesh_runtime::telemetry;
use futures::StreamExt;
use tokio::time::{Instant, timeout_at};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::SinkError;
use crate::config::Config;
use crate::record::row_from_message;
use crate::store::Store;

/// How long JetStream waits for an acknowledgement before delivering an event again: also how
/// long the events a killed sink held wait before its successor gets them.
const ACK_WAIT: Duration = Duration::from_secs(5);
/// While a batch is being stored (a slow commit, a store that is down), its events are marked
/// in progress this often, so they are not delivered again meanwhile.
const PROGRESS_EVERY: Duration = Duration::from_secs(2);
/// First and longest pause between attempts to store a batch the store refused.
const RETRY_FIRST: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(5);
/// Pause before the message stream is opened again after it ended.
const REOPEN_PAUSE: Duration = Duration::from_millis(500);

/// The durable consumer and where its events go.
pub struct Consumer {
    consumer: consumer::PullConsumer,
    store: Arc<Store>,
    batch_size: usize,
    linger: Duration,
    /// The identities each event's signature is checked against; `None`: nothing is checked
    /// and every event is stored without a signer.
    identities: Option<Arc<LiveIdentities>>,
    /// Rate-limited warnings about events no known key signed.
    rejections: Rejections,
}

/// Creates the AUDIT stream if it is missing; an existing one is used as it is.
pub async fn ensure_stream(
    js: &jetstream::Context,
    replicas: usize,
) -> Result<stream::Stream, SinkError> {
    js.get_or_create_stream(layout::audit_stream(
        &layout::StoreLimits::default(),
        replicas,
    ))
    .await
    .map_err(|e| SinkError::Provision {
        what: format!("stream {}", layout::AUDIT_STREAM),
        source: Box::new(e),
    })
}

// === impl Consumer ===

impl Consumer {
    /// Creates (or opens) the durable consumer `config.consumer` on AUDIT.
    pub async fn create(
        stream: &stream::Stream,
        store: Arc<Store>,
        config: &Config,
        identities: Option<Arc<LiveIdentities>>,
    ) -> Result<Consumer, SinkError> {
        let name = config.consumer.clone();
        let consumer = stream
            .get_or_create_consumer(
                &name,
                consumer::pull::Config {
                    durable_name: Some(name.clone()),
                    description: Some("execmesh audit-sink: stores AUDIT".to_string()),
                    ack_policy: consumer::AckPolicy::Explicit,
                    ack_wait: ACK_WAIT,
                    deliver_policy: consumer::DeliverPolicy::All,
                    // Room for the batch being committed and the next one arriving meanwhile.
                    max_ack_pending: (config.batch_size * 4).max(1000) as i64,
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| SinkError::Provision {
                what: format!("consumer {name} on {}", layout::AUDIT_STREAM),
                source: Box::new(e),
            })?;
        Ok(Consumer {
            consumer,
            store,
            batch_size: config.batch_size,
            linger: config.batch_linger,
            identities,
            rejections: Rejections::default(),
        })
    }

    /// Stores events until `shutdown`; the batch in hand when it fires is still committed and
    /// acknowledged.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut stored_total = 0u64;
        'open: while !shutdown.is_cancelled() {
            let mut messages = match self
                .consumer
                .stream()
                .max_messages_per_batch(self.batch_size)
                .messages()
                .await
            {
                Ok(messages) => messages,
                Err(e) => {
                    warn!(error = %e, "cannot read the AUDIT consumer; retrying");
                    pause(&shutdown, REOPEN_PAUSE).await;
                    continue;
                }
            };
            loop {
                let first = tokio::select! {
                    _ = shutdown.cancelled() => break 'open,
                    next = messages.next() => next,
                };
                let mut batch = match first {
                    Some(Ok(msg)) => vec![msg],
                    Some(Err(e)) => {
                        warn!(error = %e, "reading AUDIT failed");
                        continue;
                    }
                    None => {
                        warn!("the AUDIT message stream ended; opening it again");
                        pause(&shutdown, REOPEN_PAUSE).await;
                        continue 'open;
                    }
                };
                let deadline = Instant::now() + self.linger;
                while batch.len() < self.batch_size {
                    match timeout_at(deadline, messages.next()).await {
                        Ok(Some(Ok(msg))) => batch.push(msg),
                        Ok(Some(Err(e))) => warn!(error = %e, "reading AUDIT failed"),
                        Ok(None) | Err(_) => break,
                    }
                }
                match self.store_batch(&batch, &shutdown).await {
                    Some(stored) => stored_total += stored as u64,
                    // Shut down before the store took it: unacknowledged, so delivered again.
                    None => break 'open,
                }
            }
        }
        info!(stored = stored_total, "stopped consuming AUDIT");
    }

    /// Appends the batch, retrying until the store takes it, then acknowledges every message
    /// (duplicates included). `None` if `shutdown` fired before the store took it.
    async fn store_batch(
        &self,
        batch: &[jetstream::Message],
        shutdown: &CancellationToken,
    ) -> Option<usize> {
        // Each event's storing continues the span it was made in (its `traceparent`): one
        // span per event, open until the batch is committed.
        let _stored: Vec<tracing::Span> = batch.iter().filter_map(store_span).collect();
        let rows: Vec<_> = batch
            .iter()
            .map(|msg| {
                let msg_id = msg
                    .headers
                    .as_ref()
                    .and_then(|h| h.get(headers::MSG_ID))
                    .map(|v| v.as_str());
                let stream_seq = msg.info().map_or(0, |i| i.stream_sequence);
                let mut row =
                    row_from_message(msg.subject.as_str(), msg_id, stream_seq, &msg.payload);
                row.signer = self.signer(msg);
                row
            })
            .collect();
        let store = async {
            let mut backoff = Backoff::new(RETRY_FIRST, RETRY_MAX);
            loop {
                match self.store.append(rows.clone()).await {
                    Ok(appended) => return Some(appended),
                    Err(e) => {
                        crate::metrics::store_failed();
                        warn!(error = %e, events = rows.len(), "storing a batch failed; retrying");
                        if shutdown.is_cancelled() {
                            return None;
                        }
                        // A shutdown during the pause still gets one more attempt: the batch in
                        // hand is committed if the store takes it.
                        let _ = backoff.wait(shutdown).await;
                    }
                }
            }
        };
        let keep_alive = async {
            let mut tick = tokio::time::interval(PROGRESS_EVERY);
            tick.tick().await;
            loop {
                tick.tick().await;
                for msg in batch {
                    let _ = msg.ack_with(jetstream::AckKind::Progress).await;
                }
            }
        };
        let appended = tokio::select! {
            appended = store => appended?,
            never = keep_alive => never,
        };
        crate::metrics::committed(
            appended.stored,
            appended.duplicates,
            rows.iter().map(|r| r.time_ms).filter(|t| *t > 0).min(),
        );
        debug!(
            stored = appended.stored,
            duplicates = appended.duplicates,
            head = appended.head_seq,
            "batch committed"
        );
        if appended.duplicates > 0 {
            info!(
                duplicates = appended.duplicates,
                "skipped events that were already stored (redelivered)"
            );
        }
        for msg in batch {
            // A lost ack only means the event comes again and is skipped as a duplicate.
            if let Err(e) = msg.ack().await {
                warn!(error = %e, "acknowledging an event failed");
            }
        }
        Some(appended.stored)
    }
}

impl Consumer {
    /// The identity whose key signed `msg`, checked against the identities file; empty (and
    /// logged) when no listed identity entitled to its subject did, or nothing is checked.
    fn signer(&self, msg: &jetstream::Message) -> String {
        let Some(identities) = &self.identities else {
            return String::new();
        };
        let subject = msg.subject.as_str();
        match identities.check(subject, msg.headers.as_ref(), &msg.payload) {
            Ok(identity) => identity,
            Err(e) => {
                self.rejections.note(
                    "audit event (stored without a signer)",
                    subject,
                    e.reason(),
                    &e,
                );
                String::new()
            }
        }
    }
}

/// The span of storing `msg`, a child of the span the event was made in; `None` when spans
/// are not exported or the event carries no context.
fn store_span(msg: &jetstream::Message) -> Option<tracing::Span> {
    if !telemetry::exporting() {
        return None;
    }
    let cx = telemetry::extract(&telemetry::NatsHeaders(msg.headers.as_ref()?));
    if !telemetry::has_parent(&cx) {
        return None;
    }
    let span = tracing::info_span!("audit_store", subject = %msg.subject);
    telemetry::continue_from(&span, cx);
    Some(span)
}

async fn pause(shutdown: &CancellationToken, delay: Duration) {
    tokio::select! {
        _ = shutdown.cancelled() => {}
        _ = tokio::time::sleep(delay) => {}
    }
}
