//! End-to-end fan-out: one `bash` over a fleet of real agents, every host once with the right
//! status; sliding windows, early stops, groups of jobs, progress and cancellation.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures::future::join_all;
use serde_json::{Value, json};

use execmesh_proto::Tier;
use execmesh_tests::identities::{put_signed, register_gone_hosts, register_present_hosts};
use execmesh_tests::{
    Gateway, McpClient, Nats, NodeAgent, Policy, RunningAgent, RunningGateway, eventually,
};

/// Starts `count` agents `<prefix>-1` … `<prefix>-<count>` at once, each labelled by `label`.
async fn fleet(
    nats: &Nats,
    prefix: &str,
    count: usize,
    label: impl Fn(usize) -> Vec<(&'static str, String)>,
) -> Vec<RunningAgent> {
    let starts = (1..=count).map(|i| {
        let mut agent = NodeAgent::new(nats, &format!("{prefix}-{i}"))
            .arg("--heartbeat-interval-ms", "300")
            .arg("--warm-shells", "0");
        for (key, value) in label(i) {
            agent = agent.label(key, &value);
        }
        agent.start()
    });
    join_all(starts).await
}

/// Every host of a fan-out result with its status.
fn statuses(out: &Value) -> BTreeMap<String, String> {
    out["hosts"]
        .as_array()
        .unwrap_or_else(|| panic!("no hosts in {out}"))
        .iter()
        .map(|h| {
            (
                h["host"].as_str().expect("a host id").to_string(),
                h["status"].as_str().expect("a status").to_string(),
            )
        })
        .collect()
}

fn host<'a>(out: &'a Value, id: &str) -> &'a Value {
    out["hosts"]
        .as_array()
        .expect("a hosts list")
        .iter()
        .find(|h| h["host"] == id)
        .unwrap_or_else(|| panic!("{id} missing from {out}"))
}

/// Waits until the caller's jobs show a fan-out group running on `hosts` hosts; its job id.
async fn running_group(client: &McpClient, hosts: usize) -> String {
    eventually(Duration::from_secs(15), || async {
        let out = client.call("job", json!({"action": "list"})).await;
        let jobs = out.structured()["jobs"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let running: Vec<&Value> = jobs.iter().filter(|j| j["state"] == "running").collect();
        (running.len() == hosts)
            .then(|| running[0]["job"].as_str().map(str::to_string))
            .flatten()
    })
    .await
}

/// The most intervals open at once, from `+1`/`-1` lines with nanosecond timestamps.
fn peak_concurrency(log: &Path) -> i64 {
    let text = std::fs::read_to_string(log).expect("the interval log");
    let mut events: Vec<(u128, i64)> = text
        .lines()
        .map(|l| {
            let (ts, delta) = l.split_once(' ').expect("`<ns> <delta>`");
            (
                ts.parse().expect("a timestamp"),
                delta.parse().expect("a delta"),
            )
        })
        .collect();
    // Ends before starts at the same instant, so back-to-back runs do not count as overlap.
    events.sort();
    let (mut open, mut peak) = (0, 0);
    for (_, delta) in events {
        open += delta;
        peak = peak.max(open);
    }
    peak
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_host_appears_once_with_its_status() {
    let nats = Nats::start().await;
    let mut agents = fleet(&nats, "node", 20, |i| {
        vec![("role", if i <= 14 { "web" } else { "db" }.to_string())]
    })
    .await;
    let gw = Gateway::new(&nats).start().await;
    let client = gw
        .client("alice")
        .await
        .with_timeout(Duration::from_secs(60));
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("node-5.started");

    // Three agents are gone before the call: offline, reported without waiting.
    for i in [18, 19, 20] {
        agents[i - 1].stop().await;
    }
    let cmd = format!(
        "case $EXECMESH_HOST in \
           node-3) echo failing; exit 3;; \
           node-5) touch {}; sleep 60;; \
           node-7) sleep 60;; \
           *) echo hello from $EXECMESH_HOST;; \
         esac",
        marker.display()
    );
    let call = bash_in_background(&gw, json!({"hosts": "*", "cmd": cmd, "timeout": 8})).await;
    // One agent dies while its command runs: lost, noticed from its missing heartbeat.
    eventually(Duration::from_secs(20), || async { marker.exists() }).await;
    agents[4].kill_hard().await;
    let started = Instant::now();
    let out = call.await.unwrap();
    assert!(!out.is_error(), "{}", out.text());
    let s = out.structured();
    let got = statuses(s);
    assert_eq!(got.len(), 20, "every host exactly once: {got:?}");
    let mut expected: BTreeMap<String, String> = (1..=20)
        .map(|i| (format!("node-{i}"), "ok".to_string()))
        .collect();
    expected.insert("node-3".into(), "exit_nonzero".into());
    expected.insert("node-5".into(), "lost".into());
    expected.insert("node-7".into(), "timeout".into());
    for i in [18, 19, 20] {
        expected.insert(format!("node-{i}"), "offline".into());
    }
    assert_eq!(got, expected, "{}", out.text());
    assert_eq!(host(s, "node-1")["output"], "hello from node-1\n");
    assert_eq!(host(s, "node-3")["exit_code"], 3);
    assert!(
        host(s, "node-5")["reason"]
            .as_str()
            .unwrap()
            .contains("node-5"),
        "{s}"
    );
    assert!(
        host(s, "node-18")["reason"]
            .as_str()
            .unwrap()
            .contains("no agent connected"),
        "{s}"
    );
    assert_eq!(s["counts"]["ok"], 14);
    assert_eq!(
        s["summary"],
        "20 host(s): 14 ok, 1 exit_nonzero, 1 timeout, 3 offline, 1 lost"
    );
    // Identical outputs are grouped in the text, each group once.
    assert!(out.text().contains("(14 hosts)") || out.text().matches("hello from").count() == 14);
    // The call lasts as long as the slowest live host (the 8 s timeout), not longer.
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );

    // The same selector language narrows the fleet; `hosts` is the dry run.
    let dry = client
        .call("hosts", json!({"selector": "role=db and not node-20"}))
        .await;
    let names: Vec<&str> = dry.structured()["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["host"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["node-15", "node-16", "node-17", "node-18", "node-19"]
    );
    assert_eq!(dry.structured()["offline"], 2);
    let only_db = client
        .call(
            "bash",
            json!({"hosts": "role=db and state=online", "cmd": "true"}),
        )
        .await;
    assert_eq!(
        statuses(only_db.structured()).len(),
        3,
        "{}",
        only_db.text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn batch_window_never_exceeds_its_size() {
    let nats = Nats::start().await;
    let _agents = fleet(&nats, "b", 9, |_| vec![]).await;
    let gw = Gateway::new(&nats).start().await;
    let client = gw
        .client("alice")
        .await
        .with_timeout(Duration::from_secs(60));
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("intervals");
    let cmd = format!(
        "echo \"$(date +%s%N) 1\" >> {log}; sleep 0.4; echo \"$(date +%s%N) -1\" >> {log}",
        log = log.display()
    );
    let out = client
        .call("bash", json!({"hosts": "b-*", "cmd": cmd, "batch": 3}))
        .await;
    assert_eq!(out.structured()["counts"]["ok"], 9, "{}", out.text());
    let peak = peak_concurrency(&log);
    assert!(peak <= 3, "{peak} commands ran at once with batch 3");
    assert!(peak >= 2, "the window should overlap runs, saw {peak}");

    // A percentage is of the targeted hosts: 34% of 9 is 4.
    std::fs::remove_file(&log).unwrap();
    let out = client
        .call("bash", json!({"hosts": "*", "cmd": cmd, "batch": "34%"}))
        .await;
    assert_eq!(out.structured()["counts"]["ok"], 9, "{}", out.text());
    assert!(peak_concurrency(&log) <= 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn max_failures_stops_early_and_marks_the_rest_not_started() {
    let nats = Nats::start().await;
    let _agents = fleet(&nats, "m", 8, |_| vec![]).await;
    let gw = Gateway::new(&nats).start().await;
    let client = gw.client("alice").await;
    let out = client
        .call(
            "bash",
            json!({"hosts": "*", "cmd": "exit 1", "batch": 1, "max_failures": 2}),
        )
        .await;
    let s = out.structured();
    assert_eq!(s["counts"]["exit_nonzero"], 2, "{}", out.text());
    assert_eq!(s["counts"]["not_started"], 6, "{}", out.text());
    assert!(
        s["stopped"].as_str().unwrap().contains("max_failures"),
        "{s}"
    );
    // Hosts go in id order, so the first two failed and the rest never ran.
    let got = statuses(s);
    assert_eq!(got["m-1"], "exit_nonzero");
    assert_eq!(got["m-8"], "not_started");
    assert!(
        host(s, "m-8")["reason"]
            .as_str()
            .unwrap()
            .contains("not contacted"),
        "{s}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_group_is_listed_polled_per_host_and_killed_as_one() {
    let nats = Nats::start().await;
    let _agents = fleet(&nats, "g", 3, |_| vec![]).await;
    let gw = Gateway::new(&nats).start().await;
    let client = gw.client("alice").await;
    let args = json!({"hosts": "g-*", "cmd": "echo up; sleep 50", "title": "soak"});
    let call = bash_in_background(&gw, args).await;
    // The group shows in the user's jobs: one job id, three hosts.
    let group = running_group(&client, 3).await;
    assert!(group.starts_with("soak-"), "{group}");
    let listed = client.job("list", &group).await;
    assert_eq!(listed.structured()["jobs"].as_array().unwrap().len(), 3);
    // Polling a group needs the host; with it, that host's output.
    let ambiguous = client.job("poll", &group).await;
    assert!(ambiguous.is_error());
    ambiguous.assert_text_has("pass `host`");
    eventually(Duration::from_secs(10), || async {
        let out = client
            .call(
                "job",
                json!({"action": "poll", "job": group, "host": "g-2"}),
            )
            .await;
        out.structured()["output"] == "up\n"
    })
    .await;
    // Kill the group: every host's job ends, and the fan-out reports each host.
    let killed = client.job("kill", &group).await;
    let states: Vec<&str> = killed.structured()["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["state"].as_str().unwrap())
        .collect();
    assert_eq!(states, ["killed", "killed", "killed"], "{}", killed.text());
    let out = call.await.unwrap();
    assert_eq!(out.structured()["counts"]["error"], 3, "{}", out.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn progress_notifications_arrive_as_hosts_answer() {
    let nats = Nats::start().await;
    let _agents = fleet(&nats, "p", 6, |_| vec![]).await;
    let gw = Gateway::new(&nats).start().await;
    let client = gw.client("alice").await;
    let (out, progress) = client
        .call_with_progress(
            "bash",
            json!({"hosts": "*", "cmd": "sleep 0.$((RANDOM % 5)); echo done", "batch": 2}),
        )
        .await;
    assert_eq!(out.structured()["counts"]["ok"], 6, "{}", out.text());
    assert!(!progress.is_empty(), "no progress notification received");
    let last = progress.last().unwrap();
    assert_eq!(last.progress, 6.0);
    assert_eq!(last.total, Some(6.0));
    assert!(
        last.message
            .as_deref()
            .unwrap()
            .starts_with("6/6 hosts answered"),
        "{last:?}"
    );
    let values: Vec<f64> = progress.iter().map(|p| p.progress).collect();
    assert!(
        values.windows(2).all(|w| w[0] < w[1]),
        "progress must increase: {values:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_that_goes_away_cancels_the_work_on_the_nodes() {
    let nats = Nats::start().await;
    let _agents = fleet(&nats, "c", 2, |_| vec![]).await;
    let gw = Gateway::new(&nats).start().await;
    let client = gw.client("alice").await;
    let doomed = gw
        .client("alice")
        .await
        .with_timeout(Duration::from_secs(60));
    let call = tokio::spawn(async move {
        doomed
            .call(
                "bash",
                json!({"hosts": "*", "cmd": "sleep 45", "title": "doomed"}),
            )
            .await
    });
    let group = running_group(&client, 2).await;
    // Dropping the in-flight request closes its HTTP connection.
    call.abort();
    let _ = call.await;
    eventually(Duration::from_secs(20), || async {
        let out = client.job("list", &group).await;
        let jobs = out.structured()["jobs"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        jobs.len() == 2 && jobs.iter().all(|j| j["state"] == "killed")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_selectors_and_arguments_are_refused_with_the_reason() {
    let nats = Nats::start().await;
    let _agents = fleet(&nats, "e", 2, |_| vec![]).await;
    let gw = Gateway::new(&nats)
        .configure(|c| {
            c.groups
                .insert("edge".to_string(), "e-1 or e-2".to_string());
        })
        .start()
        .await;
    let client = gw.client("alice").await;
    let cases: &[(&str, Value, &str)] = &[
        (
            "bash",
            json!({"hosts": "e-1 and (e-2", "cmd": "true"}),
            "unexpected the end of the selector at column 13",
        ),
        (
            "bash",
            json!({"hosts": "e-1)", "cmd": "true"}),
            "unexpected `)` at column 4",
        ),
        (
            "bash",
            json!({"hosts": "@nope", "cmd": "true"}),
            "unknown group `@nope`",
        ),
        (
            "bash",
            json!({"hosts": "nothing-*", "cmd": "true"}),
            "matches no host",
        ),
        (
            "bash",
            json!({"host": "e-1", "hosts": "e-*", "cmd": "true"}),
            "not both",
        ),
        (
            "bash",
            json!({"hosts": "*", "cmd": "true", "batch": "lots"}),
            "`batch` must be a count or a percentage",
        ),
        (
            "bash",
            json!({"hosts": "*", "cmd": "true", "bg": true}),
            "`bg` and `wait` apply to one `host`",
        ),
        ("hosts", json!({"selector": "cpus>many"}), "is not a number"),
        (
            "grep",
            json!({"hosts": "*", "pattern": "x", "context": 99}),
            "`context` must be at most 10",
        ),
    ];
    for (tool, args, needle) in cases {
        let out = client.call(tool, args.clone()).await;
        assert!(out.is_error(), "{tool} {args} should fail: {}", out.text());
        assert!(out.text().contains(needle), "{tool} {args}: {}", out.text());
    }
    let out = client
        .call(
            "bash",
            json!({"hosts": "@edge", "cmd": "echo $EXECMESH_HOST"}),
        )
        .await;
    assert_eq!(out.structured()["counts"]["ok"], 2, "{}", out.text());
}

/// Writes `lines` into `<dir>/<host>/app.log` for a host's log, and returns the host's log dir.
fn write_log(dir: &Path, host: &str, lines: &[String]) -> std::path::PathBuf {
    let logs = dir.join(host);
    std::fs::create_dir_all(&logs).expect("a log dir");
    std::fs::write(logs.join("app.log"), lines.join("\n") + "\n").expect("app.log");
    std::fs::write(logs.join("old.log.gz"), "ERROR compressed and ignored\n").expect("old.log.gz");
    logs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn grep_across_hosts_with_modes_caps_and_a_digest() {
    let nats = Nats::start().await;
    let dir = tempfile::tempdir().unwrap();
    // Five hosts log the same kind of timeouts (with different numbers, ids and times); one
    // host also has a disk error nobody else has.
    for i in 1..=5 {
        let host = format!("s-{i}");
        let mut lines: Vec<String> = (0..20)
            .map(|n| {
                format!(
                    "2026-11-21T10:{n:02}:0{i}Z ERROR request {} to 10.0.0.{i} timed out after {}ms",
                    1000 * i + n,
                    200 + n
                )
            })
            .collect();
        lines.push(format!("2026-11-21T11:00:00Z INFO all good on {host}"));
        if i == 4 {
            lines.push("2026-11-21T11:00:05Z ERROR disk /dev/sdb1 failed: 0xdeadbeef".into());
        }
        write_log(dir.path(), &host, &lines);
    }
    let root = dir.path().to_path_buf();
    let starts = (1..=5).map(|i| {
        NodeAgent::new(&nats, &format!("s-{i}"))
            .arg("--file-root", &root)
            .arg("--warm-shells", "0")
            .start()
    });
    let _agents = join_all(starts).await;
    let gw = Gateway::new(&nats).start().await;
    let client = gw.client("alice").await;
    let logs = |host: &str| dir.path().join(host).display().to_string();
    // Each host searches its own directory: a path that does not exist on a host is reported
    // for that host without failing the others.
    let all_paths: Vec<String> = (1..=5).map(|i| logs(&format!("s-{i}"))).collect();

    let out = client
        .call(
            "grep",
            json!({"hosts": "s-*", "pattern": "ERROR", "paths": all_paths, "globs": ["*.log"],
                   "digest": true, "max_matches": 3}),
        )
        .await;
    assert!(!out.is_error(), "{}", out.text());
    let s = out.structured();
    assert_eq!(s["counts"]["ok"], 5, "{}", out.text());
    // Every host reads every directory (they share this machine): 5 × 20 timeouts + 1 disk
    // error, each seen by all five hosts.
    assert_eq!(s["total_matches"], 5 * (5 * 20 + 1), "{}", out.text());
    let s1 = host(s, "s-1");
    assert_eq!(
        s1["matches"].as_array().unwrap().len(),
        3,
        "capped per host"
    );
    assert_eq!(s1["truncated"], true);
    assert_eq!(s1["total_matches"], 101, "the count is exact past the cap");
    let digest = s["digest"].as_array().unwrap();
    assert_eq!(s["digest_groups_total"], 2, "{}", out.text());
    assert_eq!(
        digest[0]["pattern"],
        "<ts> ERROR disk /dev/sdb<n> failed: <hex>",
        "rarest first: {}",
        out.text()
    );
    assert_eq!(digest[0]["lines"], 5);
    assert_eq!(
        digest[1]["pattern"],
        "<ts> ERROR request <n> to <ip> timed out after <n>ms"
    );
    assert_eq!(digest[1]["lines"], 500);
    assert_eq!(digest[1]["host_count"], 5);
    out.assert_text_has("digest: 2 distinct line pattern(s)");

    // Searching only one host's directory tells the hosts apart in the digest.
    let out = client
        .call(
            "grep",
            json!({"hosts": "s-*", "pattern": "disk", "paths": [logs("s-4")], "mode": "count"}),
        )
        .await;
    let s = out.structured();
    assert_eq!(s["total_matches"], 5);
    let files = host(s, "s-2")["files"].as_array().unwrap().clone();
    assert_eq!(files.len(), 1, "{}", out.text());
    assert_eq!(files[0]["count"], 1);
    assert!(files[0]["path"].as_str().unwrap().ends_with("s-4/app.log"));

    let out = client
        .call(
            "grep",
            json!({"hosts": "s-1", "pattern": "error", "ignore_case": true, "mode": "files",
                   "paths": [logs("s-1"), "/nonexistent-dir-for-grep"]}),
        )
        .await;
    let s1 = host(out.structured(), "s-1");
    let files: Vec<&str> = s1["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["path"].as_str().unwrap())
        .collect();
    assert_eq!(files.len(), 2, "app.log and old.log.gz: {}", out.text());
    assert_eq!(
        s1["path_errors"].as_array().unwrap().len(),
        1,
        "{}",
        out.text()
    );

    // Context lines and a fixed string.
    let out = client
        .call(
            "grep",
            json!({"hosts": "s-4", "pattern": "0xdeadbeef", "fixed": true, "context": 1,
                   "paths": [logs("s-4")]}),
        )
        .await;
    let m = &host(out.structured(), "s-4")["matches"][0];
    assert_eq!(m["line"], 22);
    assert_eq!(m["before"][0], "2026-11-21T11:00:00Z INFO all good on s-4");

    // A path outside the host's roots is refused on the host, named in its reason.
    let out = client
        .call(
            "grep",
            json!({"hosts": "s-1", "pattern": "root", "paths": ["/etc"]}),
        )
        .await;
    let s1 = host(out.structured(), "s-1");
    assert_ne!(s1["status"], "ok", "{}", out.text());
    assert!(
        s1["reason"].as_str().unwrap().contains("/etc"),
        "{}",
        out.text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn facts_are_collected_matched_and_refreshed() {
    let nats = Nats::start().await;
    let _agents = fleet(&nats, "f", 3, |i| vec![("rack", format!("r{}", i % 2))]).await;
    let gw = Gateway::new(&nats).start().await;
    let client = gw.client("alice").await;
    let out = client.call("facts", json!({"hosts": "f-*"})).await;
    assert!(!out.is_error(), "{}", out.text());
    let s = out.structured();
    assert_eq!(s["hosts"].as_array().unwrap().len(), 3);
    let f1 = host(s, "f-1");
    assert_eq!(f1["status"], "online");
    assert!(f1["cpus"].as_u64().unwrap() > 0, "{f1}");
    assert!(f1["memory_mb"].as_u64().unwrap() > 0, "{f1}");
    assert!(f1["uptime_secs"].as_u64().unwrap() > 0, "{f1}");
    assert!(
        f1["disks"]
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["mount"] == "/"),
        "{f1}"
    );
    assert!(!f1["os"].as_str().unwrap().is_empty());
    let collected = f1["collected_at_ms"].as_u64().unwrap();

    // Facts are what selectors match.
    let cpus = f1["cpus"].as_u64().unwrap();
    let os_id = f1["os_id"].as_str().unwrap().to_string();
    let matched = client
        .call(
            "hosts",
            json!({"selector": format!("rack=r1 and cpus>={cpus} and os_id={os_id}")}),
        )
        .await;
    let names: Vec<&str> = matched.structured()["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["host"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["f-1", "f-3"], "{}", matched.text());

    // A refresh collects anew on every host and returns the fresh packs.
    let refreshed = client
        .call("facts", json!({"action": "refresh", "hosts": "f-*"}))
        .await;
    let s = refreshed.structured();
    assert_eq!(s["summary"], "3 host(s): 3 ok", "{}", refreshed.text());
    assert!(host(s, "f-1")["collected_at_ms"].as_u64().unwrap() > collected);
    let again = client.call("facts", json!({"hosts": "f-1"})).await;
    assert!(
        host(again.structured(), "f-1")["collected_at_ms"]
            .as_u64()
            .unwrap()
            > collected,
        "the refreshed pack is stored for every replica"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hosts_outside_the_callers_reach_are_denied_and_never_contacted() {
    let nats = Nats::start().await;
    let _agents = fleet(&nats, "r", 4, |i| {
        vec![("env", if i <= 2 { "prod" } else { "dev" }.to_string())]
    })
    .await;
    let gw = Gateway::new(&nats)
        .policy(Policy::new().group("devs", Tier::Standard, &["env=dev"], &["dana"]))
        .start()
        .await;
    let client = gw.client("dana").await;
    let out = client
        .call(
            "bash",
            json!({"hosts": "r-*", "cmd": "echo ran on $EXECMESH_HOST"}),
        )
        .await;
    let got = statuses(out.structured());
    assert_eq!(got["r-1"], "denied", "{}", out.text());
    assert_eq!(got["r-2"], "denied");
    assert_eq!(got["r-3"], "ok");
    assert_eq!(got["r-4"], "ok");
    assert!(host(out.structured(), "r-1").get("output").is_none());
    // `*` means the hosts dana may reach: the others are not mentioned at all.
    let out = client
        .call("bash", json!({"hosts": "*", "cmd": "true"}))
        .await;
    assert_eq!(statuses(out.structured()).len(), 2, "{}", out.text());
    let dry = client.call("hosts", json!({"selector": "r-*"})).await;
    assert_eq!(dry.structured()["denied"], json!(["r-1", "r-2"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleets_larger_than_one_direct_get_are_resolved_whole() {
    use execmesh_proto::jetstream::FACTS_BUCKET;
    use execmesh_proto::pb;
    use prost::Message as _;

    let nats = Nats::start().await;
    // The agent provisions the buckets; 1,100 more hosts registered once and long gone, each
    // registration signed by its own agent's key, as agents write them.
    let _agent = NodeAgent::new(&nats, "alive-1").start().await;
    let js = nats.jetstream().await;
    let facts = js.get_key_value(FACTS_BUCKET).await.expect("facts bucket");
    let ghosts: Vec<String> = (1..=1100).map(|i| format!("ghost-{i}")).collect();
    register_gone_hosts(&nats, &ghosts).await;
    // A registration of `host` long gone, signed with `key`, as its agent wrote it.
    let register = |host: String, key: execmesh_proto::signing::RecordKey| {
        let (js, facts) = (js.clone(), facts.clone());
        async move {
            let pack = pb::HostFacts {
                host: host.clone(),
                collected_at_ms: 1,
                ..Default::default()
            };
            let entry = format!("default.{host}");
            put_signed(&js, &facts, &entry, pack.encode_to_vec(), &key).await;
        }
    };
    let gw = Gateway::new(&nats).start().await;
    let client = gw.client("alice").await;
    let out = client.call("hosts", json!({"selector": "*"})).await;
    let s = out.structured();
    assert_eq!(
        s["hosts"].as_array().expect("hosts").len(),
        1101,
        "{}",
        s["online"]
    );
    assert_eq!(s["online"], 1);
    assert_eq!(s["offline"], 1100);
    // The text describes the first 200 and says where the rest are.
    let text = out.text();
    assert_eq!(text.lines().filter(|l| l.starts_with("- ")).count(), 200);
    assert!(text.contains("… and 901 more host(s)"), "{text}");
    assert!(
        s.get("next_cursor").is_none(),
        "one page: {}",
        s["next_cursor"]
    );

    // Page by page: every host once, in order, the counts of the whole selection on each page.
    let mut paged = Vec::new();
    let mut cursor = None;
    for page in 0.. {
        assert!(page < 3, "three pages of 500 list 1,101 hosts");
        let mut args = json!({"selector": "*", "limit": 500});
        if let Some(cursor) = cursor.take() {
            args["cursor"] = json!(cursor);
        }
        let out = client.call("hosts", args).await;
        let s = out.structured();
        assert_eq!(
            (s["total"].clone(), s["online"].clone()),
            (json!(1101), json!(1))
        );
        assert_eq!(s["offline"], 1100);
        let hosts = s["hosts"].as_array().expect("hosts");
        paged.extend(
            hosts
                .iter()
                .map(|h| h["host"].as_str().expect("id").to_owned()),
        );
        match s["next_cursor"].as_str() {
            Some(next) => {
                assert_eq!(hosts.len(), 500);
                assert_eq!(Some(next), paged.last().map(String::as_str));
                out.assert_text_has(&format!("pass `cursor` \"{next}\" for the next page"));
                cursor = Some(next.to_owned());
            }
            None => break,
        }
    }
    let mut whole: Vec<String> = s["hosts"]
        .as_array()
        .expect("hosts")
        .iter()
        .map(|h| h["host"].as_str().expect("id").to_owned())
        .collect();
    assert_eq!(paged, whole);
    whole.dedup();
    assert_eq!(whole.len(), 1101);
    for (args, why) in [
        (json!({"limit": 0}), "limit must be 1 to 5000, not 0"),
        (json!({"limit": 5001}), "limit must be 1 to 5000, not 5001"),
        (
            json!({"cursor": "no such/cursor"}),
            "is not one a listing gave",
        ),
    ] {
        client
            .call("hosts", args)
            .await
            .assert_refused_as("invalid_arguments", why);
    }
    // A fan-out over all of them settles every host, the offline ones without waiting.
    let started = Instant::now();
    let out = client
        .call("bash", json!({"hosts": "*", "cmd": "echo here"}))
        .await;
    out.assert_field("summary", "1101 host(s): 1 ok, 1100 offline");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );

    // Once the gateway's host directory is loaded, a listing reads no record from NATS:
    // past 1,024 keys a read would need a consumer of each bucket for every call.
    let consumers = ConsumersCreated::watch(&nats, ">").await;
    let consumers_made = || consumers.since();
    // Listings from the directory: once it is loaded (and again once it has checked what an
    // identities change may change) a listing makes no consumer.
    let from_the_directory = |selector: &'static str, count: usize| {
        let consumers_made = &consumers_made;
        let client = &client;
        async move {
            eventually(Duration::from_secs(20), || async {
                consumers_made().await;
                let out = client.call("hosts", json!({"selector": selector})).await;
                let listed = out.structured()["hosts"].as_array().map(Vec::len);
                (listed == Some(count) && consumers_made().await.is_empty()).then_some(())
            })
            .await;
        }
    };
    from_the_directory("ghost-*", 1100).await;

    // A host registered just before a listing is in it: the listing waits for the directory
    // to take what was stored before it began.
    let late: Vec<String> = (1101..=1110).map(|i| format!("ghost-{i}")).collect();
    nats.identities()
        .add_agents(late.iter().map(String::as_str));
    from_the_directory("ghost-*", 1100).await;
    for host in &late {
        let key = nats.identities().record_key(&format!("agent-{host}"));
        register(host.clone(), key).await;
        let out = client.call("hosts", json!({"selector": host})).await;
        assert_eq!(out.structured()["offline"], 1, "{host}: {}", out.text());
    }
    let made = consumers_made().await;
    assert!(made.is_empty(), "listings made consumers: {made:?}");

    // Also while another host rewrites its records as fast as it can: records the watch took
    // after a listing began and that were replaced before it asked NATS how far to wait must
    // not stand in for the new host's.
    let churned: Vec<String> = (1112..=1131).map(|i| format!("ghost-{i}")).collect();
    nats.identities()
        .add_agents(churned.iter().map(String::as_str));
    from_the_directory("ghost-*", 1110).await;
    let stop = Arc::new(AtomicBool::new(false));
    // Eight writers at once.
    let churn: Vec<_> = (1..=8)
        .map(|n| {
            let (stop, js, facts) = (stop.clone(), js.clone(), facts.clone());
            let host = format!("ghost-{n}");
            let key = nats.identities().record_key(&format!("agent-{host}"));
            let pack = pb::HostFacts {
                host: host.clone(),
                collected_at_ms: 1,
                ..Default::default()
            };
            tokio::spawn(async move {
                let mut writes = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let entry = format!("default.{host}");
                    put_signed(&js, &facts, &entry, pack.encode_to_vec(), &key).await;
                    writes += 1;
                }
                writes
            })
        })
        .collect();
    for host in &churned {
        let key = nats.identities().record_key(&format!("agent-{host}"));
        register(host.clone(), key).await;
        let out = client.call("hosts", json!({"selector": host})).await;
        assert_eq!(out.structured()["offline"], 1, "{host}: {}", out.text());
    }
    stop.store(true, Ordering::Relaxed);
    let writes: u64 = join_all(churn)
        .await
        .into_iter()
        .map(|w| w.expect("a writer ran"))
        .sum();
    assert!(writes > 20, "the writers wrote {writes} times");

    // A host whose agent wrote its registration before the host was enrolled is unverified,
    // and verified as soon as it is enrolled.
    let early = "ghost-1111";
    let seed = nkeys::KeyPair::new_user()
        .seed()
        .expect("a new key has a seed");
    let key = execmesh_proto::signing::RecordKey::from_seed(&seed).expect("a record key");
    register(early.to_string(), key).await;
    let out = client.call("hosts", json!({"selector": early})).await;
    assert_eq!(out.structured()["unverified"], 1, "{}", out.text());
    nats.identities().enrol_agent_with(early, &seed);
    let out = client.call("hosts", json!({"selector": early})).await;
    assert_eq!(out.structured()["offline"], 1, "{}", out.text());
    from_the_directory("ghost-*", 1131).await;
    let out = client.call("hosts", json!({"selector": early})).await;
    assert_eq!(out.structured()["offline"], 1, "{}", out.text());
}

/// Calls `bash` with `args` as alice in the background, on a client of its own that waits a
/// minute at the most.
async fn bash_in_background(
    gw: &RunningGateway,
    args: Value,
) -> tokio::task::JoinHandle<execmesh_tests::ToolOutput> {
    let client = gw
        .client("alice")
        .await
        .with_timeout(Duration::from_secs(60));
    tokio::spawn(async move { client.call("bash", args).await })
}

/// The consumers a server creates, as its advisories announce them.
struct ConsumersCreated {
    client: async_nats::Client,
    created: std::sync::Mutex<async_nats::Subscriber>,
}

impl ConsumersCreated {
    /// Starts listening for consumers created on the streams `streams` matches (`>`: all).
    async fn watch(nats: &Nats, streams: &str) -> Self {
        let client = nats.client().await;
        let created = client
            .subscribe(format!("$JS.EVENT.ADVISORY.CONSUMER.CREATED.{streams}"))
            .await
            .expect("subscribe to consumer advisories");
        Self {
            client,
            created: std::sync::Mutex::new(created),
        }
    }

    /// The consumers created since last asked, once every advisory sent so far has arrived.
    async fn since(&self) -> Vec<String> {
        self.client.flush().await.expect("flush");
        let mut created = self.created.lock().expect("advisories");
        let mut names = Vec::new();
        while let Some(Some(msg)) =
            futures::FutureExt::now_or_never(futures::StreamExt::next(&mut *created))
        {
            names.push(String::from_utf8_lossy(&msg.payload).into_owned());
        }
        names
    }
}

/// Past one direct get of heartbeats, a fan-out notices an agent going away from the host
/// directory: the agent killed mid-request is `lost`, as in a small fleet, and the checks every
/// 2 s make no consumer of `mesh_presence` (reading 1,102 heartbeats again took one each time).
#[tokio::test(flavor = "multi_thread")]
async fn past_one_direct_get_a_fan_out_notices_a_gone_agent_from_the_directory() {
    use execmesh_proto::pb;

    let nats = Nats::start().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let marker = dir.path().join("started");
    let mut gone = NodeAgent::new(&nats, "alive-1").start().await;
    let _stays = NodeAgent::new(&nats, "alive-2").start().await;
    let present: Vec<String> = (1..=1100).map(|i| format!("paper-{i}")).collect();
    register_present_hosts(&nats, &present, |host| pb::HostFacts {
        host: host.to_string(),
        collected_at_ms: 1,
        ..Default::default()
    })
    .await;
    let gw = Gateway::new(&nats).start().await;
    let client = gw.client("alice").await;
    let consumers = ConsumersCreated::watch(&nats, "KV_mesh_presence.>").await;
    // The directory serves once a listing of everything makes no consumer of the bucket.
    eventually(Duration::from_secs(20), || async {
        consumers.since().await;
        let out = client.call("hosts", json!({"selector": "*"})).await;
        let listed = out.structured()["hosts"].as_array().map(Vec::len);
        (listed == Some(1102) && consumers.since().await.is_empty()).then_some(())
    })
    .await;

    let cmd = format!(
        "case $EXECMESH_HOST in alive-1) touch {}; sleep 60;; *) echo here;; esac",
        marker.display()
    );
    let call =
        bash_in_background(&gw, json!({"hosts": "alive-*", "cmd": cmd, "timeout": 30})).await;
    eventually(Duration::from_secs(20), || async { marker.exists() }).await;
    gone.kill_hard().await;
    let out = call.await.expect("the call's task");
    let expected: BTreeMap<String, String> = [("alive-1", "lost"), ("alive-2", "ok")]
        .map(|(host, status)| (host.to_string(), status.to_string()))
        .into();
    assert_eq!(statuses(out.structured()), expected, "{}", out.text());
    let made = consumers.since().await;
    assert!(
        made.is_empty(),
        "the presence checks made consumers: {made:?}"
    );
}
