//! The Hosts page: the hosts a selector resolves to within the signed-in person's reach (every
//! reachable host by default), with their state, labels, a facts summary and their running
//! jobs; the selector box is the dry run the `hosts` tool is, by the same resolution. A large
//! fleet is listed a page at a time, as the tool lists it.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use maud::html;
use serde::Deserialize;

use execmesh_proto::{Token, pb};

use super::ConsoleState;
use super::page::{self, Section};
use super::session::Session;
use crate::core::fanout::{Reach, Targets};
use crate::core::hosts::{self, HostState, MAX_PAGE_HOSTS};
use crate::core::jobs::access::JobAccess;

/// Hosts one page lists unless `limit` says (at most [`MAX_PAGE_HOSTS`]); the counts above the
/// table are of every matching host.
const PAGE_HOSTS: usize = 500;

/// The selector box, and where the page starts.
#[derive(Debug, Default, Deserialize)]
pub struct Selected {
    #[serde(default)]
    selector: String,
    /// The last host of the page before (the "Next hosts" link sets it).
    #[serde(default)]
    after: Option<String>,
    #[serde(default)]
    limit: Option<usize>,
}

/// GET `/console/hosts?selector=…`.
pub async fn list(
    State(state): State<Arc<ConsoleState>>,
    session: Session,
    Query(selected): Query<Selected>,
) -> Response {
    let selector = match selected.selector.trim() {
        "" => "*",
        text => text,
    };
    let groups = &state.config.groups;
    let reach = Reach::of(&session.identity.reach, groups);
    let resolved = Targets::resolve(&state.mesh, selector, groups, &reach, usize::MAX).await;
    let after = match selected.after.as_deref().map(|a| Token::parse("after", a)) {
        Some(Err(e)) => Err(format!("not a host to list after: {e}")),
        Some(Ok(after)) => Ok(Some(after)),
        None => Ok(None),
    };
    let limit = selected
        .limit
        .unwrap_or(PAGE_HOSTS)
        .clamp(1, MAX_PAGE_HOSTS);
    let (targets, error) = match (resolved, after) {
        (Ok(targets), Ok(after)) => (Some((targets, after)), None),
        (Err(e), _) => (None, Some(e.to_string())),
        (_, Err(e)) => (None, Some(e)),
    };
    // Running jobs per host, of those the person may see.
    let access = JobAccess::new(&state.policy.current(), &session.identity.user);
    let mut running: BTreeMap<String, usize> = BTreeMap::new();
    if let Ok(jobs) = state.mesh.jobs().await {
        for job in jobs.iter().filter(|j| access.sees(j)) {
            if job.state() == pb::JobState::Running {
                *running.entry(job.host.clone()).or_default() += 1;
            }
        }
    }
    let now = execmesh_proto::now_ms();
    let status = if error.is_some() {
        StatusCode::BAD_REQUEST
    } else {
        StatusCode::OK
    };
    let body = html! {
        form.inline method="get" action="/console/hosts" role="search" {
            label { "Selector " input #selector type="search" name="selector" value=(selector) size="40"; }
            button type="submit" { "Resolve" }
            span.muted { "e.g. " code { "web-*" } ", " code { "role=db and not @prod" } ", " code { "*" } }
        }
        @if let Some(error) = &error {
            p.error role="alert" #selector-error { (error) }
        }
        @if let Some((targets, after)) = &targets {
            @let (listed, next) = hosts::page(&targets.hosts, after.clone(), limit);
            p #resolved {
                (targets.hosts.len()) " host(s) match within your reach"
                @if !targets.denied.is_empty() {
                    "; " (targets.denied.len()) " more match outside it"
                }
                "."
                @if after.is_some() || next.is_some() {
                    " Listed here: " (listed.len()) ", from "
                    (listed.first().map_or("", |r| r.host.as_str())) " to "
                    (listed.last().map_or("", |r| r.host.as_str())) "."
                }
            }
            table #hosts {
                thead { tr {
                    th scope="col" { "Host" } th scope="col" { "Served by" } th scope="col" { "State" } th scope="col" { "Labels" }
                    th scope="col" { "System" } th scope="col" { "Last heartbeat" } th scope="col" { "Running jobs" }
                } }
                tbody {
                    @for record in &listed {
                        @let id = &record.host;
                        @let facts = record.facts.as_ref();
                        tr data-host=(id) {
                            td { (id) }
                            // A relay target is served over SSH by one user's relay, for that
                            // user's calls only.
                            td.kind { @match record.relay_user() {
                                Some(user) => { "relay of " (user) }
                                None => { "agent" }
                            } }
                            td { span.state { (HostState::of_record(record, now).as_str()) }
                                 @if let Some(why) = &record.unverified { br; span.muted { (why) } }
                                 @if let Some(why) = record.relay_offline_reason() {
                                     br; span.muted { (why) }
                                 } }
                            td { @if let Some(facts) = facts {
                                @for (key, value) in &facts.labels { code { (key) "=" (value) } " " }
                            } }
                            td { @if let Some(facts) = facts {
                                (facts.os) " · " (facts.kernel) " · " (facts.cpus) " CPU · "
                                (facts.memory_bytes / (1024 * 1024)) " MiB"
                            } }
                            td { @match record.last_heartbeat_ms() {
                                Some(at) => { (page::span(now.saturating_sub(at))) " ago" }
                                None => { "never" }
                            } }
                            td {
                                @let count = running.get(id.as_str()).copied().unwrap_or(0);
                                @if count > 0 {
                                    a href={ "/console/jobs?state=running&host=" (id) } { (count) }
                                } @else { "0" }
                            }
                        }
                    }
                }
            }
            @if let Some(next) = &next {
                p { a #next-hosts rel="next" href=(link(selector, Some(next), selected.limit)) { "Next hosts" } }
            }
            @if after.is_some() {
                p { a #first-hosts href=(link(selector, None, selected.limit)) { "First hosts" } }
            }
        }
    };
    page::respond(
        status,
        page::frame(Section::Hosts, "Hosts", Some(&session), body),
    )
}

/// This page's address for `selector`, listing from after the host `after`.
fn link(selector: &str, after: Option<&Token>, limit: Option<usize>) -> String {
    let mut query = url::form_urlencoded::Serializer::new(String::new());
    query.append_pair("selector", selector);
    if let Some(after) = after {
        query.append_pair("after", after.as_str());
    }
    if let Some(limit) = limit {
        query.append_pair("limit", &limit.to_string());
    }
    format!("/console/hosts?{}", query.finish())
}
