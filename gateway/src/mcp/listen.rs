//! `subscriptions/listen` for task status (the Tasks extension's `notifications/tasks`), served
//! here in front of rmcp, whose subscription filter has no field for task ids.
//!
//! A 2026-07-28 client that declared the extension names the tasks it follows
//! (`notifications.taskIds`); the stream acknowledges those that are its user's (others, unknown
//! and expired ids are left out, as a server leaves out what it does not honour), then sends
//! each task's state as `tasks/get` would show it: at once, and again whenever its status,
//! message or input requests change. A task's changes come from a watch of its record in
//! `mesh_tasks`, so a change made on any replica is sent; a read every few seconds besides
//! settles a task whose replica died (as `tasks/get` would) and notices one that expired.
//! When every task has ended (or is gone) the stream ends with the request's result.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::http::{HeaderMap, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use rmcp::ErrorData as McpError;
use rmcp::model::ErrorCode;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, info_span, warn};

use super::McpState;
use crate::core::auth::Identity;
use crate::core::mesh::{KvChange, MeshError, MeshErrorKind};
use crate::core::tasks::{LEASE, TaskError};

/// The method served here (when it names task ids).
pub const METHOD: &str = "subscriptions/listen";
/// Most task ids one subscription may name.
pub const MAX_TASK_IDS: usize = 100;
/// How often the tasks are read again when nothing changed: a task whose replica died is
/// settled once its lease ran out, so this is half the lease.
const REREAD: Duration = Duration::from_secs(LEASE.as_secs() / 2);
/// JSON-RPC: the client did not declare a capability the request needs.
const MISSING_CAPABILITY: ErrorCode = ErrorCode::MISSING_REQUIRED_CLIENT_CAPABILITY;
/// JSON-RPC implementation-defined server error: no room for another watch on this replica.
const BUSY: ErrorCode = ErrorCode(-32000);
const SUBSCRIPTION_ID: &str = "io.modelcontextprotocol/subscriptionId";
const PROTOCOL_VERSION: &str = "io.modelcontextprotocol/protocolVersion";
const CLIENT_CAPABILITIES: &str = "io.modelcontextprotocol/clientCapabilities";
const TASKS_EXTENSION: &str = "io.modelcontextprotocol/tasks";
const MCP_METHOD: &str = "mcp-method";

/// A `subscriptions/listen` request for task notifications, as its body says it.
#[derive(Debug)]
pub struct Listen {
    /// The request's id: the subscription's id.
    id: Value,
    /// The task ids named, without repeats, in the order given.
    task_ids: Vec<String>,
    /// Whether the request declared the Tasks extension.
    declares_tasks: bool,
}

/// The `subscriptions/listen` in `body` if it is one this module serves: a 2026-07-28 request
/// (its `_meta` names the protocol version; earlier eras have no such method) whose
/// `Mcp-Method` header agrees, naming `taskIds`. Any other is rmcp's to answer or refuse.
pub fn wanted(headers: &HeaderMap, body: &[u8]) -> Option<Listen> {
    let method_header = headers.get(MCP_METHOD).and_then(|v| v.to_str().ok());
    if method_header != Some(METHOD) {
        return None;
    }
    let request: Value = serde_json::from_slice(body).ok()?;
    if request.get("method").and_then(Value::as_str) != Some(METHOD) {
        return None;
    }
    let params = request.get("params")?;
    let meta = params.get("_meta")?;
    meta.get(PROTOCOL_VERSION)?.as_str()?;
    let named = params.get("notifications")?.get("taskIds")?.as_array()?;
    let mut task_ids: Vec<String> = Vec::new();
    for id in named {
        let id = id.as_str()?.to_string();
        if !task_ids.contains(&id) {
            task_ids.push(id);
        }
    }
    let declares_tasks = meta
        .get(CLIENT_CAPABILITIES)
        .and_then(|caps| caps.get("extensions"))
        .and_then(|extensions| extensions.get(TASKS_EXTENSION))
        .is_some();
    Some(Listen {
        id: request.get("id").cloned().unwrap_or(Value::Null),
        task_ids,
        declares_tasks,
    })
}

/// Answers `listen` for `identity`: a JSON-RPC error, or the stream of its tasks' states
/// (server-sent events) until they have all ended, the client goes away or `shutdown`.
pub async fn serve(
    state: Arc<McpState>,
    identity: Identity,
    listen: Listen,
    headers: &HeaderMap,
    shutdown: CancellationToken,
) -> Response {
    let Listen {
        id,
        task_ids,
        declares_tasks,
    } = listen;
    if !declares_tasks {
        let data = json!({"requiredCapabilities": {"extensions": {TASKS_EXTENSION: {}}}});
        let message = format!(
            "task notifications need the {TASKS_EXTENSION} extension: declare it in the \
             request's client capabilities"
        );
        return error(&id, McpError::new(MISSING_CAPABILITY, message, Some(data)));
    }
    if task_ids.len() > MAX_TASK_IDS {
        let message = format!(
            "{} task ids named; one subscription follows at most {MAX_TASK_IDS}",
            task_ids.len()
        );
        return error(&id, McpError::invalid_params(message, None));
    }
    if !accepts_events(headers) {
        let message = "subscriptions/listen answers with a stream: accept text/event-stream";
        let mut response = error(&id, McpError::invalid_request(message, None));
        *response.status_mut() = StatusCode::NOT_ACCEPTABLE;
        return response;
    }
    // The user's own tasks only: anything else is left out of the acknowledgement, so nobody
    // learns which ids exist.
    let mut honoured = Vec::new();
    for task in task_ids {
        match state.tasks.get(&task, identity.user.as_str()).await {
            Ok(_) => honoured.push(task),
            Err(TaskError::NotFound(_)) => debug!(task = %task, "not followed: no such task"),
            Err(e) => return error(&id, super::tasks::protocol_error(e)),
        }
    }
    // Watched before the tasks are first read (in `follow`), so no change falls in between.
    let changes = if honoured.is_empty() {
        None
    } else {
        match state.tasks.watch(&honoured).await {
            Ok(watch) => Some(watch.changes),
            Err(e) if e.kind() == MeshErrorKind::Busy => {
                return error(&id, McpError::new(BUSY, e.to_string(), None));
            }
            Err(e) => return error(&id, super::tasks::protocol_error(e.into())),
        }
    };
    let (events, received) = mpsc::channel(16);
    let span = info_span!("task listen", user = %identity.user, tasks = honoured.len());
    let follower = Follower {
        state,
        identity,
        subscription: id,
        events,
        shown: HashMap::new(),
    };
    tokio::spawn(
        follower
            .follow(honoured, changes, shutdown)
            .instrument(span),
    );
    let stream = futures::stream::unfold(received, |mut received| async move {
        received.recv().await.map(|event| (event, received))
    });
    Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response()
}

/// One subscription's sender.
struct Follower {
    state: Arc<McpState>,
    identity: Identity,
    /// The request's id, which every message on the stream carries.
    subscription: Value,
    events: mpsc::Sender<Result<Event, Infallible>>,
    /// What was last sent of each task, without its `lastUpdatedAt` (a lease renewal changes
    /// only that, and is no news).
    shown: HashMap<String, Value>,
}

/// The client closed the stream.
struct Gone;

type Changes = futures::stream::BoxStream<'static, Result<KvChange, MeshError>>;

// === impl Follower ===

impl Follower {
    /// Acknowledges `tasks`, sends each as it stands and as it changes until every one has
    /// ended, then the request's result.
    async fn follow(
        mut self,
        mut tasks: Vec<String>,
        mut changes: Option<Changes>,
        shutdown: CancellationToken,
    ) {
        let ack = json!({
            "jsonrpc": "2.0",
            "method": "notifications/subscriptions/acknowledged",
            "params": {
                "notifications": {"taskIds": tasks},
                "_meta": {SUBSCRIPTION_ID: self.subscription},
            },
        });
        if self.send(&ack).await.is_err() {
            return;
        }
        info!("following tasks");
        if self.reread(&mut tasks, None).await.is_err() {
            return;
        }
        let mut reread = tokio::time::interval(REREAD);
        reread.reset();
        while !tasks.is_empty() {
            let changed = tokio::select! {
                change = next(&mut changes) => match change {
                    Some(Ok(change)) => Some(change.key),
                    Some(Err(e)) => {
                        // Reads on the timer still find every change, later.
                        warn!(error = %e, "task watch lost; reading the tasks every {REREAD:?}");
                        changes = None;
                        continue;
                    }
                    None => {
                        changes = None;
                        continue;
                    }
                },
                _ = reread.tick() => None,
                () = self.events.closed() => return,
                () = shutdown.cancelled() => break,
            };
            if self.reread(&mut tasks, changed.as_deref()).await.is_err() {
                return;
            }
        }
        let end = json!({
            "jsonrpc": "2.0",
            "id": self.subscription,
            "result": {"resultType": "complete", "_meta": {SUBSCRIPTION_ID: self.subscription}},
        });
        let _ = self.send(&end).await;
        info!("task listen ended");
    }

    /// Reads the tasks (only the one whose key is `changed`, when given) and sends each whose
    /// state is news; drops from `tasks` those that ended or are gone.
    async fn reread(&mut self, tasks: &mut Vec<String>, changed: Option<&str>) -> Result<(), Gone> {
        let due: Vec<String> = tasks
            .iter()
            .filter(|task| changed.is_none_or(|key| key.rsplit('.').next() == Some(task.as_str())))
            .cloned()
            .collect();
        for task in due {
            match super::tasks::current(&self.state, &task, &self.identity).await {
                Ok(current) => {
                    let ended = current.task.status.is_terminal();
                    let Ok(Value::Object(mut params)) = serde_json::to_value(&current) else {
                        warn!(task = %task, "a task that cannot be encoded is not sent");
                        continue;
                    };
                    let mut shown = params.clone();
                    shown.remove("lastUpdatedAt");
                    let shown = Value::Object(shown);
                    if self.shown.get(&task) != Some(&shown) {
                        params.insert("_meta".into(), json!({SUBSCRIPTION_ID: self.subscription}));
                        let notification = json!({
                            "jsonrpc": "2.0",
                            "method": "notifications/tasks",
                            "params": params,
                        });
                        self.send(&notification).await?;
                        self.shown.insert(task.clone(), shown);
                    }
                    if ended {
                        tasks.retain(|t| *t != task);
                    }
                }
                Err(TaskError::NotFound(_)) => {
                    debug!(task = %task, "task gone (expired)");
                    tasks.retain(|t| *t != task);
                }
                // Read again at the next change or tick.
                Err(e) => warn!(task = %task, error = %e, "task not read"),
            }
        }
        Ok(())
    }

    async fn send(&self, message: &Value) -> Result<(), Gone> {
        let event = Event::default().data(message.to_string());
        self.events.send(Ok(event)).await.map_err(|_| Gone)
    }
}

/// The next change, or never once the watch is gone.
async fn next(changes: &mut Option<Changes>) -> Option<Result<KvChange, MeshError>> {
    match changes {
        Some(changes) => changes.next().await,
        None => std::future::pending().await,
    }
}

/// Whether the client takes a stream of server-sent events.
fn accepts_events(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|kind| {
            let essence = kind.split(';').next().unwrap_or("").trim();
            essence.eq_ignore_ascii_case("text/event-stream") || essence == "*/*"
        })
}

/// A JSON-RPC error answer to request `id`.
fn error(id: &Value, error: McpError) -> Response {
    let body = json!({"jsonrpc": "2.0", "id": id, "error": error});
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(method: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(MCP_METHOD, method.parse().expect("a header value"));
        headers
    }

    fn body(meta: Value, notifications: Value) -> Vec<u8> {
        json!({
            "jsonrpc": "2.0", "id": 7, "method": METHOD,
            "params": {"_meta": meta, "notifications": notifications},
        })
        .to_string()
        .into_bytes()
    }

    #[test]
    fn only_a_current_era_listen_naming_tasks_is_served_here() {
        let meta = json!({
            PROTOCOL_VERSION: "2026-07-28",
            CLIENT_CAPABILITIES: {"extensions": {TASKS_EXTENSION: {}}},
        });
        let tasks = json!({"taskIds": ["task-a", "task-b", "task-a"]});
        let listen = wanted(&headers(METHOD), &body(meta.clone(), tasks.clone())).expect("served");
        assert_eq!(listen.id, json!(7));
        assert_eq!(listen.task_ids, ["task-a", "task-b"]);
        assert!(listen.declares_tasks);

        // Without the extension declared: still ours, to refuse the way the extension says.
        let undeclared = json!({PROTOCOL_VERSION: "2026-07-28"});
        let listen = wanted(&headers(METHOD), &body(undeclared, tasks.clone())).expect("served");
        assert!(!listen.declares_tasks);

        // rmcp's: no task ids, an older era, a header that disagrees.
        assert!(
            wanted(
                &headers(METHOD),
                &body(meta.clone(), json!({"toolsListChanged": true}))
            )
            .is_none()
        );
        assert!(wanted(&headers(METHOD), &body(json!({}), tasks.clone())).is_none());
        assert!(wanted(&headers("tools/list"), &body(meta, tasks)).is_none());
    }

    #[test]
    fn a_stream_is_only_sent_to_a_client_that_takes_one() {
        let accept = |value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::ACCEPT, value.parse().expect("a header value"));
            accepts_events(&headers)
        };
        assert!(accept("application/json, text/event-stream"));
        assert!(accept("text/event-stream;q=0.5"));
        assert!(!accept("application/json"));
        assert!(!accepts_events(&HeaderMap::new()));
    }
}
