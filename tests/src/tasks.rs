//! MCP Tasks (`io.modelcontextprotocol/tasks`) from the client's side: a `tools/call` answered
//! with a task, then polled, cancelled or left to expire, with rmcp's client; every completed
//! task's result held to its tool's `outputSchema` like any other result.

use std::time::Duration;

use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, CancelTaskParams, GetTaskParams,
    GetTaskResult, TaskPayload, TaskStatus,
};
use rmcp::service::ServiceError;
use serde_json::Value;

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
