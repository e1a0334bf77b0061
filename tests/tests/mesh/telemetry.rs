//! Telemetry across every hop: the real gateway, agent and audit-sink processes export traces to
//! a real OTLP receiver (gRPC and HTTP/protobuf), one tool call being one trace under the
//! client's span, and serve Prometheus metrics that move by exactly what the calls did.

use std::time::Duration;

use futures::future::join_all;
use serde_json::{Value, json};

use execmesh_proto::{Tier, pb};
use execmesh_tests::otlp::{ReceivedSpan, call_traced, tree};
use execmesh_tests::relay::Relay;
use execmesh_tests::scrape::{Scrape, metrics_url};
use execmesh_tests::sshd::Sshd;
use execmesh_tests::{
    AuditSink, Gateway, GatewayProcess, McpClient, Nats, NodeAgent, OtlpReceiver, Policy,
    RunningAgent, RunningAudit, RunningGateway, eventually,
};

/// The client's span that the calls of these scenarios continue.
const CLIENT_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CLIENT_SPAN: &str = "00f067aa0ba902b7";
/// Another client span, sent in `_meta`.
const META_TRACE: &str = "0af7651916cd43dd8448eb211c80319c";
const META_SPAN: &str = "b7ad6b7169203331";

fn traceparent(trace: &str, span: &str) -> String {
    format!("00-{trace}-{span}-01")
}

/// Agents `web-1` … `web-<count>` exporting over gRPC to `otlp`, each labelled `env`; a short
/// batch delay so their spans arrive quickly.
async fn agents(nats: &Nats, otlp: &OtlpReceiver, envs: &[&str]) -> Vec<RunningAgent> {
    let starts = envs.iter().enumerate().map(|(i, env)| {
        NodeAgent::new(nats, &format!("web-{}", i + 1))
            .label("env", env)
            .arg("--warm-shells", "0")
            .arg("--otlp-endpoint", otlp.grpc_url())
            .env("OTEL_BSP_SCHEDULE_DELAY", "200")
            .start()
    });
    join_all(starts).await
}

/// The one span named `name` exported by `service`.
fn one<'a>(spans: &'a [ReceivedSpan], service: &str, name: &str) -> &'a ReceivedSpan {
    let found: Vec<_> = spans
        .iter()
        .filter(|s| s.service == service && s.name == name)
        .collect();
    assert_eq!(
        found.len(),
        1,
        "one {name} of {service} in\n{}",
        tree(spans)
    );
    found[0]
}

/// A gateway process beside `gw` on `nats` that exports its spans over gRPC to `otlp`.
async fn exporting_replica(
    gw: &RunningGateway,
    nats: &Nats,
    otlp: &OtlpReceiver,
) -> GatewayProcess {
    gw.spawn_replica_with(nats, &["--otlp-endpoint", &otlp.grpc_url()])
        .await
}

/// `bash` running `cmd` on `host` at `process` as `token`, continuing the client's span
/// ([`CLIENT_TRACE`], [`CLIENT_SPAN`]) sent in the `traceparent` header: the JSON-RPC answer.
async fn traced_bash(process: &GatewayProcess, token: &str, host: &str, cmd: &str) -> Value {
    let client = traceparent(CLIENT_TRACE, CLIENT_SPAN);
    call_traced(
        process.url(),
        token,
        &[("traceparent", &client)],
        None,
        "bash",
        json!({"host": host, "cmd": cmd}),
    )
    .await
}

/// The gateway's `dispatch` span to `host` (answered ok) and the `exec_request` span of the
/// agent or relay serving it, which continues the dispatch span.
fn dispatched<'a>(spans: &'a [ReceivedSpan], host: &str) -> (&'a ReceivedSpan, &'a ReceivedSpan) {
    let dispatch = one(spans, "execmesh-gateway", "dispatch");
    assert_eq!(
        (dispatch.attr("host"), dispatch.attr("outcome")),
        (host, "ok")
    );
    let request = one(spans, "execmesh-node-agent", "exec_request");
    assert_eq!(
        request.parent_span_id,
        dispatch.span_id,
        "the agent (or relay) continues the host's span:\n{}",
        tree(spans)
    );
    (dispatch, request)
}

/// The result of a JSON-RPC `tools/call` answer.
fn result(answer: &Value) -> &Value {
    assert!(answer["error"].is_null(), "{answer}");
    &answer["result"]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_traced_bash_call_is_one_trace_from_the_client_span_through_agent_and_sink() {
    let otlp = OtlpReceiver::start().await;
    let nats = Nats::start().await;
    // The sink exports over HTTP/protobuf, the rest over gRPC.
    let _sink = AuditSink::new(&nats)
        .arg("--otlp-endpoint", otlp.http_url())
        .arg("--otlp-protocol", "http/protobuf")
        .start()
        .await;
    let _agents = agents(&nats, &otlp, &["dev"]).await;
    let gw = Gateway::new(&nats).start().await;
    let process = exporting_replica(&gw, &nats, &otlp).await;
    let token = gw.mint("alice");

    let answer = traced_bash(&process, &token, "web-1", "echo traced").await;
    let out = result(&answer);
    assert_eq!(out["structuredContent"]["output"], "traced\n", "{answer}");
    assert_eq!(out["structuredContent"]["trace_id"], CLIENT_TRACE);

    let spans = otlp
        .trace_when(CLIENT_TRACE, |spans| {
            [
                "execmesh-gateway",
                "execmesh-node-agent",
                "execmesh-audit-sink",
            ]
            .iter()
            .all(|service| spans.iter().any(|s| s.service == *service))
                && ["exec_request", "output", "exit"]
                    .iter()
                    .all(|name| spans.iter().any(|s| s.name == *name))
        })
        .await;
    let call = one(&spans, "execmesh-gateway", "tool_call");
    assert_eq!(
        call.parent_span_id, CLIENT_SPAN,
        "the client's span is the root"
    );
    assert_eq!(call.attr("tool"), "bash");
    assert_eq!(call.attr("outcome"), "ok");
    assert_eq!(call.attr("trace.carrier"), "header");
    let (dispatch, request) = dispatched(&spans, "web-1");
    assert_eq!(dispatch.parent_span_id, call.span_id);
    let job = one(&spans, "execmesh-node-agent", "job");
    assert_eq!(job.parent_span_id, request.span_id);
    // The job's output publishing and its exit are spans of their own under the job's.
    let output = one(&spans, "execmesh-node-agent", "output");
    assert_eq!(output.parent_span_id, job.span_id, "{}", tree(&spans));
    assert_eq!(
        (
            output.attr("bytes"),
            output.attr("lines"),
            output.attr("complete")
        ),
        ("7", "1", "true"),
        "{output:?}"
    );
    let exit = one(&spans, "execmesh-node-agent", "exit");
    assert_eq!(exit.parent_span_id, job.span_id, "{}", tree(&spans));
    assert_eq!(
        (exit.attr("state"), exit.attr("exit_code")),
        ("JOB_STATE_EXITED", "0"),
        "{exit:?}"
    );
    let stored: Vec<_> = spans
        .iter()
        .filter(|s| s.service == "execmesh-audit-sink")
        .collect();
    assert!(
        stored.iter().all(|s| s.name == "audit_store"),
        "{}",
        tree(&spans)
    );
    assert!(
        stored.iter().any(|s| s.parent_span_id == call.span_id),
        "the sink stores the call's events under its span:\n{}",
        tree(&spans)
    );
    println!("trace {CLIENT_TRACE}:\n{}", tree(&spans));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn meta_trace_context_wins_over_the_header_and_fan_out_and_denials_have_their_spans() {
    let otlp = OtlpReceiver::start().await;
    let nats = Nats::start().await;
    let _agents = agents(&nats, &otlp, &["dev", "dev", "dev", "prod"]).await;
    let gw = Gateway::new(&nats)
        .policy(Policy::new().group("devs", Tier::Standard, &["env=dev"], &["dana"]))
        .start()
        .await;
    let process = exporting_replica(&gw, &nats, &otlp).await;
    let token = gw.mint("dana");

    // `_meta` (SEP-414) and the header both carry a context: `_meta` wins. The fan-out reaches
    // the three dev hosts; web-4 is outside dana's reach.
    let header = traceparent(CLIENT_TRACE, CLIENT_SPAN);
    let answer = call_traced(
        process.url(),
        &token,
        &[("traceparent", &header)],
        Some(json!({"traceparent": traceparent(META_TRACE, META_SPAN)})),
        "bash",
        json!({"hosts": "web-*", "cmd": "true"}),
    )
    .await;
    assert_eq!(
        result(&answer)["structuredContent"]["counts"],
        json!({"ok": 3, "denied": 1}),
        "{answer}"
    );
    let spans = otlp
        .trace_when(META_TRACE, |spans| {
            let count = |name: &str| spans.iter().filter(|s| s.name == name).count();
            count("tool_call") == 1 && count("exec_request") == 3
        })
        .await;
    let call = one(&spans, "execmesh-gateway", "tool_call");
    assert_eq!(call.parent_span_id, META_SPAN);
    assert_eq!(call.attr("trace.carrier"), "meta");
    let mut hosts: Vec<(&str, &str)> = spans
        .iter()
        .filter(|s| s.name == "dispatch")
        .map(|s| {
            assert_eq!(s.parent_span_id, call.span_id);
            (s.attr("host"), s.attr("outcome"))
        })
        .collect();
    hosts.sort_unstable();
    assert_eq!(
        hosts,
        [("web-1", "ok"), ("web-2", "ok"), ("web-3", "ok")],
        "one span per host asked:\n{}",
        tree(&spans)
    );
    assert!(
        otlp.trace(CLIENT_TRACE).is_empty(),
        "the header lost to _meta"
    );

    // A call denied by the policy: the call's span says why.
    let answer = traced_bash(&process, &token, "web-4", "true").await;
    assert_eq!(result(&answer)["isError"], true, "{answer}");
    let spans = otlp
        .trace_when(CLIENT_TRACE, |spans| {
            spans.iter().any(|s| s.name == "tool_call")
        })
        .await;
    let denied = one(&spans, "execmesh-gateway", "tool_call");
    assert_eq!(denied.parent_span_id, CLIENT_SPAN);
    assert_eq!(denied.attr("outcome"), "denied");
    assert!(denied.error, "{denied:?}");
    assert!(
        denied
            .attr("reason")
            .contains("web-4 is outside the hosts you may reach"),
        "{denied:?}"
    );
    assert!(
        !spans.iter().any(|s| s.name == "dispatch"),
        "a denied host is never asked"
    );
}

/// A mesh whose three kinds of service serve `/metrics`: an audit-sink, agent `web-1` and a
/// gateway process (beside the in-process gateway that mints tokens).
pub struct Metered {
    pub nats: Nats,
    pub sink: RunningAudit,
    pub agent: RunningAgent,
    pub gw: RunningGateway,
    pub process: GatewayProcess,
    /// `/metrics` of the gateway process, the agent and the sink.
    pub urls: [String; 3],
}

/// Starts a [`Metered`] mesh.
pub async fn metered() -> Metered {
    let nats = Nats::start().await;
    let sink = AuditSink::new(&nats)
        .arg("--metrics-listen", "127.0.0.1:0")
        .start()
        .await;
    let agent = NodeAgent::new(&nats, "web-1")
        .arg("--warm-shells", "0")
        .arg("--metrics-listen", "127.0.0.1:0")
        .start()
        .await;
    let gw = Gateway::new(&nats).start().await;
    let process = gw.spawn_replica(&nats).await;
    // The gateway serves /metrics on its MCP listener; the others where they logged.
    let urls = [
        process.url().replace("/mcp", "/metrics"),
        metrics_url(&agent.log_path()).await,
        metrics_url(&sink.log_path()).await,
    ];
    Metered {
        nats,
        sink,
        agent,
        gw,
        process,
        urls,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn metrics_of_every_service_move_by_exactly_the_calls_made() {
    let Metered {
        nats: _nats,
        sink,
        agent: _agent,
        gw,
        process,
        urls: [gateway_metrics, agent_metrics, sink_metrics],
    } = metered().await;
    let client = McpClient::new(process.url(), &gw.mint("alice")).await;
    let (gw0, agent0) = (
        Scrape::get(&gateway_metrics).await,
        Scrape::get(&agent_metrics).await,
    );

    for _ in 0..3 {
        let out = client.bash("web-1", "echo counted").await;
        assert_eq!(out.structured()["output"], "counted\n", "{}", out.text());
    }
    let out = client
        .call("bash", json!({"host": "nowhere", "cmd": "true"}))
        .await;
    assert!(out.is_error());
    let refused = execmesh_tests::post_raw(
        process.url(),
        Some("not-a-token"),
        json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}),
    )
    .await;
    assert_eq!(refused.status(), 401);

    let gw1 = Scrape::get(&gateway_metrics).await;
    let bash = "execmesh_tool_calls_total{tool=\"bash\",";
    assert_eq!(
        gw1.delta(&gw0, &format!("{bash}outcome=\"ok\"}}")),
        3.0,
        "{gw1:?}"
    );
    let failed = gw1.sum_starting(bash) - gw0.sum_starting(bash) - 3.0;
    assert_eq!(failed, 1.0, "one failed call: {gw1:?}");
    assert_eq!(
        gw1.delta(
            &gw0,
            "execmesh_tool_call_duration_seconds_count{tool=\"bash\"}"
        ),
        4.0
    );
    assert_eq!(
        gw1.delta(&gw0, "execmesh_host_requests_total{outcome=\"ok\"}"),
        3.0
    );
    let refusals = "execmesh_auth_failures_total{endpoint=\"mcp\",";
    assert_eq!(
        gw1.sum_starting(refusals) - gw0.sum_starting(refusals),
        1.0,
        "{gw1:?}"
    );

    let agent1 = Scrape::get(&agent_metrics).await;
    assert_eq!(
        agent1.delta(&agent0, "execmesh_output_bytes_total{stream=\"stdout\"}"),
        3.0 * "counted\n".len() as f64
    );
    assert_eq!(agent1.value("execmesh_jobs_running"), 0.0);

    // The sink started with an empty store: its counter is every row it holds, no more.
    let stored = eventually(Duration::from_secs(20), || async {
        let rows = sink.query_all(pb::AuditQuery::default()).await.len();
        let scrape = Scrape::get(&sink_metrics).await;
        let counted = scrape.value("execmesh_audit_events_stored_total");
        // 5 events per call (received, dispatched, job started, job finished, completed).
        (rows >= 15 && counted == rows as f64).then_some(scrape)
    })
    .await;
    assert!(stored.value("execmesh_audit_lag_seconds") >= 0.0);
}

/// A relay is the agent's code behind an SSH session: a call to its target continues the same
/// trace, the relay's request span under the gateway's host span.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_call_to_a_relay_target_continues_the_trace_through_the_relay() {
    let otlp = OtlpReceiver::start().await;
    let nats = Nats::start().await;
    let sshd = Sshd::start().await;
    let _relay = Relay::new(&nats, "alice")
        .target("box-1", &sshd)
        .setting(&format!("otlp_endpoint = {:?}", otlp.grpc_url()))
        .start(&nats)
        .await;
    let gw = Gateway::new(&nats).start().await;
    let process = exporting_replica(&gw, &nats, &otlp).await;
    let token = gw.mint("alice");

    let answer = traced_bash(&process, &token, "box-1", "echo relayed").await;
    assert_eq!(
        result(&answer)["structuredContent"]["output"],
        "relayed\n",
        "{answer}"
    );
    let spans = otlp
        .trace_when(CLIENT_TRACE, |spans| {
            ["tool_call", "dispatch", "exec_request", "job", "exit"]
                .iter()
                .all(|name| spans.iter().any(|s| s.name == *name))
        })
        .await;
    let call = one(&spans, "execmesh-gateway", "tool_call");
    assert_eq!(call.parent_span_id, CLIENT_SPAN);
    let (_, request) = dispatched(&spans, "box-1");
    assert_eq!(request.attr("host"), "box-1", "{request:?}");
    let job = one(&spans, "execmesh-node-agent", "job");
    assert_eq!(job.parent_span_id, request.span_id, "{}", tree(&spans));
    let exit = one(&spans, "execmesh-node-agent", "exit");
    assert_eq!(exit.parent_span_id, job.span_id, "{}", tree(&spans));
    println!("trace {CLIENT_TRACE} through a relay:\n{}", tree(&spans));
}
