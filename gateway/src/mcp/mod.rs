//! The MCP tool surface: tool definitions and the per-request handler that dispatches calls.
//!
//! The handler is created per HTTP request (the server is stateless); it reads the caller's
//! verified identity from the request's extensions, opens a span with the trace id, runs the
//! tool, and turns a [`ToolError`] into an `isError` result.

mod args;
mod bash;
mod dispatch;
pub mod envelope;
mod facts;
mod file;
mod fleet;
mod grep;
mod held;
pub mod hosts;
pub(crate) mod job;
pub mod listen;
mod progress;
mod reach;
mod result;
mod runbook;
mod strict;
mod tasks;
mod tool_list;
mod whoami;

use std::sync::Arc;

use rmcp::model::{
    CacheScope, CallToolRequestParams, CallToolResponse, CallToolResult, CancelTaskParams,
    GetTaskParams, GetTaskResult, Implementation, InitializeResult, JsonObject, ListToolsResult,
    PaginatedRequestParams, ServerCapabilities, ServerConfig, Tool, UpdateTaskParams,
};
use rmcp::service::RequestContext;
use rmcp::{ErrorData as McpError, RoleServer, ServerHandler};
use tracing::{Instrument, info, info_span, warn};

use crate::config::Config;
use crate::core::approvals::{self, Approvals};
use crate::core::audit::Audit;
use crate::core::auth::Identity;
use crate::core::dispatch::Dispatcher;
use crate::core::error::ToolError;
use crate::core::mesh::Mesh;
use crate::core::paging::CursorKey;
use crate::core::policy::LivePolicy;
use crate::core::tasks::{TaskJobs, Tasks};
use crate::core::trace::TraceContext;
use args::Params;
pub use result::structured;

/// Calls refused for their arguments or cursor, logged at WARN: at most this many a minute.
static REJECTED_CALLS: std::sync::LazyLock<execmesh_runtime::logging::Throttle> =
    std::sync::LazyLock::new(|| {
        execmesh_runtime::logging::Throttle::new(20, std::time::Duration::from_secs(60))
    });

/// What the tools read and act through: the configuration and the core services, nothing of
/// the other faces (no token keys, no OAuth store).
pub struct McpState {
    pub config: Arc<Config>,
    pub mesh: Mesh,
    /// Users, groups, tiers and reach; reloaded in place.
    pub policy: Arc<LivePolicy>,
    /// Opens the audit trail of every call.
    pub audit: Arc<Audit>,
    /// Calls held for a teammate's approval.
    pub approvals: Approvals,
    /// MCP tasks (`io.modelcontextprotocol/tasks`), stored where every replica reads them.
    pub tasks: Tasks,
    /// Seals the job cursors handed to clients.
    pub cursors: CursorKey,
}

/// What a tool needs to serve one call.
pub struct Call<'a> {
    /// The tool called.
    pub tool: &'a str,
    /// The call's arguments without `approval_id`, as the client sent them: what an approval
    /// is bound to.
    pub args: &'a JsonObject,
    /// The approval the caller presents, if any (see [`crate::core::approvals`]).
    pub approval_id: Option<&'a str>,
    /// Shared by every call; an `Arc` so work that outlives the call (stopping abandoned
    /// fan-out jobs) can keep it.
    pub state: &'a Arc<McpState>,
    pub identity: &'a Identity,
    pub trace: &'a TraceContext,
    /// The MCP request: its peer (for progress notifications), its `_meta` (progress token)
    /// and its cancellation token (cancelled when the client goes away).
    pub context: &'a RequestContext<RoleServer>,
    /// The call's audit trail: `dispatch::send` records each host request in it.
    pub audit: &'a crate::core::audit::CallAudit<'a>,
    /// The jobs of the MCP task this call runs as, if it does (see [`tasks`]).
    pub jobs: Option<&'a TaskJobs>,
}

// === impl Call ===

impl Call<'_> {
    /// The call as the approval gate sees it.
    pub fn gate(&self) -> approvals::Gate<'_> {
        approvals::Gate {
            tool: self.tool,
            args: self.args,
            approval_id: self.approval_id,
            identity: self.identity,
            audit: self.audit,
            mesh: &self.state.mesh,
            policy: &self.state.policy,
            groups: &self.state.config.groups,
            approvals: &self.state.approvals,
            redactor: self.state.audit.redactor(),
        }
    }

    /// Sends this call's requests to hosts.
    pub fn dispatcher(&self) -> Dispatcher<'_> {
        Dispatcher {
            mesh: &self.state.mesh,
            identity: self.identity,
            trace: self.trace,
            audit: self.audit,
            jobs: self.jobs,
        }
    }
}

const INSTRUCTIONS: &str = "execmesh runs commands and supervises jobs on a fleet of servers. \
Start with `hosts` to see which servers exist and are online; it also resolves selectors \
(`web-*`, `role=db and not @canary`, `os_id=debian`). `bash` runs a command on one `host` (short \
commands return their output at once, long ones return a job id: page its output with `job` \
action `poll`, passing `next_cursor` back, `wait` for it, or `kill` it) or on every host a \
`hosts` selector matches, with one status per host. A non-zero exit code is a normal result, not \
an error. `grep` searches files on many hosts at once; `digest: true` shows which lines are \
unusual across the fleet. `facts` describes hosts (OS, memory, disks, services, ports). `file` \
reads (paged), lists, greps, writes and copies files within the directories each host allows. \
`runbook` lists and runs the operator's reviewed operations with typed parameters, also where \
your tier does not allow `bash`.";

/// The names of the tools served: the only tool names metrics are labelled with.
static SERVED: std::sync::LazyLock<Vec<String>> = std::sync::LazyLock::new(|| {
    definitions()
        .into_iter()
        .map(|tool| tool.name.to_string())
        .collect()
});

/// Every tool, in the order clients list them.
pub fn definitions() -> Vec<Tool> {
    let mut tools = vec![
        hosts::definition(),
        bash::definition(),
        job::definition(),
        file::definition(),
        grep::definition(),
        facts::definition(),
        whoami::definition(),
        runbook::definition(),
    ];
    for tool in &mut tools {
        let gated = crate::core::policy::GATED_TOOLS.contains(&tool.name.as_ref());
        if gated {
            with_approval_id(tool);
        }
        // Every outcome's `structuredContent` (held, refused) fits the schema, as strict
        // clients check.
        if let Some(own) = &tool.output_schema {
            tool.output_schema = Some(result::with_outcomes(own, gated));
        }
    }
    tools
}

/// Adds the optional `approval_id` argument to a tool that policy can hold for approval. The
/// handler takes it out before the tool parses its arguments, so it is declared here once.
fn with_approval_id(tool: &mut Tool) {
    let mut schema = (*tool.input_schema).clone();
    if let Some(serde_json::Value::Object(properties)) = schema.get_mut("properties") {
        properties.insert(
            crate::core::approvals::ARG.to_string(),
            serde_json::json!({
                "type": "string",
                "description": "Only when a previous call of this tool answered `approval_required`: \
                    its `approval_id`, once a teammate has approved it. Repeat the arguments of \
                    that call unchanged; the approval is spent by this call."
            }),
        );
    }
    tool.input_schema = Arc::new(schema);
}

/// The MCP server handler for one request.
#[derive(Clone)]
pub struct Handler {
    state: Arc<McpState>,
}

impl Handler {
    pub fn new(state: Arc<McpState>) -> Self {
        Self { state }
    }
}

impl ServerHandler for Handler {
    fn get_info(&self) -> ServerConfig {
        // Tools, and the Tasks extension: long calls may answer with a task any replica serves.
        let capabilities = ServerCapabilities::builder()
            .enable_tools()
            .enable_tasks()
            .build();
        InitializeResult::new(capabilities)
            .with_server_info(
                Implementation::new("execmesh", env!("CARGO_PKG_VERSION")).with_title("execmesh"),
            )
            .with_instructions(INSTRUCTIONS)
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, McpError> {
        let identity = context
            .extensions
            .get::<http::request::Parts>()
            .and_then(|p| p.extensions.get::<Identity>())
            .ok_or_else(|| McpError::invalid_request("request is not authenticated", None))?;
        // The list depends on the caller's tier: private, so no cache shares it between users.
        let tools = tool_list::for_tier(definitions(), identity.tier);
        Ok(ListToolsResult::with_all_items(tools).with_cache_scope(CacheScope::Private))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, McpError> {
        let identity = identity_of(&context)?;
        if tasks::wanted(&context, &request) {
            return tasks::start(&self.state, request, context, identity).await;
        }
        if held::shown_to(&context) {
            return held::call(&self.state, request, &context, &identity).await;
        }
        Ok(run(&self.state, request, &context, &identity, None)
            .await
            .result
            .into())
    }

    async fn get_task(
        &self,
        request: GetTaskParams,
        context: RequestContext<RoleServer>,
    ) -> Result<GetTaskResult, McpError> {
        let identity = identity_of(&context)?;
        tasks::get(&self.state, &request.task_id, &identity).await
    }

    async fn update_task(
        &self,
        request: UpdateTaskParams,
        context: RequestContext<RoleServer>,
    ) -> Result<(), McpError> {
        let identity = identity_of(&context)?;
        tasks::update(
            &self.state,
            &request.task_id,
            &identity,
            request.input_responses,
        )
        .await
    }

    async fn cancel_task(
        &self,
        request: CancelTaskParams,
        context: RequestContext<RoleServer>,
    ) -> Result<(), McpError> {
        let identity = identity_of(&context)?;
        tasks::cancel(&self.state, &request.task_id, &identity).await
    }
}

/// The caller's verified identity, which the bearer check put in the request's extensions.
fn identity_of(context: &RequestContext<RoleServer>) -> Result<Identity, McpError> {
    context
        .extensions
        .get::<http::request::Parts>()
        .and_then(|p| p.extensions.get::<Identity>())
        .cloned()
        .ok_or_else(|| McpError::invalid_request("request is not authenticated", None))
}

/// Runs one `tools/call` of `identity` to its result: audited, traced, logged once, every
/// refusal an `isError` result. `jobs` collects the jobs it starts when it runs as a task.
async fn run(
    state: &Arc<McpState>,
    request: CallToolRequestParams,
    context: &RequestContext<RoleServer>,
    identity: &Identity,
    jobs: Option<&TaskJobs>,
) -> Ran {
    let parts = context.extensions.get::<http::request::Parts>();
    let tool = request.name.to_string();
    let span = info_span!(
        "tool_call",
        tool = %tool,
        user = %identity.user,
        trace_id = tracing::field::Empty,
        host = tracing::field::Empty,
        trace.carrier = tracing::field::Empty,
        outcome = tracing::field::Empty,
        reason = tracing::field::Empty,
        otel.status_code = tracing::field::Empty,
    );
    // `_meta` (SEP-414) wins over the HTTP headers: see `core::trace`.
    let meta = (request.meta.as_ref().map(|m| &m.0.0)).or(Some(&context.meta.0.0));
    let (trace, carrier) = TraceContext::of_call(&span, meta, parts.map(|p| &p.headers));
    span.record("trace_id", trace.trace_id.as_str());
    span.record("trace.carrier", carrier.as_str());
    let mut args = request.arguments.unwrap_or_default();
    let approval_id = args.remove(crate::core::approvals::ARG);
    // Audited: `received` now, `dispatched` per host request, `completed` or `denied` at the
    // end; each event made in the call's span, whose child the audit-sink's storing is.
    let audit =
        span.in_scope(|| (state.audit).call(&tool, identity.user.as_str(), &trace.trace_id, &args));
    let (approval_id, approval_error) = match &approval_id {
        None | Some(serde_json::Value::Null) => (None, None),
        Some(serde_json::Value::String(id)) => (Some(id.as_str()), None),
        Some(_) => (
            None,
            Some(ToolError::invalid(
                &tool,
                "`approval_id` must be the string id an approval-required result gave",
            )),
        ),
    };
    let call_args = args.clone();
    let call = Call {
        tool: &tool,
        args: &call_args,
        approval_id,
        state,
        identity,
        trace: &trace,
        context,
        audit: &audit,
        jobs,
    };
    let started = std::time::Instant::now();
    let result = async {
        if let Some(e) = approval_error {
            return Err(e);
        }
        // Parsed once: the tier check and the tool read the same typed value.
        let params = Params::parse(&tool, args)?;
        crate::core::tier::check(&tool, params.action(), identity.tier)?;
        match params {
            Params::Hosts(p) => hosts::call(&call, p).await,
            Params::Bash(p) => bash::call(&call, p).await,
            Params::Job(p) => job::call(&call, p).await,
            Params::File(p) => file::call(&call, p).await,
            Params::Grep(p) => grep::call(&call, p).await,
            Params::Facts(p) => facts::call(&call, p).await,
            Params::Whoami(p) => whoami::call(&call, p).await,
            Params::Runbook(p) => runbook::call(&call, p).await,
        }
    }
    .instrument(span.clone())
    .await;
    let _enter = span.enter();
    audit.finish(result.as_ref().map(result::answer));
    // One INFO line per call; a call refused for what the client sent is a WARN (rate-limited:
    // a client can repeat it at will).
    let duration_ms = started.elapsed().as_millis() as u64;
    // Labelled by tool only for the tools served: a name a client made up is `unknown`.
    let label = if SERVED.contains(&tool) {
        tool.as_str()
    } else {
        "unknown"
    };
    let outcome = match &result {
        Ok(r) if r.is_error == Some(true) => "error",
        Ok(_) => "ok",
        Err(e) => e.code(),
    };
    crate::core::metrics::call(label, outcome, started.elapsed());
    let hosts = ["host", "hosts"]
        .iter()
        .find_map(|key| call_args.get(*key).and_then(|v| v.as_str()))
        .unwrap_or("-");
    let held = match &result {
        Err(ToolError::ApprovalRequired { details, .. }) => Some((**details).clone()),
        _ => None,
    };
    let result: CallToolResult = match result {
        Ok(result) => {
            let outcome = if result.is_error == Some(true) {
                "error"
            } else {
                "ok"
            };
            span.record("outcome", outcome);
            info!(hosts, outcome, duration_ms, "tool call");
            result
        }
        Err(e) if e.is_clients_fault() => {
            failed_in(&span, &e);
            if let Some(held_back) = REJECTED_CALLS.admit() {
                warn!(hosts, outcome = e.code(), duration_ms, held_back, error = %e, "tool call rejected");
            }
            CallToolResult::from(e)
        }
        Err(e) => {
            failed_in(&span, &e);
            info!(hosts, outcome = e.code(), duration_ms, error = %e, "tool call");
            CallToolResult::from(e)
        }
    };
    Ran { result, held }
}

/// A `tools/call` run to its end.
pub(crate) struct Ran {
    /// The result as a client without more capabilities sees it.
    pub result: CallToolResult,
    /// What the call waits for, when the policy held it for approval.
    pub held: Option<crate::core::approvals::Held>,
}

/// Records on a call's `span` how it ended without a result: the outcome and, when it failed,
/// the reason (a denied call's is what an operator looks for) and an error status.
fn failed_in(span: &tracing::Span, e: &ToolError) {
    span.record("outcome", e.code());
    // A call held for approval has not failed.
    if !matches!(e, ToolError::ApprovalRequired { .. }) {
        span.record("reason", e.to_string());
        span.record("otel.status_code", "ERROR");
    }
}

/// The annotations of a tool that only reads: idempotent; `open_world` when what it reads lies
/// beyond the mesh's own records (the hosts' files).
pub fn reads(open_world: bool) -> rmcp::model::ToolAnnotations {
    rmcp::model::ToolAnnotations::new()
        .read_only(true)
        .idempotent(true)
        .open_world(open_world)
}

/// The annotations of a tool that acts on hosts (runs, writes, kills): destructive and not
/// idempotent; `open_world` when what it runs may reach beyond the mesh.
pub fn acts(open_world: bool) -> rmcp::model::ToolAnnotations {
    rmcp::model::ToolAnnotations::new()
        .read_only(false)
        .destructive(true)
        .idempotent(false)
        .open_world(open_world)
}

/// Builds a tool definition from its parameter and output types.
pub fn tool<P: rmcp::schemars::JsonSchema + 'static, O: rmcp::schemars::JsonSchema + 'static>(
    name: &'static str,
    title: &str,
    description: &'static str,
    annotations: rmcp::model::ToolAnnotations,
) -> Tool {
    Tool::new(
        name,
        description,
        rmcp::handler::server::common::schema_for_type::<P>(),
    )
    .with_title(title)
    .with_raw_output_schema(rmcp::handler::server::common::schema_for_output::<O>())
    .with_annotations(annotations)
}

/// A number of seconds from a tool argument, checked against bounds.
pub fn seconds(
    tool: &str,
    name: &str,
    value: f64,
    max: f64,
) -> Result<std::time::Duration, ToolError> {
    if !value.is_finite() || value < 0.0 || value > max {
        return Err(ToolError::invalid(
            tool,
            format!("`{name}` must be between 0 and {max} seconds"),
        ));
    }
    Ok(std::time::Duration::from_secs_f64(value))
}

/// A time limit from a tool argument: like [`seconds`], but at least a millisecond, since the
/// wire reads a zero limit as "the host's default", which a caller who wrote 0 did not mean.
pub fn limit_seconds(
    tool: &str,
    name: &str,
    value: f64,
    max: f64,
) -> Result<std::time::Duration, ToolError> {
    let limit = seconds(tool, name, value, max)?;
    if limit < std::time::Duration::from_millis(1) {
        return Err(ToolError::invalid(
            tool,
            format!(
                "`{name}` must be more than 0 seconds (at least 0.001); leave it out for the host's default"
            ),
        ));
    }
    Ok(limit)
}
