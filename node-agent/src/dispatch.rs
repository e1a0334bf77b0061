//! Receives requests on the host's subjects and routes each to the handler of its kind; refuses new work once the agent stops.

use std::sync::Arc;
use std::time::Duration;

use async_nats::{Message, Subscriber};
use bytes::Bytes;
use execmesh_proto::pb::{self, ErrorCode};
use execmesh_proto::{Token, subject};
use futures::StreamExt;
use prost::Message as _;
use tracing::{Instrument, debug, error, info, info_span, warn};

use execmesh_runtime::telemetry;

use crate::drain::drain_jobs;
use crate::error::AgentError;
use crate::files;
use crate::handler::{self, control_error, exec_error};
use crate::node::Node;
use crate::refusal::{NewWork, Refusal};
use crate::request::{ControlOrder, Order};

/// The host's request subscriptions.
pub struct Subscriptions {
    /// `…host.<host>.exec.*`.
    exec: Subscriber,
    /// `…host.<host>.ctl`.
    ctl: Subscriber,
}

/// Subscribes to the host's subjects — all users' (an agent), or only `user`'s (a relay).
/// Messages wait in the subscriptions until [`serve`] runs, so the agent can subscribe first
/// and announce itself after.
pub async fn subscribe(node: &Node, user: Option<&Token>) -> Result<Subscriptions, AgentError> {
    let sub = |subject: String| async move {
        node.client
            .subscribe(subject.clone())
            .await
            .map_err(|source| AgentError::Subscribe { subject, source })
    };
    let (exec, ctl) = match user {
        None => (
            subject::exec_all_users(node.tenant(), node.host()),
            subject::ctl(node.tenant(), node.host()),
        ),
        Some(user) => (
            subject::exec(node.tenant(), node.host(), user),
            subject::ctl_of_user(node.tenant(), node.host(), user),
        ),
    };
    Ok(Subscriptions {
        exec: sub(exec).await?,
        ctl: sub(ctl).await?,
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

fn spawn_exec(node: &Arc<Node>, msg: Message) {
    // The request's span continues the gateway's (its `traceparent` header): admission, the
    // handler's span and the audit events it writes are its children.
    // The trace id on every line logged inside the request, admission included.
    let trace_id = (msg.headers.as_ref())
        .and_then(|h| h.get(execmesh_proto::headers::TRACEPARENT))
        .and_then(|v| crate::request::trace_id_of(v.as_str()))
        .unwrap_or_default();
    let span = info_span!("exec_request", host = %node.host(), subject = %msg.subject,
                          trace_id = %trace_id, refused = tracing::field::Empty,
                          otel.status_code = tracing::field::Empty);
    if let Some(headers) = &msg.headers {
        let cx = telemetry::extract(&telemetry::NatsHeaders(headers));
        telemetry::continue_from(&span, cx);
    }
    spawn_answer(node, msg, |node, msg| {
        async move { exec(&node, msg).await }.instrument(span)
    });
}

fn spawn_ctl(node: &Arc<Node>, msg: Message) {
    spawn_answer(
        node,
        msg,
        |node, msg| async move { control(&node, msg).await },
    );
}

/// Answers `msg` on a handler task: `answer` builds the reply, which goes to the reply subject.
fn spawn_answer<F>(node: &Arc<Node>, msg: Message, answer: impl FnOnce(Arc<Node>, Message) -> F)
where
    F: Future<Output: prost::Message> + Send + 'static,
{
    let reply_to = msg.reply.clone();
    let reply = answer(Arc::clone(node), msg);
    let node2 = Arc::clone(node);
    node.handlers.spawn(async move {
        send_reply(&node2, reply_to, reply.await.encode_to_vec()).await;
    });
}

/// Answers a request that arrives while the running jobs drain: the agent no longer reads it.
async fn refuse_shutting_down(node: &Node, msg: Message) {
    let reply = exec_error(&Refusal::shutting_down(node.host(), NewWork::Jobs));
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

/// What a stopping agent refuses of an admitted order; a fact pack is still answered.
fn new_work(order: &Order) -> Option<NewWork> {
    match order {
        Order::Run(_) => Some(NewWork::Jobs),
        Order::File(_) | Order::Grep(_) => Some(NewWork::Requests),
        Order::Facts(_) => None,
    }
}

/// Answers one ExecRequest: decodes and admits it, then hands it to the handler of its kind.
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
    let admitted = node.admission.exec(
        &msg.payload,
        req,
        subject_user,
        msg.headers.as_ref(),
        &node.config,
        execmesh_proto::now_ms(),
    );
    let order = admitted.and_then(|order| match new_work(&order) {
        Some(work) if node.stopping.is_cancelled() => Err(Refusal::shutting_down(host, work)),
        _ => Ok(order),
    });
    let order = match order {
        Ok(order) => order,
        Err(refusal) => {
            // A guard refusal quotes the command: the log gets it redacted.
            let reason = node.redactor.text(&refusal.message);
            tracing::Span::current()
                .record("refused", refusal.code.as_str_name())
                .record("otel.status_code", "ERROR");
            warn!(subject = %msg.subject, code = refusal.code.as_str_name(),
                  reason = %reason, "request refused");
            return exec_error(&refusal);
        }
    };
    match order {
        Order::Run(spec) => {
            let span = info_span!("job", host = %host, job = %spec.job, user = %spec.user,
                                  trace_id = %spec.trace_id);
            handler::run::handle(node, spec).instrument(span).await
        }
        Order::File(spec) => {
            let span = info_span!("file", host = %host, job = %spec.job, user = %spec.user,
                                  op = spec.request.op_name(),
                                  path = %files::op_path(&spec.request),
                                  trace_id = %spec.trace_id);
            handler::file::handle(node, spec).instrument(span).await
        }
        Order::Grep(spec) => {
            let span = info_span!("grep", host = %host, job = %spec.job, user = %spec.user,
                                  paths = spec.request.paths.len(),
                                  digest = spec.request.digest,
                                  trace_id = %spec.trace_id);
            handler::grep::handle(node, spec).instrument(span).await
        }
        Order::Facts(spec) => {
            let span = info_span!("facts", host = %host, job = %spec.job, user = %spec.user,
                                  refresh = spec.refresh, trace_id = %spec.trace_id);
            handler::facts::handle(node, spec).instrument(span).await
        }
    }
}

/// Answers one ControlRequest: decodes and admits it, then hands it to the control handler.
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
    let span = match spec.order {
        ControlOrder::Kill { .. } => {
            info_span!("kill", host = %host, job = %spec.job, user = %spec.user)
        }
        ControlOrder::Query => {
            info_span!("query", host = %host, job = %spec.job, user = %spec.user)
        }
    };
    handler::control::handle(node, spec).instrument(span).await
}
