//! Temporary: agent-path latency of `true`, sequential requests.
use std::time::{Duration, Instant};

use anyhow::Result;
use execmesh_proto::{Token, pb, subject};
use prost::Message as _;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let url = &args[1];
    let host = Token::parse("host id", &args[2])?;
    let n: usize = args[3].parse()?;
    let tag = &args[4];
    let tenant = Token::parse("tenant", "default")?;
    let user = Token::parse("user", "demo")?;
    let client = async_nats::connect(url.as_str()).await?;
    let mut times = Vec::new();
    for i in 0..n {
        let req = pb::ExecRequest {
            tenant: tenant.to_string(),
            host: host.to_string(),
            job_id: format!("lat-{tag}-{i}"),
            user: user.to_string(),
            expires_at_ms: execmesh_proto::now_ms() + 30_000,
            trace_id: String::new(),
            body: Some(pb::exec_request::Body::Run(pb::RunRequest {
                cmd: "true".into(),
                inline_window_ms: 2000,
                inline_max_bytes: 65536,
                ..Default::default()
            })),
        };
        let t = Instant::now();
        let msg = client
            .request(
                subject::exec(&tenant, &host, &user),
                req.encode_to_vec().into(),
            )
            .await?;
        times.push(t.elapsed());
        let reply = pb::ExecReply::decode(msg.payload.as_ref())?;
        match reply.body {
            Some(pb::exec_reply::Body::Run(r))
                if r.status.as_ref().and_then(|s| s.exit_code) == Some(0) => {}
            other => anyhow::bail!("bad reply {other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    times.sort();
    let p = |q: f64| times[((times.len() as f64 * q) as usize).min(times.len() - 1)].as_micros();
    println!("{tag}: p50 {} p90 {} p99 {} us", p(0.5), p(0.9), p(0.99));
    Ok(())
}
