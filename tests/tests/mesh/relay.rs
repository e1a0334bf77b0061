//! End-to-end: SSH targets served by a user's relay (`execmesh-node-agent relay`) against a real sshd — commands, paging, kill and timeout of the remote process group, presence and its reasons, per-user routing, NATS permissions, fan-out next to an agent host.

use std::time::{Duration, Instant};

use serde_json::json;

use execmesh_tests::chaos::job_lines;
use execmesh_tests::nats_accounts::SecuredMesh;
use execmesh_tests::relay::{Relay, RunningRelay};
use execmesh_tests::sshd::Sshd;
use execmesh_tests::{Gateway, McpClient, Nats, NodeAgent, RunningGateway, eventually};

/// Alice's relay serving `box-1` on a fresh sshd (`configure` adds to it), a gateway, and
/// alice's client: the start of most scenarios here. Scenarios bind every field (`_name` for
/// the unused ones), so that nothing is dropped before the scenario ends.
struct Scene {
    client: McpClient,
    gw: RunningGateway,
    relay: RunningRelay,
    sshd: Sshd,
    _nats: Nats,
}

async fn scene(configure: impl FnOnce(Relay) -> Relay) -> Scene {
    let nats = Nats::start().await;
    let sshd = Sshd::start().await;
    let relay = configure(Relay::new(&nats, "alice").target("box-1", &sshd))
        .start(&nats)
        .await;
    let gw = gateway(&nats).await;
    let client = gw.client("alice").await;
    Scene {
        client,
        gw,
        relay,
        sshd,
        _nats: nats,
    }
}

/// How long the test gateway waits for a relay's reply: long, so that a call that fails "at
/// once" (under the bounds asserted here) can only have been answered, never timed out.
const GATEWAY_WAIT: Duration = Duration::from_secs(60);
/// The most an immediate refusal may take on a loaded machine (debug builds, parallel tests).
const AT_ONCE: Duration = Duration::from_secs(10);

async fn gateway(nats: &Nats) -> RunningGateway {
    Gateway::new(nats)
        .configure(|c| c.request_timeout = GATEWAY_WAIT)
        .start()
        .await
}

/// The pids of the target's processes whose command line is exactly `cmd`, read over a
/// connection of the test's own.
fn remote_processes(sshd: &Sshd, cmd: &str) -> Vec<String> {
    sshd.ssh(&format!("pgrep -x -f '{cmd}' || true"))
        .lines()
        .map(str::to_string)
        .collect()
}

/// Waits until no process runs `cmd` on the target any more.
async fn assert_gone(sshd: &Sshd, cmd: &str) {
    eventually(Duration::from_secs(10), || async {
        remote_processes(sshd, cmd).is_empty()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_runs_commands_on_its_ssh_target_with_exit_codes_and_facts() {
    let Scene {
        client,
        relay,
        gw: _gw,
        sshd: _sshd,
        _nats,
    } = scene(|r| r.label("role", "legacy")).await;

    let out = client
        .bash(
            "box-1",
            "echo \"hi from $EXECMESH_HOST\"; echo oops >&2; exit 3",
        )
        .await;
    let s = out.structured();
    assert_eq!(s["state"], "exited", "{}", out.text());
    assert_eq!(s["exit_code"], 3, "{}", out.text());
    let output = s["output"].as_str().unwrap_or_default();
    assert!(output.contains("hi from box-1\n"), "{output}");
    assert!(output.contains("oops\n"), "{output}");

    // The working directory is entered on the target; a missing one is refused by name.
    let out = client
        .call(
            "bash",
            json!({"host": "box-1", "cmd": "pwd", "cwd": "/tmp"}),
        )
        .await;
    assert_eq!(out.structured()["output"], "/tmp\n", "{}", out.text());
    let out = client
        .call(
            "bash",
            json!({"host": "box-1", "cmd": "pwd", "cwd": "/no/such/dir"}),
        )
        .await;
    assert!(out.is_error(), "{}", out.text());
    assert!(out.text().contains("/no/such/dir"), "{}", out.text());

    // The fact pack comes from the target's probe (which runs apart from the heartbeat) and
    // names the relay's user.
    let facts = eventually(Duration::from_secs(30), || async {
        relay.facts("box-1").await.filter(|f| !f.kernel.is_empty())
    })
    .await;
    assert_eq!(facts.relay_user, "alice");
    assert!(facts.relay_offline_reason.is_empty());
    assert!(!facts.kernel.is_empty() && facts.cpus > 0, "{facts:?}");
    assert_eq!(facts.labels["role"], "legacy");
    let hosts = client
        .call("hosts", json!({"selector": "role=legacy"}))
        .await;
    let view = &hosts.structured()["hosts"][0];
    assert_eq!(view["host"], "box-1", "{}", hosts.text());
    assert_eq!(view["kind"], "relay", "{}", hosts.text());
    assert_eq!(view["relay_user"], "alice", "{}", hosts.text());
    // `facts refresh` runs the probe on the target again, through the relay.
    let fresh = client
        .call("facts", json!({"action": "refresh", "hosts": "box-1"}))
        .await;
    assert!(!fresh.is_error(), "{}", fresh.text());
    assert!(fresh.text().contains(&facts.kernel), "{}", fresh.text());
    let whoami = client.call("whoami", json!({})).await;
    assert!(
        whoami.text().contains("SSH relay targets: box-1: online"),
        "{}",
        whoami.text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_relay_marks_its_unfinished_jobs_lost() {
    let Scene {
        client,
        mut relay,
        sshd,
        gw: _gw,
        _nats,
    } = scene(|r| r).await;
    let job = client.bash_bg("box-1", "sleep 1719").await;
    eventually(Duration::from_secs(10), || async {
        remote_processes(&sshd, "sleep 1719").len() == 1
    })
    .await;
    relay.kill_hard().await;
    relay.restart().await;
    client.wait_ended(&job, 10, "lost").await;
    let again = client.bash("box-1", "echo back").await;
    assert_eq!(again.structured()["output"], "back\n", "{}", again.text());
    // A relay that died cannot stop what it started (docs/relay.md): the test does.
    sshd.ssh("pkill -x -f 'sleep 1719' || true");
}

/// The pids of the SSH master connections (`ControlPersist=yes`) to `sshd`, from /proc.
fn masters(sshd: &Sshd) -> Vec<u32> {
    let config = sshd.ssh_config().display().to_string();
    std::fs::read_dir("/proc")
        .expect("/proc")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|raw| {
                let cmdline = String::from_utf8_lossy(&raw).replace('\0', " ");
                cmdline.contains("ControlPersist=yes") && cmdline.contains(&config)
            })
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_killed_hard_stops_the_masters_it_left_when_it_starts_again() {
    let Scene {
        client,
        mut relay,
        sshd,
        gw: _gw,
        _nats,
    } = scene(|r| r).await;
    let before = eventually(Duration::from_secs(10), || async {
        let m = masters(&sshd);
        (m.len() == 1).then_some(m)
    })
    .await;
    // SIGKILL: the relay cannot close its master, which persists (ControlPersist) on its own.
    relay.kill_hard().await;
    assert_eq!(masters(&sshd), before, "the master outlives a killed relay");
    relay.restart().await;
    let after = eventually(Duration::from_secs(10), || async {
        let m = masters(&sshd);
        (m.len() == 1 && m != before).then_some(m)
    })
    .await;
    assert_ne!(after, before);
    let out = client.bash("box-1", "echo back").await;
    assert_eq!(out.structured()["output"], "back\n", "{}", out.text());
    // A clean stop closes the master too.
    relay.stop().await;
    eventually(Duration::from_secs(10), || async {
        masters(&sshd).is_empty()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_200k_line_relay_job_pages_every_line_once_in_order() {
    let Scene {
        client,
        gw: _gw,
        relay: _relay,
        sshd: _sshd,
        _nats,
    } = scene(|r| r).await;
    let job = client.bash_bg("box-1", "seq 1 200000").await;
    let lines = job_lines(&client, &job).await;
    assert_eq!(lines.len(), 200_000);
    assert!(
        lines
            .iter()
            .enumerate()
            .all(|(i, l)| *l == (i + 1).to_string()),
        "lines out of order or changed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_and_timeout_stop_the_whole_remote_process_group() {
    let Scene {
        client,
        sshd,
        gw: _gw,
        relay: _relay,
        _nats,
    } = scene(|r| r.setting("kill_grace_ms = 500")).await;

    let s = client
        .bash_running(
            "box-1",
            "trap '' TERM; sleep 1717 & sleep 1717 & echo started; wait",
            0.5,
        )
        .await;
    let pgid = s["status"]["pid"].as_u64().expect("a remote pid");
    assert!(pgid > 1);
    let job = s["job"].as_str().expect("a job id").to_string();
    assert_eq!(
        remote_processes(&sshd, "sleep 1717").len(),
        2,
        "both sleeps run on the target"
    );
    client.kill(&job).await;
    assert_gone(&sshd, "sleep 1717").await;

    let out = client
        .call(
            "bash",
            json!({"host": "box-1", "cmd": "sleep 1718 & sleep 1718", "timeout": 1, "wait": 20}),
        )
        .await;
    assert_eq!(out.structured()["state"], "timed_out", "{}", out.text());
    assert_gone(&sshd, "sleep 1718").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_key_mismatch_and_a_wrong_key_show_the_target_offline_with_the_reason() {
    let nats = Nats::start().await;
    let impostor = Sshd::start().await;
    impostor.forget_host_key();
    let locked = Sshd::start().await;
    locked.use_wrong_user_key();
    let relay = Relay::new(&nats, "alice")
        .target("box-1", &impostor)
        .target("box-2", &locked)
        .expect_offline()
        .start(&nats)
        .await;
    let reason = |id: &'static str| {
        let relay = &relay;
        async move {
            relay
                .facts(id)
                .await
                .map(|f| f.relay_offline_reason)
                .unwrap_or_default()
        }
    };
    assert!(
        reason("box-1").await.starts_with("host key mismatch"),
        "{}",
        reason("box-1").await
    );
    assert!(
        reason("box-2").await.starts_with("auth failed"),
        "{}",
        reason("box-2").await
    );
    assert!(relay.presence("box-1").await.is_none());
    assert!(relay.presence("box-2").await.is_none());

    // A call reaches the relay, which refuses it at once with the reason.
    let gw = gateway(&nats).await;
    let client = gw.client("alice").await;
    let started = Instant::now();
    let out = client.bash("box-1", "true").await;
    assert!(out.is_error(), "{}", out.text());
    assert!(out.text().contains("host key mismatch"), "{}", out.text());
    assert!(started.elapsed() < AT_ONCE);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_callers_relay_a_call_fails_at_once_naming_target_user_and_remedy() {
    let Scene {
        client: alice,
        gw,
        mut relay,
        sshd: _sshd,
        _nats,
    } = scene(|r| r).await;

    // Bob is not served by alice's relay: NATS has no responder on his subject.
    let bob = gw.client("bob").await;
    let started = Instant::now();
    let out = bob.bash("box-1", "echo hi").await;
    assert!(out.is_error(), "{}", out.text());
    let text = out.text();
    for needle in ["box-1", "bob", "execmesh-node-agent relay"] {
        assert!(text.contains(needle), "{needle} not in {text}");
    }
    assert!(started.elapsed() < AT_ONCE);

    // Alice's own relay killed: her target goes offline and her calls fail at once too.
    assert_eq!(
        alice.bash("box-1", "echo hi").await.structured()["output"],
        "hi\n"
    );
    relay.kill_hard().await;
    let started = Instant::now();
    let out = alice.bash("box-1", "echo hi").await;
    assert!(out.is_error(), "{}", out.text());
    assert!(out.text().contains("alice"), "{}", out.text());
    assert!(started.elapsed() < AT_ONCE);
    eventually(Duration::from_secs(10), || async {
        relay.presence("box-1").await.is_none()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relays_nats_identity_reaches_only_its_users_subjects() {
    let mesh = SecuredMesh::generate_with_relays(&["web-1"], &[("alice", &["box-1"])]);
    let nats = mesh.start_nats().await;
    let mut alice = mesh.connect_as(&nats, "relay-alice").await;

    // Its own subjects are allowed: no violation is reported for them.
    let _own = alice
        .client
        .subscribe("mesh.v1.default.host.box-1.exec.alice")
        .await
        .expect("subscribe");
    // Bob's requests and kills, every user's, another target's, and the host-wide control
    // subject are refused.
    for subject in [
        "mesh.v1.default.host.box-1.exec.bob",
        "mesh.v1.default.host.box-1.exec.*",
        "mesh.v1.default.host.box-1.ctl",
        "mesh.v1.default.host.box-1.ctl.bob",
        "mesh.v1.default.host.web-1.exec.alice",
    ] {
        let _sub = alice.client.subscribe(subject).await.expect("subscribe");
        let refusal = alice.refused(subject).await;
        assert!(refusal.contains(subject), "{refusal}");
    }
    // It may not write another host's presence either.
    alice
        .client
        .publish("$KV.mesh_presence.default.web-1", "x".into())
        .await
        .expect("publish");
    alice.refused("$KV.mesh_presence.default.web-1").await;
    assert!(
        alice.pending_violations().is_empty()
            || alice
                .pending_violations()
                .iter()
                .all(|v| !v.contains("exec.alice\"")),
        "its own subject was refused"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fan_out_over_an_agent_host_and_relay_targets_gives_one_honest_status_each() {
    let nats = Nats::start().await;
    let _agent = NodeAgent::new(&nats, "web-1").start().await;
    let sshd = Sshd::start().await;
    let _relay = Relay::new(&nats, "alice")
        .target("box-1", &sshd)
        .start(&nats)
        .await;
    let _bobs = Relay::new(&nats, "bob")
        .target("box-3", &sshd)
        .start(&nats)
        .await;
    let gw = gateway(&nats).await;
    let client = gw.client("alice").await;
    let out = client
        .call(
            "bash",
            json!({"hosts": "web-1 or box-*", "cmd": "echo \"on $EXECMESH_HOST\""}),
        )
        .await;
    let s = out.structured();
    let results = s["hosts"].as_array().expect("one result per host");
    assert_eq!(results.len(), 3, "{}", out.text());
    let status_of = |host: &str| {
        results
            .iter()
            .find(|r| r["host"] == host)
            .unwrap_or_else(|| panic!("no result for {host}: {}", out.text()))
            .clone()
    };
    for host in ["web-1", "box-1"] {
        let r = status_of(host);
        assert_eq!(r["status"], "ok", "{r}");
        assert!(
            r["output"]
                .as_str()
                .unwrap_or_default()
                .contains(&format!("on {host}")),
            "{r}"
        );
    }
    // Bob's target is online (his relay serves it) but not for alice: offline, with the reason.
    let r = status_of("box-3");
    assert_eq!(r["status"], "offline", "{r}");
    assert!(r.to_string().contains("alice"), "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_whose_login_hangs_is_online_at_once_and_refuses_jobs_with_the_reason() {
    // What once kept every target of a relay from showing online: the login shell's startup
    // file waited on a lock (a version manager's rehash), so the master connected and every
    // session on it hung. The heartbeat must not wait on a session; jobs fail with the reason.
    let nats = Nats::start().await;
    let sshd = Sshd::start_with_login_rc("sleep 40\n").await;
    let remote_timeout = Duration::from_secs(25);
    let started = Instant::now();
    let relay = Relay::new(&nats, "alice")
        .target("box-1", &sshd)
        .label("role", "stuck")
        .target_setting(&format!(
            "remote_timeout_ms = {}",
            remote_timeout.as_millis()
        ))
        .start(&nats)
        .await;
    // Online well before a probe could have given up: presence never waited on one.
    assert!(
        started.elapsed() < remote_timeout - Duration::from_secs(5),
        "online after {:?}",
        started.elapsed()
    );
    let facts = relay.facts("box-1").await.expect("the relay wrote facts");
    assert_eq!(facts.relay_user, "alice");
    assert!(facts.relay_offline_reason.is_empty(), "{facts:?}");
    assert_eq!(facts.labels["role"], "stuck");
    assert!(
        facts.kernel.is_empty(),
        "no probe can have answered: {facts:?}"
    );

    let gw = gateway(&nats).await;
    let client = gw.client("alice").await;
    let started = Instant::now();
    let out = client.bash("box-1", "echo hi").await;
    assert!(out.is_error(), "{}", out.text());
    for needle in ["box-1", "did not start within 25s", "startup files"] {
        assert!(
            out.text().contains(needle),
            "{needle} not in {}",
            out.text()
        );
    }
    assert!(started.elapsed() < remote_timeout + AT_ONCE);
    // The target is still served: its heartbeat goes on.
    let last = relay.presence("box-1").await.expect("online");
    eventually(Duration::from_secs(10), || async {
        relay
            .presence("box-1")
            .await
            .is_some_and(|p| p.heartbeat_at_ms > last.heartbeat_at_ms)
    })
    .await;
}
