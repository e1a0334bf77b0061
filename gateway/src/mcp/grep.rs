//! `grep`: one search over many hosts' files, run on each node with ripgrep's crates; capped
//! per host, every host with one status, and optionally a cross-host digest of matching lines
//! grouped by their normalised form, rarest first.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use rmcp::model::{CallToolResult, Tool};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use execmesh_proto::{Token, pb};

use super::{Call, dispatch, seconds, structured};
use crate::core::error::ToolError;
use crate::core::fanout::{self, Amount, HostStatus, Outcome, Plan};

/// Per-host timeout when the call names none.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// Matches all hosts together return by default; each host's default share is at least
/// [`MIN_DEFAULT_MATCHES`] and at most [`MAX_DEFAULT_MATCHES`].
const DEFAULT_MATCH_BUDGET: usize = 2000;
const MIN_DEFAULT_MATCHES: usize = 5;
const MAX_DEFAULT_MATCHES: usize = 100;
/// Most matches per host a caller may ask for.
const MAX_MATCHES: u32 = 10_000;
/// Text bytes of matches the rendering shows before summarising the rest.
const TEXT_BUDGET: usize = 256 * 1024;
/// Digest groups shown by default.
const DEFAULT_GROUPS: usize = 20;
/// Hosts named per digest group.
const GROUP_HOSTS: usize = 10;

#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum GrepMode {
    /// Matching lines with path and line number (and context).
    #[default]
    Matches,
    /// The number of matching lines per file.
    Count,
    /// Only the files that match.
    Files,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GrepParams {
    /// Which hosts to search: a selector (`web-*`, `role=web and not @canary`, `*`); see `hosts`.
    pub hosts: String,
    /// A regular expression (Rust/ripgrep syntax), or a literal string with `fixed: true`.
    pub pattern: String,
    /// Files or directories to search (directories recursively); each must be inside the host's
    /// allowed roots. Default `["/var/log"]`.
    #[serde(default)]
    pub paths: Option<Vec<String>>,
    /// File-name globs under directories, e.g. `["*.log", "!*.gz"]`.
    #[serde(default)]
    pub globs: Option<Vec<String>>,
    /// Treat `pattern` as a literal string.
    #[serde(default)]
    pub fixed: Option<bool>,
    #[serde(default)]
    pub ignore_case: Option<bool>,
    /// Lines of context before and after each match (matches mode, at most 10).
    #[serde(default)]
    pub context: Option<u32>,
    /// Most matches (or files) returned per host; the count of all matches is always exact.
    /// Default: 2000 shared among the hosts (5 to 100 each).
    #[serde(default)]
    pub max_matches: Option<u32>,
    /// matches (default), count (per file) or files (names only).
    #[serde(default, deserialize_with = "super::strict::optional_name")]
    pub mode: Option<GrepMode>,
    /// Group every matching line across hosts after replacing numbers, hex, UUIDs, IPs and
    /// timestamps with placeholders; list the rarest groups first with their hosts. Use it to
    /// find what is unusual ("appears on 1 of 40 hosts").
    #[serde(default)]
    pub digest: Option<bool>,
    /// Digest groups returned (default 20, at most 500).
    #[serde(default)]
    pub max_groups: Option<usize>,
    /// Most hosts searched at once, a count or a percentage.
    #[serde(default)]
    pub batch: Option<Amount>,
    /// Seconds each host may take (default 30).
    #[serde(default)]
    pub timeout: Option<f64>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct GrepResult {
    pub selector: String,
    /// "40 host(s): 39 ok, 1 offline; 1234 matching lines on 12 hosts".
    pub summary: String,
    /// Hosts per status.
    pub counts: BTreeMap<String, usize>,
    /// Matching lines on all hosts (exact, including those past the caps).
    pub total_matches: u64,
    /// Every targeted host once, by host id.
    pub hosts: Vec<HostGrep>,
    /// Cross-host groups of matching lines, rarest first (with `digest: true`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub digest: Option<Vec<DigestRow>>,
    /// Distinct digest groups over all hosts (some hosts may have cut their list).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub digest_groups_total: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stopped: Option<String>,
}

#[derive(Debug, Default, Serialize, JsonSchema)]
pub struct HostGrep {
    pub host: String,
    pub status: Option<HostStatus>,
    pub reason: String,
    pub total_matches: u64,
    pub files_searched: u64,
    pub files_matched: u64,
    /// True when this host's matches (or files) were cut (at `max_matches`, the reply's byte
    /// budget or the host's search deadline).
    pub truncated: bool,
    /// Why they were cut, in the host's words.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub truncated_reason: Option<String>,
    /// Matching lines of new shapes the host could not group any more (its digest was full).
    #[serde(skip_serializing_if = "is_zero")]
    pub digest_lines_ungrouped: u64,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub matches: Vec<MatchView>,
    /// count / files modes: per-file counts.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<FileCount>,
    /// Paths that could not be searched on this host, with why.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub path_errors: Vec<String>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct MatchView {
    pub path: String,
    /// 1-based line number.
    pub line: u64,
    pub text: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub before: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub after: Vec<String>,
}

impl From<pb::GrepMatch> for MatchView {
    fn from(m: pb::GrepMatch) -> MatchView {
        MatchView {
            path: m.path,
            line: m.line,
            text: m.text,
            before: m.before,
            after: m.after,
        }
    }
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct FileCount {
    pub path: String,
    pub count: u64,
}

/// One digest group across hosts.
#[derive(Debug, Serialize, JsonSchema)]
pub struct DigestRow {
    /// The normalised line (`<n>`, `<hex>`, `<uuid>`, `<ip>`, `<ts>` placeholders).
    pub pattern: String,
    /// On how many hosts it appears.
    pub host_count: usize,
    /// Those hosts (the first ten).
    pub hosts: Vec<String>,
    /// Matching lines in the group over all hosts.
    pub lines: u64,
    /// Original lines, each with its host.
    pub examples: Vec<Example>,
}

#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct Example {
    pub host: String,
    pub line: String,
}

pub fn definition() -> Tool {
    super::tool::<GrepParams, GrepResult>(
        "grep",
        "Search files on many hosts",
        "Search files on every host a selector matches (e.g. logs on 40 servers), on the hosts \
         themselves, and return per-host matches (capped, with exact counts) and a status for \
         every host. `digest: true` groups matching lines across hosts after normalising numbers, \
         ids and timestamps, rarest first, to show what is unusual. mode `count` or `files` \
         returns only per-file counts or file names.",
        super::reads(true),
    )
}

pub async fn call(call: &Call<'_>, params: GrepParams) -> Result<CallToolResult, ToolError> {
    if params.pattern.is_empty() {
        return Err(ToolError::invalid("grep", "`pattern` is empty"));
    }
    let paths = params
        .paths
        .clone()
        .unwrap_or_else(|| vec!["/var/log".to_string()]);
    if paths.is_empty() || paths.iter().any(|p| p.is_empty() || p.contains('\0')) {
        return Err(ToolError::invalid(
            "grep",
            "`paths` must list at least one non-empty path",
        ));
    }
    let context = params.context.unwrap_or(0);
    if context > 10 {
        return Err(ToolError::invalid("grep", "`context` must be at most 10"));
    }
    let max_groups = params.max_groups.unwrap_or(DEFAULT_GROUPS);
    if !(1..=500).contains(&max_groups) {
        return Err(ToolError::invalid("grep", "`max_groups` must be 1..=500"));
    }
    let timeout = match params.timeout {
        Some(t) => seconds("grep", "timeout", t, 600.0)?,
        None => DEFAULT_TIMEOUT,
    };
    let config = &call.state.config;
    let targets = super::fleet::some_targets(call, "grep", &params.hosts).await?;
    crate::core::approvals::gate(
        &call.gate(),
        crate::core::approvals::Request::for_targets(
            &targets,
            None,
            format!(
                "grep `{}` in {} on {} host(s) matching `{}`",
                params.pattern,
                paths.join(" "),
                targets.hosts.len(),
                params.hosts
            ),
        ),
    )
    .await?;
    let total = targets.len();
    let max_matches = match params.max_matches {
        Some(n) if (1..=MAX_MATCHES).contains(&n) => n,
        Some(_) => {
            return Err(ToolError::invalid(
                "grep",
                format!("`max_matches` must be 1..={MAX_MATCHES}"),
            ));
        }
        None => {
            (DEFAULT_MATCH_BUDGET / total).clamp(MIN_DEFAULT_MATCHES, MAX_DEFAULT_MATCHES) as u32
        }
    };
    let window = match &params.batch {
        Some(a) => a
            .resolve("batch", total)
            .map_err(|e| ToolError::invalid("grep", e))?
            .max(1),
        None => config.fanout_window,
    };
    let mode = params.mode.unwrap_or_default();
    let digest = params.digest.unwrap_or(false);
    let request = pb::GrepRequest {
        paths,
        pattern: params.pattern.clone(),
        fixed: params.fixed.unwrap_or(false),
        ignore_case: params.ignore_case.unwrap_or(false),
        context,
        max_matches,
        globs: params.globs.clone().unwrap_or_default(),
        mode: match mode {
            GrepMode::Matches => pb::GrepMode::Matches,
            GrepMode::Count => pb::GrepMode::Count,
            GrepMode::Files => pb::GrepMode::Files,
        } as i32,
        digest,
        // Each host sends more groups than are shown, so rare-on-this-host groups that are
        // common elsewhere still merge.
        max_groups: (max_groups * 5).clamp(100, 1000) as u32,
        max_line_bytes: config.max_line_bytes as u32,
        hidden: false,
    };
    let plan = Plan {
        window,
        max_failures: None,
        cancel: call.context.ct.clone(),
    };
    let report = super::fleet::run(call, targets, &plan, "hosts searched", |host| {
        let request = request.clone();
        async move {
            search(
                call,
                host,
                request,
                timeout + call.state.config.request_timeout,
            )
            .await
        }
    })
    .await;

    let total_matches: u64 = report
        .outcomes
        .iter()
        .filter_map(|o| o.value.as_ref())
        .map(|r| r.total_matches)
        .sum();
    let hosts_matching = report
        .outcomes
        .iter()
        .filter(|o| o.value.as_ref().is_some_and(|r| r.total_matches > 0))
        .count();
    let (digest_rows, groups_total) = if digest {
        let (rows, n) = merge_digest(&report.outcomes, max_groups);
        (Some(rows), Some(n))
    } else {
        (None, None)
    };
    let summary = report.summary();
    let counts = report.counts_by_name();
    let hosts: Vec<HostGrep> = report.outcomes.into_iter().map(host_grep).collect();
    let result = GrepResult {
        selector: params.hosts.clone(),
        summary: format!("{summary}; {total_matches} matching line(s) on {hosts_matching} host(s)"),
        counts,
        total_matches,
        hosts,
        digest: digest_rows,
        digest_groups_total: groups_total,
        stopped: report.stopped,
    };
    let text = render(&result, total);
    structured(&result, vec![text])
}

/// Sends one grep to `host` and waits up to `wait` for its reply: the one way a grep travels,
/// for a fan-out's host and for the `file` tool's grep of one path alike.
pub(super) async fn send(
    call: &Call<'_>,
    host: &Token,
    request: pb::GrepRequest,
    wait: Duration,
) -> Result<pb::GrepReply, ToolError> {
    let id = dispatch::request_id("grep");
    match dispatch::send(call, host, &id, pb::exec_request::Body::Grep(request), wait).await? {
        pb::exec_reply::Body::Grep(reply) => Ok(reply),
        _ => Err(ToolError::bad_reply(
            host,
            &"it answered a grep request with something else",
        )),
    }
}

/// One host's share of a fan-out grep, as its outcome.
async fn search(
    call: &Call<'_>,
    host: Token,
    request: pb::GrepRequest,
    wait: Duration,
) -> Outcome<pb::GrepReply> {
    let reply = match send(call, &host, request, wait).await {
        Ok(reply) => reply,
        Err(e) => return fanout::classify(host, e),
    };
    let mut reason = format!(
        "{} match(es) in {} of {} file(s)",
        reply.total_matches, reply.files_matched, reply.files_searched
    );
    if !reply.path_errors.is_empty() {
        reason.push_str(&format!(
            "; {} path(s) not searched",
            reply.path_errors.len()
        ));
    }
    Outcome::new(host, HostStatus::Ok, reason).with_value(reply)
}

fn host_grep(o: Outcome<pb::GrepReply>) -> HostGrep {
    let mut view = HostGrep {
        host: o.host.to_string(),
        status: Some(o.status),
        reason: o.reason,
        ..Default::default()
    };
    if let Some(reply) = o.value {
        view.total_matches = reply.total_matches;
        view.files_searched = reply.files_searched;
        view.files_matched = reply.files_matched;
        view.truncated = reply.truncated;
        view.truncated_reason = Some(reply.truncated_reason).filter(|r| !r.is_empty());
        view.digest_lines_ungrouped = reply.digest_lines_ungrouped;
        view.path_errors = reply.path_errors;
        view.matches = reply.matches.into_iter().map(MatchView::from).collect();
        view.files = reply
            .files
            .into_iter()
            .map(|f| FileCount {
                path: f.path,
                count: f.count,
            })
            .collect();
    }
    view
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// Merges every host's digest groups by pattern; rarest (fewest hosts, then fewest lines)
/// first. Returns the top `max` rows and the number of distinct groups.
fn merge_digest(outcomes: &[Outcome<pb::GrepReply>], max: usize) -> (Vec<DigestRow>, usize) {
    // Borrowed, not copied: a digest over 10,000 hosts inserts a host into a group some hundred
    // thousand times.
    struct Merged<'a> {
        hosts: BTreeSet<&'a str>,
        lines: u64,
        examples: Vec<Example>,
    }
    let mut merged: BTreeMap<&str, Merged> = BTreeMap::new();
    for outcome in outcomes {
        let Some(reply) = &outcome.value else {
            continue;
        };
        for group in &reply.digest {
            let entry = merged.entry(group.key.as_str()).or_insert_with(|| Merged {
                hosts: BTreeSet::new(),
                lines: 0,
                examples: Vec::new(),
            });
            entry.hosts.insert(outcome.host.as_str());
            entry.lines += group.lines;
            if entry.examples.len() < 3
                && let Some(line) = group.examples.first()
            {
                entry.examples.push(Example {
                    host: outcome.host.to_string(),
                    line: line.clone(),
                });
            }
        }
    }
    let total = merged.len();
    let mut rows: Vec<DigestRow> = merged
        .into_iter()
        .map(|(pattern, m)| DigestRow {
            pattern: pattern.to_string(),
            host_count: m.hosts.len(),
            hosts: m
                .hosts
                .into_iter()
                .take(GROUP_HOSTS)
                .map(str::to_owned)
                .collect(),
            lines: m.lines,
            examples: m.examples,
        })
        .collect();
    rows.sort_by(|a, b| {
        (a.host_count, a.lines, &a.pattern).cmp(&(b.host_count, b.lines, &b.pattern))
    });
    rows.truncate(max);
    (rows, total)
}

fn render(result: &GrepResult, targeted: usize) -> String {
    let mut text = format!("{} for `{}`\n", result.summary, result.selector);
    if let Some(rows) = &result.digest {
        let answered = result
            .hosts
            .iter()
            .filter(|h| h.status == Some(HostStatus::Ok))
            .count();
        text.push_str(&format!(
            "digest: {} distinct line pattern(s), rarest first (host counts out of {answered} answering of {targeted}):\n",
            result.digest_groups_total.unwrap_or(0)
        ));
        for row in rows {
            let hosts = if row.host_count > row.hosts.len() {
                format!("{}, …", row.hosts.join(", "))
            } else {
                row.hosts.join(", ")
            };
            text.push_str(&format!(
                "- on {} host(s) ({hosts}), {} line(s): {}\n",
                row.host_count, row.lines, row.pattern
            ));
            if let Some(example) = row.examples.first() {
                text.push_str(&format!("    e.g. {}: {}\n", example.host, example.line));
            }
        }
    }
    let mut budget = TEXT_BUDGET;
    let mut cut = 0usize;
    for host in &result.hosts {
        let status = host.status.map(|s| s.as_str()).unwrap_or("unknown");
        if host.status != Some(HostStatus::Ok) {
            text.push_str(&format!("== {} [{status}]: {}\n", host.host, host.reason));
            continue;
        }
        if host.total_matches == 0 && host.path_errors.is_empty() {
            continue;
        }
        let mut block = format!("== {} [{status}]: {}\n", host.host, host.reason);
        for m in &host.matches {
            for b in &m.before {
                block.push_str(&format!("{}-{}\n", m.path, b));
            }
            block.push_str(&format!("{}:{}:{}\n", m.path, m.line, m.text));
            for a in &m.after {
                block.push_str(&format!("{}-{}\n", m.path, a));
            }
        }
        for f in &host.files {
            block.push_str(&format!("{}: {}\n", f.path, f.count));
        }
        if host.truncated {
            block.push_str(&format!(
                "(more matches on this host{}; raise max_matches or narrow the search)\n",
                host.truncated_reason
                    .as_deref()
                    .map(|r| format!(": {r}"))
                    .unwrap_or_default()
            ));
        }
        if host.digest_lines_ungrouped > 0 {
            block.push_str(&format!(
                "({} matching line(s) of further shapes were not grouped: the host's digest was full)\n",
                host.digest_lines_ungrouped
            ));
        }
        for e in &host.path_errors {
            block.push_str(&format!("not searched: {e}\n"));
        }
        if block.len() > budget {
            cut += 1;
            continue;
        }
        budget -= block.len();
        text.push_str(&block);
    }
    if cut > 0 {
        text.push_str(&format!(
            "… matches of {cut} more host(s) left out of this text; see structuredContent.hosts\n"
        ));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(groups: &[(&str, u64)]) -> pb::GrepReply {
        pb::GrepReply {
            digest: groups
                .iter()
                .map(|(k, n)| pb::DigestGroup {
                    key: k.to_string(),
                    lines: *n,
                    examples: vec![format!("example of {k}")],
                })
                .collect(),
            ..Default::default()
        }
    }

    fn outcome(host: &str, groups: &[(&str, u64)]) -> Outcome<pb::GrepReply> {
        Outcome::new(Token::parse("host", host).unwrap(), HostStatus::Ok, "ok")
            .with_value(reply(groups))
    }

    #[test]
    fn digest_lists_rarest_groups_first_with_their_hosts() {
        let outcomes = vec![
            outcome("a", &[("timeout after <n>ms", 5), ("disk full", 1)]),
            outcome("b", &[("timeout after <n>ms", 7)]),
            outcome(
                "c",
                &[("timeout after <n>ms", 2), ("oom killed pid <n>", 3)],
            ),
        ];
        let (rows, total) = merge_digest(&outcomes, 10);
        assert_eq!(total, 3);
        let got: Vec<(&str, usize, u64)> = rows
            .iter()
            .map(|r| (r.pattern.as_str(), r.host_count, r.lines))
            .collect();
        assert_eq!(
            got,
            [
                ("disk full", 1, 1),
                ("oom killed pid <n>", 1, 3),
                ("timeout after <n>ms", 3, 14)
            ]
        );
        assert_eq!(rows[0].hosts, ["a"]);
        assert_eq!(rows[2].examples.len(), 3);
        let (rows, _) = merge_digest(&outcomes, 1);
        assert_eq!(rows.len(), 1);
    }
}
