//! Sends one RunRequest to an agent, as the gateway would, and prints the reply and the output.
//!
//! ```text
//! cargo run -p execmesh-node-agent --example exec -- nats://127.0.0.1:4222 web-1 'uname -a'
//! ```
//! Set `BG=1` to start a background job and print its status only, `KILL=<job>` to kill a job.

use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use async_nats::jetstream::{self, consumer::push};
use execmesh_proto::{Token, pb, subject};
use futures::StreamExt;
use prost::Message as _;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let [_, url, host, cmd] = args.as_slice() else {
        bail!("usage: exec <nats-url> <host-id> <command>");
    };
    let tenant = Token::parse("tenant", "default")?;
    let host = Token::parse("host id", host)?;
    let user = Token::parse("user", "demo")?;
    let client = async_nats::connect(url.as_str()).await?;

    if let Ok(job) = std::env::var("KILL") {
        let req = pb::ControlRequest {
            tenant: tenant.to_string(),
            host: host.to_string(),
            job_id: job,
            user: user.to_string(),
            body: Some(pb::control_request::Body::Kill(pb::KillRequest {
                grace_ms: 0,
            })),
            ..Default::default()
        };
        let msg = client
            .request(subject::ctl(&tenant, &host), req.encode_to_vec().into())
            .await?;
        println!("{:#?}", pb::ControlReply::decode(msg.payload.as_ref())?);
        return Ok(());
    }

    let job = format!("demo-{:08x}", rand::random::<u32>());
    let bg = std::env::var_os("BG").is_some();
    let req = pb::ExecRequest {
        tenant: tenant.to_string(),
        host: host.to_string(),
        job_id: job.clone(),
        user: user.to_string(),
        expires_at_ms: execmesh_proto::now_ms() + 30_000,
        trace_id: String::new(),
        body: Some(pb::exec_request::Body::Run(pb::RunRequest {
            cmd: cmd.clone(),
            inline_window_ms: 2_000,
            inline_max_bytes: 64 * 1024,
            bg,
            ..Default::default()
        })),
        ..Default::default()
    };
    let started = std::time::Instant::now();
    let msg = client
        .request(
            subject::exec(&tenant, &host, &user),
            req.encode_to_vec().into(),
        )
        .await?;
    let reply = pb::ExecReply::decode(msg.payload.as_ref())?;
    eprintln!("reply after {:?}", started.elapsed());
    match reply.body {
        Some(pb::exec_reply::Body::Run(run)) => {
            println!("{:#?}", run.status);
            if bg {
                return Ok(());
            }
            if let Some(inline) = run.inline_output {
                println!("--- inline output ---");
                print!("{}", String::from_utf8_lossy(&inline));
                return Ok(());
            }
        }
        other => {
            println!("{other:#?}");
            return Ok(());
        }
    }

    println!("--- paging {job} from MESH_OUT ---");
    let js = jetstream::new(client.clone());
    let consumer = js
        .get_stream(execmesh_proto::jetstream::OUT_STREAM)
        .await?
        .create_consumer(push::OrderedConfig {
            deliver_subject: client.new_inbox(),
            filter_subject: subject::out(&tenant, &host, &Token::parse("job id", &job)?),
            ..Default::default()
        })
        .await?;
    let mut messages = consumer.messages().await?;
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(3600), messages.next())
            .await?
            .context("stream ended")??;
        match pb::OutputRecord::decode(msg.payload.as_ref())?.body {
            Some(pb::output_record::Body::Chunk(c)) => {
                print!("{}", String::from_utf8_lossy(&c.data))
            }
            Some(pb::output_record::Body::Exit(e)) => {
                println!("--- exit ---\n{:#?}", e.status);
                return Ok(());
            }
            None => {}
        }
    }
}
