//! An MCP client over Streamable HTTP with a bearer token, as an AI agent would connect to the gateway.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rmcp::ClientHandler;
use rmcp::model::{
    CallToolRequestParams, CallToolResult, ClientCapabilities, ClientConfig, ElicitRequestParams,
    ElicitResult, ElicitationAction, ElicitationCapability, Implementation,
    ProgressNotificationParam, ProtocolVersion, Tool, UrlElicitationCapability,
};
use rmcp::service::{
    ClientInitializeError, NotificationContext, RequestContext, RoleClient, RunningService,
    ServiceError,
};
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::{ClientLifecycleMode, ClientServiceExt, ServiceExt};
use serde_json::{Value, json};
use tokio::sync::OnceCell;

/// How long one request may take before the client gives up (see [`McpClient::with_timeout`]).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// A connected MCP client.
///
/// [`McpClient::new`] speaks the newest protocol (2026-07-28: `server/discover`, no
/// `initialize`, no session); [`McpClient::legacy`] does the `initialize` handshake of an older
/// revision, as clients from 2025 do.
pub struct McpClient {
    /// The rmcp client: the peer plus the task that drives the transport.
    service: RunningService<RoleClient, Recorder>,
    /// Limit for each request.
    timeout: Duration,
    /// The `outputSchema` of every tool the server lists for this client's user, compiled:
    /// fetched with the first result that has `structuredContent` (see [`OutputSchemas`]).
    schemas: OnceCell<OutputSchemas>,
}

/// Every listed tool's declared `outputSchema` as a JSON Schema (2020-12) validator, by tool
/// name. Every `structuredContent` a [`McpClient`] receives is checked against its tool's, as
/// strict clients (the official Python SDK) do, so no result shape can drift from its schema.
struct OutputSchemas(HashMap<String, jsonschema::Validator>);

/// The client side of the connection: announces the client and records the progress
/// notifications the server sends, and the elicitations it asks the user (each accepted, as a
/// user who opened the link would).
#[derive(Debug, Clone)]
pub struct Recorder {
    config: ClientConfig,
    progress: Arc<Mutex<Vec<ProgressNotificationParam>>>,
    elicitations: Arc<Mutex<Vec<ElicitRequestParams>>>,
}

impl ClientHandler for Recorder {
    fn get_info(&self) -> ClientConfig {
        self.config.clone()
    }

    async fn on_progress(
        &self,
        params: ProgressNotificationParam,
        _context: NotificationContext<RoleClient>,
    ) {
        if let Ok(mut seen) = self.progress.lock() {
            seen.push(params);
        }
    }

    async fn create_elicitation(
        &self,
        request: ElicitRequestParams,
        _context: RequestContext<RoleClient>,
    ) -> Result<ElicitResult, rmcp::ErrorData> {
        if let Ok(mut seen) = self.elicitations.lock() {
            seen.push(request);
        }
        Ok(ElicitResult::new(ElicitationAction::Accept))
    }
}

/// The result of one `tools/call`.
#[derive(Debug, Clone)]
pub struct ToolOutput {
    /// The result as the server sent it.
    pub(crate) result: CallToolResult,
}

// === impl McpClient ===

impl McpClient {
    /// Connects with the newest protocol version. Panics if the connection fails.
    pub async fn new(url: &str, token: &str) -> McpClient {
        Self::connect(url, Some(token), None)
            .await
            .unwrap_or_else(|e| panic!("MCP client cannot connect to {url}: {e}"))
    }

    /// Connects with an `initialize` handshake offering `version` ("2025-06-18", …). Panics if the
    /// connection fails.
    pub async fn legacy(url: &str, token: &str, version: &str) -> McpClient {
        Self::connect(url, Some(token), Some(version))
            .await
            .unwrap_or_else(|e| panic!("MCP client ({version}) cannot connect to {url}: {e}"))
    }

    /// Connects to `url`, with a bearer `token` if given, in the protocol `version` (the newest
    /// when `None`). Versions before 2026-07-28 use the `initialize` handshake, later ones
    /// `server/discover`.
    pub async fn connect(
        url: &str,
        token: Option<&str>,
        version: Option<&str>,
    ) -> Result<McpClient, ClientInitializeError> {
        Self::connect_declaring(url, token, version, ClientCapabilities::default()).await
    }

    /// Connects with the newest protocol, declaring the Tasks extension
    /// (`io.modelcontextprotocol/tasks`) on every request, as a client that follows long calls as
    /// tasks does. Panics if the connection fails.
    pub async fn with_tasks(url: &str, token: &str) -> McpClient {
        let capabilities = ClientCapabilities::builder().enable_tasks().build();
        Self::connect_declaring(url, Some(token), None, capabilities)
            .await
            .unwrap_or_else(|e| panic!("MCP client (tasks) cannot connect to {url}: {e}"))
    }

    /// Connects with the newest protocol, declaring URL-mode elicitation, as a client that can
    /// show its user a link does; every elicitation is recorded (see [`Self::elicitations`])
    /// and accepted. Panics if the connection fails.
    pub async fn with_elicitation(url: &str, token: &str) -> McpClient {
        let mut capabilities = ClientCapabilities::default();
        capabilities.elicitation =
            Some(ElicitationCapability::new().with_url(UrlElicitationCapability::new()));
        Self::connect_declaring(url, Some(token), None, capabilities)
            .await
            .unwrap_or_else(|e| panic!("MCP client (elicitation) cannot connect to {url}: {e}"))
    }

    /// The elicitations the server asked this client's user so far, in order.
    pub fn elicitations(&self) -> Vec<ElicitRequestParams> {
        let recorder = self.service.service();
        recorder
            .elicitations
            .lock()
            .map(|seen| seen.clone())
            .unwrap_or_default()
    }

    /// [`Self::connect`], declaring `capabilities` (on every request with the newest protocol,
    /// in `initialize` with an older one).
    pub async fn connect_declaring(
        url: &str,
        token: Option<&str>,
        version: Option<&str>,
        capabilities: ClientCapabilities,
    ) -> Result<McpClient, ClientInitializeError> {
        let mut transport = StreamableHttpClientTransportConfig::with_uri(url);
        if let Some(token) = token {
            // rmcp adds the `Bearer ` prefix.
            transport = transport.auth_header(token);
        }
        let transport = StreamableHttpClientTransport::from_config(transport);
        let version = match version {
            Some(v) => serde_json::from_value::<ProtocolVersion>(Value::String(v.to_string()))
                .expect("a protocol version is a string"),
            None => ProtocolVersion::LATEST,
        };
        let info = ClientConfig::new(
            capabilities,
            Implementation::new("execmesh-tests", env!("CARGO_PKG_VERSION")),
        )
        .with_protocol_version(version.clone());
        let info = Recorder {
            config: info,
            progress: Arc::default(),
            elicitations: Arc::default(),
        };
        let service = if version.has_initialize() {
            info.serve(transport).await?
        } else {
            info.serve_with_lifecycle(
                transport,
                ClientLifecycleMode::Discover {
                    preferred_versions: vec![version],
                },
            )
            .await?
        };
        Ok(McpClient {
            service,
            timeout: REQUEST_TIMEOUT,
            schemas: OnceCell::new(),
        })
    }

    /// Sets the limit for each request (default 30 s).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The protocol version the server agreed to.
    pub fn protocol_version(&self) -> ProtocolVersion {
        self.service
            .peer_info()
            .map(|info| info.protocol_version.clone())
            .expect("a connected client knows its server")
    }

    /// The rmcp client, for what this wrapper does not cover (progress, raw requests).
    pub fn service(&self) -> &RunningService<RoleClient, Recorder> {
        &self.service
    }

    /// Every tool the server lists for this user. Panics on a transport or protocol error.
    pub async fn list_tools(&self) -> Vec<Tool> {
        self.try_list_tools()
            .await
            .unwrap_or_else(|e| panic!("tools/list failed: {e}"))
    }

    /// Every tool the server lists for this user, following pagination.
    pub async fn try_list_tools(&self) -> Result<Vec<Tool>, ServiceError> {
        self.timed(self.service.list_all_tools()).await
    }

    /// The names of the tools the server lists for this user, in its order.
    pub async fn tool_names(&self) -> Vec<String> {
        let tools = self.list_tools().await;
        tools.iter().map(|t| t.name.to_string()).collect()
    }

    /// The values the `action` property of `tool`'s input schema allows, in schema order: what
    /// this user's tier narrows the tool to. Panics when `tool` is not listed.
    pub async fn actions(&self, tool: &str) -> Vec<String> {
        let tools = self.list_tools().await;
        let listed = tools
            .iter()
            .find(|t| t.name == tool)
            .unwrap_or_else(|| panic!("{tool} is not listed"));
        let schema = Value::Object((*listed.input_schema).clone());
        allowed_strings(&schema["properties"]["action"], &schema)
    }

    /// Calls tool `name` with `arguments` (a JSON object). Panics on a transport or protocol
    /// error; a tool-level failure comes back as a [`ToolOutput`] with `is_error()`.
    pub async fn call(&self, name: &str, arguments: Value) -> ToolOutput {
        let shown = arguments.to_string();
        self.try_call(name, arguments)
            .await
            .unwrap_or_else(|e| panic!("tools/call {name} {shown} failed: {e}"))
    }

    /// Runs `cmd` on `host` through the `bash` tool, waiting for it as the tool does.
    pub async fn bash(&self, host: &str, cmd: &str) -> ToolOutput {
        self.call("bash", json!({"host": host, "cmd": cmd})).await
    }

    /// Starts `cmd` on `host` in the background (`bash` with `bg`) and returns its job id.
    /// Panics when the call is refused.
    pub async fn bash_bg(&self, host: &str, cmd: &str) -> String {
        let out = self
            .call("bash", json!({"host": host, "cmd": cmd, "bg": true}))
            .await;
        out.job_id()
    }

    /// Runs `cmd` on `host`, waiting `wait` seconds for it, and returns the structured answer.
    /// Panics, showing the answer, unless the job is still running then.
    pub async fn bash_running(&self, host: &str, cmd: &str, wait: f64) -> Value {
        let out = self
            .call("bash", json!({"host": host, "cmd": cmd, "wait": wait}))
            .await;
        let s = out.structured();
        assert_eq!(s["state"], "running", "{}", out.text());
        s.clone()
    }

    /// Kills `job` (the `job` tool's `kill`) and returns the answer. Panics, showing the
    /// answer, unless the job is reported killed.
    pub async fn kill(&self, job: &str) -> ToolOutput {
        let killed = self.job("kill", job).await;
        assert!(!killed.is_error(), "{}", killed.text());
        assert_eq!(
            killed.structured()["job"]["state"],
            "killed",
            "{}",
            killed.text()
        );
        killed
    }

    /// Calls the `job` tool with `action` (poll, wait, kill) on `job`, with no other argument.
    pub async fn job(&self, action: &str, job: &str) -> ToolOutput {
        self.call("job", json!({"action": action, "job": job}))
            .await
    }

    /// Waits up to `timeout_secs` for `job` (the `job` tool's `wait`) and returns the answer.
    /// Panics, showing the answer, unless the job has exited by then.
    pub async fn wait_exited(&self, job: &str, timeout_secs: u64) -> ToolOutput {
        self.wait_ended(job, timeout_secs, "exited").await
    }

    /// Waits up to `timeout_secs` for `job` (the `job` tool's `wait`) and returns the answer.
    /// Panics, showing the answer, unless the job has ended in `state` (`lost`, …) by then.
    pub async fn wait_ended(&self, job: &str, timeout_secs: u64, state: &str) -> ToolOutput {
        let waited = self
            .call(
                "job",
                json!({"action": "wait", "job": job, "timeout": timeout_secs}),
            )
            .await;
        assert_eq!(
            waited.structured()["job"]["state"],
            state,
            "{}",
            waited.text()
        );
        waited
    }

    /// Calls tool `name` with `arguments` (a JSON object).
    pub async fn try_call(&self, name: &str, arguments: Value) -> Result<ToolOutput, ServiceError> {
        let result = self.call_unchecked(name, arguments).await?;
        self.check_output(name, &result).await;
        Ok(ToolOutput { result })
    }

    /// Calls tool `name` and returns its result unchecked: for a benchmark that times the call
    /// alone and holds the result to its schema with [`McpClient::check_output`] afterwards.
    pub async fn call_unchecked(
        &self,
        name: &str,
        arguments: Value,
    ) -> Result<CallToolResult, ServiceError> {
        let Value::Object(arguments) = arguments else {
            panic!("tool arguments must be a JSON object, not {arguments}");
        };
        let params = CallToolRequestParams::new(name.to_string()).with_arguments(arguments);
        self.timed(self.service.call_tool(params)).await
    }

    /// Fails the test when `result`'s `structuredContent` does not fit the `outputSchema` the
    /// server declared for `tool`, naming the tool, the outcome and what does not fit. A tool
    /// this user is not listed (a refusal by tier) has no schema to hold it to.
    pub async fn check_output(&self, tool: &str, result: &CallToolResult) {
        let Some(structured) = &result.structured_content else {
            return;
        };
        let schemas =
            self.schemas
                .get_or_init(|| async {
                    let tools = self.try_list_tools().await.unwrap_or_else(|e| {
                        panic!("tools/list (for the output schemas) failed: {e}")
                    });
                    OutputSchemas::of(&tools)
                })
                .await;
        if let Err(problems) = schemas.check(tool, structured) {
            let outcome = outcome(result);
            panic!(
                "tool {tool}: the {outcome} result's structuredContent does not fit the tool's \
                 outputSchema: {problems}\nstructuredContent: {structured}"
            );
        }
    }

    /// Calls tool `name` (rmcp's client asks for progress on every request) and returns the
    /// result with the progress notifications received while it ran, in order. Calls of one
    /// client must not overlap for this to be exact.
    pub async fn call_with_progress(
        &self,
        name: &str,
        arguments: Value,
    ) -> (ToolOutput, Vec<ProgressNotificationParam>) {
        let Value::Object(arguments) = arguments else {
            panic!("tool arguments must be a JSON object, not {arguments}");
        };
        // rmcp's client gives every request a progress token of its own (replacing any in
        // `_meta`), so the notifications of this call are those that arrive while it runs.
        if let Ok(mut seen) = self.service.service().progress.lock() {
            seen.clear();
        }
        let params = CallToolRequestParams::new(name.to_string()).with_arguments(arguments);
        let result = self
            .timed(self.service.call_tool(params))
            .await
            .unwrap_or_else(|e| panic!("tools/call {name} with progress failed: {e}"));
        self.check_output(name, &result).await;
        // Notifications are handled on the client's own task, so the last ones may still be on
        // their way when the result is in: wait (boundedly) for the final one, which the
        // gateway always sends (progress == total).
        let recorded = || {
            self.service
                .service()
                .progress
                .lock()
                .map(|seen| seen.clone())
                .unwrap_or_default()
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        let mut seen = recorded();
        while !seen.last().is_some_and(|p| Some(p.progress) == p.total)
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
            seen = recorded();
        }
        (ToolOutput { result }, seen)
    }

    /// Closes the connection.
    pub async fn close(self) {
        let _ = self.service.cancel().await;
    }

    pub(crate) async fn timed<T>(
        &self,
        request: impl Future<Output = Result<T, ServiceError>>,
    ) -> Result<T, ServiceError> {
        match tokio::time::timeout(self.timeout, request).await {
            Ok(result) => result,
            Err(_) => Err(ServiceError::Timeout {
                timeout: self.timeout,
            }),
        }
    }
}

// === impl OutputSchemas ===

impl OutputSchemas {
    /// The validators of `tools`' output schemas. Panics on a schema that is not valid JSON
    /// Schema: the server declared something no client can check against.
    fn of(tools: &[Tool]) -> Self {
        let validators = tools
            .iter()
            .filter_map(|tool| {
                let schema = Value::Object((**tool.output_schema.as_ref()?).clone());
                let validator = jsonschema::draft202012::new(&schema).unwrap_or_else(|e| {
                    panic!(
                        "tool {}: its outputSchema is not JSON Schema: {e}",
                        tool.name
                    )
                });
                Some((tool.name.to_string(), validator))
            })
            .collect();
        Self(validators)
    }

    /// Checks `structured` against `tool`'s schema; every problem, one per line, when it does
    /// not fit.
    fn check(&self, tool: &str, structured: &Value) -> Result<(), String> {
        let Some(validator) = self.0.get(tool) else {
            return Ok(());
        };
        let problems: Vec<String> = validator
            .iter_errors(structured)
            .map(|e| format!("at `{}`: {e}", e.instance_path()))
            .collect();
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("; "))
        }
    }
}

/// What kind of result `result` is, for messages: `ok`, `held` (approval required) or
/// `error <code>`.
fn outcome(result: &CallToolResult) -> String {
    let structured = result.structured_content.as_ref();
    if result.is_error == Some(true) {
        let code = structured.and_then(|s| s["error"]["code"].as_str());
        return format!("error {}", code.unwrap_or("(no code)"));
    }
    match structured {
        Some(s) if s["approval_required"] == json!(true) => "held".to_string(),
        _ => "ok".to_string(),
    }
}

// === impl ToolOutput ===

impl ToolOutput {
    /// All text content blocks, concatenated.
    pub fn text(&self) -> String {
        self.result
            .content
            .iter()
            .filter_map(|block| block.as_text())
            .map(|text| text.text.as_str())
            .collect()
    }

    /// The `structuredContent`. Panics if the result has none.
    pub fn structured(&self) -> &Value {
        self.result.structured_content.as_ref().unwrap_or_else(|| {
            panic!(
                "tool result has no structuredContent; text: {:?}",
                self.text()
            )
        })
    }

    /// The id of the job the result names (`structuredContent.job`). Panics with the result's
    /// text when it names none, as a refusal does.
    pub fn job_id(&self) -> String {
        self.structured()["job"]
            .as_str()
            .unwrap_or_else(|| panic!("a job id: {}", self.text()))
            .to_string()
    }

    /// The approval id of a call held for approval. Panics unless it was held: not an error,
    /// `approval_required` set.
    #[track_caller]
    pub fn approval_id(&self) -> String {
        assert!(
            !self.is_error(),
            "a held call is not an error: {}",
            self.text()
        );
        let s = self.structured();
        assert_eq!(s["approval_required"], json!(true), "{}", self.text());
        s["approval_id"]
            .as_str()
            .expect("an approval id")
            .to_string()
    }

    /// Asserts a refusal (`isError`) whose text has `needle`.
    #[track_caller]
    pub fn assert_refused(&self, needle: &str) {
        assert!(self.is_error(), "expected a refusal, got: {}", self.text());
        assert!(
            self.text().contains(needle),
            "{needle:?} not in: {}",
            self.text()
        );
    }

    /// Asserts a refusal (`isError`) with the structured error code `code` whose text has
    /// `needle`.
    #[track_caller]
    pub fn assert_refused_as(&self, code: &str, needle: &str) {
        assert!(self.is_error(), "expected a refusal, got: {}", self.text());
        assert_eq!(
            self.structured()["error"]["code"],
            json!(code),
            "{}",
            self.text()
        );
        self.assert_refused(needle);
    }

    /// Asserts the result's text has `needle`, showing the text when not.
    #[track_caller]
    pub fn assert_text_has(&self, needle: &str) {
        let text = self.text();
        assert!(text.contains(needle), "{needle:?} not in: {text}");
    }

    /// Asserts `structuredContent[field]` is `expected`, showing the result's text when not.
    #[track_caller]
    pub fn assert_field(&self, field: &str, expected: impl Into<Value>) {
        assert_eq!(self.structured()[field], expected.into(), "{}", self.text());
    }

    /// Whether the server flagged the result as a tool error (`isError`).
    pub fn is_error(&self) -> bool {
        self.result.is_error.unwrap_or(false)
    }

    /// The result as the server sent it.
    pub fn raw(&self) -> &CallToolResult {
        &self.result
    }

    /// The result as the server sent it, by value.
    pub fn into_raw(self) -> CallToolResult {
        self.result
    }
}

/// The arguments `args` of a held call again, naming the approval `id` it waits for: how a
/// client re-sends a call once it is approved.
pub fn with_approval(args: &Value, id: &str) -> Value {
    let mut args = args.clone();
    args["approval_id"] = json!(id);
    args
}

/// POSTs a JSON-RPC `body` to `url` the way an MCP client would (JSON and SSE accepted), with an
/// optional bearer token, and returns the response as it is, for tests of status codes and
/// headers (401 with `WWW-Authenticate`, Origin checks).
pub async fn post_raw(url: &str, token: Option<&str>, body: Value) -> reqwest::Response {
    let mut request = reqwest::Client::new()
        .post(url)
        .header(
            reqwest::header::ACCEPT,
            "application/json, text/event-stream",
        )
        .json(&body)
        .timeout(REQUEST_TIMEOUT);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    request
        .send()
        .await
        .unwrap_or_else(|e| panic!("POST {url} failed: {e}"))
}

/// The status, `Retry-After` and JSON body (`null` if it is not JSON) of a raw response.
pub async fn read_answer(response: reqwest::Response) -> (u16, Option<String>, Value) {
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let body = response.json().await.unwrap_or(Value::Null);
    (status, retry_after, body)
}

/// The reason a JSON-RPC error body from the gateway gives, typed.
pub fn rejection_of(body: &Value) -> Option<execmesh_gateway::mcp::envelope::Rejection> {
    serde_json::from_value(body["error"]["data"]["reason"].clone()).ok()
}

/// Every string an `enum` or `const` at `value` allows, following local `$ref`s into `schema`'s
/// `$defs` and the variants of `oneOf`/`anyOf`, in that order.
fn allowed_strings(value: &Value, schema: &Value) -> Vec<String> {
    let referenced = value["$ref"]
        .as_str()
        .and_then(|r| r.rsplit('/').next())
        .map(|name| allowed_strings(&schema["$defs"][name], schema))
        .unwrap_or_default();
    let listed = value["enum"].as_array().into_iter().flatten();
    let constant = value.get("const").into_iter();
    let strings = listed
        .chain(constant)
        .filter_map(Value::as_str)
        .map(String::from);
    let variants = ["oneOf", "anyOf"]
        .into_iter()
        .flat_map(|key| value[key].as_array().into_iter().flatten())
        .flat_map(|variant| allowed_strings(variant, schema));
    referenced
        .into_iter()
        .chain(strings)
        .chain(variants)
        .collect()
}
