//! `scale`: a fleet of simulated hosts (10,000 unless `--hosts` says) on one nats-server, and
//! what it costs: start-up, the server's memory and CPU at rest, heartbeat traffic, `hosts "*"`
//! over the whole fleet and `grep` with a digest over 10,000 of it, through the gateway in this
//! process and again through the gateway binary, whose CPU time per call is the gateway's alone.
//!
//! The agents are [`Fleet::light`]: real node-agents in this process, each with its own NATS
//! connection, heartbeat, facts and request handling, that skip the start-up checks a real
//! agent makes once (the gateway has made the buckets). Every agent holds one loopback
//! connection to the same server port, so past the machine's ephemeral port range the fleet
//! cannot connect at all: that, and the open-file limits, are checked first and named.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};

use execmesh_tests::identities::register_present_hosts;
use execmesh_tests::roundtrip::{percentiles, proc_cpu};
use execmesh_tests::{Fleet, Gateway, McpClient, Nats, eventually};

use super::{bench_client, fleet_log, grep_over, rss_kb};

/// Hosts when `--hosts` does not say.
pub const DEFAULT_HOSTS: usize = 10_000;
/// Hosts the `grep` measurement searches (at most the fleet).
const GREP_HOSTS: usize = 10_000;
/// Heartbeat interval of the simulated agents.
const HEARTBEAT: Duration = Duration::from_secs(30);
/// How long the fleet is watched at rest: one heartbeat interval, so every agent beats once.
const REST: Duration = HEARTBEAT;
/// Agents starting at once.
const START_CONCURRENCY: usize = 256;
/// Calls per measured figure.
const HOSTS_CALLS: usize = 10;
const GREP_CALLS: usize = 10;

/// `registered`: hosts listed in all, when more than the fleet: the rest are registered on
/// paper (see [`register_on_paper`]).
pub async fn scale(hosts: usize, registered: usize) -> anyhow::Result<Value> {
    // One socket per agent here and one per connection in the nats-server (which inherits the
    // limit), plus room for files, listeners and the gateway.
    raise_fd_limit(hosts as u64 + 4096)?;
    check_port_range(hosts)?;
    let nats = Nats::builder().monitor().start().await;
    let monitor = nats
        .monitor_url()
        .context("the server's monitoring endpoint")?;
    let nats_pid = nats.pid().await.context("nats-server runs")?;
    let dir = tempfile::tempdir()?;
    let logs = fleet_log(dir.path())?;
    // Every host gets `shard=<n>`; one shard is the `grep` measurement's 10,000 hosts.
    let shards = hosts.div_ceil(GREP_HOSTS);
    let fleet = Fleet::new(&nats, "sim", hosts)
        .light()
        .heartbeat(HEARTBEAT)
        .start_concurrency(START_CONCURRENCY)
        .configure({
            let root = dir.path().to_path_buf();
            move |c| {
                c.file_roots = vec![root.clone()];
                let n: usize = c
                    .host_id
                    .as_str()
                    .rsplit('-')
                    .next()
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(0);
                c.labels.insert("shard".into(), (n % shards).to_string());
            }
        });
    // The gateway after the fleet's identities are written (it reads them at start) and before
    // the agents: it creates the buckets the light agents only open.
    let gw = Gateway::new(&nats).start().await;
    let fleet = fleet.start().await;
    eprintln!(
        "scale: {hosts} hosts up in {:.1} s; watching them at rest for {} s",
        fleet.startup.as_secs_f64(),
        REST.as_secs()
    );

    // At rest: nothing but heartbeats for one interval.
    let varz_before = varz(&monitor).await?;
    let cpu_before = proc_cpu(nats_pid).0;
    let started = Instant::now();
    tokio::time::sleep(REST).await;
    let rest_s = started.elapsed().as_secs_f64();
    let cpu_at_rest = (proc_cpu(nats_pid).0 - cpu_before) / rest_s;
    let varz_after = varz(&monitor).await?;
    let delta = |field: &str| {
        varz_after[field].as_f64().unwrap_or(0.0) - varz_before[field].as_f64().unwrap_or(0.0)
    };
    let nats_rss_mb = rss_kb(nats_pid, "VmRSS:") as f64 / 1024.0;
    let bench_rss_mb = rss_kb(std::process::id(), "VmRSS:") as f64 / 1024.0;

    let paper = registered.saturating_sub(hosts);
    let paper_took = register_on_paper(&nats, paper).await?;
    let listed = hosts + paper;
    let facts_bucket_mb = stream_bytes(&nats, "KV_mesh_facts").await? as f64 / 1e6;

    let client = bench_client(&gw, Duration::from_secs(120)).await;
    // Timed: the call as a client makes it (the answer received and parsed): the first page,
    // which has the counts of the whole fleet, and the whole listing walked page by page. The
    // harness's check of each answer against the tool's output schema runs after each timing.
    let (mut first_pages, mut walks, mut checks) = (Vec::new(), Vec::new(), Vec::new());
    let (mut online, mut pages) = (0, 0);
    let mut answer_kb = 0.0;
    for _ in 0..HOSTS_CALLS {
        let mut cursor: Option<String> = None;
        let (started, mut taken) = (Instant::now(), Duration::ZERO);
        let mut walked = 0;
        pages = 0;
        loop {
            let mut args = json!({"selector": "*"});
            if let Some(cursor) = cursor.take() {
                args["cursor"] = json!(cursor);
            }
            let result = client.call_unchecked("hosts", args).await?;
            if pages == 0 {
                first_pages.push(started.elapsed());
            }
            let checking = Instant::now();
            client.check_output("hosts", &result).await;
            checks.push(checking.elapsed());
            taken += checking.elapsed();
            let structured = result.structured_content.unwrap_or_default();
            if pages == 0 {
                online = structured["online"].as_u64().unwrap_or(0);
                if online != listed as u64 {
                    bail!("hosts \"*\" saw {online} of {listed} online");
                }
                answer_kb = serde_json::to_vec(&structured)?.len() as f64 / 1024.0;
            }
            pages += 1;
            walked += structured["hosts"].as_array().map_or(0, Vec::len);
            match structured["next_cursor"].as_str() {
                Some(next) => cursor = Some(next.to_owned()),
                None => break,
            }
        }
        walks.push(started.elapsed() - taken);
        if walked != listed {
            bail!("the pages of hosts \"*\" listed {walked} of {listed} hosts");
        }
    }
    let grep_hosts = hosts.div_ceil(shards);
    let grep = grep_over(&client, &logs, "shard=0", grep_hosts, GREP_CALLS).await?;
    // The same calls through the gateway binary, a replica of its own: its CPU time is the
    // gateway's alone (the in-process gateway shares its process with the simulated fleet).
    let replica = gw.spawn_replica(&nats).await;
    let replica_client = McpClient::new(replica.url(), &gw.mint("bench"))
        .await
        .with_timeout(Duration::from_secs(120));
    // Its CPU is counted from when its host directory is loaded: the load (every record of
    // both buckets read and checked once) is the replica's start, not a call's cost, and a call
    // before it reads the hosts from NATS.
    eventually(Duration::from_secs(120), || async {
        replica.log().contains("host directory loaded")
    })
    .await;
    let (gateway_before, nats_before) = (proc_cpu(replica.pid()), proc_cpu(nats_pid));
    let mut grep_process =
        grep_over(&replica_client, &logs, "shard=0", grep_hosts, GREP_CALLS).await?;
    let (gateway_after, nats_after) = (proc_cpu(replica.pid()), proc_cpu(nats_pid));
    // `grep_over` makes three warm-up calls before the timed ones.
    let per_call = |before: (f64, f64), after: (f64, f64)| {
        let seconds = (after.0 - before.0) / (GREP_CALLS + 3) as f64;
        (seconds * 1000.0).round() / 1000.0
    };
    grep_process["gateway_cpu_s_per_call"] = json!(per_call(gateway_before, gateway_after));
    grep_process["nats_server_cpu_s_per_call"] = json!(per_call(nats_before, nats_after));
    grep_process["gateway_peak_rss_mb"] =
        json!((rss_kb(replica.pid(), "VmHWM:") as f64 / 1024.0).round());
    drop(replica);
    let alive = fleet.alive();
    let startup = fleet.startup;
    fleet.stop().await;
    let round1 = |v: f64| (v * 10.0).round() / 10.0;
    Ok(json!({
        "what": format!(
            "{hosts} simulated hosts (node-agents in light mode in one process, one NATS \
             connection each, heartbeat every {} s) on one nats-server; the server watched at \
             rest for one heartbeat interval; `hosts \"*\"` over all of them (its first page, \
             and every page); `grep` (pattern \
             ERROR, digest) over {grep_hosts} of them, one 2,000-line log each, through the gateway \
             in this process and again through the gateway binary (its CPU time per call is the \
             gateway's alone)",
            HEARTBEAT.as_secs()
        ),
        "hosts": hosts,
        "registered_on_paper": paper,
        "registered_on_paper_s": round1(paper_took.as_secs_f64()),
        "hosts_listed": listed,
        "facts_bucket_mb": round1(facts_bucket_mb),
        "online_in_listing": online,
        "agents_alive_at_end": alive,
        "fleet_startup_s": round1(startup.as_secs_f64()),
        "start_concurrency": START_CONCURRENCY,
        "nats_server_rss_mb_at_rest": round1(nats_rss_mb),
        "nats_server_cpu_cores_at_rest": (cpu_at_rest * 1000.0).round() / 1000.0,
        "nats_server_connections": varz_after["connections"],
        "bench_process_rss_mb": round1(bench_rss_mb),
        "heartbeats_per_s": round1(delta("in_msgs") / rest_s),
        "inbound_kb_per_s_at_rest": round1(delta("in_bytes") / rest_s / 1024.0),
        "outbound_kb_per_s_at_rest": round1(delta("out_bytes") / rest_s / 1024.0),
        "hosts_star": percentiles(first_pages),
        "hosts_star_structured_kb": round1(answer_kb),
        "hosts_star_pages": pages,
        "hosts_star_all_pages": percentiles(walks),
        "hosts_star_schema_check": percentiles(checks),
        "grep_digest": grep,
        "grep_digest_via_gateway_process": grep_process,
        "grep_hosts": grep_hosts,
    }))
}

/// Registers `count` more hosts without agents (`paper-<n>`), as records only: the fact pack of
/// `sim-1` under each one's name (labelled `shard=paper`, so `grep` does not target them) and a
/// heartbeat that stays current for ten minutes, each signed by the host's own key as its agent
/// would. A listing reads them like any host's: it measures `hosts "*"` over more hosts than
/// this machine can connect. How long it took.
async fn register_on_paper(nats: &Nats, count: usize) -> anyhow::Result<Duration> {
    use execmesh_proto::jetstream::FACTS_BUCKET;
    use execmesh_proto::pb;
    use prost::Message as _;

    let started = Instant::now();
    if count == 0 {
        return Ok(started.elapsed());
    }
    let js = nats.jetstream().await;
    let template = js
        .get_key_value(FACTS_BUCKET)
        .await?
        .get("default.sim-1")
        .await?
        .context("sim-1's fact pack")?;
    let template = pb::HostFacts::decode(template)?;
    let hosts: Vec<String> = (1..=count).map(|i| format!("paper-{i}")).collect();
    register_present_hosts(nats, &hosts, |host| {
        let mut pack = template.clone();
        pack.host = host.to_string();
        pack.labels = [("shard".to_string(), "paper".to_string())].into();
        pack
    })
    .await;
    eprintln!(
        "scale: {count} more hosts registered on paper in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(started.elapsed())
}

/// The bytes `stream` holds.
async fn stream_bytes(nats: &Nats, stream: &str) -> anyhow::Result<u64> {
    let mut stream = nats.jetstream().await.get_stream(stream).await?;
    Ok(stream.info().await?.state.bytes)
}

/// The server's `/varz` (message and byte counters, connections).
async fn varz(monitor: &str) -> anyhow::Result<Value> {
    Ok(reqwest::get(format!("{monitor}/varz"))
        .await?
        .error_for_status()?
        .json()
        .await?)
}

/// Raises this process's open-file limit (inherited by the nats-server it starts) so `want`
/// connections fit; the hard limit too where this process may (as root).
fn raise_fd_limit(want: u64) -> anyhow::Result<()> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    if soft >= want {
        return Ok(());
    }
    let hard = if hard < want && setrlimit(Resource::RLIMIT_NOFILE, want, want).is_ok() {
        want
    } else {
        hard
    };
    setrlimit(Resource::RLIMIT_NOFILE, want.min(hard), hard)?;
    if hard < want {
        bail!(
            "open-file limit is {hard} and cannot be raised here (raising a hard limit needs \
             CAP_SYS_RESOURCE); {want} needed for {} simulated hosts. The nats-server inherits \
             the same limit, so one server here holds at most about {hard} connections: run \
             `--hosts {}` or less, or raise `ulimit -Hn` where that is allowed",
            want - 4096,
            hard.saturating_sub(4096)
        );
    }
    Ok(())
}

/// Every agent connects from 127.0.0.1 to the same server port, so each needs a port of the
/// ephemeral range: fewer ports than hosts, and the fleet cannot connect.
fn check_port_range(hosts: usize) -> anyhow::Result<()> {
    const RANGE: &str = "/proc/sys/net/ipv4/ip_local_port_range";
    let text = std::fs::read_to_string(RANGE).with_context(|| format!("reading {RANGE}"))?;
    let mut bounds = text
        .split_whitespace()
        .filter_map(|n| n.parse::<usize>().ok());
    let (Some(low), Some(high)) = (bounds.next(), bounds.next()) else {
        bail!("{RANGE} reads `{}`", text.trim());
    };
    let ports = high.saturating_sub(low) + 1;
    // Room for the gateway's, the client's and the harness's own connections.
    let needed = hosts + 1000;
    if ports < needed {
        bail!(
            "{hosts} simulated hosts need {needed} ephemeral ports (one loopback connection \
             each to the same server port) and {RANGE} gives {ports} ({low}-{high}); widen it \
             for the run, e.g. `sysctl -w net.ipv4.ip_local_port_range=\"1024 65535\"` (64,512 \
             ports), and set it back after. On real machines each agent connects from its own \
             address, so this limit is the simulation's, not the mesh's"
        );
    }
    Ok(())
}
