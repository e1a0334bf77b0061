//! The MCP side of a fan-out shared by `bash` with `hosts`, `grep` and `facts`: a tool's selector resolved to the hosts the caller may reach, and the run reported to the client as progress.

use std::future::Future;

use execmesh_proto::Token;

use super::Call;
use super::progress::{self, McpProgress};
use crate::core::error::ToolError;
use crate::core::fanout::{self, Outcome, Plan, Reach, Report, ResolveError, Targets};

/// The hosts `selector` matches for the caller of `tool`, those outside their reach kept apart
/// (reported `denied`, never contacted). A selector that does not parse is the caller's mistake.
pub async fn targets(call: &Call<'_>, tool: &str, selector: &str) -> Result<Targets, ToolError> {
    targets_within(call, tool, selector, &super::reach::of(call)).await
}

/// [`targets`] within `reach` (the caller's, perhaps narrowed by a runbook).
async fn targets_within(
    call: &Call<'_>,
    tool: &str,
    selector: &str,
    reach: &Reach,
) -> Result<Targets, ToolError> {
    let config = &call.state.config;
    Targets::resolve(
        &call.state.mesh,
        selector,
        &config.groups,
        reach,
        config.fanout_max_hosts,
    )
    .await
    .map_err(|e| match e {
        ResolveError::Mesh(e) => ToolError::from(e),
        other => ToolError::invalid(tool, other.to_string()),
    })
}

/// [`targets`], refusing a selector that matches no host the caller may reach: there is
/// nothing to send a request to.
pub async fn some_targets(
    call: &Call<'_>,
    tool: &str,
    selector: &str,
) -> Result<Targets, ToolError> {
    some_targets_within(call, tool, selector, &super::reach::of(call)).await
}

/// [`some_targets`] within `reach` (the caller's, perhaps narrowed by a runbook).
pub async fn some_targets_within(
    call: &Call<'_>,
    tool: &str,
    selector: &str,
    reach: &Reach,
) -> Result<Targets, ToolError> {
    let targets = targets_within(call, tool, selector, reach).await?;
    if targets.is_empty() {
        return Err(ToolError::invalid(
            tool,
            format!(
                "selector `{selector}` matches no host you may reach; `hosts` shows what a selector matches"
            ),
        ));
    }
    Ok(targets)
}

/// Sends `request` to every target under `plan`, telling the client (when it asked for
/// progress) how many hosts have `verb` ("hosts searched") as they settle.
pub async fn run<T, F, Fut>(
    call: &Call<'_>,
    targets: Targets,
    plan: &Plan,
    verb: &'static str,
    request: F,
) -> Report<T>
where
    F: Fn(Token) -> Fut,
    Fut: Future<Output = Outcome<T>>,
{
    let progress = McpProgress::for_request(call.context, verb);
    let report = fanout::run(
        &call.state.mesh,
        targets,
        plan,
        progress::reporter(&progress),
        request,
    )
    .await;
    if let Some(p) = progress {
        p.finish().await;
    }
    report
}
