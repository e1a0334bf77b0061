//! Receives requests on the host's subjects, answers them, and drains work at shutdown.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::{Message, Subscriber};
use bytes::Bytes;
use execmesh_proto::pb::{self, ErrorCode};
use execmesh_proto::subject;
use futures::StreamExt;
use prost::Message as _;
use tokio::sync::watch;
use tokio::time::timeout;
use tracing::{Instrument, debug, error, info, info_span, warn};

use crate::error::AgentError;
use crate::files::{self, Budget};
use crate::job;
use crate::node::Node;
use crate::registry::{Finished, KillOrder};
use crate::request::{self, Order, Refusal};
use crate::runas::{Account, FsCredentials};

/// Extra time a kill request waits for the job's end, beyond its grace period.
const KILL_REPLY_SLACK: Duration = Duration::from_secs(5);
/// How long killed jobs may take to store their end before publishing is abandoned.
const KILLED_STORE_LIMIT: Duration = Duration::from_secs(10);
/// Time kept between a search's deadline and the request's expiry, for the reply to travel.
const GREP_REPLY_MARGIN: Duration = Duration::from_millis(500);

/// The host's request subscriptions.
pub struct Subscriptions {
    /// `…host.<host>.exec.*`.
    exec: Subscriber,
    /// `…host.<host>.ctl`.
    ctl: Subscriber,
}

/// Subscribes to the host's subjects. Messages wait in the subscriptions until [`serve`] runs,
/// so the agent can subscribe first and announce itself after.
pub async fn subscribe(node: &Node) -> Result<Subscriptions, AgentError> {
    let sub = |subject: String| async move {
        node.client
            .subscribe(subject.clone())
            .await
            .map_err(|source| AgentError::Subscribe { subject, source })
    };
    Ok(Subscriptions {
        exec: sub(subject::exec_all_users(node.tenant(), node.host())).await?,
        ctl: sub(subject::ctl(node.tenant(), node.host())).await?,
    })
}

/// Longest wait for the server to take an unsubscribe at shutdown.
const UNSUBSCRIBE_LIMIT: Duration = Duration::from_secs(2);

/// Serves requests until `node.stopping`, then refuses new work while running jobs drain (kill
/// requests are still served), kills what outlives the grace period, and returns.
pub async fn serve(node: Arc<Node>, mut subs: Subscriptions) {
    loop {
        tokio::select! {
            _ = node.stopping.cancelled() => break,
            msg = subs.exec.next() => match msg {
                Some(msg) => spawn_exec(&node, msg),
                None => {
                    error!("the request subscription ended; stopping");
                    break;
                }
            },
            msg = subs.ctl.next() => match msg {
                Some(msg) => spawn_ctl(&node, msg),
                None => {
                    error!("the control subscription ended; stopping");
                    break;
                }
            },
        }
    }

    info!(
        running = node.registry.len(),
        "shutting down: taking no new jobs"
    );
    // Unsubscribing is a message to the server: with NATS unreachable it would wait for the
    // reconnect, so it is skipped (the server drops the subscriptions with the connection).
    let online = node.client.connection_state() == async_nats::connection::State::Connected;
    if !online {
        warn!("NATS is unreachable: stopping without unsubscribing or saying goodbye");
    } else if let Ok(Err(e)) = tokio::time::timeout(UNSUBSCRIBE_LIMIT, subs.exec.drain()).await {
        warn!(error = %e, "unsubscribing from requests failed");
    }
    let drain = drain_jobs(&node);
    tokio::pin!(drain);
    let (mut exec_open, mut ctl_open) = (true, true);
    loop {
        tokio::select! {
            _ = &mut drain => break,
            msg = subs.exec.next(), if exec_open => match msg {
                Some(msg) => refuse_shutting_down(&node, msg).await,
                None => exec_open = false,
            },
            msg = subs.ctl.next(), if ctl_open => match msg {
                Some(msg) => spawn_ctl(&node, msg),
                None => ctl_open = false,
            },
        }
    }
    if online
        && let Ok(Err(e)) = tokio::time::timeout(UNSUBSCRIBE_LIMIT, subs.ctl.unsubscribe()).await
    {
        debug!(error = %e, "unsubscribing from control failed");
    }
}

/// Waits for running jobs up to the shutdown grace, then kills the rest and waits for them to
/// store their end; abandons NATS writes only when even that does not finish.
async fn drain_jobs(node: &Node) {
    node.jobs.close();
    if !node.jobs.is_empty() {
        info!(
            running = node.registry.len(),
            grace_ms = node.config.shutdown_grace_ms,
            "waiting for running jobs"
        );
    }
    if timeout(node.config.shutdown_grace(), node.jobs.wait())
        .await
        .is_err()
    {
        warn!(
            running = node.registry.len(),
            "shutdown grace over; killing running jobs"
        );
        node.kill_all.cancel();
        let limit = node.config.kill_grace() + KILLED_STORE_LIMIT;
        if timeout(limit, node.jobs.wait()).await.is_err() {
            warn!("killed jobs could not store their end; abandoning their output");
            node.hard_stop.cancel();
            let _ = timeout(Duration::from_secs(2), node.jobs.wait()).await;
        }
    }
    node.handlers.close();
    let _ = timeout(Duration::from_secs(2), node.handlers.wait()).await;
}

fn spawn_exec(node: &Arc<Node>, msg: Message) {
    let node2 = Arc::clone(node);
    node.handlers.spawn(async move {
        let reply_to = msg.reply.clone();
        let reply = exec(&node2, msg).await;
        send_reply(&node2, reply_to, reply.encode_to_vec()).await;
    });
}

fn spawn_ctl(node: &Arc<Node>, msg: Message) {
    let node2 = Arc::clone(node);
    node.handlers.spawn(async move {
        let reply_to = msg.reply.clone();
        let reply = control(&node2, msg).await;
        send_reply(&node2, reply_to, reply.encode_to_vec()).await;
    });
}

async fn refuse_shutting_down(node: &Node, msg: Message) {
    let host = node.host();
    let reply = exec_error(&Refusal::new(
        ErrorCode::ShuttingDown,
        format!("host {host} is shutting down and takes no new jobs"),
    ));
    send_reply(node, msg.reply, reply.encode_to_vec()).await;
}

async fn send_reply(node: &Node, reply_to: Option<async_nats::Subject>, payload: Vec<u8>) {
    let Some(reply_to) = reply_to else {
        debug!("request without a reply subject; nothing to answer");
        return;
    };
    if let Err(e) = node.client.publish(reply_to, Bytes::from(payload)).await {
        warn!(error = %e, "sending a reply failed");
    }
}

fn exec_error(refusal: &Refusal) -> pb::ExecReply {
    pb::ExecReply {
        body: Some(pb::exec_reply::Body::Error(refusal.to_pb())),
    }
}

fn run_reply(status: pb::JobStatus, inline_output: Option<Vec<u8>>) -> pb::ExecReply {
    pb::ExecReply {
        body: Some(pb::exec_reply::Body::Run(pb::RunReply {
            status: Some(status),
            inline_output,
        })),
    }
}

/// Answers one ExecRequest.
async fn exec(node: &Arc<Node>, msg: Message) -> pb::ExecReply {
    let host = node.host();
    let req = match pb::ExecRequest::decode(msg.payload.as_ref()) {
        Ok(req) => req,
        Err(e) => {
            warn!(subject = %msg.subject, error = %e, "malformed request");
            return exec_error(&Refusal::new(
                ErrorCode::Invalid,
                format!("host {host}: malformed ExecRequest: {e}"),
            ));
        }
    };
    let subject_user = msg.subject.rsplit('.').next().unwrap_or_default();
    let order = match node.admission.exec(
        &msg.payload,
        req,
        subject_user,
        msg.headers.as_ref(),
        &node.config,
        execmesh_proto::now_ms(),
    ) {
        Ok(order) => order,
        Err(refusal) => {
            // A guard refusal quotes the command: the log gets it redacted.
            warn!(subject = %msg.subject, reason = %node.redactor.text(&refusal.message),
                  "request refused");
            return exec_error(&refusal);
        }
    };
    match order {
        Order::Run(spec) => {
            let span = info_span!("job", host = %host, job = %spec.job, user = %spec.user,
                                  trace_id = %spec.trace_id);
            run(node, spec).instrument(span).await
        }
        Order::File(spec) => {
            let span = info_span!("file", host = %host, job = %spec.job, user = %spec.user,
                                  op = files::op_name(&spec.request),
                                  path = %files::op_path(&spec.request),
                                  trace_id = %spec.trace_id);
            file(node, spec).instrument(span).await
        }
        Order::Grep(spec) => {
            let span = info_span!("grep", host = %host, job = %spec.job, user = %spec.user,
                                  paths = spec.request.paths.len(),
                                  digest = spec.request.digest,
                                  trace_id = %spec.trace_id);
            grep(node, spec).instrument(span).await
        }
        Order::Facts(spec) => {
            let span = info_span!("facts", host = %host, job = %spec.job, user = %spec.user,
                                  refresh = spec.refresh, trace_id = %spec.trace_id);
            facts(node, spec).instrument(span).await
        }
    }
}

/// Runs one host's share of a fan-out grep on the blocking pool (with a file-worker permit, so
/// searches never take every blocking thread), bounded by the request's expiry and the grep
/// timeout; the reply always fits the server's max payload.
async fn grep(node: &Arc<Node>, spec: request::GrepSpec) -> pb::ExecReply {
    let host = node.host();
    if node.stopping.is_cancelled() {
        return exec_error(&Refusal::new(
            ErrorCode::ShuttingDown,
            format!("host {host} is shutting down and takes no new requests"),
        ));
    }
    let max_payload = node.client.server_info().max_payload;
    let limits = node.config.grep_limits();
    // Stop searching a little before the request expires, so the partial answer still arrives
    // while the caller waits.
    let left = Duration::from_millis(spec.expires_at_ms.saturating_sub(execmesh_proto::now_ms()));
    let left = left.saturating_sub((left / 10).min(GREP_REPLY_MARGIN));
    let deadline = Instant::now() + left.min(limits.timeout);
    let reply_bytes = Budget::new(max_payload, deadline).reply_bytes;
    let work = node.files.run_blocking(move |files| {
        crate::grep::grep(files, &limits, spec.request, reply_bytes, deadline)
    });
    // Waiting for a worker counts against the request's time too; a search that started
    // returns by itself at the deadline.
    let result = match tokio::time::timeout_at((deadline + GREP_REPLY_MARGIN).into(), work).await {
        Ok(Ok(result)) => result,
        Ok(Err(e)) => {
            return exec_error(&Refusal::new(
                ErrorCode::Internal,
                format!("host {host}: the search task failed: {e}"),
            ));
        }
        Err(_) => {
            return exec_error(&Refusal::new(
                ErrorCode::Busy,
                format!("host {host}: no search worker became free before the request expired"),
            ));
        }
    };
    match result {
        Ok(result) => {
            let reply = pb::ExecReply {
                body: Some(pb::exec_reply::Body::Grep(result)),
            };
            let len = reply.encoded_len();
            if len > max_payload {
                warn!(len, max_payload, "grep reply over the max payload");
                return exec_error(&Refusal::new(
                    ErrorCode::TooLarge,
                    format!(
                        "host {host}: the reply would be {len} bytes, over the NATS max payload of {max_payload}; ask for fewer matches"
                    ),
                ));
            }
            debug!("grep answered");
            reply
        }
        Err(e) => {
            info!(code = e.code().as_str_name(), reason = %e, "grep refused");
            exec_error(&Refusal::new(e.code(), format!("host {host}: {e}")))
        }
    }
}

/// Answers with the cached fact pack, or collects, stores and answers with a fresh one.
async fn facts(node: &Arc<Node>, spec: request::FactsSpec) -> pb::ExecReply {
    let facts = if spec.refresh {
        match node.facts.refresh().await {
            Ok(facts) => facts,
            Err(e) => {
                warn!(error = %e, "refreshing the facts failed");
                return exec_error(&Refusal::new(
                    ErrorCode::Internal,
                    format!("host {}: {e}", node.host()),
                ));
            }
        }
    } else {
        node.facts.cached()
    };
    pb::ExecReply {
        body: Some(pb::exec_reply::Body::Facts(pb::FactsReply {
            facts: Some(facts),
        })),
    }
}

/// Runs one file operation; the reply carries its result or a refusal naming the host, and
/// always fits the server's max payload.
async fn file(node: &Arc<Node>, spec: request::FileSpec) -> pb::ExecReply {
    let host = node.host();
    if node.stopping.is_cancelled() {
        return exec_error(&Refusal::new(
            ErrorCode::ShuttingDown,
            format!("host {host} is shutting down and takes no new requests"),
        ));
    }
    let max_payload = node.client.server_info().max_payload;
    let budget = Budget::until_expiry(max_payload, spec.expires_at_ms);
    let change = crate::audit::FileChange::of(&spec.request);
    match serve_file(node, spec.request, budget, spec.account).await {
        Ok(result) => {
            if let Some(change) = change {
                let origin = crate::audit::Origin {
                    job: spec.job.as_str(),
                    user: spec.user.as_str(),
                    trace_id: &spec.trace_id,
                };
                node.audit.file_changed(origin, change, &result);
            }
            let reply = pb::ExecReply {
                body: Some(pb::exec_reply::Body::File(result)),
            };
            let len = reply.encoded_len();
            if len > max_payload {
                warn!(len, max_payload, "file reply over the max payload");
                return exec_error(&Refusal::new(
                    ErrorCode::TooLarge,
                    format!(
                        "host {host}: the reply would be {len} bytes, over the NATS max payload of {max_payload}; ask for less"
                    ),
                ));
            }
            debug!("file request answered");
            reply
        }
        Err(e) => {
            info!(code = e.code().as_str_name(), reason = %e, "file request refused");
            exec_error(&Refusal::new(e.code(), format!("host {host}: {e}")))
        }
    }
}

/// Runs a file operation on a file worker, acting as `account` when it is not the agent's own:
/// the kernel checks access as the account and new files belong to it.
async fn serve_file(
    node: &Arc<Node>,
    request: pb::FileRequest,
    budget: Budget,
    account: Option<Account>,
) -> Result<pb::FileReply, files::FileError> {
    let Some(account) = account.filter(Account::switches) else {
        return node.files.serve(request, budget).await;
    };
    node.files
        .run_blocking(move |files| {
            let _as = FsCredentials::assume(&account).map_err(|source| files::FileError::Io {
                path: String::new(),
                op: "taking on the run-as account",
                source,
            })?;
            files.handle(request, &budget)
        })
        .await
        .unwrap_or_else(|source| {
            Err(files::FileError::Io {
                path: String::new(),
                op: "the file task",
                source,
            })
        })
}

async fn run(node: &Arc<Node>, spec: request::RunSpec) -> pb::ExecReply {
    let host = node.host();
    let refused = |refusal: Refusal| {
        warn!(code = refusal.code.as_str_name(), reason = %node.redactor.text(&refusal.message),
              "request refused");
        exec_error(&refusal)
    };
    if node.stopping.is_cancelled() {
        return refused(Refusal::new(
            ErrorCode::ShuttingDown,
            format!("host {host} is shutting down and takes no new jobs"),
        ));
    }
    let Ok(permit) = Arc::clone(&node.permits).try_acquire_owned() else {
        return refused(Refusal::new(
            ErrorCode::Busy,
            format!(
                "host {host} runs its maximum of {} jobs",
                node.config.max_jobs
            ),
        ));
    };
    let (bg, window) = (spec.bg, spec.inline_window);
    let mut started = match job::start(node, spec, permit).await {
        Ok(started) => started,
        Err(refusal) => return refused(refusal),
    };
    let Ok(running) = (&mut started.running).await else {
        return exec_error(&Refusal::new(
            ErrorCode::Internal,
            format!("host {host}: the job task ended before the job was recorded"),
        ));
    };
    if bg || window.is_zero() {
        return run_reply(running, None);
    }
    match timeout(window, wait_finished(&mut started.done)).await {
        Ok(Some(finished)) => {
            let reply = run_reply(finished.status.clone(), finished.inline.clone());
            if reply.encoded_len() > node.client.server_info().max_payload {
                // The caller pages the output instead.
                run_reply(finished.status.clone(), None)
            } else {
                reply
            }
        }
        _ => run_reply(running, None),
    }
}

async fn wait_finished(done: &mut watch::Receiver<Option<Arc<Finished>>>) -> Option<Arc<Finished>> {
    done.wait_for(Option::is_some)
        .await
        .ok()
        .and_then(|finished| finished.clone())
}

fn control_error(refusal: &Refusal) -> pb::ControlReply {
    pb::ControlReply {
        body: Some(pb::control_reply::Body::Error(refusal.to_pb())),
    }
}

fn control_status(status: pb::JobStatus) -> pb::ControlReply {
    pb::ControlReply {
        body: Some(pb::control_reply::Body::Status(status)),
    }
}

/// Answers one ControlRequest.
async fn control(node: &Node, msg: Message) -> pb::ControlReply {
    let host = node.host();
    let req = match pb::ControlRequest::decode(msg.payload.as_ref()) {
        Ok(req) => req,
        Err(e) => {
            return control_error(&Refusal::new(
                ErrorCode::Invalid,
                format!("host {host}: malformed ControlRequest: {e}"),
            ));
        }
    };
    let spec =
        match node
            .admission
            .control(&msg.payload, req, &node.config, execmesh_proto::now_ms())
        {
            Ok(spec) => spec,
            Err(refusal) => {
                warn!(subject = %msg.subject, reason = %refusal.message, "control request refused");
                return control_error(&refusal);
            }
        };
    let span = info_span!("kill", host = %host, job = %spec.job, user = %spec.user);
    async {
        let job = &spec.job;
        if let Some(handle) = node.registry.get(job) {
            let reason = if spec.user.is_empty() {
                "killed on request".to_string()
            } else {
                format!("killed on request of {}", spec.user)
            };
            info!(grace_ms = spec.grace.as_millis() as u64, "kill requested");
            // A full channel means a kill is already under way; this request waits for it too.
            let _ = handle.kill.try_send(KillOrder {
                grace: spec.grace,
                reason,
            });
            let mut done = handle.done;
            return match timeout(spec.grace + KILL_REPLY_SLACK, wait_finished(&mut done)).await {
                Ok(Some(finished)) => control_status(finished.status.clone()),
                _ => control_error(&Refusal::new(
                    ErrorCode::Internal,
                    format!(
                        "host {host}: job {job} did not end within {} ms of the kill request; it is still being stopped",
                        (spec.grace + KILL_REPLY_SLACK).as_millis()
                    ),
                )),
            };
        }
        // Not running here: report how it ended, if it is known at all.
        match node.jobs_kv.get(node.job_key(job)).await {
            Ok(Some(bytes)) => match pb::JobStatus::decode(bytes.as_ref()) {
                Ok(status) => control_status(status),
                Err(e) => control_error(&Refusal::new(
                    ErrorCode::Internal,
                    format!("host {host}: the stored status of job {job} is unreadable: {e}"),
                )),
            },
            Ok(None) => control_error(&Refusal::new(
                ErrorCode::UnknownJob,
                format!("job {job} is not known on host {host}"),
            )),
            Err(e) => control_error(&Refusal::new(
                ErrorCode::Internal,
                format!("host {host}: cannot read the status of job {job}: {e}"),
            )),
        }
    }
    .instrument(span)
    .await
}
