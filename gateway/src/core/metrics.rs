//! The gateway's Prometheus metrics: tool calls by tool and outcome and their latency, requests to hosts by outcome (each host of a fan-out counts once), and refused tokens by endpoint and reason. Registered in the process's registry (`execmesh_runtime::metrics`) on first use.

use std::sync::LazyLock;
use std::time::Duration;

use execmesh_runtime::metrics::register;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};

/// A tool call's labels: the tool (a tool the gateway serves, or `unknown`) and its outcome
/// (`ok`, `error`, or the error's code).
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct CallLabels {
    tool: String,
    outcome: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ToolLabel {
    tool: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct AuthLabels {
    endpoint: &'static str,
    reason: &'static str,
}

/// Latency buckets: 1 ms doubling to about 65 s.
fn latency() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

struct Metrics {
    calls: Family<CallLabels, Counter>,
    latency: Family<ToolLabel, Histogram, fn() -> Histogram>,
    host_requests: Family<OutcomeLabel, Counter>,
    auth_failures: Family<AuthLabels, Counter>,
}

static METRICS: LazyLock<Metrics> = LazyLock::new(|| {
    let metrics = Metrics {
        calls: Family::default(),
        latency: Family::new_with_constructor(latency),
        host_requests: Family::default(),
        auth_failures: Family::default(),
    };
    register(
        "tool_calls",
        "MCP tool calls by tool and outcome (ok, error, or the refusal's code)",
        metrics.calls.clone(),
    );
    register(
        "tool_call_duration_seconds",
        "Time from a tool call's arrival to its answer",
        metrics.latency.clone(),
    );
    register(
        "host_requests",
        "Requests sent to hosts by outcome; each host of a fan-out counts once",
        metrics.host_requests.clone(),
    );
    register(
        "auth_failures",
        "Refused bearer tokens by endpoint (mcp, admin) and reason",
        metrics.auth_failures.clone(),
    );
    metrics
});

/// Counts one tool call of `tool` (already bounded by the caller to the tools served, or
/// `unknown`) that ended in `outcome` after `took`.
pub fn call(tool: &str, outcome: &'static str, took: Duration) {
    let tool = tool.to_string();
    METRICS
        .calls
        .get_or_create(&CallLabels {
            tool: tool.clone(),
            outcome,
        })
        .inc();
    METRICS
        .latency
        .get_or_create(&ToolLabel { tool })
        .observe(took.as_secs_f64());
}

/// Counts one request to a host that ended in `outcome`.
pub fn host_request(outcome: &'static str) {
    METRICS
        .host_requests
        .get_or_create(&OutcomeLabel { outcome })
        .inc();
}

/// Counts one refused token at `endpoint` for `reason`.
pub fn auth_failure(endpoint: &'static str, reason: &'static str) {
    METRICS
        .auth_failures
        .get_or_create(&AuthLabels { endpoint, reason })
        .inc();
}
