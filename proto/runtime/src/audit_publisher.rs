//! The acknowledged audit publisher the gateway and the agents share: a bounded queue and one task that publishes each event to AUDIT, retried under its own id until JetStream acknowledges it.
//!
//! A caller never waits for the audit trail: [`Publisher::send`] only queues. When the
//! audit-sink is down the events wait in the stream; when NATS itself is unreachable they wait in
//! the queue, and only a full queue drops events (counted and logged).

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, context::PublishAckFuture};
use bytes::Bytes;
use prost::Message as _;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::backoff::Backoff;
use execmesh_proto::signing::RecordKey;
use execmesh_proto::subject::audit_kind;
use execmesh_proto::{jetstream as layout, pb};

/// Pauses before a failed publish (or stream creation) is tried again: 50 ms doubling to 2 s.
fn retry() -> Backoff {
    Backoff::new(Duration::from_millis(50), Duration::from_secs(2))
}

/// Publishes audit events in the background.
pub struct Publisher {
    queue: mpsc::Sender<Outgoing>,
    /// Signs each event as the publishing identity (so the audit-sink can tell who wrote it);
    /// `None`: events go out unsigned.
    signer: Option<RecordKey>,
    /// Events dropped because the queue was full.
    dropped: AtomicU64,
    /// The publisher task, taken by [`Publisher::close`].
    task: Mutex<Option<JoinHandle<()>>>,
    /// Tells the task to publish what is queued and stop.
    closing: CancellationToken,
}

/// An event ready to publish.
struct Outgoing {
    subject: String,
    id: String,
    /// `Nats-Msg-Id` and, when signed, the signature headers.
    headers: HeaderMap,
    payload: Bytes,
}

// === impl Publisher ===

impl Publisher {
    /// Starts the publisher task on `client`. The task makes sure the AUDIT stream exists (creating
    /// it with `replicas` if missing, retrying while NATS is unreachable) before its first publish.
    /// At most `queue` events wait (beyond, new ones are dropped and counted); at most `window`
    /// publishes await their acknowledgement at once. Each event is signed with `signer` (the
    /// identity key of the publishing service) when one is given.
    pub fn start(
        client: async_nats::Client,
        replicas: usize,
        queue: usize,
        window: usize,
        signer: Option<RecordKey>,
    ) -> Publisher {
        let (queue, rx) = mpsc::channel(queue.max(1));
        let closing = CancellationToken::new();
        let task = tokio::spawn(publish(
            jetstream::new(client),
            rx,
            replicas,
            window.max(1),
            closing.clone(),
        ));
        Publisher {
            queue,
            signer,
            dropped: AtomicU64::new(0),
            task: Mutex::new(Some(task)),
            closing,
        }
    }

    /// Queues `event` for `subject`, with its id as `Nats-Msg-Id`. A full queue drops it (and
    /// counts it), never blocks.
    pub fn send(&self, subject: String, event: &pb::AuditEvent) {
        let kind = audit_kind::of(event.body.as_ref());
        let Some(outgoing) = self.outgoing(subject, event) else {
            return;
        };
        if self.queue.try_send(outgoing).is_err() {
            self.count_dropped(kind);
        }
    }

    /// [`Publisher::send`], waiting up to `wait` for room in a full queue: for callers that
    /// make events faster than they can be published (a fan-out to thousands of hosts records
    /// one per host), which then go at the publisher's pace instead of losing events. Only an
    /// event that found no room within `wait` (NATS unreachable, say) is dropped and counted.
    pub async fn send_within(&self, subject: String, event: &pb::AuditEvent, wait: Duration) {
        let kind = audit_kind::of(event.body.as_ref());
        let Some(outgoing) = self.outgoing(subject, event) else {
            return;
        };
        if !matches!(
            tokio::time::timeout(wait, self.queue.send(outgoing)).await,
            Ok(Ok(()))
        ) {
            self.count_dropped(kind);
        }
    }

    /// Counts one dropped event, logging once per power of two so a long outage does not flood
    /// the log.
    fn count_dropped(&self, kind: &str) {
        let dropped = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
        if dropped.is_power_of_two() {
            error!(
                dropped,
                kind, "audit queue full: events dropped (is NATS reachable?)"
            );
        }
    }

    /// `event` ready to queue: encoded, with its id, trace context and signature headers.
    /// `None` (logged, and counted dropped) for an event larger than AUDIT takes
    /// ([`layout::MAX_AUDIT_EVENT_BYTES`]): the stream would refuse it every time, and retried
    /// it would hold up every event queued after it.
    fn outgoing(&self, subject: String, event: &pb::AuditEvent) -> Option<Outgoing> {
        let payload = Bytes::from(event.encode_to_vec());
        let mut headers = HeaderMap::new();
        headers.insert(execmesh_proto::headers::MSG_ID, event.id.as_str());
        // The span the event was made in: the audit-sink stores it as that span's child.
        crate::telemetry::inject_nats(&tracing::Span::current(), &mut headers);
        if let Some(signer) = &self.signer {
            signer.sign(&subject, &mut headers, &payload);
        }
        let size = payload.len() + header_bytes(&headers);
        let limit = layout::MAX_AUDIT_EVENT_BYTES as usize;
        if size > limit {
            let kind = audit_kind::of(event.body.as_ref());
            self.dropped.fetch_add(1, Ordering::Relaxed);
            error!(id = %event.id, kind, size, limit,
                   "audit event larger than the AUDIT stream takes: dropped (a bug: events \
                    must be bounded)");
            return None;
        }
        Some(Outgoing {
            subject,
            id: event.id.clone(),
            headers,
            payload,
        })
    }

    /// Events dropped: the queue was full, or one was larger than AUDIT takes.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Stops taking events and waits up to `grace` for those queued to be published.
    pub async fn close(&self, grace: Duration) {
        self.closing.cancel();
        let task = self.task.lock().ok().and_then(|mut t| t.take());
        let Some(mut task) = task else { return };
        if tokio::time::timeout(grace, &mut task).await.is_err() {
            task.abort();
            let left = self.queue.max_capacity() - self.queue.capacity();
            warn!(events = left, "audit events not published at shutdown");
        }
    }
}

/// The bytes `headers` take on the wire (`NATS/1.0` line, `Name: value` lines, blank line), as
/// the server counts them against a stream's message size limit.
fn header_bytes(headers: &HeaderMap) -> usize {
    let lines: usize = headers
        .iter()
        .map(|(name, values)| {
            let name = AsRef::<str>::as_ref(name).len();
            values
                .iter()
                .map(|v| name + v.as_str().len() + 4)
                .sum::<usize>()
        })
        .sum();
    "NATS/1.0\r\n\r\n".len() + lines
}

/// The publisher task: makes sure AUDIT exists, then publishes queued events in windows of
/// `window`, each retried with its own id until acknowledged. Once `closing` fires it takes no
/// new events and ends when the queue is empty.
async fn publish(
    js: jetstream::Context,
    mut rx: mpsc::Receiver<Outgoing>,
    replicas: usize,
    window: usize,
    closing: CancellationToken,
) {
    let mut backoff = retry();
    loop {
        match js
            .get_or_create_stream(layout::audit_stream(
                &layout::StoreLimits::default(),
                replicas,
            ))
            .await
        {
            Ok(_) => break,
            Err(e) => {
                warn!(error = %e, "cannot open or create the AUDIT stream yet; audit events wait");
                if backoff.wait(&closing).await.is_err() {
                    return;
                }
            }
        }
    }
    let mut batch = Vec::with_capacity(window);
    loop {
        let received = tokio::select! {
            received = rx.recv_many(&mut batch, window) => received,
            _ = closing.cancelled(), if !rx.is_closed() => {
                // Queued events can still be received; new ones are refused.
                rx.close();
                continue;
            }
        };
        if received == 0 {
            break;
        }
        let mut pending: Vec<Outgoing> = std::mem::take(&mut batch);
        let mut backoff = retry();
        let mut last_error = String::new();
        while !pending.is_empty() {
            let mut acks: Vec<(Outgoing, Result<PublishAckFuture, String>)> =
                Vec::with_capacity(pending.len());
            for event in pending.drain(..) {
                let sent = js
                    .publish_with_headers(
                        event.subject.clone(),
                        event.headers.clone(),
                        event.payload.clone(),
                    )
                    .await
                    .map_err(|e| e.to_string());
                acks.push((event, sent));
            }
            for (event, sent) in acks {
                let acked = match sent {
                    Ok(ack) => ack.await.map(|_| ()).map_err(|e| e.to_string()),
                    Err(e) => Err(e),
                };
                if let Err(e) = acked {
                    debug!(id = %event.id, error = %e, "audit publish not acknowledged; retrying");
                    last_error = e;
                    pending.push(event);
                }
            }
            if !pending.is_empty() {
                warn!(
                    events = pending.len(),
                    error = %last_error,
                    "audit events not acknowledged; retrying"
                );
                // Not cut short by closing: queued events are still published, within the
                // grace `close` gives.
                tokio::time::sleep(backoff.next_delay()).await;
            }
        }
    }
    info!("audit publisher stopped");
}
