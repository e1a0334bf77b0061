//! The gateway's view of the mesh over NATS: request/reply to agents, JetStream direct gets,
//! and reads of the presence, facts and jobs buckets.
//!
//! Everything here is stateless: any replica reads the same streams and buckets.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use prost::Message as _;
use serde::Serialize;

use execmesh_proto::jetstream::{self as layout, FACTS_BUCKET, JOBS_BUCKET, PRESENCE_BUCKET};
use execmesh_proto::signing::SignedRequest;
use execmesh_proto::{Token, headers, pb, subject};
use execmesh_runtime::kv_write::{self, Expect, KvWriteError};
use execmesh_runtime::nats_connection::{self, ConnectAs, ConnectError};
use execmesh_runtime::nats_settings::NatsConfig;

use crate::core::consumers::{Consumers, WatchFor, WatchRefused};
use crate::core::directory::{Directory, Taken};
use crate::core::hosts::{Departure, HostEntries, HostKey, HostRecord, KvLast};
use crate::core::instances::AgentInstances;
use crate::core::records::{Records, RecordsError, Rejection, Stored};
use crate::core::signer::{Signer, SignerError};
use crate::core::unstored::{STORE_WAIT, UnstoredEnds};

/// A failure talking to NATS or reading the mesh's streams.
#[derive(Debug, thiserror::Error)]
pub enum MeshError {
    #[error("cannot connect to NATS at {url}: {source}")]
    Connect {
        url: String,
        source: async_nats::ConnectError,
    },
    /// NATS or JetStream failed to carry or answer a request (connection lost, stream or
    /// bucket not reachable): the mesh is unavailable, and trying again may work.
    #[error("NATS request failed: {what}: {reason}")]
    Unavailable { what: String, reason: String },
    /// The server answered something the NATS protocol does not allow (a direct get reply
    /// without its sequence, a delivery without JetStream metadata).
    #[error("NATS answered against the protocol: {0}")]
    Protocol(String),
    /// A bug or broken invariant in the gateway itself (a request it cannot encode): retrying
    /// does not help.
    #[error("internal error: {0}")]
    Internal(String),
    /// The configured tenant is not a subject-safe token.
    #[error("invalid tenant: {0}")]
    Tenant(#[source] execmesh_proto::subject::TokenError),
    #[error("JetStream did not answer within {0:?}")]
    Timeout(Duration),
    #[error("stored record at sequence {seq} is not readable: {reason}")]
    Corrupt { seq: u64, reason: String },
    /// A `multi_last` direct get matched more subjects than the server answers at once.
    #[error("direct get on {stream} matches more subjects than the server returns at once")]
    TooManyResults { stream: String },
    /// A TLS file for NATS cannot be used.
    #[error(transparent)]
    NatsTls(#[from] execmesh_runtime::nats_connection::NatsTlsError),
    /// The command key that signs requests to agents cannot be loaded.
    #[error(transparent)]
    Signer(#[from] SignerError),
    /// The gateway's record key or its identities file cannot be used.
    #[error(transparent)]
    Records(#[from] RecordsError),
    /// This replica holds as many consumers of the kind as it may ([`crate::core::consumers`]).
    #[error(transparent)]
    Busy(#[from] WatchRefused),
}

/// What kind of failure a [`MeshError`] is, for callers that answer each kind differently.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MeshErrorKind {
    /// NATS is unreachable, slow or refused the request: try again shortly.
    Unavailable,
    /// A stored record cannot be read.
    Corrupt,
    /// The server broke the protocol or the gateway broke its own invariants: not the
    /// caller's to fix, and not solved by retrying.
    Internal,
    /// The gateway's configuration (tenant, TLS files, keys, identities) cannot be used.
    Setup,
    /// This replica is at one of its limits (open watches): try again later, or elsewhere.
    Busy,
}

impl MeshError {
    /// Which kind of failure this is.
    pub fn kind(&self) -> MeshErrorKind {
        match self {
            Self::Connect { .. } | Self::Unavailable { .. } | Self::Timeout(_) => {
                MeshErrorKind::Unavailable
            }
            Self::Corrupt { .. } => MeshErrorKind::Corrupt,
            // A too-large direct get is handled where it can happen; one that escapes is a bug.
            Self::Protocol(_) | Self::Internal(_) | Self::TooManyResults { .. } => {
                MeshErrorKind::Internal
            }
            Self::Tenant(_) | Self::NatsTls(_) | Self::Signer(_) | Self::Records(_) => {
                MeshErrorKind::Setup
            }
            Self::Busy(_) => MeshErrorKind::Busy,
        }
    }

    /// Whether trying again later may work (NATS unreachable or slow).
    pub fn is_unavailable(&self) -> bool {
        self.kind() == MeshErrorKind::Unavailable
    }

    fn unavailable(what: impl Into<String>, reason: &dyn std::fmt::Display) -> Self {
        Self::Unavailable {
            what: what.into(),
            reason: reason.to_string(),
        }
    }
}

/// How a request to an agent failed.
#[derive(Debug, thiserror::Error)]
pub enum DispatchError {
    /// Nobody subscribes to the host's subject: the agent is not running.
    #[error("no agent answers for host {0}")]
    NoResponders(Token),
    #[error("host {host} did not answer within {after:?}")]
    TimedOut { host: Token, after: Duration },
    #[error("the reply from host {host} is malformed: {reason}")]
    BadReply { host: Token, reason: String },
    #[error("NATS request to host {host} failed: {reason}")]
    Nats { host: Token, reason: String },
}

/// One message returned by a JetStream direct get.
#[derive(Debug, Clone)]
pub struct StoredMsg {
    pub seq: u64,
    pub subject: String,
    pub payload: Bytes,
    pub headers: Option<HeaderMap>,
    /// Messages matching the request after this one (server's `Nats-Num-Pending`).
    pub pending: u64,
    /// Why the record is ignored (its subject's owner did not write it); its payload is then
    /// empty and it counts as a tombstone.
    pub rejected: Option<Rejection>,
}

impl StoredMsg {
    /// True for KV delete/purge markers, TTL expiry markers and rejected records: nothing to
    /// read there.
    pub fn is_tombstone(&self) -> bool {
        self.rejected.is_some() || is_marker(self.headers.as_ref())
    }
}

/// Whether the headers are those of a KV delete or purge marker or a TTL expiry marker.
fn is_marker(headers: Option<&HeaderMap>) -> bool {
    headers.is_some_and(|h| {
        h.get(headers::KV_OPERATION).is_some() || h.get("Nats-Marker-Reason").is_some()
    })
}

/// The KV operation a stored message stands for.
fn operation_of(headers: Option<&HeaderMap>) -> kv::Operation {
    let Some(h) = headers else {
        return kv::Operation::Put;
    };
    match h.get(headers::KV_OPERATION).map(|v| v.as_str()) {
        Some("DEL") => kv::Operation::Delete,
        Some(_) => kv::Operation::Purge,
        None if h.get("Nats-Marker-Reason").is_some() => kv::Operation::Purge,
        None => kv::Operation::Put,
    }
}

/// Where a watch of a bucket starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WatchFrom {
    /// The current value of every matching key, then every change.
    LastPerKey,
    /// Only changes from now on.
    New,
}

/// One value or change of a KV key seen by a watch, checked like every record the gateway reads.
#[derive(Debug, Clone)]
pub struct KvChange {
    /// The key (without the bucket's subject prefix).
    pub key: String,
    pub value: Bytes,
    /// The stream sequence of this value.
    pub revision: u64,
    pub operation: kv::Operation,
    /// When the server stored this change, in ms since the epoch.
    pub stored_at_ms: u64,
    /// Values the watch has still to deliver of those stored when it was read (0: caught up).
    pub pending: u64,
    /// Why this change is ignored: not its key's owner's (its value is then empty).
    pub rejected: Option<Rejection>,
}

impl KvChange {
    /// The departure a deletion or expiry stands for; `None` for a value or a rejected change.
    pub fn departure(&self) -> Option<Departure> {
        (self.operation != kv::Operation::Put && self.rejected.is_none()).then_some(Departure {
            at_ms: self.stored_at_ms,
            expired: self.operation != kv::Operation::Delete,
        })
    }

    /// A value to use: a put its owner signed, not a deletion or a rejected record.
    pub fn is_value(&self) -> bool {
        self.operation == kv::Operation::Put && self.rejected.is_none() && !self.value.is_empty()
    }
}

/// A running watch: every change of the matching keys, checked.
pub struct KvWatch {
    /// Values stored when the watch started (what a `LastPerKey` watch delivers first).
    pub initial: u64,
    pub changes: BoxStream<'static, Result<KvChange, MeshError>>,
}

/// A JetStream direct-get request (`$JS.API.DIRECT.GET.<stream>`), as the server reads it.
#[derive(Debug, Default, Serialize)]
pub struct DirectGet {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_by_subj: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_by_subj: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub batch: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_bytes: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub multi_last: Option<Vec<String>>,
}

/// A job status after [`Mesh::mark_lost`].
#[derive(Debug, Clone)]
pub struct Settled {
    /// The status as it now stands: LOST, or what another writer stored first.
    pub status: pb::JobStatus,
    /// This call wrote the LOST status (won the compare-and-set).
    pub by_us: bool,
}

/// Whether a host's agent heartbeats, as `mesh_presence` says now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Liveness {
    /// Its heartbeat is current, written by this agent instance (empty if it did not say).
    Heartbeating { instance: String },
    /// Its heartbeat expired (or was withdrawn) and nothing has replaced it since.
    Departed(Departure),
    /// No heartbeat of its agent is stored: never heard of, the marker aged out, or the last
    /// record is not its agent's.
    Unknown,
}

// === impl Liveness ===

impl Liveness {
    /// How the last presence record of a host reads.
    fn of(last: KvLast) -> Self {
        match last {
            KvLast::Value(value) => Self::Heartbeating {
                instance: pb::Presence::decode(value)
                    .map(|p| p.agent_instance)
                    .unwrap_or_default(),
            },
            KvLast::Gone(departure) => Self::Departed(departure),
            KvLast::Rejected(_) => Self::Unknown,
        }
    }
}

/// What the last stored record of a key stands for; `None` for an empty value or a marker
/// without a time.
fn last_of(m: StoredMsg) -> Option<KvLast> {
    Some(match m.rejected {
        Some(rejection) => KvLast::Rejected(rejection),
        None if is_marker(m.headers.as_ref()) => {
            KvLast::Gone(departure_of_marker(m.headers.as_ref())?)
        }
        None if m.payload.is_empty() => return None,
        None => KvLast::Value(m.payload),
    })
}

/// What a change a watch delivered stands for, as [`last_of`] reads a stored record.
pub(crate) fn last_of_change(change: KvChange) -> Option<KvLast> {
    Some(match (change.rejected.clone(), change.departure()) {
        (Some(rejection), _) => KvLast::Rejected(rejection),
        (None, Some(departure)) => KvLast::Gone(departure),
        (None, None) if change.is_value() => KvLast::Value(change.value),
        (None, None) => return None,
    })
}

/// The departure a marker stands for; `None` for a value or a marker without a time.
fn departure_of_marker(headers: Option<&HeaderMap>) -> Option<Departure> {
    let h = headers.filter(|h| is_marker(Some(h)))?;
    let at_ms = h
        .get(headers::NATS_TIME_STAMP)
        .and_then(|v| nats_time_ms(v.as_str()))?;
    Some(Departure {
        at_ms,
        expired: h.get(headers::KV_OPERATION).is_none(),
    })
}

/// Milliseconds since the epoch of a JetStream timestamp (`2026-12-02T07:32:28.123456789Z`,
/// RFC 3339 in UTC as the server writes it).
fn nats_time_ms(text: &str) -> Option<u64> {
    let (date, time) = text.trim().split_once('T')?;
    let time = time.strip_suffix('Z')?;
    let number = |s: &str| s.parse::<i64>().ok();
    let mut d = date.splitn(3, '-');
    let (y, m, day) = (number(d.next()?)?, number(d.next()?)?, number(d.next()?)?);
    let (hms, fraction) = time.split_once('.').unwrap_or((time, ""));
    let mut t = hms.splitn(3, ':');
    let (h, min, sec) = (number(t.next()?)?, number(t.next()?)?, number(t.next()?)?);
    let ms = match fraction.get(..fraction.len().min(3)) {
        Some("") | None => 0,
        Some(digits) => number(&format!("{digits:0<3}"))?,
    };
    // Days since the epoch of a civil date (H. Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * ((m + 9) % 12) + 2) / 5 + day - 1;
    let days = era * 146_097 + yoe * 365 + yoe / 4 - yoe / 100 + doy - 719_468;
    u64::try_from((days * 86_400 + h * 3_600 + min * 60 + sec) * 1_000 + ms).ok()
}

/// Creates the stream and buckets the agents write when they are missing (with the default
/// retention and `limits`), and leaves existing ones as they are (agents set their byte limits). In a secured mesh agents may only look them
/// up, so the gateway, which may create them, does it before any agent needs them. (AUDIT and
/// the gateway's own buckets are created where they are used.)
async fn provision(
    js: &jetstream::Context,
    replicas: usize,
    limits: &layout::StoreLimits,
) -> Result<(), MeshError> {
    let failed =
        |what: &str, e: &dyn std::fmt::Display| MeshError::unavailable(format!("create {what}"), e);
    js.get_or_create_stream(layout::out_stream(
        layout::DEFAULT_OUTPUT_RETENTION,
        limits,
        replicas,
    ))
    .await
    .map_err(|e| failed(layout::OUT_STREAM, &e))?;
    for bucket in [
        layout::presence_bucket(limits, replicas),
        layout::facts_bucket(limits, replicas),
        layout::jobs_bucket(layout::DEFAULT_JOB_RETENTION, limits, replicas),
    ] {
        let name = bucket.bucket.clone();
        // Opened first: creating a bucket that exists with another configuration fails.
        if js.get_key_value(&name).await.is_err()
            && let Err(create) = js.create_key_value(bucket).await
            && js.get_key_value(&name).await.is_err()
        {
            return Err(failed(&format!("KV bucket {name}"), &create));
        }
    }
    Ok(())
}

/// How long a direct get may take before the gateway gives up.
const JS_TIMEOUT: Duration = Duration::from_secs(5);
/// How long reading a whole large bucket through a watch may take.
const STREAMED_TIMEOUT: Duration = Duration::from_secs(60);
/// Keys one direct get answers at most (the server's limit; past it, 413).
const DIRECT_GET_KEYS: usize = 1024;
/// How long a listing waits for the host directory to take the records stored before it, before
/// it reads them from NATS instead.
const DIRECTORY_WAIT: Duration = Duration::from_secs(1);

/// The gateway's NATS connection and the names it needs.
#[derive(Clone)]
pub struct Mesh {
    pub client: async_nats::Client,
    pub js: jetstream::Context,
    pub tenant: Token,
    /// Signs every request sent to an agent; agents refuse unsigned ones.
    pub signer: Arc<Signer>,
    /// Signs the records the gateway writes and checks every record it reads.
    pub records: Arc<Records>,
    /// Byte limits of the streams and buckets the gateway creates.
    pub limits: layout::StoreLimits,
    /// The agent instance last heard from per host, named in requests to it.
    pub instances: Arc<AgentInstances>,
    /// Jobs answered as ended whose store may still be on its way; readers wait for it.
    pub unstored: Arc<UnstoredEnds>,
    /// How long a host's heartbeat may stay expired before its running jobs are lost
    /// (`lost_grace_ms`, see [`crate::core::jobs::state`]).
    pub lost_grace: Duration,
    /// Names and bounds the consumers this replica creates.
    pub consumers: Arc<Consumers>,
    /// Every host's last facts and heartbeat, kept current by
    /// [`crate::core::directory_watch`].
    pub directory: Arc<Directory>,
}

/// What [`Mesh::connect`] needs of the gateway's configuration: where NATS is and how to
/// authenticate and verify it, the tenant, the key requests are signed with, and the identities
/// file records are checked against.
#[derive(Debug, Clone, Copy)]
pub struct MeshSettings<'a> {
    /// Where NATS is and how to authenticate to it and verify it.
    pub nats: &'a NatsConfig,
    pub identities_file: Option<&'a Path>,
    pub tenant: &'a str,
    pub exec_signing_key: &'a Path,
    /// Replicas of the buckets and streams created at start.
    pub kv_replicas: usize,
    /// How long a host's heartbeat may stay expired before its running jobs are lost.
    pub lost_grace: Duration,
    /// Byte limits of the streams and buckets the gateway creates.
    pub store_limits: layout::StoreLimits,
    /// Client watches this replica serves at once (`max_watches`).
    pub max_watches: usize,
    /// Reads and waits of calls that need a consumer, at once (`max_call_watches`).
    pub max_call_watches: usize,
}

// === impl Mesh ===

impl Mesh {
    /// Connects to NATS as configured. Fails fast if the server cannot be reached at start;
    /// afterwards the client reconnects on its own.
    pub async fn connect(config: &MeshSettings<'_>) -> Result<Self, MeshError> {
        let tenant = Token::parse("tenant", config.tenant).map_err(MeshError::Tenant)?;
        let signer = Arc::new(Signer::load_or_create(config.exec_signing_key)?);
        let seed = (config.nats.nkey_seed.as_deref()).or(config.nats.creds.as_deref());
        let records = Arc::new(Records::load(seed, config.identities_file)?);
        tracing::info!(key_id = signer.key_id(), public_key = %signer.public_key_base64(),
                       path = %config.exec_signing_key.display(),
                       "signing requests to agents with this key (agents list it in gateway_keys)");
        let who = ConnectAs {
            name: "execmesh-gateway".to_string(),
            // Replies (agents' answers, JetStream API responses) arrive under the gateways' own
            // prefix, the only inbox their NATS permissions let them read.
            inbox_prefix: subject::GATEWAY_INBOX.to_string(),
            host: None,
            user: "the gateway's NATS user",
        };
        let client = nats_connection::connect(config.nats, who)
            .await
            .map_err(|e| match e {
                ConnectError::Connect { url, source } => MeshError::Connect { url, source },
                ConnectError::Credentials { path, source } => MeshError::Connect {
                    url: config.nats.url.clone(),
                    source: async_nats::ConnectError::with_source(
                        async_nats::ConnectErrorKind::Io,
                        std::io::Error::new(source.kind(), format!("{}: {source}", path.display())),
                    ),
                },
                ConnectError::Tls(e) => MeshError::NatsTls(e),
            })?;
        let js = jetstream::new(client.clone());
        provision(&js, config.kv_replicas, &config.store_limits).await?;
        Ok(Self {
            client,
            js,
            tenant,
            signer,
            records,
            limits: config.store_limits,
            instances: Arc::default(),
            unstored: Arc::default(),
            lost_grace: config.lost_grace,
            consumers: Arc::new(Consumers::new(config.max_watches, config.max_call_watches)),
            directory: Arc::default(),
        })
    }

    /// Signs a request to an agent (with a fresh nonce), sends it to `subject` and decodes the
    /// protobuf reply. The caller sets everything else the agent checks: host, user, tier,
    /// run-as, expiry.
    pub async fn request<Req: SignedRequest + Clone, Rep: prost::Message + Default>(
        &self,
        host: &Token,
        subject: String,
        request: &Req,
        traceparent: Option<&str>,
        timeout: Duration,
    ) -> Result<Rep, DispatchError> {
        let mut headers = HeaderMap::new();
        if let Some(tp) = traceparent {
            headers.insert(headers::TRACEPARENT, tp);
        }
        let request = async_nats::Request::new()
            .payload(Bytes::from(self.signer.sign(request.clone())))
            .headers(headers)
            .timeout(Some(timeout));
        let reply = self
            .client
            .send_request(subject, request)
            .await
            .map_err(|e| match e.kind() {
                async_nats::RequestErrorKind::NoResponders => {
                    DispatchError::NoResponders(host.clone())
                }
                async_nats::RequestErrorKind::TimedOut => DispatchError::TimedOut {
                    host: host.clone(),
                    after: timeout,
                },
                _ => DispatchError::Nats {
                    host: host.clone(),
                    reason: e.to_string(),
                },
            })?;
        Rep::decode(reply.payload).map_err(|e| DispatchError::BadReply {
            host: host.clone(),
            reason: e.to_string(),
        })
    }

    /// Runs one direct get and collects every message up to the server's end-of-batch.
    pub async fn direct_get(
        &self,
        stream: &str,
        request: &DirectGet,
    ) -> Result<Vec<StoredMsg>, MeshError> {
        let inbox = self.client.new_inbox();
        let mut sub = self.client.subscribe(inbox.clone()).await.map_err(|e| {
            MeshError::unavailable(format!("subscribe for a direct get on {stream}"), &e)
        })?;
        let body = serde_json::to_vec(request).map_err(|e| {
            MeshError::Internal(format!("cannot encode a direct get on {stream}: {e}"))
        })?;
        self.client
            .publish_with_reply(format!("$JS.API.DIRECT.GET.{stream}"), inbox, body.into())
            .await
            .map_err(|e| MeshError::unavailable(format!("direct get on {stream}"), &e))?;
        let single = request.batch.is_none() && request.multi_last.is_none();
        let mut out: Vec<StoredMsg> = Vec::new();
        loop {
            let msg = match tokio::time::timeout(JS_TIMEOUT, sub.next()).await {
                Ok(Some(msg)) => msg,
                Ok(None) => {
                    return Err(MeshError::unavailable(
                        format!("direct get on {stream}"),
                        &"subscription closed",
                    ));
                }
                Err(_) => return Err(MeshError::Timeout(JS_TIMEOUT)),
            };
            if let Some(status) = msg.status {
                match status.as_u16() {
                    // 204: end of batch; 404: nothing (more) matches.
                    204 | 404 => break,
                    413 => {
                        return Err(MeshError::TooManyResults {
                            stream: stream.to_string(),
                        });
                    }
                    code => {
                        return Err(MeshError::unavailable(
                            format!("direct get on {stream}"),
                            &format!("answered {code} {}", msg.description.unwrap_or_default()),
                        ));
                    }
                }
            }
            let header = |name: &str| {
                msg.headers
                    .as_ref()
                    .and_then(|h| h.get(name))
                    .map(|v| v.as_str().to_string())
            };
            // A planted record carries a second `Nats-Sequence` of the requester's choosing; the
            // server's own is the smallest one not before where this answer can be (answers come
            // in stream order), so paging neither jumps ahead nor goes back because of it.
            let floor = out.last().map_or(request.seq.unwrap_or(0), |m| m.seq + 1);
            let seq = msg
                .headers
                .as_ref()
                .and_then(|h| {
                    let all: Vec<u64> = h
                        .get_all(headers::NATS_SEQUENCE)
                        .filter_map(|v| v.as_str().parse().ok())
                        .collect();
                    all.iter()
                        .copied()
                        .filter(|s| *s >= floor)
                        .min()
                        .or_else(|| all.iter().copied().max())
                })
                .ok_or_else(|| {
                    MeshError::Protocol(format!(
                        "direct get reply on {stream} without Nats-Sequence"
                    ))
                })?;
            let subject = header(headers::NATS_SUBJECT).unwrap_or_default();
            // A record its subject's owner did not write is kept as a tombstone (its sequence
            // still counts for paging), with its payload dropped so nothing reads it.
            let rejected = if is_marker(msg.headers.as_ref())
                && !execmesh_proto::identities::is_planted(msg.headers.as_ref())
            {
                None
            } else {
                self.records
                    .check_answer(
                        stream,
                        Stored {
                            subject: &subject,
                            headers: msg.headers.as_ref(),
                            payload: &msg.payload,
                        },
                    )
                    .err()
            };
            out.push(StoredMsg {
                seq,
                subject,
                pending: header(headers::NATS_NUM_PENDING)
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0),
                payload: if rejected.is_some() {
                    Bytes::new()
                } else {
                    msg.payload
                },
                headers: msg.headers,
                rejected,
            });
            if single {
                break;
            }
        }
        let _ = sub.unsubscribe().await;
        Ok(out)
    }

    /// The latest value of every key under `prefix` in a KV bucket, tombstones and rejected
    /// records skipped.
    async fn kv_last_values(
        &self,
        bucket: &str,
        prefix: &str,
    ) -> Result<Vec<(String, Bytes)>, MeshError> {
        Ok(self
            .kv_last_entries(bucket, prefix)
            .await?
            .into_iter()
            .filter_map(|(key, value)| Some((key, value.ok()?)))
            .collect())
    }

    /// The latest value of every key under `prefix` in a KV bucket: the value, or why it is
    /// ignored (not its key's owner's). Tombstones are left out.
    async fn kv_last_entries(
        &self,
        bucket: &str,
        prefix: &str,
    ) -> Result<Vec<(String, Result<Bytes, Rejection>)>, MeshError> {
        Ok(self
            .kv_last_records(bucket, prefix)
            .await?
            .into_iter()
            .filter_map(|(key, last)| match last {
                KvLast::Value(value) => Some((key, Ok(value))),
                KvLast::Rejected(rejection) => Some((key, Err(rejection))),
                KvLast::Gone(_) => None,
            })
            .collect())
    }

    /// The latest record of every key under `prefix` in a KV bucket, markers included.
    async fn kv_last_records(
        &self,
        bucket: &str,
        prefix: &str,
    ) -> Result<Vec<(String, KvLast)>, MeshError> {
        let subject_prefix = subject::kv_prefix(bucket);
        let request = DirectGet {
            multi_last: Some(vec![format!("{subject_prefix}{prefix}>")]),
            batch: Some(100_000),
            ..Default::default()
        };
        let msgs = match self.direct_get(&subject::kv_stream(bucket), &request).await {
            Ok(msgs) => msgs,
            // Past the server's per-request limit (1,024 subjects), read the latest values
            // with an ordered consumer instead: slower to start, no limit.
            Err(MeshError::TooManyResults { .. }) => {
                return self
                    .kv_last_values_streamed(bucket, &format!("{prefix}>"))
                    .await;
            }
            Err(e) => return Err(e),
        };
        Ok(msgs
            .into_iter()
            .filter_map(|m| {
                let key = m.subject.strip_prefix(&subject_prefix)?.to_string();
                Some((key, last_of(m)?))
            })
            .collect())
    }

    /// For more keys than one direct get returns: the last record of every key matching
    /// `filter` (a key pattern with `*`/`>`), through [`Mesh::kv_current`].
    async fn kv_last_values_streamed(
        &self,
        bucket: &str,
        filter: &str,
    ) -> Result<Vec<(String, KvLast)>, MeshError> {
        let changes = self
            .kv_current(bucket, filter, WatchFor::Call("read"))
            .await?;
        Ok(changes
            .into_iter()
            .filter_map(|change| {
                let key = change.key.clone();
                Some((key, last_of_change(change)?))
            })
            .collect())
    }

    /// The last change of every key of `bucket` matching `filter`, checked, through a watch
    /// that ends once it has delivered every current key (within [`STREAMED_TIMEOUT`]).
    pub async fn kv_current(
        &self,
        bucket: &str,
        filter: &str,
        watch: WatchFor,
    ) -> Result<Vec<KvChange>, MeshError> {
        let mut watch = self
            .watch_kv(bucket, filter, WatchFrom::LastPerKey, watch)
            .await?;
        let mut changes = Vec::new();
        if watch.initial == 0 {
            return Ok(changes);
        }
        let read = async {
            while let Some(change) = watch.changes.next().await {
                let change = change?;
                let caught_up = change.pending == 0;
                changes.push(change);
                if caught_up {
                    break;
                }
            }
            Ok::<(), MeshError>(())
        };
        tokio::time::timeout(STREAMED_TIMEOUT, read)
            .await
            .map_err(|_| MeshError::Timeout(STREAMED_TIMEOUT))??;
        Ok(changes)
    }

    /// Watches the keys of `bucket` matching `filter` (a key pattern with `*`/`>`) through an
    /// ordered consumer, checking every value like a direct get does: values their key's owner
    /// did not sign come as rejected changes (async-nats's KV watch gives no headers to check).
    /// The consumer is named and counted as `watch` says ([`crate::core::consumers`]); its slot
    /// is held until the changes are dropped.
    pub async fn watch_kv(
        &self,
        bucket: &str,
        filter: &str,
        from: WatchFrom,
        watch: WatchFor,
    ) -> Result<KvWatch, MeshError> {
        use async_nats::jetstream::consumer::{DeliverPolicy, ReplayPolicy, push};
        let admitted = self.consumers.admit(watch).await?;
        let nats =
            |e: &dyn std::fmt::Display| MeshError::unavailable(format!("watch of {bucket}"), e);
        let stream = self
            .js
            .get_stream(subject::kv_stream(bucket))
            .await
            .map_err(|e| nats(&e))?;
        let prefix = subject::kv_prefix(bucket);
        let consumer = stream
            .create_consumer(push::OrderedConfig {
                deliver_subject: self.client.new_inbox(),
                name: Some(admitted.name),
                description: Some(format!("execmesh gateway watch of {bucket}")),
                filter_subject: format!("{prefix}{filter}"),
                replay_policy: ReplayPolicy::Instant,
                deliver_policy: match from {
                    WatchFrom::LastPerKey => DeliverPolicy::LastPerSubject,
                    WatchFrom::New => DeliverPolicy::New,
                },
                ..Default::default()
            })
            .await
            .map_err(|e| nats(&e))?;
        let initial = consumer.cached_info().num_pending;
        let messages = consumer.messages().await.map_err(|e| nats(&e))?;
        let records = self.records.clone();
        let what = subject::kv_stream(bucket);
        let slot = admitted.slot;
        let changes = messages.map(move |message| {
            // The slot goes when the changes do.
            let _slot = &slot;
            let message =
                message.map_err(|e| MeshError::unavailable(format!("watch of {what}"), &e))?;
            let info = message.info().map_err(|e| {
                MeshError::Protocol(format!("watch of {what} delivered without metadata: {e}"))
            })?;
            let (revision, pending) = (info.stream_sequence, info.pending);
            let subject = message.subject.as_str();
            let key = subject.strip_prefix(&prefix).unwrap_or(subject).to_string();
            let operation = operation_of(message.headers.as_ref());
            let rejected = match operation {
                kv::Operation::Put => records
                    .check_delivered(
                        &what,
                        Stored {
                            subject,
                            headers: message.headers.as_ref(),
                            payload: &message.payload,
                        },
                    )
                    .err(),
                // Markers are unsigned (the server writes TTL markers); a planted one counts
                // for nothing, like any planted record.
                _ => message
                    .headers
                    .as_ref()
                    .filter(|h| h.get(headers::NATS_STREAM).is_some())
                    .map(|_| Rejection::Planted),
            };
            Ok(KvChange {
                key,
                value: if rejected.is_some() {
                    Bytes::new()
                } else {
                    message.payload.clone()
                },
                revision,
                operation,
                stored_at_ms: u64::try_from(info.published.unix_timestamp_nanos() / 1_000_000)
                    .unwrap_or(0),
                pending,
                rejected,
            })
        });
        Ok(KvWatch {
            initial,
            changes: changes.boxed(),
        })
    }

    /// The hosts whose heartbeat goes away from now on (expired by its TTL, or withdrawn by a
    /// stopping agent), as the markers in `mesh_presence` say, one item per marker.
    ///
    /// Every heartbeat of the fleet passes this watch, so it is as cheap as a watch can be: the
    /// consumer delivers headers only and nothing is verified. A marker someone planted costs a
    /// check, no more: whoever acts on a departure re-reads the presence with its checks.
    pub async fn presence_departures(
        &self,
    ) -> Result<BoxStream<'static, Result<Token, MeshError>>, MeshError> {
        use async_nats::jetstream::consumer::{DeliverPolicy, ReplayPolicy, push};
        let what = subject::kv_stream(PRESENCE_BUCKET);
        let nats =
            |e: &dyn std::fmt::Display| MeshError::unavailable(format!("watch of {what}"), e);
        let stream = self.js.get_stream(&what).await.map_err(|e| nats(&e))?;
        let prefix = subject::kv_prefix(PRESENCE_BUCKET);
        let name = self
            .consumers
            .admit(WatchFor::Upkeep("departures"))
            .await?
            .name;
        let consumer = stream
            .create_consumer(push::OrderedConfig {
                deliver_subject: self.client.new_inbox(),
                name: Some(name),
                description: Some("execmesh gateway watch of departing hosts".to_string()),
                filter_subject: format!("{prefix}{}.*", self.tenant),
                replay_policy: ReplayPolicy::Instant,
                deliver_policy: DeliverPolicy::New,
                headers_only: true,
                ..Default::default()
            })
            .await
            .map_err(|e| nats(&e))?;
        let messages = consumer.messages().await.map_err(|e| nats(&e))?;
        let departures = messages.filter_map(move |message| {
            let departed = match message {
                Err(e) => Some(Err(MeshError::unavailable(
                    format!("watch of {}", subject::kv_stream(PRESENCE_BUCKET)),
                    &e,
                ))),
                Ok(message) if is_marker(message.headers.as_ref()) => message
                    .subject
                    .strip_prefix(&prefix)
                    .and_then(|key| subject::parse_host_key(key).ok())
                    .map(|(_, host)| Ok(host)),
                Ok(_) => None,
            };
            std::future::ready(departed)
        });
        Ok(departures.boxed())
    }

    /// The last record of one KV key and the stream sequence it was stored at (`(0, None)`:
    /// none, or an empty value), checked as a listing reads it.
    pub async fn kv_last(
        &self,
        bucket: &str,
        key: &str,
    ) -> Result<(u64, Option<KvLast>), MeshError> {
        let msg = self.kv_stored(bucket, key).await?;
        Ok(msg.map_or((0, None), |m| (m.seq, last_of(m))))
    }

    /// The latest value of one KV key, if any.
    pub async fn kv_get(&self, bucket: &str, key: &str) -> Result<Option<StoredMsg>, MeshError> {
        let msg = self.kv_stored(bucket, key).await?;
        Ok(msg.filter(|m| !m.is_tombstone() && !m.payload.is_empty()))
    }

    /// The last record stored under one KV key, whatever it is.
    async fn kv_stored(&self, bucket: &str, key: &str) -> Result<Option<StoredMsg>, MeshError> {
        self.last_on(bucket, subject::kv(bucket, key)).await
    }

    /// The last record of `bucket` stored on `subject` (a key's, or a wildcard's over keys).
    async fn last_on(&self, bucket: &str, subject: String) -> Result<Option<StoredMsg>, MeshError> {
        let request = DirectGet {
            last_by_subj: Some(subject),
            ..Default::default()
        };
        Ok(self
            .direct_get(&subject::kv_stream(bucket), &request)
            .await?
            .pop())
    }

    /// Every host registered in `mesh_facts` or present in `mesh_presence`, by host id. A
    /// host whose records its agent did not sign is listed with the reason, without them.
    ///
    /// Past [`DIRECT_GET_KEYS`] hosts, from this replica's directory once it is loaded, after it
    /// has taken every record stored before the call (so a host that registered just before is
    /// listed); read from NATS for smaller fleets, while the directory is not loaded, or when it
    /// does not catch up within [`DIRECTORY_WAIT`].
    pub async fn hosts(&self) -> Result<BTreeMap<Token, Arc<HostRecord>>, MeshError> {
        match self.listed_by_directory().await? {
            Some(hosts) => Ok(hosts),
            None => self.read_hosts().await,
        }
    }

    /// [`Mesh::hosts`] from this replica's directory, when it serves listings (loaded, checked
    /// against the identities in force, past one direct get) and takes every record stored
    /// before the call within [`DIRECTORY_WAIT`]; `None`: read NATS instead.
    async fn listed_by_directory(
        &self,
    ) -> Result<Option<BTreeMap<Token, Arc<HostRecord>>>, MeshError> {
        // A host enrolled since (the identities file changed) is read from NATS until the
        // directory has checked its records again.
        let identities = self.records.trust().map(|trust| {
            trust.reload_if_changed();
            trust.current()
        });
        // A fleet that one direct get reads whole is read so: as cheap as the directory's
        // probes, and read straight from the store.
        let Some(mark) = self
            .directory
            .mark(identities.as_ref())
            .filter(|mark| mark.keys > DIRECT_GET_KEYS)
        else {
            return Ok(None);
        };
        let (facts, presence) = tokio::try_join!(
            self.last_stored(FACTS_BUCKET),
            self.last_stored(PRESENCE_BUCKET)
        )?;
        let hosts = self
            .directory
            .listed_once(&mark, Taken { facts, presence }, DIRECTORY_WAIT)
            .await;
        if hosts.is_none() {
            tracing::debug!("the host directory did not catch up; reading the hosts from NATS");
        }
        Ok(hosts)
    }

    /// [`Mesh::hosts`] read from NATS: the last record of every key of both buckets.
    pub async fn read_hosts(&self) -> Result<BTreeMap<Token, Arc<HostRecord>>, MeshError> {
        let prefix = format!("{}.", self.tenant);
        let (facts, presence) = tokio::try_join!(
            self.kv_last_records(FACTS_BUCKET, &prefix),
            self.kv_last_records(PRESENCE_BUCKET, &prefix)
        )?;
        let mut hosts = HostEntries::default();
        for (key, last) in facts {
            hosts.set(&key, HostKey::Facts, Some(last));
        }
        for (key, last) in presence {
            hosts.set(&key, HostKey::Presence, Some(last));
        }
        Ok(hosts.listed())
    }

    /// The stream sequence of the tenant's last record in `bucket` (0: none): one direct get,
    /// the last message of the tenant's wildcard.
    async fn last_stored(&self, bucket: &str) -> Result<u64, MeshError> {
        let tenant = format!("{}{}.>", subject::kv_prefix(bucket), self.tenant);
        let last = self.last_on(bucket, tenant).await?;
        Ok(last.map_or(0, |m| m.seq))
    }

    /// The hosts whose agent currently heartbeats (their presence key has not expired).
    pub async fn present_hosts(&self) -> Result<std::collections::BTreeSet<Token>, MeshError> {
        // A fan-out asks every 2 s. Past one direct get, reading every heartbeat again took a
        // consumer of the bucket and a signature check per host each time (a sixth of the
        // gateway's CPU in a 10,000-host `grep`); the directory holds them checked.
        if let Some(hosts) = self.listed_by_directory().await? {
            return Ok(hosts
                .into_iter()
                .filter(|(_, record)| record.presence.is_some())
                .map(|(host, _)| host)
                .collect());
        }
        let prefix = format!("{}.", self.tenant);
        Ok(self
            .kv_last_values(PRESENCE_BUCKET, &prefix)
            .await?
            .into_iter()
            .filter_map(|(key, _)| subject::parse_host_key(&key).ok().map(|(_, host)| host))
            .collect())
    }

    /// Whether `host`'s agent heartbeats now, and if not since when.
    pub async fn liveness(&self, host: &Token) -> Result<Liveness, MeshError> {
        let key = subject::host_key(&self.tenant, host);
        let last = self.kv_stored(PRESENCE_BUCKET, &key).await?;
        Ok(last
            .and_then(last_of)
            .map_or(Liveness::Unknown, Liveness::of))
    }

    /// [`Mesh::liveness`] of every host with a presence record, with one read.
    pub async fn liveness_all(&self) -> Result<BTreeMap<Token, Liveness>, MeshError> {
        let prefix = format!("{}.", self.tenant);
        Ok(self
            .kv_last_records(PRESENCE_BUCKET, &prefix)
            .await?
            .into_iter()
            .filter_map(|(key, last)| {
                let (_, host) = subject::parse_host_key(&key).ok()?;
                Some((host, Liveness::of(last)))
            })
            .collect())
    }

    /// Every host's status of job `job`: a fan-out gives all its hosts the same job id.
    pub async fn group_jobs(&self, job: &Token) -> Result<Vec<pb::JobStatus>, MeshError> {
        self.wait_stored(job, None).await;
        let request = self.hosts_of_job(job, 100_000);
        let payloads: Vec<Bytes> = match self
            .direct_get(&subject::kv_stream(JOBS_BUCKET), &request)
            .await
        {
            Ok(msgs) => msgs
                .into_iter()
                .filter(|m| !m.is_tombstone())
                .map(|m| m.payload)
                .collect(),
            Err(MeshError::TooManyResults { .. }) => self
                .kv_last_values_streamed(JOBS_BUCKET, &subject::job_keys_of_id(&self.tenant, job))
                .await?
                .into_iter()
                .filter_map(|(_, last)| match last {
                    KvLast::Value(value) => Some(value),
                    KvLast::Rejected(_) | KvLast::Gone(_) => None,
                })
                .collect(),
            Err(e) => return Err(e),
        };
        Ok(payloads
            .into_iter()
            .filter_map(|p| pb::JobStatus::decode(p).ok())
            .collect())
    }

    /// One host's registration and presence; `None` if the mesh never heard of it.
    pub async fn host(&self, host: &Token) -> Result<Option<HostRecord>, MeshError> {
        let key = subject::host_key(&self.tenant, host);
        let get = |bucket: &'static str| {
            let request = DirectGet {
                last_by_subj: Some(subject::kv(bucket, &key)),
                ..Default::default()
            };
            async move {
                let msg = self
                    .direct_get(&subject::kv_stream(bucket), &request)
                    .await?
                    .pop();
                Ok::<_, MeshError>(msg)
            }
        };
        let (facts, presence) = tokio::try_join!(get(FACTS_BUCKET), get(PRESENCE_BUCKET))?;
        let departed = presence
            .as_ref()
            .filter(|m| m.rejected.is_none())
            .and_then(|m| departure_of_marker(m.headers.as_ref()));
        let stored = |msg: Option<StoredMsg>| {
            msg.filter(|m| {
                m.rejected.is_some() || !(is_marker(m.headers.as_ref()) || m.payload.is_empty())
            })
        };
        let (facts, presence) = (stored(facts), stored(presence));
        if facts.is_none() && presence.is_none() {
            return Ok(None);
        }
        let mut record = HostRecord::new(host.clone());
        for (what, msg) in [("facts", &facts), ("heartbeat", &presence)] {
            if let Some(rejected) = msg.as_ref().and_then(|m| m.rejected.as_ref()) {
                record
                    .unverified
                    .get_or_insert_with(|| format!("{what} {rejected}"));
            }
        }
        record.facts = facts
            .filter(|m| m.rejected.is_none())
            .and_then(|m| pb::HostFacts::decode(m.payload).ok());
        record.presence = presence
            .filter(|m| m.rejected.is_none())
            .and_then(|m| pb::Presence::decode(m.payload).ok());
        record.departed = departed;
        Ok(Some(record))
    }

    /// The status of a job, if known.
    pub async fn job_status(
        &self,
        host: &Token,
        job: &Token,
    ) -> Result<Option<pb::JobStatus>, MeshError> {
        self.wait_stored(job, Some(host)).await;
        let key = subject::job_key(&self.tenant, host, job);
        match self.kv_get(JOBS_BUCKET, &key).await? {
            Some(msg) => pb::JobStatus::decode(msg.payload.clone())
                .map(Some)
                .map_err(|e| MeshError::Corrupt {
                    seq: msg.seq,
                    reason: e.to_string(),
                }),
            None => Ok(None),
        }
    }

    /// Marks `status` (a RUNNING job whose host stopped heartbeating, as
    /// [`crate::core::jobs::state`] decides) LOST with compare-and-set on the stored status, so
    /// an agent or another replica that wrote meanwhile wins. Returns the status as it now
    /// stands and whether this call is the one that settled it (and so records its end).
    pub async fn mark_lost(&self, status: pb::JobStatus) -> Result<Settled, MeshError> {
        let unchanged = |status| Settled {
            status,
            by_us: false,
        };
        let (Ok(host), Ok(job)) = (
            Token::parse("host id", &status.host),
            Token::parse("job id", &status.job_id),
        ) else {
            return Ok(unchanged(status));
        };
        let job_key = subject::job_key(&self.tenant, &host, &job);
        let Some(current) = self.kv_get(JOBS_BUCKET, &job_key).await? else {
            return Ok(unchanged(status));
        };
        let mut lost =
            pb::JobStatus::decode(current.payload.clone()).map_err(|e| MeshError::Corrupt {
                seq: current.seq,
                reason: e.to_string(),
            })?;
        if lost.state() != pb::JobState::Running {
            return Ok(unchanged(lost));
        }
        lost.state = pb::JobState::Lost as i32;
        lost.ended_at_ms = execmesh_proto::now_ms();
        lost.reason =
            format!("the agent of host {host} stopped sending heartbeats while the job ran");
        let kv = self
            .js
            .get_key_value(JOBS_BUCKET)
            .await
            .map_err(|e| MeshError::unavailable(format!("open {JOBS_BUCKET}"), &e))?;
        // Signed as the gateway, which the identities file entitles to settle job statuses.
        match kv_write::write(
            &self.js,
            &kv,
            &job_key,
            lost.encode_to_vec().into(),
            HeaderMap::new(),
            Expect::Revision(current.seq),
            self.records.key(),
        )
        .await
        {
            Ok(_) => Ok(Settled {
                status: lost,
                by_us: true,
            }),
            // Someone (the agent, another replica) wrote first: theirs stands.
            Err(KvWriteError::WrongRevision { .. }) => Ok(unchanged(
                self.job_status(&host, &job).await?.unwrap_or(lost),
            )),
            Err(e) => Err(MeshError::unavailable(format!("settle job {job}"), &e)),
        }
    }

    /// The statuses of every job of `host` (latest value per job).
    pub async fn host_jobs(&self, host: &Token) -> Result<Vec<pb::JobStatus>, MeshError> {
        self.statuses_under(&format!("{}.{host}.", self.tenant))
            .await
    }

    /// The readable job statuses whose keys start with `prefix` (latest value per job).
    async fn statuses_under(&self, prefix: &str) -> Result<Vec<pb::JobStatus>, MeshError> {
        let values = self.kv_last_values(JOBS_BUCKET, prefix).await?;
        Ok(values
            .into_iter()
            .filter_map(|(_, v)| pb::JobStatus::decode(v).ok())
            .collect())
    }

    /// A direct get of the statuses of `job` on every host, up to `batch` of them.
    fn hosts_of_job(&self, job: &Token, batch: usize) -> DirectGet {
        DirectGet {
            multi_last: Some(vec![subject::kv(
                JOBS_BUCKET,
                &subject::job_keys_of_id(&self.tenant, job),
            )]),
            batch: Some(batch),
            ..Default::default()
        }
    }

    /// Finds the host that ran `job` (job ids are unique across the mesh).
    pub async fn find_job(&self, job: &Token) -> Result<Option<pb::JobStatus>, MeshError> {
        let request = self.hosts_of_job(job, 16);
        let msgs = self
            .direct_get(&subject::kv_stream(JOBS_BUCKET), &request)
            .await?;
        Ok(msgs
            .into_iter()
            .filter(|m| !m.is_tombstone())
            .find_map(|m| pb::JobStatus::decode(m.payload).ok()))
    }

    /// Every job status of the tenant (latest value per job).
    pub async fn jobs(&self) -> Result<Vec<pb::JobStatus>, MeshError> {
        self.statuses_under(&format!("{}.", self.tenant)).await
    }

    /// Waits, up to [`STORE_WAIT`], until the agents that answered `job` (on `host`, when
    /// given) as ended through this gateway have stored its final status, so that a read right
    /// after the reply sees the whole job. Nothing to wait for: returns at once.
    pub async fn wait_stored(&self, job: &Token, host: Option<&Token>) {
        let hosts = self.unstored.take(job, host);
        let waits = hosts
            .iter()
            .map(|host| self.wait_job(host, job, STORE_WAIT));
        for (host, waited) in hosts.iter().zip(futures::future::join_all(waits).await) {
            if let Err(e) = waited {
                tracing::debug!(host = %host, job = %job, error = %e,
                                "waiting for a job's status to be stored failed");
            }
        }
    }

    /// Waits until the job leaves RUNNING or `timeout` passes; returns the last status seen.
    /// Statuses the job's host did not sign are skipped, like in every other read.
    pub async fn wait_job(
        &self,
        host: &Token,
        job: &Token,
        timeout: Duration,
    ) -> Result<Option<pb::JobStatus>, MeshError> {
        let key = subject::job_key(&self.tenant, host, job);
        let mut watch = self
            .watch_kv(
                JOBS_BUCKET,
                &key,
                WatchFrom::LastPerKey,
                WatchFor::Call("job-end"),
            )
            .await?;
        let mut last = None;
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match tokio::time::timeout_at(deadline, watch.changes.next()).await {
                Ok(Some(Ok(change))) => {
                    if !change.is_value() {
                        continue;
                    }
                    if let Ok(status) = pb::JobStatus::decode(change.value) {
                        let done = status.state() != pb::JobState::Running;
                        last = Some(status);
                        if done {
                            return Ok(last);
                        }
                    }
                }
                Ok(Some(Err(e))) => return Err(e),
                Ok(None) | Err(_) => return Ok(last),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::nats_time_ms;

    #[test]
    fn jetstream_timestamps_read_as_epoch_milliseconds() {
        assert_eq!(
            nats_time_ms("2026-12-02T07:32:28.123456789Z"),
            Some(1_796_196_748_123)
        );
        assert_eq!(nats_time_ms("2000-02-29T23:59:59Z"), Some(951_868_799_000));
        assert_eq!(
            nats_time_ms("2026-12-02T07:32:28.5Z"),
            Some(1_796_196_748_500)
        );
        for bad in [
            "",
            "yesterday",
            "2026-12-02 07:32:28Z",
            "2026-12-02T07:32:28+01:00",
        ] {
            assert_eq!(nats_time_ms(bad), None, "{bad}");
        }
    }
}
