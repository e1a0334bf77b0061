//! `execmesh-bench`: measures the mesh end to end on this machine and prints JSON.
//!
//! Scenarios (all by default, or name them): `roundtrip` (sequential `bash true` calls over HTTP,
//! p50/p90/p99, and calls/s with 16 concurrent clients, next to a single-host peer: an MCP shell
//! server that runs the command in-process; CPU time per call of each process from `/proc`),
//! `telemetry` (the same calls through the gateway and agent binaries with trace export off, then
//! on to an OTLP receiver in this process), `paging` (a 2,000,000-line job: first and last page;
//! 200,000 lines paged end to end at the default page size), `memory` (node-agent RSS idle and
//! while streaming 2 M lines), `file-read` (a 100 MB text file paged end to end with the `file`
//! tool), `copy` (a 100 MB file copied host to host, MB/s), `fanout` (`grep` over 100 and 1,000
//! simulated hosts and `bash true` over 100, p50/p99) and `scale` (`--hosts N` simulated hosts,
//! 10,000 unless named, in light mode on one nats-server: start-up, the server's RSS and CPU at
//! rest, heartbeat traffic, `hosts "*"`, `grep` with a digest over 10,000 of them), `audit` (events/s the audit-sink persists
//! with the hash chain, SQLite and PostgreSQL), `chaos` (the fault scenarios of
//! `execmesh_tests::chaos` at full size: NATS, an agent, a gateway replica and the audit-sink
//! killed with SIGKILL mid-work, NATS away while idle; lines lost, audit rows lost or
//! duplicated, orphans and settling times; it fails naming any promise that broke), `relay`
//! (`bash true` through an SSH relay p50/p99 next to a multiplexed `ssh` round trip to the same
//! sshd, and a 200,000-line relay job paged end to end; needs sshd). Simulated
//! hosts are real node-agents run in this process, each with its own NATS connection. Build
//! release binaries first (`chaos` measures correctness more than speed: a debug build does):
//!
//!   cargo build --release --workspace --bins && target/release/execmesh-bench [SCENARIO…]

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};

use execmesh_tests::roundtrip::{Sizes, percentiles};
use execmesh_tests::{Fleet, Gateway, McpClient, Nats, NodeAgent, RunningAgent, RunningGateway};

#[path = "bench/audit.rs"]
mod audit;
#[path = "bench/chaos.rs"]
mod chaos;
#[path = "bench/relay.rs"]
mod relay;
#[path = "bench/scale.rs"]
mod scale;

const SCENARIOS: [&str; 12] = [
    "roundtrip",
    "telemetry",
    "paging",
    "memory",
    "file-read",
    "copy",
    "fanout",
    "scale",
    "audit",
    "chaos",
    "relay",
    "relay-files",
];
/// Calls per measured fan-out size.
const FANOUT_CALLS: usize = 50;
const FILE_BYTES: u64 = 100 * 1000 * 1000;

/// What the command line asked for besides the scenarios.
struct Options {
    /// Simulated hosts of `scale` (`--hosts N`).
    hosts: usize,
    /// Hosts `scale` lists in all (`--registered N`): those past `hosts` registered on paper.
    registered: usize,
}

fn main() -> anyhow::Result<()> {
    let mut options = Options {
        hosts: scale::DEFAULT_HOSTS,
        registered: 0,
    };
    let mut scenarios: Vec<String> = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "-h" | "--help" => {
                println!(
                    "usage: execmesh-bench [--hosts N] [--registered N] [roundtrip] [telemetry] [paging] [memory] [file-read] [copy] [fanout] [scale] [audit] [chaos] [relay] [relay-files]\n\n\
                     Starts a real nats-server, a node-agent and the gateway on loopback and prints the \
                     measured figures as JSON. With no scenario, runs all. `chaos` kills NATS, an agent, \
                     a gateway replica and the audit-sink mid-work and fails if a line, an audit row or \
                     a job's state is lost or a process orphaned. Needs release binaries: \
                     cargo build --release --workspace --bins\n\n\
                     --hosts N   simulated hosts of `scale` (default {}). Past about 28,000 the \
                     machine's ephemeral ports run out (every agent holds one loopback connection \
                     to the same server port): `scale` says so and names the sysctl to raise.\n\n\
                     --registered N   hosts `scale` lists in all: past the simulated ones, hosts \
                     registered as records only (signed fact pack and heartbeat, no agent), to \
                     measure `hosts \"*\"` over more hosts than can connect here.",
                    scale::DEFAULT_HOSTS
                );
                return Ok(());
            }
            "--hosts" => {
                let n = args.next().context("--hosts needs a number of hosts")?;
                options.hosts = n
                    .parse()
                    .ok()
                    .filter(|&n: &usize| n > 0)
                    .with_context(|| format!("--hosts `{n}`: not a positive number"))?;
            }
            "--registered" => {
                let n = args
                    .next()
                    .context("--registered needs a number of hosts")?;
                options.registered = n
                    .parse()
                    .with_context(|| format!("--registered `{n}`: not a number"))?;
            }
            _ if SCENARIOS.contains(&a.as_str()) => scenarios.push(a),
            _ => bail!("unknown scenario `{a}` ({})", SCENARIOS.join(", ")),
        }
    }
    let args = scenarios;
    // Logs (the expected reconnect warnings of `chaos`, say) go to stderr: stdout is the report.
    execmesh_tests::init_tracing_to_stderr();
    let wants = |s: &str| args.is_empty() || args.iter().any(|a| a == s);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let mut report = json!({ "machine": machine() });
        for scenario in SCENARIOS.into_iter().filter(|s| wants(s)) {
            // Figures are keyed like JSON fields: `file-read` reports as `file_read`.
            report[scenario.replace('-', "_")] = run(scenario, &options).await?;
        }
        println!("{}", serde_json::to_string_pretty(&report)?);
        Ok(())
    })
}

/// Runs the scenario `name`, one of [`SCENARIOS`].
async fn run(name: &str, options: &Options) -> anyhow::Result<Value> {
    match name {
        "roundtrip" => roundtrip().await,
        "telemetry" => telemetry().await,
        "paging" => paging().await,
        "memory" => memory().await,
        "file-read" => file_read().await,
        "copy" => copy().await,
        "fanout" => fanout().await,
        "scale" => scale::scale(options.hosts, options.registered).await,
        "audit" => audit::audit().await,
        "chaos" => chaos::chaos().await,
        "relay" => relay::relay().await,
        "relay-files" => relay::relay_files().await,
        other => bail!("unknown scenario {other}"),
    }
}

/// A node-agent for `host` whose file root is `root`.
async fn agent_with_root(nats: &Nats, host: &str, root: &Path) -> RunningAgent {
    NodeAgent::new(nats, host)
        .arg("--file-root", root)
        .start()
        .await
}

/// A client of `gw` as the user `bench`, allowing each call `timeout` (large files and fleets
/// take long).
async fn bench_client(gw: &RunningGateway, timeout: Duration) -> McpClient {
    gw.client("bench").await.with_timeout(timeout)
}

fn machine() -> Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    json!({
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "cpu_model": cpu,
        "kernel": std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim(),
    })
}

/// `bash true` round trips, mesh and peer, at the benchmark's size.
async fn roundtrip() -> anyhow::Result<Value> {
    execmesh_tests::roundtrip::roundtrip(Sizes::BENCH).await
}

/// `roundtrip`'s calls through the gateway and agent binaries, with trace export off and then on
/// (both exporting over gRPC to an OTLP receiver in this process), in one run.
async fn telemetry() -> anyhow::Result<Value> {
    let otlp = execmesh_tests::OtlpReceiver::start().await;
    let nats = Nats::start().await;
    let gw = Gateway::new(&nats).start().await;
    let token = gw.mint("bench");
    let mut report = json!({
        "what": "bash `true` through MCP client -> gateway binary -> NATS -> agent binary, trace export off vs on",
    });
    for (key, export) in [("off", false), ("on", true)] {
        let host = format!("bench-{key}");
        let mut agent = NodeAgent::new(&nats, &host);
        let mut args = Vec::new();
        if export {
            agent = agent.arg("--otlp-endpoint", otlp.grpc_url());
            args = vec!["--otlp-endpoint".to_string(), otlp.grpc_url()];
        }
        let _agent = agent.start().await;
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let replica = gw.spawn_replica_with(&nats, &args).await;
        let mut clients = Vec::new();
        for _ in 0..Sizes::BENCH.clients {
            clients.push(Arc::new(McpClient::new(replica.url(), &token).await));
        }
        let clients = Arc::new(clients);
        let host = Arc::new(host);
        let call = move |i: usize| {
            let client = clients[i / 1000 % Sizes::BENCH.clients].clone();
            let host = host.clone();
            async move { execmesh_tests::roundtrip::mesh_call(&client, &host).await }
        };
        report[key] = execmesh_tests::roundtrip::measure(Sizes::BENCH, call.clone()).await?;
        if export {
            // The call taken apart span by span: calls one at a time, their spans alone (the
            // concurrent phase's have all arrived first).
            settled(&otlp).await;
            let before = otlp.spans().len();
            let one_at_a_time = Sizes {
                warmup: 0,
                sequential: 500,
                clients: 0,
                calls_per_client: 0,
            };
            execmesh_tests::roundtrip::measure(one_at_a_time, call).await?;
            settled(&otlp).await;
            report["span_p50_us_one_call_at_a_time"] = span_durations(&otlp.spans()[before..]);
        }
    }
    report["spans_received"] = json!(otlp.spans().len());
    Ok(report)
}

/// Waits until no span has arrived for longer than the exporters' batch interval (5 s), at most
/// for [`execmesh_tests::otlp::ARRIVAL`].
async fn settled(otlp: &execmesh_tests::OtlpReceiver) {
    let started = Instant::now();
    let mut seen = otlp.spans().len();
    while started.elapsed() < execmesh_tests::otlp::ARRIVAL {
        tokio::time::sleep(Duration::from_secs(6)).await;
        let now = otlp.spans().len();
        if now == seen {
            return;
        }
        seen = now;
    }
}

/// The median duration of each kind of span (`<service> <name>`) with how many there were: the
/// call's time taken apart, span by span (a parent's time includes its children's).
fn span_durations(spans: &[execmesh_tests::otlp::ReceivedSpan]) -> Value {
    let mut by_name: std::collections::BTreeMap<String, Vec<Duration>> = Default::default();
    for span in spans {
        by_name
            .entry(format!("{} {}", span.service, span.name))
            .or_default()
            .push(span.duration);
    }
    by_name
        .into_iter()
        .map(|(name, durations)| {
            let summary = percentiles(durations);
            (name, json!({"count": summary["calls"], "p50_us": summary["p50_us"], "p90_us": summary["p90_us"]}))
        })
        .collect::<serde_json::Map<_, _>>()
        .into()
}

/// Pages a job from its start to its end; returns (lines, per-page durations).
async fn page_through(client: &McpClient, job: &str) -> anyhow::Result<(usize, Vec<Duration>)> {
    let mut cursor: Option<String> = None;
    let mut lines = 0;
    let mut times = Vec::new();
    loop {
        let mut args = json!({"action": "poll", "job": job});
        if let Some(c) = &cursor {
            args["cursor"] = json!(c);
        }
        let started = Instant::now();
        let out = client.try_call("job", args).await.context("poll")?;
        times.push(started.elapsed());
        let s = out.structured();
        lines += s["lines"].as_u64().unwrap_or(0) as usize;
        if s["done"] == true {
            return Ok((lines, times));
        }
        cursor = Some(s["next_cursor"].as_str().context("no cursor")?.to_string());
    }
}

/// Runs `seq 1 200000` to its end, then pages its output through from the start: the pages
/// and how long paging took. `what` names the job when a line is missing.
async fn paged_200k(client: &McpClient, what: &str) -> anyhow::Result<(Vec<Duration>, Duration)> {
    let job = finished_job(client, "seq 1 200000").await?;
    let started = Instant::now();
    let (lines, pages) = page_through(client, &job).await?;
    let elapsed = started.elapsed();
    if lines != 200_000 {
        bail!("200k-line {what} paged {lines} lines");
    }
    Ok((pages, elapsed))
}

async fn finished_job(client: &McpClient, cmd: &str) -> anyhow::Result<String> {
    let out = client
        .try_call("bash", json!({"host": "bench-1", "cmd": cmd, "bg": true}))
        .await?;
    let job = out.structured()["job"]
        .as_str()
        .context("job id")?
        .to_string();
    loop {
        let out = client
            .try_call("job", json!({"action": "wait", "job": job, "timeout": 60}))
            .await?;
        if out.structured()["job"]["state"] != "running" {
            return Ok(job);
        }
    }
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e5).round() / 100.0
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

async fn paging() -> anyhow::Result<Value> {
    let nats = Nats::start().await;
    let _agent = NodeAgent::new(&nats, "bench-1").start().await;
    let gw = Gateway::new(&nats).start().await;
    let client = gw.client("bench").await;

    let big = finished_job(&client, "seq 1 2000000").await?;
    let (lines, times) = page_through(&client, &big).await?;
    if lines != 2_000_000 {
        bail!("2M-line job paged {lines} lines");
    }
    let n = times.len();
    let first10 = median(times[..10].to_vec());
    let last10 = median(times[n - 11..n - 1].to_vec());

    let (pages, elapsed) = paged_200k(&client, "job").await?;
    Ok(json!({
        "job_2m": {
            "lines": 2_000_000,
            "pages": n,
            "first_page_ms": ms(times[0]),
            "last_page_ms": ms(times[n - 1]),
            "median_first_10_pages_ms": ms(first10),
            "median_last_10_pages_ms": ms(last10),
            "all_pages_s": (times.iter().sum::<Duration>().as_secs_f64() * 1000.0).round() / 1000.0,
        },
        "job_200k": { "lines": 200_000, "pages": pages.len(), "end_to_end_s": (elapsed.as_secs_f64() * 1000.0).round() / 1000.0 },
    }))
}

fn rss_kb(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

/// The milliseconds each of `calls` calls of `bash true` on bench-1 took, one after another.
async fn bash_true_ms(client: &McpClient, calls: usize) -> anyhow::Result<Vec<f64>> {
    let mut took = Vec::with_capacity(calls);
    for _ in 0..calls {
        let t = Instant::now();
        client
            .try_call("bash", json!({"host": "bench-1", "cmd": "true"}))
            .await?;
        took.push(ms(t.elapsed()));
    }
    Ok(took)
}

async fn memory() -> anyhow::Result<Value> {
    let nats = Nats::start().await;
    let agent = NodeAgent::new(&nats, "bench-1").start().await;
    let gw = Gateway::new(&nats).start().await;
    let client = gw.client("bench").await;
    // Idle: after start-up and a few heartbeats, and again a minute on (what the idle loops
    // page in again of the code given back after start-up), with its parts: the binary's and
    // libraries' pages (file) and heap and stacks (anonymous).
    let pid = agent.pid();
    let sample = || {
        let at = |field| rss_kb(pid, field);
        json!({"rss": at("VmRSS:"), "file": at("RssFile:"), "anon": at("RssAnon:")})
    };
    tokio::time::sleep(Duration::from_secs(5)).await;
    let idle = sample();
    tokio::time::sleep(Duration::from_secs(60)).await;
    let later = sample();
    // The first calls after the idle minute: the first pages the request path in again (and
    // pays what the first call of a process pays), the next ones find it resident.
    let after_idle = bash_true_ms(&client, 3).await?;
    // Then idle again, for a minute and for less: what a call pays after an idle spell, once the
    // agent has served calls before (the first call of all pays for more than paging).
    let mut after_idle_again = Vec::new();
    for idle_s in [60u64, 20, 5] {
        tokio::time::sleep(Duration::from_secs(idle_s)).await;
        let calls = bash_true_ms(&client, 2).await?;
        after_idle_again
            .push(json!({"idle_s": idle_s, "first_ms": calls[0], "second_ms": calls[1]}));
    }
    finished_job(&client, "seq 1 2000000").await?;
    let peak = rss_kb(agent.pid(), "VmHWM:");
    Ok(json!({
        "agent_idle_rss_kb": idle["rss"],
        "agent_idle_kb": idle,
        "agent_idle_a_minute_later_kb": later,
        "bash_true_ms_first_three_calls_after_idle": after_idle,
        "bash_true_after_idle_again": after_idle_again,
        "agent_peak_rss_kb_streaming_2m_lines": peak,
    }))
}

/// Writes a text file of about `bytes` bytes of numbered lines; returns its line count.
fn write_text_file(path: &std::path::Path, bytes: u64) -> anyhow::Result<u64> {
    use std::io::Write;
    let mut w = std::io::BufWriter::new(std::fs::File::create(path)?);
    let (mut written, mut lines) = (0u64, 0u64);
    while written < bytes {
        let line = format!(
            "{lines:012} the quick brown fox jumps over the lazy dog {}\n",
            lines * 7919
        );
        w.write_all(line.as_bytes())?;
        written += line.len() as u64;
        lines += 1;
    }
    w.flush()?;
    Ok(lines)
}

async fn file_read() -> anyhow::Result<Value> {
    let nats = Nats::start().await;
    let root = tempfile::tempdir()?;
    let _agent = agent_with_root(&nats, "bench-1", root.path()).await;
    let gw = Gateway::new(&nats).start().await;
    let client = gw.client("bench").await;
    let path = root.path().join("big.log");
    let lines = write_text_file(&path, FILE_BYTES)?;
    let mut cursor: Option<String> = None;
    let (mut seen, mut pages, mut times) = (0u64, 0usize, Vec::new());
    let started = Instant::now();
    loop {
        let mut args = json!({"host": "bench-1", "action": "read", "path": path, "max_lines": 10000, "max_bytes": 1048576});
        if let Some(c) = &cursor {
            args["cursor"] = json!(c);
        }
        let t = Instant::now();
        let out = client.try_call("file", args).await?;
        times.push(t.elapsed());
        let s = out.structured();
        seen += s["lines"].as_u64().unwrap_or(0);
        pages += 1;
        if s["eof"] == true {
            break;
        }
        cursor = Some(s["next_cursor"].as_str().context("no cursor")?.to_string());
    }
    let elapsed = started.elapsed();
    if seen != lines {
        bail!("file-read saw {seen} of {lines} lines");
    }
    let n = times.len();
    Ok(json!({
        "bytes": FILE_BYTES, "lines": lines, "pages": pages,
        "page": { "max_lines": 10000, "max_bytes": 1048576 },
        "end_to_end_s": (elapsed.as_secs_f64() * 1000.0).round() / 1000.0,
        "mb_per_s": (FILE_BYTES as f64 / 1e6 / elapsed.as_secs_f64()).round(),
        "median_first_10_pages_ms": ms(median(times[..10.min(n)].to_vec())),
        "median_last_10_pages_ms": ms(median(times[n.saturating_sub(10)..].to_vec())),
    }))
}

async fn copy() -> anyhow::Result<Value> {
    let nats = Nats::start().await;
    let (root_a, root_b) = (tempfile::tempdir()?, tempfile::tempdir()?);
    let _a = agent_with_root(&nats, "bench-1", root_a.path()).await;
    let _b = agent_with_root(&nats, "bench-2", root_b.path()).await;
    let gw = Gateway::new(&nats).start().await;
    let client = bench_client(&gw, Duration::from_secs(600)).await;
    let src = root_a.path().join("data.log");
    write_text_file(&src, FILE_BYTES)?;
    let dst = root_b.path().join("data.log");
    let started = Instant::now();
    let out = client
        .try_call("file", json!({"host": "bench-1", "action": "copy", "path": src, "to_host": "bench-2", "to": dst}))
        .await?;
    let elapsed = started.elapsed();
    if out.is_error() {
        bail!("copy failed: {}", out.text());
    }
    Ok(json!({
        "bytes": FILE_BYTES,
        "seconds": (elapsed.as_secs_f64() * 1000.0).round() / 1000.0,
        "mb_per_s": (FILE_BYTES as f64 / 1e6 / elapsed.as_secs_f64()).round(),
        "sha256_verified": out.structured()["sha256"],
    }))
}

/// The single-host peer of DESIGN §11: an MCP server exposing a `bash` tool that runs the
/// command itself, in-process, served by rmcp over the same HTTP transport.
/// Writes the log file every simulated host serves: 2,000 lines of ordinary traffic with a few
/// rare errors, so `grep` has matches and the digest has groups.
fn fleet_log(dir: &std::path::Path) -> anyhow::Result<std::path::PathBuf> {
    let logs = dir.join("logs");
    std::fs::create_dir_all(&logs)?;
    let mut text = String::new();
    for i in 0..2000u32 {
        let line = match i % 400 {
            7 => format!(
                "2026-11-21T10:{:02}:{:02}Z ERROR upstream 10.0.{}.{} timed out after {}ms",
                i % 60,
                i % 60,
                i % 7,
                i % 250,
                1000 + i
            ),
            123 => format!(
                "2026-11-21T10:{:02}:{:02}Z ERROR disk /dev/sda{} nearly full",
                i % 60,
                i % 60,
                i % 4
            ),
            _ => format!(
                "2026-11-21T10:{:02}:{:02}Z INFO request {i} served in {}ms",
                i % 60,
                i % 60,
                i % 97
            ),
        };
        text.push_str(&line);
        text.push('\n');
    }
    let path = logs.join("app.log");
    std::fs::write(&path, text)?;
    Ok(logs)
}

/// `grep` with a digest over the `hosts` simulated hosts `selector` names, `calls` times:
/// per-call latency.
async fn grep_over(
    client: &McpClient,
    logs: &std::path::Path,
    selector: &str,
    hosts: usize,
    calls: usize,
) -> anyhow::Result<Value> {
    let args = json!({"hosts": selector, "pattern": "ERROR", "paths": [logs], "digest": true});
    for _ in 0..3 {
        client.try_call("grep", args.clone()).await?;
    }
    let mut samples = Vec::with_capacity(calls);
    for _ in 0..calls {
        let started = Instant::now();
        let out = client.try_call("grep", args.clone()).await?;
        samples.push(started.elapsed());
        if out.structured()["counts"]["ok"] != json!(hosts) {
            bail!("grep over {hosts} hosts: {}", out.structured()["summary"]);
        }
    }
    Ok(percentiles(samples))
}

async fn fanout() -> anyhow::Result<Value> {
    let dir = tempfile::tempdir()?;
    let logs = fleet_log(dir.path())?;
    let root = dir.path().to_path_buf();
    let mut report = json!({
        "what": "grep (pattern ERROR, digest) over one 2,000-line log per host, and bash `true`, \
                 on simulated hosts: real node-agents in the benchmark process, one NATS \
                 connection each",
    });
    for hosts in [100usize, 1000] {
        let nats = Nats::start().await;
        let fleet = Fleet::new(&nats, "sim", hosts)
            .configure({
                let root = root.clone();
                move |c| c.file_roots = vec![root.clone()]
            })
            .start()
            .await;
        let gw = Gateway::new(&nats).start().await;
        let client = bench_client(&gw, Duration::from_secs(120)).await;
        let mut entry = json!({
            "hosts": hosts,
            "fleet_startup_s": (fleet.startup.as_secs_f64() * 10.0).round() / 10.0,
            "grep": grep_over(&client, &logs, "*", hosts, FANOUT_CALLS).await?,
        });
        if hosts == 100 {
            let mut samples = Vec::new();
            for _ in 0..FANOUT_CALLS {
                let started = Instant::now();
                let out = client
                    .try_call("bash", json!({"hosts": "*", "cmd": "true"}))
                    .await?;
                samples.push(started.elapsed());
                if out.structured()["counts"]["ok"] != json!(hosts) {
                    bail!("bash over {hosts} hosts: {}", out.structured()["summary"]);
                }
            }
            entry["bash_true"] = percentiles(samples);
        }
        report[format!("hosts_{hosts}")] = entry;
        fleet.stop().await;
    }
    Ok(report)
}
