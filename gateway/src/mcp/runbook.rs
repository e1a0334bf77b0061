//! `runbook`: lists the runbooks the caller may run, with their parameter schemas, and runs one
//! on a host or a selector through the same run path as `bash` (statuses, jobs, paging,
//! approvals), its parameters checked by type before anything is sent.

use rmcp::model::{CallToolResult, Tool};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::core::error::ToolError;
use crate::core::fanout::Amount;
use crate::core::runbooks::Runbook;
use crate::core::tier;
use crate::mcp::bash::{BashResult, Launch};
use crate::mcp::{Call, structured};

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RunbookParams {
    /// `list`: the runbooks you may run, each with the JSON schema of its parameters.
    /// `run`: run runbook `name` with `params` on `host` or on the hosts a selector matches.
    #[serde(deserialize_with = "super::strict::name")]
    pub action: RunbookAction,
    /// The runbook (action `run`; with `list`, show only this one).
    #[serde(default)]
    pub name: Option<String>,
    /// The runbook's parameters by name, as the schema `list` gives describes them. A value
    /// that does not fit its type is refused, naming the parameter, before anything is sent.
    #[serde(default)]
    pub params: Option<Map<String, Value>>,
    /// The host id to run on. Give either `host` or `hosts`.
    #[serde(default)]
    pub host: Option<String>,
    /// A selector for a fan-out (as for `bash`); only hosts the runbook allows are run on.
    /// Every matching host gets one status: ok, exit_nonzero, timeout, denied, offline, lost,
    /// not_started or error.
    #[serde(default)]
    pub hosts: Option<String>,
    /// Fan-out: most hosts running at once, a count or a percentage ("25%").
    #[serde(default)]
    pub batch: Option<Amount>,
    /// Fan-out: stop starting new hosts after this many failures, a count or a percentage.
    #[serde(default)]
    pub max_failures: Option<Amount>,
    /// Seconds after which the run is killed; never more than the runbook's own `timeout`.
    #[serde(default)]
    pub timeout: Option<f64>,
    /// One host: return at once with the job id instead of waiting.
    #[serde(default)]
    pub bg: Option<bool>,
    /// One host: seconds to wait for the job before returning its id (default 2, at most 600).
    #[serde(default)]
    pub wait: Option<f64>,
    /// Most output lines returned inline (default 1000).
    #[serde(default)]
    pub max_lines: Option<usize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum RunbookAction {
    /// The runbooks you may run.
    List,
    /// Run one.
    Run,
}

impl RunbookAction {
    pub fn as_str(self) -> &'static str {
        match self {
            RunbookAction::List => "list",
            RunbookAction::Run => "run",
        }
    }
}

/// The result of `runbook`: the list, or one run (as `bash` reports it) with the runbook that ran.
#[derive(Debug, Serialize, JsonSchema)]
pub struct RunbookResult {
    /// `list`: the runbooks you may run, by name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub runbooks: Option<Vec<RunbookView>>,
    /// `run`: the runbook that ran.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub runbook: Option<Ran>,
    /// `run`: one host's run, or a fan-out's per-host statuses, exactly as `bash` gives them.
    #[serde(flatten)]
    pub result: Option<BashResult>,
}

/// One runbook as `list` shows it.
#[derive(Debug, Serialize, JsonSchema)]
pub struct RunbookView {
    pub name: String,
    pub description: String,
    /// `sha256:<hex>` of its definition.
    pub hash: String,
    /// The least tier that may run it: readonly, standard or dangerous.
    pub tier: String,
    /// The selector of hosts it may run on (on top of yours); absent: wherever you reach.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hosts: Option<String>,
    /// Every run waits for a teammate's approval.
    pub approval: bool,
    /// Its time limit per host, in seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout: Option<u64>,
    /// What it runs (argv template), or `script`.
    pub command: String,
    /// The JSON schema of `params` for `run`.
    pub params: Value,
}

/// The runbook a run resolved.
#[derive(Debug, Serialize, JsonSchema)]
pub struct Ran {
    pub name: String,
    pub hash: String,
    /// The command every host ran, its arguments shell-quoted for reading (it ran without a
    /// shell), or the script.
    pub command: String,
}

pub fn definition() -> Tool {
    crate::mcp::tool::<RunbookParams, RunbookResult>(
        "runbook",
        "Run a runbook",
        "Named, reviewed operations with typed parameters that your tier may run even where \
         `bash` is not allowed. `action: \"list\"` shows the runbooks you may run, each with the \
         JSON schema of its `params`. `action: \"run\"` runs runbook `name` with `params` on one \
         `host` or every host a `hosts` selector matches, answering exactly like `bash` (output, \
         job id, per-host statuses). Parameter values are passed as single arguments or \
         environment variables, never as shell text. Confirm with the user before running \
         runbooks that change hosts.",
        crate::mcp::acts(true),
    )
}

pub async fn call(call: &Call<'_>, params: RunbookParams) -> Result<CallToolResult, ToolError> {
    let policy = call.state.policy.current();
    let have = call.identity.tier;
    match params.action {
        RunbookAction::List => {
            let views: Vec<RunbookView> = policy
                .runbooks_for(have)
                .filter(|rb| params.name.as_deref().is_none_or(|n| n == rb.name.as_str()))
                .map(view)
                .collect();
            let mut text = format!("{} runbook(s) you may run:\n", views.len());
            for v in &views {
                text.push_str(&format!(
                    "- {} (tier {}{}{}): {}\n    runs: {}\n    params: {}\n",
                    v.name,
                    v.tier,
                    v.hosts
                        .as_deref()
                        .map(|h| format!(", hosts `{h}`"))
                        .unwrap_or_default(),
                    if v.approval { ", needs approval" } else { "" },
                    v.description,
                    v.command,
                    v.params["properties"]
                ));
            }
            let result = RunbookResult {
                runbooks: Some(views),
                runbook: None,
                result: None,
            };
            structured(&result, vec![text])
        }
        RunbookAction::Run => {
            let Some(name) = params.name.as_deref() else {
                return Err(ToolError::invalid(
                    "runbook",
                    "action `run` needs `name`: `action: \"list\"` shows the runbooks you may run",
                ));
            };
            let Some(rb) = policy.runbook(name) else {
                let known = policy
                    .runbooks_for(have)
                    .map(|rb| rb.name.to_string())
                    .collect();
                return Err(ToolError::invalid(
                    "runbook",
                    crate::core::runbooks::RunbookError::Unknown {
                        name: name.to_string(),
                        known,
                    }
                    .to_string(),
                ));
            };
            tier::check_runbook(name, rb.tier, have)?;
            let resolved = rb
                .resolve(&params.params.clone().unwrap_or_default())
                .map_err(|e| ToolError::invalid("runbook", e.to_string()))?;
            let groups = &call.state.config.groups;
            let reach = match &rb.hosts {
                Some(hosts) => crate::mcp::reach::of(call).narrowed(hosts, groups),
                None => crate::mcp::reach::of(call),
            };
            // The caller may shorten the runbook's limit, never lengthen it.
            let limit = rb.timeout.map(|t| t.as_secs_f64());
            let timeout = match (params.timeout, limit) {
                (Some(asked), Some(limit)) => Some(asked.min(limit)),
                (asked, limit) => asked.or(limit),
            };
            let launch = Launch {
                request: resolved.request(),
                title: Some(rb.name.as_str()),
                summary: format!("runbook {name} `{}`", resolved.display),
                action: Some(rb.name.as_str()),
                reach,
                host: params.host.as_deref(),
                hosts: params.hosts.as_deref(),
                batch: params.batch.as_ref(),
                max_failures: params.max_failures.as_ref(),
                timeout,
                bg: params.bg,
                wait: params.wait,
                max_lines: params.max_lines,
            };
            let (result, mut text) = crate::mcp::bash::launch(call, launch).await?;
            text.insert(
                0,
                format!("runbook {name} ({}): {}", rb.hash, resolved.display),
            );
            let result = RunbookResult {
                runbooks: None,
                runbook: Some(Ran {
                    name: name.to_string(),
                    hash: resolved.hash.clone(),
                    command: resolved.display.clone(),
                }),
                result: Some(result),
            };
            structured(&result, text)
        }
    }
}

fn view(rb: &Runbook) -> RunbookView {
    RunbookView {
        name: rb.name.to_string(),
        description: rb.description.clone(),
        hash: rb.hash.clone(),
        tier: rb.tier.to_string(),
        hosts: rb.hosts.clone(),
        approval: rb.approval,
        timeout: rb.timeout.map(|t| t.as_secs()),
        command: rb.command_text(),
        params: rb.params_schema(),
    }
}
