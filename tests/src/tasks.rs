//! MCP Tasks (`io.modelcontextprotocol/tasks`) from the client's side: a `tools/call` answered
//! with a task, then polled, cancelled or left to expire, with rmcp's client; every completed
//! task's result held to its tool's `outputSchema` like any other result; a task's states
//! followed on a `subscriptions/listen` stream ([`TaskListen`]).

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, CancelTaskParams, ClientCapabilities,
    ElicitationCapability, GetTaskParams, GetTaskResult, InputRequests, InputResponses,
    ServerJsonRpcMessage, TaskPayload, TaskStatus, TaskStatusNotificationParams, UpdateTaskParams,
    UrlElicitationCapability,
};
use rmcp::service::ServiceError;
use serde_json::{Value, json};

use crate::client::{McpClient, ToolOutput};

/// A task the server created for a `tools/call`.
#[derive(Debug, Clone)]
pub struct TaskHandle {
    /// The task id the server gave.
    pub id: String,
    /// The tool called: its `outputSchema` holds the task's result.
    pub tool: String,
    /// The poll interval the server suggested, in ms.
    pub poll_interval_ms: Option<u64>,
    /// The task's time to live, in ms (`None`: unlimited).
    pub ttl_ms: Option<u64>,
}

// === impl McpClient ===

impl McpClient {
    /// Connects with the newest protocol, declaring the Tasks extension and URL-mode
    /// elicitation: a task held for approval asks this client for input inside the task.
    /// Panics if the connection fails.
    pub async fn with_tasks_and_elicitation(url: &str, token: &str) -> McpClient {
        let mut capabilities = ClientCapabilities::builder().enable_tasks().build();
        capabilities.elicitation =
            Some(ElicitationCapability::new().with_url(UrlElicitationCapability::new()));
        Self::connect_declaring(url, Some(token), None, capabilities)
            .await
            .unwrap_or_else(|e| panic!("MCP client (tasks, elicitation) cannot connect: {e}"))
    }

    /// Polls `task` until it asks for input (`input_required`), for at most `within`, and
    /// returns what it asks with its status message. Panics when it ends first.
    pub async fn task_input(
        &self,
        task: &TaskHandle,
        within: Duration,
    ) -> (InputRequests, Option<String>) {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let got = self
                .get_task(task)
                .await
                .unwrap_or_else(|e| panic!("tasks/get {} failed: {e}", task.id));
            if let TaskPayload::InputRequired { input_requests } = &got.task.payload {
                return (input_requests.clone(), got.task.task.status_message.clone());
            }
            assert_eq!(
                got.task.status(),
                TaskStatus::Working,
                "task {} ended before asking for input: {got:?}",
                task.id
            );
            assert!(
                tokio::time::Instant::now() < deadline,
                "task {} asked for no input within {within:?}",
                task.id
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `tasks/update` of `task` with `responses` to what it asked.
    pub async fn answer_task(
        &self,
        task: &TaskHandle,
        responses: InputResponses,
    ) -> Result<(), ServiceError> {
        let params = UpdateTaskParams::new(task.id.clone(), responses);
        self.timed(self.service().update_task(params)).await
    }

    /// Calls tool `name` and returns the answer as it came: a result, or a task when the server
    /// made one (the client must have declared the extension, see [`McpClient::with_tasks`]).
    pub async fn call_once(
        &self,
        name: &str,
        arguments: Value,
    ) -> Result<CallToolResponse, ServiceError> {
        let Value::Object(arguments) = arguments else {
            panic!("tool arguments must be a JSON object, not {arguments}");
        };
        let params = CallToolRequestParams::new(name.to_string()).with_arguments(arguments);
        let response = self.timed(self.service().call_tool_once(params)).await?;
        if let CallToolResponse::Complete(result) = &response {
            self.check_output(name, result).await;
        }
        Ok(response)
    }

    /// Calls tool `name` expecting a task. Panics when the call fails or answers otherwise.
    pub async fn call_task(&self, name: &str, arguments: Value) -> TaskHandle {
        let shown = arguments.to_string();
        match self.call_once(name, arguments).await {
            Ok(CallToolResponse::Task(created)) => {
                assert_eq!(created.task.status, TaskStatus::Working, "{created:?}");
                TaskHandle {
                    id: created.task.task_id,
                    tool: name.to_string(),
                    poll_interval_ms: created.task.poll_interval_ms,
                    ttl_ms: created.task.ttl_ms,
                }
            }
            Ok(other) => panic!("tools/call {name} {shown} answered without a task: {other:?}"),
            Err(e) => panic!("tools/call {name} {shown} failed: {e}"),
        }
    }

    /// `tasks/get` of `task`. A completed task's result is checked against its tool's
    /// `outputSchema`, like every result this client receives.
    pub async fn get_task(&self, task: &TaskHandle) -> Result<GetTaskResult, ServiceError> {
        let params = GetTaskParams::new(task.id.clone());
        let got = self.timed(self.service().get_task(params)).await?;
        if let Some(result) = completed(&got) {
            self.check_output(&task.tool, &result).await;
        }
        Ok(got)
    }

    /// `tasks/cancel` of `task`.
    pub async fn cancel_task(&self, task: &TaskHandle) -> Result<(), ServiceError> {
        let params = CancelTaskParams::new(task.id.clone());
        self.timed(self.service().cancel_task(params)).await
    }

    /// Polls `task` (at its suggested interval) until it ends, for at most `within`, and
    /// returns its result. Panics when it fails, is cancelled or does not end in time.
    pub async fn task_result(&self, task: &TaskHandle, within: Duration) -> ToolOutput {
        let deadline = tokio::time::Instant::now() + within;
        let interval = Duration::from_millis(task.poll_interval_ms.unwrap_or(500).min(1_000));
        loop {
            let got = self
                .get_task(task)
                .await
                .unwrap_or_else(|e| panic!("tasks/get {} failed: {e}", task.id));
            match got.task.status() {
                TaskStatus::Working | TaskStatus::InputRequired => {}
                TaskStatus::Completed => {
                    let result = completed(&got).expect("a completed task carries its result");
                    return ToolOutput { result };
                }
                other => panic!("task {} ended {other:?}: {got:?}", task.id),
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "task {} did not end within {within:?}: {got:?}",
                task.id
            );
            tokio::time::sleep(interval).await;
        }
    }
}

/// The tool result a completed task carries. Panics when it is not a `CallToolResult`.
fn completed(got: &GetTaskResult) -> Option<CallToolResult> {
    match &got.task.payload {
        TaskPayload::Completed { result } => Some(
            serde_json::from_value(Value::Object(result.clone()))
                .unwrap_or_else(|e| panic!("a completed task's result is no CallToolResult: {e}")),
        ),
        _ => None,
    }
}

/// The JSON-RPC error code of a failed request, if the server answered with one.
pub fn error_code(e: &ServiceError) -> Option<i32> {
    match e {
        ServiceError::McpError(error) => Some(error.code.0),
        _ => None,
    }
}

/// A `subscriptions/listen` stream of task notifications, read as a 2026-07-28 client reads
/// it: the server-sent events answering one POST, each a JSON-RPC message of MCP. (rmcp's
/// client has no way to name task ids in a subscription, so this is written out.)
pub struct TaskListen {
    response: reqwest::Response,
    /// Bytes received and not yet read as an event.
    buffer: Vec<u8>,
    /// The subscription's id: the request's.
    pub id: Value,
}

// === impl TaskListen ===

impl TaskListen {
    /// POSTs `subscriptions/listen` for `task_ids` to `url` with `token`, declaring the Tasks
    /// extension when `declare_tasks`. Returns the stream, or the status and JSON body the
    /// server answered with instead.
    pub async fn open(
        url: &str,
        token: &str,
        task_ids: &[&str],
        declare_tasks: bool,
    ) -> Result<TaskListen, (u16, Value)> {
        static NEXT: AtomicU32 = AtomicU32::new(1);
        let id = json!(format!("listen-{}", NEXT.fetch_add(1, Ordering::Relaxed)));
        let mut meta = json!({"io.modelcontextprotocol/protocolVersion": "2026-07-28"});
        if declare_tasks {
            meta["io.modelcontextprotocol/clientCapabilities"] =
                json!({"extensions": {"io.modelcontextprotocol/tasks": {}}});
        }
        let body = json!({
            "jsonrpc": "2.0",
            "id": id,
            "method": "subscriptions/listen",
            "params": {"_meta": meta, "notifications": {"taskIds": task_ids}},
        });
        let response = reqwest::Client::new()
            .post(url)
            .bearer_auth(token)
            .header("accept", "application/json, text/event-stream")
            .header("mcp-protocol-version", "2026-07-28")
            .header("mcp-method", "subscriptions/listen")
            .json(&body)
            .send()
            .await
            .unwrap_or_else(|e| panic!("POST subscriptions/listen to {url} failed: {e}"));
        let is_stream = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/event-stream"));
        if !is_stream {
            let status = response.status().as_u16();
            return Err((status, response.json().await.unwrap_or(Value::Null)));
        }
        Ok(TaskListen {
            response,
            buffer: Vec::new(),
            id,
        })
    }

    /// The next message on the stream, waiting at most `within`; `None` once the stream has
    /// ended. Panics when none comes in time, or one is not a JSON-RPC message of MCP tagged
    /// with this subscription's id.
    pub async fn next(&mut self, within: Duration) -> Option<Value> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some(end) = self.buffer.windows(2).position(|w| w == b"\n\n") {
                let event: Vec<u8> = self.buffer.drain(..end + 2).collect();
                let text = String::from_utf8_lossy(&event);
                // Lines starting with ':' are keep-alive comments.
                let data: Vec<&str> = text
                    .lines()
                    .filter_map(|line| line.strip_prefix("data:"))
                    .map(str::trim_start)
                    .collect();
                if data.is_empty() {
                    continue;
                }
                let message: Value = serde_json::from_str(&data.join("\n"))
                    .unwrap_or_else(|e| panic!("an event that is not JSON ({e}): {text}"));
                self.check(&message);
                return Some(message);
            }
            let chunk = tokio::time::timeout_at(deadline, self.response.chunk())
                .await
                .unwrap_or_else(|_| panic!("no message on the task subscription within {within:?}"))
                .unwrap_or_else(|e| panic!("the task subscription failed: {e}"));
            match chunk {
                Some(bytes) => self.buffer.extend_from_slice(&bytes),
                None => {
                    assert!(
                        self.buffer.iter().all(|b| b.is_ascii_whitespace()),
                        "the stream ended inside an event: {}",
                        String::from_utf8_lossy(&self.buffer)
                    );
                    return None;
                }
            }
        }
    }

    /// The next `notifications/tasks` on the stream, with its task's state, waiting at most
    /// `within`. Panics on anything else.
    pub async fn next_task(&mut self, within: Duration) -> Value {
        let message = self
            .next(within)
            .await
            .expect("the stream ended before a task notification");
        assert_eq!(message["method"], "notifications/tasks", "{message}");
        message["params"].clone()
    }

    /// Holds `message` to what every message on a subscription is: one rmcp reads, tagged with
    /// the subscription's id.
    fn check(&self, message: &Value) {
        if let Err(e) = serde_json::from_value::<ServerJsonRpcMessage>(message.clone()) {
            panic!("not a JSON-RPC message of MCP ({e}): {message}");
        }
        let meta = match message.get("params") {
            Some(params) => &params["_meta"],
            None => &message["result"]["_meta"],
        };
        assert_eq!(
            meta["io.modelcontextprotocol/subscriptionId"], self.id,
            "a message without the subscription's id: {message}"
        );
        if message["method"] == "notifications/tasks" {
            let params = message["params"].clone();
            if let Err(e) = serde_json::from_value::<TaskStatusNotificationParams>(params) {
                panic!("a task notification rmcp cannot read ({e}): {message}");
            }
        }
    }
}
