//! `relay`: `bash true` through an SSH relay against a multiplexed `ssh` round trip to the same sshd, in the same run, and a 200,000-line relay job paged end to end.

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};

use execmesh_tests::relay::Relay;
use execmesh_tests::sshd::Sshd;
use execmesh_tests::{Gateway, Nats};

use super::{bench_client, finished_job, ms, page_through, percentiles};

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

    let job = finished_job(&client, "seq 1 200000").await?;
    let started = Instant::now();
    let (lines, pages) = page_through(&client, &job).await?;
    let elapsed = started.elapsed();
    if lines != 200_000 {
        bail!("200k-line relay job paged {lines} lines");
    }
    Ok(json!({
        "bash_true_via_relay": percentiles(relay_samples),
        "ssh_controlmaster_true": percentiles(ssh_samples),
        "p50_ratio_relay_to_ssh": (ratio * 100.0).round() / 100.0,
        "job_200k": { "lines": lines, "pages": pages.len(), "end_to_end_ms": ms(elapsed) },
    }))
}
