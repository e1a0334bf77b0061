//! `relay`: `bash true` through an SSH relay against a multiplexed `ssh` round trip to the same sshd, in the same run, and a 200,000-line relay job paged end to end. `relay-files`: the file tool and grep on a relay target (over SFTP) next to an agent host reading the same files.

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};

use execmesh_tests::relay::Relay;
use execmesh_tests::sshd::Sshd;
use execmesh_tests::{Gateway, Nats};

use super::{agent_with_root, bench_client, median, ms, paged_200k, percentiles};

/// Lines of the log searched and paged by `relay-files` (about 10 MB).
const LOG_LINES: u32 = 200_000;
/// Bytes of the file copied agent → relay target by `relay-files`.
const COPY_BYTES: usize = 20 * 1000 * 1000;
/// Runs of each timed file call.
const FILE_RUNS: usize = 5;

/// Calls measured on each side.
const CALLS: usize = 300;
/// Calls made first and not measured.
const WARMUP: usize = 20;

pub async fn relay() -> anyhow::Result<Value> {
    let nats = Nats::start().await;
    let sshd = Sshd::start().await;
    // The target is called `bench-1`, the host the other scenarios' helpers address.
    let _relay = Relay::new(&nats, "bench")
        .target("bench-1", &sshd)
        .start(&nats)
        .await;
    let gw = Gateway::new(&nats).start().await;
    let client = bench_client(&gw, Duration::from_secs(120)).await;

    let mut relay_samples = Vec::with_capacity(CALLS);
    for i in 0..WARMUP + CALLS {
        let started = Instant::now();
        let out = client
            .try_call("bash", json!({"host": "bench-1", "cmd": "true"}))
            .await
            .context("bash through the relay")?;
        if out.is_error() {
            bail!("bash through the relay failed: {}", out.text());
        }
        if i >= WARMUP {
            relay_samples.push(started.elapsed());
        }
    }

    // The same sshd over plain ssh with a ControlMaster of its own: the multiplexed round trip
    // the relay is compared with.
    let control = sshd.path("bench-master");
    let ssh = |persist: bool| {
        let mut command = Command::new("ssh");
        command
            .arg("-F")
            .arg(sshd.ssh_config())
            .arg("-o")
            .arg("ControlMaster=auto")
            .arg("-o")
            .arg(format!("ControlPath={}", control.display()));
        if persist {
            command.arg("-o").arg("ControlPersist=120");
        }
        command.arg(sshd.alias()).arg("true");
        command
    };
    let status = ssh(true).status().context("start the ssh master")?;
    if !status.success() {
        bail!("ssh to the bench sshd failed: {status}");
    }
    let mut ssh_samples = Vec::with_capacity(CALLS);
    for i in 0..WARMUP + CALLS {
        let started = Instant::now();
        let status = ssh(false).status().context("ssh true")?;
        if !status.success() {
            bail!("ssh true failed: {status}");
        }
        if i >= WARMUP {
            ssh_samples.push(started.elapsed());
        }
    }
    let _ = Command::new("ssh")
        .arg("-o")
        .arg(format!("ControlPath={}", control.display()))
        .args(["-O", "exit", sshd.alias()])
        .status();

    let median = |v: &[Duration]| {
        let mut v = v.to_vec();
        v.sort();
        v[v.len() / 2]
    };
    let ratio = median(&relay_samples).as_secs_f64() / median(&ssh_samples).as_secs_f64();

    let (pages, elapsed) = paged_200k(&client, "relay job").await?;
    Ok(json!({
        "bash_true_via_relay": percentiles(relay_samples),
        "ssh_controlmaster_true": percentiles(ssh_samples),
        "p50_ratio_relay_to_ssh": (ratio * 100.0).round() / 100.0,
        "job_200k": { "lines": 200_000, "pages": pages.len(), "end_to_end_ms": ms(elapsed) },
    }))
}

/// The file tool and grep on a relay target next to an agent host serving the same directory
/// (one machine): a grep with a digest over a 200,000-line log, the same log paged to its end,
/// and a 20 MB copy from the agent to the target.
pub async fn relay_files() -> anyhow::Result<Value> {
    let nats = Nats::start().await;
    let sshd = Sshd::start().await;
    let dir = tempfile::Builder::new()
        .prefix("execmesh-bench-relay-files-")
        .tempdir()?;
    let root = std::fs::canonicalize(dir.path())?;
    let log = root.join("app.log");
    let text: String = (0..LOG_LINES)
        .map(|i| {
            format!(
                "2026-12-02T10:00:00Z INFO request {i} served in {}ms\n",
                i % 97
            )
        })
        .collect();
    std::fs::write(&log, text)?;
    std::fs::write(root.join("blob.bin"), vec![7u8; COPY_BYTES])?;
    let _agent = agent_with_root(&nats, "bench-agent", &root).await;
    let _relay = Relay::new(&nats, "bench")
        .target("bench-1", &sshd)
        .target_setting(&format!("file_roots = [{:?}]", root.display().to_string()))
        .start(&nats)
        .await;
    let gw = Gateway::new(&nats).start().await;
    let client = bench_client(&gw, Duration::from_secs(300)).await;
    let path = log.display().to_string();

    let mut report = json!({});
    for host in ["bench-agent", "bench-1"] {
        let mut greps = Vec::with_capacity(FILE_RUNS);
        for _ in 0..FILE_RUNS {
            let started = Instant::now();
            let out = client
                .try_call(
                    "grep",
                    json!({"hosts": host, "pattern": "served in 9[0-6]ms", "paths": [path], "digest": true}),
                )
                .await?;
            if out.is_error() || out.structured()["counts"]["ok"] != 1 {
                bail!("grep on {host} failed: {}", out.text());
            }
            greps.push(started.elapsed());
        }
        let started = Instant::now();
        let mut cursor: Option<String> = None;
        let mut pages = 0;
        loop {
            let mut args =
                json!({"host": host, "action": "read", "path": path, "max_lines": 10000});
            if let Some(c) = &cursor {
                args["cursor"] = json!(c);
            }
            let out = client.try_call("file", args).await?;
            if out.is_error() {
                bail!("read on {host} failed: {}", out.text());
            }
            pages += 1;
            let s = out.structured();
            if s["eof"] == true {
                break;
            }
            cursor = Some(s["next_cursor"].as_str().context("no cursor")?.to_string());
        }
        report[host.replace('-', "_")] = json!({
            "grep_digest_10mb_p50_ms": ms(median(greps)),
            "read_200k_lines_paged_ms": ms(started.elapsed()),
            "pages": pages,
        });
    }
    let started = Instant::now();
    let out = client
        .try_call(
            "file",
            json!({"host": "bench-agent", "action": "copy", "path": root.join("blob.bin"),
                   "to_host": "bench-1", "to": root.join("copied.bin")}),
        )
        .await?;
    if out.is_error() {
        bail!("copy to the relay target failed: {}", out.text());
    }
    report["copy_20mb_agent_to_relay_ms"] = json!(ms(started.elapsed()));
    Ok(report)
}
