//! MCP Tasks as the mesh keeps them: one record per task in the `mesh_tasks` bucket, so any
//! gateway replica answers for a task, whichever replica created it.
//!
//! A record names its user (nobody else sees it), its tool, its status, the jobs it started on
//! hosts (so a cancel from any replica can stop them) and, once done, its result. The replica
//! that runs the call holds a lease on the record and renews it while the call runs; a record
//! whose lease ran out belongs to a replica that stopped, and whoever reads it next settles it
//! from the jobs it recorded ([`TaskRecord::orphaned`]). Every write is a compare-and-set that
//! carries the time the task has left as the key's TTL, so the bucket forgets a task when its
//! `ttlMs` is up, without a sweeper.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::kv;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tracing::{debug, info};

use execmesh_proto::Token;
use execmesh_proto::jetstream as layout;
use execmesh_runtime::kv_write::{self, Expect, KvWriteError};

use crate::core::consumers::WatchFor;
use crate::core::mesh::{KvWatch, Mesh, MeshError, WatchFrom};

/// How long a task is kept after it is created, by default.
pub const DEFAULT_TTL: Duration = Duration::from_secs(3600);
/// How often clients are asked to poll, by default.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(1);
/// How long the replica running a task is trusted to be alive without renewing its lease.
pub const LEASE: Duration = Duration::from_secs(10);
/// Attempts at a compare-and-set before giving up (another replica writing the same record).
const CAS_ATTEMPTS: usize = 8;
/// Largest record stored: NATS refuses messages over its `max_payload` (1 MiB by default).
pub const MAX_RECORD_BYTES: usize = 900 * 1024;

/// Where a task stands, as the extension names its statuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskState {
    /// The call runs.
    Working,
    /// The call waits for the client: a call held for approval shows the approval to the user
    /// (the record's `input_requests`) and continues once it is decided.
    InputRequired,
    /// The call ended with a tool result (`isError` ones included).
    Completed,
    /// The call ended with a protocol error (the replica running it stopped, and it had
    /// started nothing that tells how it went).
    Failed,
    /// Its user cancelled it.
    Cancelled,
}

impl TaskState {
    /// Whether the task can change no more.
    pub fn is_terminal(self) -> bool {
        !matches!(self, Self::Working | Self::InputRequired)
    }
}

/// A job a task started, as its host and job id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskJob {
    pub host: String,
    pub job: String,
}

/// One task, as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskRecord {
    /// `task-<16 hex>`: a subject-safe token.
    pub id: String,
    /// Whose task it is: nobody else may read or cancel it.
    pub user: String,
    /// The tool called.
    pub tool: String,
    pub state: TaskState,
    /// What the status means, for the user or the model.
    pub status_message: Option<String>,
    pub created_at_ms: u64,
    pub updated_at_ms: u64,
    /// The task's time to live from its creation.
    pub ttl_ms: u64,
    /// How often clients should poll.
    pub poll_interval_ms: u64,
    /// The replica running the call.
    pub owner: String,
    /// Until when the owner is trusted to be alive; it renews this while the call runs.
    pub lease_until_ms: u64,
    /// The jobs the call started, as far as the owner recorded them.
    pub jobs: Vec<TaskJob>,
    /// `completed`: the tool result (a `CallToolResult` as JSON).
    pub result: Option<Value>,
    /// `failed`: the JSON-RPC error object.
    pub error: Option<Value>,
    /// `input_required`: what the client is asked (the extension's `inputRequests`, as JSON).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_requests: Option<Value>,
    /// The client's answers to `input_requests` (`tasks/update`'s `inputResponses`, as JSON),
    /// for the replica running the call to read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_responses: Option<Value>,
}

impl TaskRecord {
    /// Whether the replica running the task stopped without settling it: still working, its
    /// lease run out.
    pub fn orphaned(&self, now_ms: u64) -> bool {
        !self.state.is_terminal() && now_ms > self.lease_until_ms
    }

    /// When the bucket forgets the task.
    pub fn expires_at_ms(&self) -> u64 {
        self.created_at_ms.saturating_add(self.ttl_ms)
    }
}

/// How a task ended, as its runner reports it.
#[derive(Debug, Clone)]
pub enum Ending {
    /// A tool result (`CallToolResult` as JSON).
    Completed(Value),
    /// A JSON-RPC error object, with a message for the status.
    Failed { error: Value, message: String },
}

/// Why a task operation failed.
#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    /// No such task for this user: never made, another user's, or expired.
    #[error("unknown task `{0}`: no task of yours has this id (it may have expired)")]
    NotFound(String),
    #[error("the task store is unavailable: {0}")]
    Unavailable(String),
    /// A record that cannot be encoded or a signed record that cannot be read.
    #[error("a task record cannot be read or written: {0}")]
    Internal(String),
}

impl From<MeshError> for TaskError {
    fn from(e: MeshError) -> Self {
        if e.is_unavailable() {
            Self::Unavailable(e.to_string())
        } else {
            Self::Internal(e.to_string())
        }
    }
}

/// The jobs a running call has started, shared between the dispatcher (which adds each job
/// and waits until it is stored before it asks the host to start it) and the task's runner
/// (which copies them into the record as soon as they are added): a job never runs without its
/// task naming it, so a cancel on another replica, or after this one died, finds it.
#[derive(Debug, Clone)]
pub struct TaskJobs {
    jobs: Arc<Mutex<Vec<TaskJob>>>,
    /// Woken when a job is added.
    added: Arc<tokio::sync::Notify>,
    /// How many of `jobs` (the first ones) the record holds.
    stored: Arc<tokio::sync::watch::Sender<usize>>,
}

impl Default for TaskJobs {
    fn default() -> Self {
        Self {
            jobs: Arc::default(),
            added: Arc::default(),
            stored: Arc::new(tokio::sync::watch::channel(0).0),
        }
    }
}

/// How long a job start waits for its task's record to name it; past it (the store is slow or
/// away) the job starts anyway, and the runner records it at its next renewal.
const STORE_WAIT: Duration = Duration::from_secs(2);

// === impl TaskJobs ===

impl TaskJobs {
    /// Records that `job` is about to be started on `host`, and returns once the task's record
    /// names it (or [`STORE_WAIT`] passed).
    pub async fn started(&self, host: &Token, job: &Token) {
        let job = TaskJob {
            host: host.to_string(),
            job: job.to_string(),
        };
        let needed = {
            let Ok(mut jobs) = self.jobs.lock() else {
                return;
            };
            match jobs.iter().position(|j| *j == job) {
                Some(at) => at + 1,
                None => {
                    jobs.push(job);
                    jobs.len()
                }
            }
        };
        self.added.notify_one();
        let mut stored = self.stored.subscribe();
        // A closed channel (the runner is gone) or the timeout: start the job anyway.
        let _ = tokio::time::timeout(STORE_WAIT, stored.wait_for(|n| *n >= needed)).await;
    }

    /// The jobs recorded so far.
    pub fn snapshot(&self) -> Vec<TaskJob> {
        self.jobs
            .lock()
            .map(|jobs| jobs.clone())
            .unwrap_or_default()
    }

    /// Resolves when a job was added since the last time it resolved.
    pub async fn added(&self) {
        self.added.notified().await
    }

    /// Says that the record now holds the first `count` jobs of a [`Self::snapshot`].
    pub fn stored(&self, count: usize) {
        self.stored.send_if_modified(|n| {
            let more = count > *n;
            if more {
                *n = count;
            }
            more
        });
    }
}

/// The tasks of one tenant, in `mesh_tasks`. Records are signed as the gateway and read back
/// through the mesh's checks: one the gateway did not sign is no task.
#[derive(Clone)]
pub struct Tasks {
    mesh: Mesh,
    kv: kv::Store,
    tenant: Token,
    /// This replica, as the owner of the tasks it runs.
    replica: String,
    /// Time to live of a new task.
    pub ttl: Duration,
    /// The poll interval clients are given.
    pub poll_interval: Duration,
}

// === impl Tasks ===

impl Tasks {
    /// Creates the bucket if missing (otherwise uses it as it is) and opens it.
    pub async fn open(
        mesh: &Mesh,
        replicas: usize,
        ttl: Duration,
        poll_interval: Duration,
    ) -> Result<Self, TaskError> {
        let config = layout::tasks_bucket(&mesh.limits, replicas);
        let name = config.bucket.clone();
        let kv = match mesh.js.create_key_value(config).await {
            Ok(kv) => kv,
            Err(create) => {
                debug!(bucket = %name, error = %create, "create failed; opening the existing bucket");
                mesh.js.get_key_value(&name).await.map_err(|open| {
                    TaskError::Unavailable(format!(
                        "cannot open KV bucket {name}: create failed ({create}), open failed ({open})"
                    ))
                })?
            }
        };
        Ok(Self {
            mesh: mesh.clone(),
            kv,
            tenant: mesh.tenant.clone(),
            replica: format!("gw-{:08x}", rand::random::<u32>()),
            ttl,
            poll_interval,
        })
    }

    /// Creates a working task of `user` for `tool`, run (and leased) by this replica. Returns
    /// once the record is stored, so a `tasks/get` on any replica finds it.
    pub async fn create(&self, user: &str, tool: &str) -> Result<TaskRecord, TaskError> {
        let now = execmesh_proto::now_ms();
        let record = TaskRecord {
            id: format!("task-{:016x}", rand::random::<u64>()),
            user: user.to_string(),
            tool: tool.to_string(),
            state: TaskState::Working,
            status_message: Some(format!("`{tool}` is running")),
            created_at_ms: now,
            updated_at_ms: now,
            ttl_ms: self.ttl.as_millis() as u64,
            poll_interval_ms: self.poll_interval.as_millis() as u64,
            owner: self.replica.clone(),
            lease_until_ms: now + LEASE.as_millis() as u64,
            jobs: Vec::new(),
            result: None,
            error: None,
            input_requests: None,
            input_responses: None,
        };
        let (bytes, headers) = self.encode(&record, now)?;
        kv_write::create(
            &self.mesh.js,
            &self.kv,
            &self.key(&record.id),
            bytes,
            headers,
            self.mesh.records.key(),
        )
        .await
        .map_err(|e| TaskError::Unavailable(e.to_string()))?;
        info!(task = %record.id, tool, user, "task created");
        Ok(record)
    }

    /// Task `id` of `user`. Another user's task, an expired one and an unknown id are all
    /// [`TaskError::NotFound`]: nobody learns which ids exist.
    pub async fn get(&self, id: &str, user: &str) -> Result<TaskRecord, TaskError> {
        let (record, _) = self.load(id, user).await?;
        Ok(record)
    }

    /// Every change to the tasks `ids` stored from now on (whose user, the caller, has
    /// already read them): one consumer, a client's (at most `max_watches` at a time). One
    /// task is watched by its key, more by their tenant's keys (changes to others' tasks are
    /// delivered too, and mean nothing to the caller).
    pub async fn watch(&self, ids: &[String]) -> Result<KvWatch, MeshError> {
        let filter = match ids {
            [one] => self.key(one),
            _ => format!("{}.*", self.tenant),
        };
        let purpose = WatchFor::Client("task-listen");
        (self.mesh)
            .watch_kv(layout::TASKS_BUCKET, &filter, WatchFrom::New, purpose)
            .await
    }

    /// The owner's renewal while the call runs: extends the lease and copies in the jobs
    /// started so far. Returns the record as it now stands (cancelled, if its user cancelled
    /// it meanwhile).
    pub async fn renew(
        &self,
        id: &str,
        user: &str,
        jobs: &[TaskJob],
    ) -> Result<TaskRecord, TaskError> {
        self.transition(id, user, |record, now| {
            if record.state.is_terminal() {
                return false;
            }
            record.lease_until_ms = now + LEASE.as_millis() as u64;
            for job in jobs {
                if !record.jobs.contains(job) {
                    record.jobs.push(job.clone());
                }
            }
            true
        })
        .await
    }

    /// Settles a working task with how it ended (a task cancelled meanwhile stays cancelled).
    pub async fn finish(
        &self,
        id: &str,
        user: &str,
        jobs: &[TaskJob],
        ending: Ending,
    ) -> Result<TaskRecord, TaskError> {
        self.transition(id, user, |record, _| {
            if record.state.is_terminal() {
                return false;
            }
            for job in jobs {
                if !record.jobs.contains(job) {
                    record.jobs.push(job.clone());
                }
            }
            record.input_requests = None;
            record.input_responses = None;
            match &ending {
                Ending::Completed(result) => {
                    record.state = TaskState::Completed;
                    record.status_message = Some(format!("`{}` finished", record.tool));
                    record.result = Some(result.clone());
                }
                Ending::Failed { error, message } => {
                    record.state = TaskState::Failed;
                    record.status_message = Some(message.clone());
                    record.error = Some(error.clone());
                }
            }
            true
        })
        .await
    }

    /// Marks a working task cancelled by its user; returns the record (its jobs are for the
    /// caller to stop). A task already settled is returned as it is.
    pub async fn cancel(&self, id: &str, user: &str) -> Result<TaskRecord, TaskError> {
        self.transition(id, user, |record, _| {
            if record.state.is_terminal() {
                return false;
            }
            record.state = TaskState::Cancelled;
            record.status_message = Some(format!("cancelled by {user}"));
            true
        })
        .await
    }

    /// Asks the client for input: a working task becomes `input_required` with `requests` (the
    /// extension's `inputRequests`) and `message`, until [`Self::resume`] or its end.
    pub async fn ask(
        &self,
        id: &str,
        user: &str,
        message: &str,
        requests: Value,
    ) -> Result<TaskRecord, TaskError> {
        self.transition(id, user, |record, _| {
            if record.state != TaskState::Working {
                return false;
            }
            record.state = TaskState::InputRequired;
            record.status_message = Some(message.to_string());
            record.input_requests = Some(requests.clone());
            record.input_responses = None;
            true
        })
        .await
    }

    /// Stores the client's answers to a task's outstanding input requests (`tasks/update`);
    /// answers to a task that asks nothing (any more) are ignored, as the extension says.
    pub async fn answer(
        &self,
        id: &str,
        user: &str,
        responses: Value,
    ) -> Result<TaskRecord, TaskError> {
        self.transition(id, user, |record, _| {
            if record.state != TaskState::InputRequired {
                return false;
            }
            record.input_responses = Some(responses.clone());
            true
        })
        .await
    }

    /// Back to work after the input came: an `input_required` task is `working` again.
    pub async fn resume(&self, id: &str, user: &str) -> Result<TaskRecord, TaskError> {
        self.transition(id, user, |record, _| {
            if record.state != TaskState::InputRequired {
                return false;
            }
            record.state = TaskState::Working;
            record.status_message = Some(format!("`{}` is running", record.tool));
            record.input_requests = None;
            record.input_responses = None;
            true
        })
        .await
    }

    /// Updates the status message of a working task (one whose runner stopped, as seen by
    /// whoever follows its jobs).
    pub async fn note(&self, id: &str, user: &str, message: &str) -> Result<TaskRecord, TaskError> {
        self.transition(id, user, |record, _| {
            if record.state.is_terminal() || record.status_message.as_deref() == Some(message) {
                return false;
            }
            record.status_message = Some(message.to_string());
            true
        })
        .await
    }

    /// Applies `change` (which says whether it changed anything) to task `id` of `user` with
    /// compare-and-set, retrying on a concurrent write.
    async fn transition(
        &self,
        id: &str,
        user: &str,
        mut change: impl FnMut(&mut TaskRecord, u64) -> bool,
    ) -> Result<TaskRecord, TaskError> {
        for _ in 0..CAS_ATTEMPTS {
            let (mut record, revision) = self.load(id, user).await?;
            let now = execmesh_proto::now_ms();
            if !change(&mut record, now) {
                return Ok(record);
            }
            record.updated_at_ms = now;
            let (bytes, headers) = self.encode(&record, now)?;
            let written = kv_write::write(
                &self.mesh.js,
                &self.kv,
                &self.key(id),
                bytes,
                headers,
                Expect::Revision(revision),
                self.mesh.records.key(),
            )
            .await;
            match written {
                Ok(_) => {
                    debug!(task = %id, state = ?record.state, "task changed");
                    return Ok(record);
                }
                Err(KvWriteError::WrongRevision { .. }) => continue,
                Err(e) => return Err(TaskError::Unavailable(e.to_string())),
            }
        }
        Err(TaskError::Unavailable(format!(
            "task `{id}` kept changing under concurrent writers; try again"
        )))
    }

    async fn load(&self, id: &str, user: &str) -> Result<(TaskRecord, u64), TaskError> {
        if !is_id(id) {
            return Err(TaskError::NotFound(id.to_string()));
        }
        // Read through the mesh's checks: a record the gateway did not sign is no task.
        let Some(entry) = self
            .mesh
            .kv_get(layout::TASKS_BUCKET, &self.key(id))
            .await?
        else {
            return Err(TaskError::NotFound(id.to_string()));
        };
        let record: TaskRecord = serde_json::from_slice(&entry.payload)
            .map_err(|e| TaskError::Internal(format!("task `{id}` is unreadable: {e}")))?;
        // The bucket expires keys on its own schedule; past its TTL a task is gone already.
        if record.user != user || execmesh_proto::now_ms() >= record.expires_at_ms() {
            return Err(TaskError::NotFound(id.to_string()));
        }
        Ok((record, entry.seq))
    }

    /// The record's bytes, and the headers that make the key expire with the task.
    fn encode(
        &self,
        record: &TaskRecord,
        now_ms: u64,
    ) -> Result<(Bytes, async_nats::HeaderMap), TaskError> {
        let bytes = serde_json::to_vec(record)
            .map_err(|e| TaskError::Internal(format!("cannot encode task `{}`: {e}", record.id)))?;
        if bytes.len() > MAX_RECORD_BYTES {
            return Err(TaskError::Internal(format!(
                "task `{}` is {} bytes, over the {MAX_RECORD_BYTES} a record may hold",
                record.id,
                bytes.len()
            )));
        }
        let left = Duration::from_millis(record.expires_at_ms().saturating_sub(now_ms));
        Ok((Bytes::from(bytes), kv_write::ttl_headers(left)))
    }

    fn key(&self, id: &str) -> String {
        format!("{}.{id}", self.tenant)
    }
}

/// Whether `id` looks like a task id (and is therefore safe as a KV key token).
fn is_id(id: &str) -> bool {
    id.strip_prefix("task-").is_some_and(|hex| {
        hex.len() == 16
            && hex
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    })
}

/// `ms` since the epoch as an ISO 8601 UTC timestamp with milliseconds
/// (`2026-12-02T10:30:00.000Z`), as the Tasks extension dates a task.
pub fn iso8601(ms: u64) -> String {
    let secs = ms / 1000;
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil date of a day count (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        ms % 1000
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_iso8601_utc() {
        assert_eq!(iso8601(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(iso8601(951_868_799_000), "2000-02-29T23:59:59.000Z");
        assert_eq!(iso8601(1_796_196_748_123), "2026-12-02T07:32:28.123Z");
    }

    #[test]
    fn only_task_ids_are_keys() {
        assert!(is_id("task-0123456789abcdef"));
        for bad in [
            "task-0123",
            "task-0123456789ABCDEF",
            "apr-0123456789abcdef",
            "task-*",
            "",
        ] {
            assert!(!is_id(bad), "{bad}");
        }
    }

    #[test]
    fn a_working_task_past_its_lease_is_orphaned() {
        let record = TaskRecord {
            id: "task-0123456789abcdef".into(),
            user: "alice".into(),
            tool: "bash".into(),
            state: TaskState::Working,
            status_message: None,
            created_at_ms: 1_000,
            updated_at_ms: 1_000,
            ttl_ms: 60_000,
            poll_interval_ms: 1_000,
            owner: "gw-1".into(),
            lease_until_ms: 11_000,
            jobs: Vec::new(),
            result: None,
            error: None,
            input_requests: None,
            input_responses: None,
        };
        assert!(!record.orphaned(11_000));
        assert!(record.orphaned(11_001));
        let asking = TaskRecord {
            state: TaskState::InputRequired,
            ..record.clone()
        };
        assert!(
            asking.orphaned(11_001),
            "a task waiting for input is run too"
        );
        let done = TaskRecord {
            state: TaskState::Completed,
            ..record.clone()
        };
        assert!(!done.orphaned(99_000));
        assert_eq!(record.expires_at_ms(), 61_000);
    }
}
