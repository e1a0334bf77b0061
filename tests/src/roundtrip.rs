//! `bash true` round trips through the mesh and through a single-host peer: latency percentiles, concurrent throughput and the CPU time each process spends per call, read from `/proc`.
//!
//! The benchmark program runs it at full size (`execmesh-bench roundtrip`); the mesh test binary
//! runs it small, as a guard that fails only on a gross regression. The mesh is the gateway
//! binary (so its CPU time is its own), nats-server and the node-agent binary with its warm
//! shells; the peer is an rmcp Streamable HTTP server in this process that spawns `bash -c` for
//! each call, as a local shell server would.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};

use crate::process::children_of;
use crate::{Gateway, McpClient, Nats, NodeAgent};

/// The kernel reports `/proc` times in USER_HZ, 100 per second on every Linux ABI.
const USER_HZ: f64 = 100.0;

/// How many calls a measurement makes.
#[derive(Debug, Clone, Copy)]
pub struct Sizes {
    /// Unmeasured calls first (connections, warm shells, caches).
    pub warmup: usize,
    /// Calls one after the other, for the latency percentiles.
    pub sequential: usize,
    /// Clients calling at once, for the throughput.
    pub clients: usize,
    /// Calls each concurrent client makes.
    pub calls_per_client: usize,
}

impl Sizes {
    /// The benchmark's: 2,000 sequential calls, then 16 clients × 250.
    pub const BENCH: Sizes = Sizes {
        warmup: 100,
        sequential: 2000,
        clients: 16,
        calls_per_client: 250,
    };

    /// Calls measured in all.
    fn measured(&self) -> usize {
        self.sequential + self.clients * self.calls_per_client
    }
}

/// CPU time of a set of processes, in seconds.
#[derive(Debug, Clone, Default)]
struct Cpu(BTreeMap<&'static str, f64>);

/// User + system time of `pid` itself, and of its children it reaped, in seconds.
pub fn proc_cpu(pid: u32) -> (f64, f64) {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return (0.0, 0.0);
    };
    // Fields after the command name (which may hold spaces) in parentheses.
    let rest = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<f64> = rest
        .split_whitespace()
        .map(|f| f.parse().unwrap_or(0.0))
        .collect();
    // utime, stime, cutime, cstime are fields 14..=17 of the line; 12..=15 after the name.
    let at = |i: usize| fields.get(i).copied().unwrap_or(0.0) / USER_HZ;
    (at(11) + at(12), at(13) + at(14))
}

/// The processes whose CPU time a measurement reads.
#[derive(Debug, Clone, Copy)]
struct Processes {
    gateway: u32,
    nats: u32,
    agent: u32,
}

impl Cpu {
    /// The mesh's processes now: the agent's warm shells are its living children plus the
    /// children it reaped (spent shells and fresh ones).
    fn mesh(p: Processes) -> Cpu {
        let (agent, reaped) = proc_cpu(p.agent);
        let living: f64 = children_of(p.agent)
            .into_iter()
            .map(|c| {
                let (own, theirs) = proc_cpu(c);
                own + theirs
            })
            .sum();
        let mut cpu = Cpu::default();
        cpu.0.insert("gateway", proc_cpu(p.gateway).0);
        cpu.0.insert("nats_server", proc_cpu(p.nats).0);
        cpu.0.insert("agent", agent);
        cpu.0.insert("warm_shells", reaped + living);
        cpu.0.insert("client", this_process());
        cpu
    }

    /// This process (the clients, and the peer while it is measured) with what it reaped.
    fn this() -> Cpu {
        let mut cpu = Cpu::default();
        cpu.0.insert("client", this_process());
        cpu.0.insert("reaped", proc_cpu(std::process::id()).1);
        cpu
    }

    /// Microseconds per call of each process between `before` and `self`.
    fn per_call_since(&self, before: &Cpu, calls: usize) -> BTreeMap<&'static str, f64> {
        self.0
            .iter()
            .map(|(name, now)| {
                let spent = now - before.0.get(name).copied().unwrap_or(0.0);
                (*name, (spent / calls as f64 * 1e6).round())
            })
            .collect()
    }
}

/// CPU time of this process itself (all threads), in seconds.
fn this_process() -> f64 {
    proc_cpu(std::process::id()).0
}

/// p50, p90 and p99 of `samples`, in microseconds.
pub fn percentiles(mut samples: Vec<Duration>) -> Value {
    samples.sort();
    let at = |p: f64| {
        let i = ((samples.len() as f64 - 1.0) * p).round() as usize;
        samples.get(i).map_or(0.0, |d| d.as_secs_f64() * 1e6)
    };
    json!({ "calls": samples.len(), "p50_us": at(0.50).round(), "p90_us": at(0.90).round(), "p99_us": at(0.99).round() })
}

/// Sequential latency and concurrent throughput of `call` (given the call's number).
pub async fn measure<F, Fut>(sizes: Sizes, call: F) -> anyhow::Result<Value>
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = anyhow::Result<()>> + Send,
{
    for i in 0..sizes.warmup {
        call(i).await?;
    }
    let mut samples = Vec::with_capacity(sizes.sequential);
    for i in 0..sizes.sequential {
        let started = Instant::now();
        call(i).await?;
        samples.push(started.elapsed());
    }
    let call = Arc::new(call);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..sizes.clients {
        let call = call.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..sizes.calls_per_client {
                call(c * 1000 + i).await?;
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let total = sizes.clients * sizes.calls_per_client;
    let mut v = percentiles(samples);
    v["concurrent"] = json!({
        "clients": sizes.clients,
        "calls": total,
        "calls_per_sec": (total as f64 / started.elapsed().as_secs_f64()).round(),
    });
    Ok(v)
}

/// `bash true` through MCP client → gateway binary → NATS → node-agent → client, then the same
/// against the peer; the figures of both, their ratios and each process's CPU time per call.
pub async fn roundtrip(sizes: Sizes) -> anyhow::Result<Value> {
    let nats = Nats::start().await;
    let agent = NodeAgent::new(&nats, "bench-1").start().await;
    let gw = Gateway::new(&nats).start().await;
    // The gateway binary serves the calls, so its CPU time is its own; the in-process gateway
    // above only holds the keys and policy it shares.
    let replica = gw.spawn_replica(&nats).await;
    let token = gw.mint("bench");
    let mut clients = Vec::new();
    for _ in 0..sizes.clients.max(1) {
        clients.push(Arc::new(McpClient::new(replica.url(), &token).await));
    }
    let processes = Processes {
        gateway: replica.pid(),
        nats: nats.pid().await.context("nats-server runs")?,
        agent: agent.pid(),
    };
    let clients = Arc::new(clients);
    let warmup = Sizes {
        sequential: 0,
        clients: 0,
        ..sizes
    };
    let call = move |i: usize| {
        let client = clients[i / 1000 % clients.len()].clone();
        async move { mesh_call(&client, "bench-1").await }
    };
    measure(warmup, call.clone()).await?;
    let before = Cpu::mesh(processes);
    let mut mesh = measure(Sizes { warmup: 0, ..sizes }, call).await?;
    let mesh_cpu = Cpu::mesh(processes).per_call_since(&before, sizes.measured());

    let peer_url = peer::serve().await?;
    let mut clients = Vec::new();
    for _ in 0..sizes.clients.max(1) {
        clients.push(Arc::new(McpClient::new(&peer_url, "unused").await));
    }
    let clients = Arc::new(clients);
    let call = move |i: usize| {
        let client = clients[i / 1000 % clients.len()].clone();
        async move { peer_call(&client).await }
    };
    measure(warmup, call.clone()).await?;
    let before = Cpu::this();
    let mut peer = measure(Sizes { warmup: 0, ..sizes }, call).await?;
    let peer_cpu = Cpu::this().per_call_since(&before, sizes.measured());

    // This process ran the clients in both runs and the peer server in the second: the peer's
    // own CPU is what the second run spent beyond the clients' share measured in the first.
    let client = mesh_cpu.get("client").copied().unwrap_or(0.0);
    let mesh_total: f64 = mesh_cpu
        .iter()
        .filter(|(name, _)| **name != "client")
        .map(|(_, us)| us)
        .sum();
    let peer_server = peer_cpu.get("client").copied().unwrap_or(0.0) - client;
    let peer_total = peer_server + peer_cpu.get("reaped").copied().unwrap_or(0.0);
    mesh["what"] = json!(
        "bash `true` through MCP client -> gateway binary -> NATS -> agent -> client, over loopback HTTP"
    );
    mesh["cpu_us_per_call"] = json!({
        "gateway": mesh_cpu.get("gateway"),
        "nats_server": mesh_cpu.get("nats_server"),
        "agent": mesh_cpu.get("agent"),
        "warm_shells": mesh_cpu.get("warm_shells"),
        "total": mesh_total,
        "client": client,
    });
    peer["what"] = json!("rmcp Streamable HTTP server that spawns `bash -c` itself");
    peer["cpu_us_per_call"] = json!({
        "server": peer_server,
        "bash": peer_cpu.get("reaped"),
        "total": peer_total,
        "how": "this process's CPU during the peer run less the clients' share measured in the mesh run, plus the reaped bash processes",
    });
    let ratio = |a: &Value, b: &Value| {
        (a.as_f64().unwrap_or(0.0) / b.as_f64().unwrap_or(1.0) * 100.0).round() / 100.0
    };
    let floors = floors(
        &nats,
        &McpClient::new(&peer_url, "unused").await,
        sizes.sequential,
    )
    .await?;
    Ok(json!({
        "floors": floors,
        "p50_ratio_mesh_over_peer": ratio(&mesh["p50_us"], &peer["p50_us"]),
        "concurrent_throughput_mesh_over_peer": ratio(&mesh["concurrent"]["calls_per_sec"], &peer["concurrent"]["calls_per_sec"]),
        "cpu_per_call_mesh_over_peer": ((mesh_total / peer_total.max(1.0)) * 100.0).round() / 100.0,
        "mesh": mesh,
        "peer": peer,
    }))
}

/// What a call pays on this machine for each hop, measured alone and one call at a time (p50),
/// to compare the mesh's and the peer's figures against: the MCP/HTTP hop both pay (the peer's
/// `noop` tool, which runs nothing), a NATS request and its reply (a responder in this process,
/// on a connection of its own), and a fresh `bash -c true` started and reaped (what the peer
/// adds to the hop; a warm shell starts ahead of time, but its exec costs the same CPU).
async fn floors(nats: &Nats, peer: &McpClient, calls: usize) -> anyhow::Result<Value> {
    use futures::StreamExt as _;

    let mut http = Vec::with_capacity(calls);
    for _ in 0..calls {
        let started = Instant::now();
        peer.try_call("noop", json!({})).await?;
        http.push(started.elapsed());
    }

    let responder = nats.client().await;
    let requester = nats.client().await;
    let subject = "bench.floor";
    let mut requests = responder.subscribe(subject).await?;
    // The subscription is at the server once the responder's own flush returns: the first
    // request cannot then find no responder.
    responder.flush().await?;
    let echo = tokio::spawn(async move {
        while let Some(request) = requests.next().await {
            if let Some(reply) = request.reply {
                let _ = responder.publish(reply, request.payload).await;
            }
        }
    });
    let mut request = Vec::with_capacity(calls);
    for i in 0..calls + 100 {
        let started = Instant::now();
        requester.request(subject, "ping".into()).await?;
        if i >= 100 {
            request.push(started.elapsed());
        }
    }
    echo.abort();

    let mut bash = Vec::with_capacity(calls);
    for _ in 0..calls {
        let started = Instant::now();
        let status = tokio::process::Command::new("bash")
            .arg("-c")
            .arg("true")
            .status()
            .await?;
        anyhow::ensure!(status.success(), "bash -c true failed: {status}");
        bash.push(started.elapsed());
    }
    Ok(json!({
        "mcp_http_hop_p50_us": percentiles(http)["p50_us"],
        "nats_request_reply_p50_us": percentiles(request)["p50_us"],
        "bash_c_true_spawned_p50_us": percentiles(bash)["p50_us"],
    }))
}

/// One `bash true` through the mesh to `host`, checked.
pub async fn mesh_call(client: &McpClient, host: &str) -> anyhow::Result<()> {
    let out = client
        .try_call("bash", json!({"host": host, "cmd": "true"}))
        .await
        .context("bash call")?;
    if out.structured()["exit_code"] != 0 {
        bail!("unexpected result: {}", out.text());
    }
    Ok(())
}

/// One `bash true` through the peer, checked.
async fn peer_call(client: &McpClient) -> anyhow::Result<()> {
    let out = client.try_call("bash", json!({"cmd": "true"})).await?;
    anyhow::ensure!(out.structured()["exit_code"] == 0, "peer call failed");
    Ok(())
}

/// The median latency of `bash true` through the mesh (an in-process gateway) and through the
/// peer over `calls` calls each, after `warmup` unmeasured ones: (mesh, peer). The calls
/// alternate, so both see the same load when other work shares the machine (the test suite
/// runs its scenarios side by side).
pub async fn interleaved_p50(warmup: usize, calls: usize) -> anyhow::Result<(Duration, Duration)> {
    let nats = Nats::start().await;
    let _agent = NodeAgent::new(&nats, "guard-1").start().await;
    let gw = Gateway::new(&nats).start().await;
    let mesh = gw.client("bench").await;
    let peer = McpClient::new(&peer::serve().await?, "unused").await;
    let (mut through_mesh, mut through_peer) = (Vec::new(), Vec::new());
    for i in 0..warmup + calls {
        let started = Instant::now();
        mesh_call(&mesh, "guard-1").await?;
        let mesh_took = started.elapsed();
        let started = Instant::now();
        peer_call(&peer).await?;
        if i >= warmup {
            through_mesh.push(mesh_took);
            through_peer.push(started.elapsed());
        }
    }
    let median = |mut v: Vec<Duration>| {
        v.sort();
        v.get(v.len() / 2).copied().unwrap_or_default()
    };
    Ok((median(through_mesh), median(through_peer)))
}

/// The single-host peer: an MCP shell server that runs the command itself.
pub mod peer {
    use std::sync::Arc;

    use rmcp::model::{
        CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, InitializeResult,
        ListToolsResult, PaginatedRequestParams, ServerCapabilities, ServerConfig, Tool,
    };
    use rmcp::service::RequestContext;
    use rmcp::transport::streamable_http_server::session::never::NeverSessionManager;
    use rmcp::transport::streamable_http_server::{
        StreamableHttpServerConfig, StreamableHttpService,
    };
    use rmcp::{ErrorData, RoleServer, ServerHandler};
    use serde_json::{Value, json};

    #[derive(Clone)]
    struct Shell;

    impl ServerHandler for Shell {
        fn get_info(&self) -> ServerConfig {
            InitializeResult::new(ServerCapabilities::builder().enable_tools().build())
        }

        async fn list_tools(
            &self,
            _: Option<PaginatedRequestParams>,
            _: RequestContext<RoleServer>,
        ) -> Result<ListToolsResult, ErrorData> {
            let schema = json!({"type": "object", "properties": {"cmd": {"type": "string"}}});
            let Value::Object(schema) = schema else {
                unreachable!()
            };
            let schema = Arc::new(schema);
            Ok(ListToolsResult::with_all_items(vec![
                Tool::new("bash", "run a command", schema.clone()),
                Tool::new("noop", "answer at once (the MCP/HTTP hop alone)", schema),
            ]))
        }

        async fn call_tool(
            &self,
            request: CallToolRequestParams,
            _: RequestContext<RoleServer>,
        ) -> Result<CallToolResponse, ErrorData> {
            if request.name == "noop" {
                let mut result = CallToolResult::success(Vec::new());
                result.structured_content = Some(json!({"exit_code": 0}));
                return Ok(result.into());
            }
            let cmd = request
                .arguments
                .and_then(|a| a.get("cmd").and_then(|c| c.as_str()).map(String::from))
                .unwrap_or_default();
            let out = tokio::process::Command::new("bash")
                .arg("-c")
                .arg(&cmd)
                .output()
                .await
                .map_err(|e| ErrorData::internal_error(e.to_string(), None))?;
            let mut result = CallToolResult::success(vec![ContentBlock::text(
                String::from_utf8_lossy(&out.stdout),
            )]);
            result.structured_content = Some(json!({"exit_code": out.status.code()}));
            Ok(result.into())
        }
    }

    /// Serves the peer on a free loopback port; its MCP URL.
    pub async fn serve() -> anyhow::Result<String> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let service = StreamableHttpService::new(
            || Ok(Shell),
            Arc::new(NeverSessionManager::default()),
            StreamableHttpServerConfig::default()
                .with_legacy_session_mode(false)
                .with_json_response(true),
        );
        let app = axum::Router::new().nest_service("/mcp", service);
        tokio::spawn(async move { axum::serve(listener, app).await });
        Ok(format!("http://{addr}/mcp"))
    }
}
