//! `execmeshctl approvals`, `approval get`, `approve`, `deny` and `approvals watch`: calls the
//! policy holds for a teammate's decision.

use serde_json::{Value, json};

use execmesh_proto::{now_ms, pb};

use crate::cli::{ApprovalFilters, ApprovalsCommand};
use crate::connect::{Admin, Settings};
use crate::table::{self, Table};
use crate::{CtlError, enum_name, enum_word, print, print_json, print_json_line};

/// `approvals [--all|--state S]` or `approvals watch`.
pub async fn run_list(
    settings: Settings,
    filters: ApprovalFilters,
    watch: Option<ApprovalsCommand>,
    json: bool,
) -> Result<(), CtlError> {
    match watch {
        None => {
            let state = match (&filters.state, filters.all) {
                (Some(word), _) => parse_state(word)?,
                (None, true) => pb::ApprovalState::Unspecified,
                (None, false) => pb::ApprovalState::Pending,
            };
            let mut admin = settings.connect().await?;
            list(&mut admin, state, filters.limit, json).await
        }
        Some(ApprovalsCommand::Watch {
            state,
            changes_only,
        }) => {
            let state = match &state {
                Some(word) => parse_state(word)?,
                None => pb::ApprovalState::Unspecified,
            };
            let mut admin = settings.connect().await?;
            watch_approvals(&mut admin, state, !changes_only, json).await
        }
    }
}

fn parse_state(word: &str) -> Result<pb::ApprovalState, CtlError> {
    match pb::ApprovalState::from_str_name(&enum_name(word, "APPROVAL_STATE_")) {
        Some(state) if state != pb::ApprovalState::Unspecified => Ok(state),
        _ => Err(CtlError::Usage(format!(
            "--state {word}: an approval state is pending, approved, denied, used or expired"
        ))),
    }
}

async fn list(
    admin: &mut Admin,
    state: pb::ApprovalState,
    limit: u32,
    json: bool,
) -> Result<(), CtlError> {
    let response = admin
        .call(
            pb::ListApprovalsRequest {
                state: state as i32,
                limit,
            },
            async |c, r| c.approvals.list(r).await,
        )
        .await?;
    if json {
        return print_json(&json!({
            "approvals": response.approvals.iter().map(approval_json).collect::<Vec<_>>(),
        }));
    }
    if response.approvals.is_empty() {
        return print(if state == pb::ApprovalState::Pending {
            "no approvals pending (--all shows decided ones)\n"
        } else {
            "no approvals match\n"
        });
    }
    let now = now_ms();
    let mut table = Table::new(&[
        "ID",
        "STATE",
        "USER",
        "HOSTS",
        "REQUESTED",
        "EXPIRES",
        "DECIDED",
        "SUMMARY",
    ]);
    for a in &response.approvals {
        table.row(vec![
            a.id.clone(),
            state_word(a.state),
            a.user.clone(),
            table::clip(&a.hosts.join(","), 30),
            table::ago(a.requested_at_ms, now),
            expires(a, now),
            decided(a),
            table::clip(&a.summary, 80),
        ]);
    }
    print(&table.render())
}

/// `approval get ID`: every field, the arguments pretty-printed.
pub async fn get(admin: &mut Admin, id: String, json: bool) -> Result<(), CtlError> {
    let answer = admin
        .call(pb::GetApprovalRequest { id }, async |c, r| {
            c.approvals.get(r).await
        })
        .await?;
    print_approval(answer.approval, json, |a| detail(a, now_ms()))
}

/// `approve ID`.
pub async fn approve(admin: &mut Admin, id: String, json: bool) -> Result<(), CtlError> {
    let answer = admin
        .call(pb::ApproveRequest { id }, async |c, r| {
            c.approvals.approve(r).await
        })
        .await?;
    print_approval(answer.approval, json, |a| {
        format!(
            "approved {} for {}: {}\n{} may now repeat the call with approval_id {} (it expires \
             {}).\n",
            a.id,
            a.user,
            a.summary,
            a.user,
            a.id,
            table::ago(a.expires_at_ms, now_ms()),
        )
    })
}

/// `deny ID --reason ...`.
pub async fn deny(
    admin: &mut Admin,
    id: String,
    reason: String,
    json: bool,
) -> Result<(), CtlError> {
    let answer = admin
        .call(pb::DenyRequest { id, reason }, async |c, r| {
            c.approvals.deny(r).await
        })
        .await?;
    print_approval(answer.approval, json, |a| {
        format!(
            "denied {} for {}: {}\nreason (shown to {}): {}\n",
            a.id, a.user, a.summary, a.user, a.reason
        )
    })
}

/// Prints the approval a call answered with: `{"approval": …}` with `--json`, else `text` of it.
fn print_approval(
    approval: Option<pb::Approval>,
    json: bool,
    text: impl FnOnce(&pb::Approval) -> String,
) -> Result<(), CtlError> {
    let approval = approval.unwrap_or_default();
    if json {
        return print_json(&json!({ "approval": approval_json(&approval) }));
    }
    print(&text(&approval))
}

/// `approvals watch`: one line per request or decision until interrupted.
async fn watch_approvals(
    admin: &mut Admin,
    state: pb::ApprovalState,
    include_initial: bool,
    json: bool,
) -> Result<(), CtlError> {
    let mut stream = admin
        .open(
            pb::WatchApprovalsRequest {
                include_initial,
                state: state as i32,
            },
            async |c, r| c.approvals.watch(r).await,
        )
        .await?;
    if !json {
        print(&format!(
            "{:<20}  {:<22}  {:<9}  {:<12}  {}\n",
            "TIME", "ID", "STATE", "USER", "SUMMARY"
        ))?;
    }
    loop {
        let event = admin.next_event(&mut stream).await?;
        let approval = event.approval.unwrap_or_default();
        if json {
            print_json_line(&json!({
                "approval": approval_json(&approval),
                "time_ms": event.time_ms,
                "initial": event.initial,
            }))?;
            continue;
        }
        let who = match pb::ApprovalState::try_from(approval.state) {
            Ok(pb::ApprovalState::Approved | pb::ApprovalState::Denied) => {
                format!("{} by {}", approval.user, approval.decided_by)
            }
            _ => approval.user.clone(),
        };
        let mut summary = approval.summary.clone();
        if !approval.reason.is_empty() {
            summary.push_str(&format!(" — {}", approval.reason));
        }
        if event.initial {
            summary = format!("(at start) {summary}");
        }
        print(&format!(
            "{:<20}  {:<22}  {:<9}  {:<12}  {}\n",
            table::timestamp(event.time_ms),
            approval.id,
            state_word(approval.state),
            who,
            summary.replace('\n', " ")
        ))?;
    }
}

/// When a pending approval lapses; `-` once it is decided.
fn expires(a: &pb::Approval, now: u64) -> String {
    match pb::ApprovalState::try_from(a.state) {
        Ok(pb::ApprovalState::Pending | pb::ApprovalState::Approved) => {
            table::ago(a.expires_at_ms, now)
        }
        Ok(pb::ApprovalState::Expired) => table::ago(a.expires_at_ms, now),
        _ => "-".into(),
    }
}

/// `bob`, `bob: not during the freeze`, or `-`.
fn decided(a: &pb::Approval) -> String {
    match (a.decided_by.as_str(), a.reason.as_str()) {
        ("", _) => "-".into(),
        (by, "") => by.to_string(),
        (by, reason) => format!("{by}: {}", table::clip(reason, 40)),
    }
}

fn detail(a: &pb::Approval, now: u64) -> String {
    let at = |ms: u64| table::when(ms, now);
    let tool = if a.action.is_empty() {
        a.tool.clone()
    } else {
        format!("{} {}", a.tool, a.action)
    };
    let mut fields: Vec<(&str, String)> = vec![
        ("id", a.id.clone()),
        ("state", state_word(a.state)),
        ("summary", a.summary.clone()),
        ("user", a.user.clone()),
        ("run as", table::or_dash(&a.run_as)),
        ("tool", tool),
        ("hosts", a.hosts.join(", ")),
        ("requested", at(a.requested_at_ms)),
        ("expires", at(a.expires_at_ms)),
        ("decided by", table::or_dash(&a.decided_by)),
        ("decided", at(a.decided_at_ms)),
    ];
    if !a.reason.is_empty() {
        fields.push(("reason", a.reason.clone()));
    }
    fields.push(("used", at(a.used_at_ms)));
    if !a.rules.is_empty() {
        fields.push(("rules", a.rules.join("; ")));
    }
    fields.push(("policy", a.policy_version.clone()));
    fields.push(("request hash", a.request_hash.clone()));
    let mut text = table::fields(&fields);
    let arguments = serde_json::from_str::<Value>(&a.arguments_json)
        .ok()
        .and_then(|v| serde_json::to_string_pretty(&v).ok())
        .unwrap_or_else(|| a.arguments_json.clone());
    text.push_str("arguments:\n");
    for line in arguments.lines() {
        text.push_str("  ");
        text.push_str(line);
        text.push('\n');
    }
    text
}

fn state_word(state: i32) -> String {
    pb::ApprovalState::try_from(state)
        .map(|s| enum_word(s.as_str_name(), "APPROVAL_STATE_"))
        .unwrap_or_else(|_| state.to_string())
}

/// An approval as JSON: proto field names, the state as a word, the arguments as JSON.
pub fn approval_json(a: &pb::Approval) -> Value {
    json!({
        "id": a.id,
        "state": state_word(a.state),
        "tool": a.tool,
        "action": a.action,
        "hosts": a.hosts,
        "user": a.user,
        "run_as": a.run_as,
        "summary": a.summary,
        "arguments": serde_json::from_str::<Value>(&a.arguments_json)
            .unwrap_or_else(|_| Value::String(a.arguments_json.clone())),
        "request_hash": a.request_hash,
        "policy_version": a.policy_version,
        "requested_at_ms": a.requested_at_ms,
        "expires_at_ms": a.expires_at_ms,
        "decided_by": a.decided_by,
        "decided_at_ms": a.decided_at_ms,
        "reason": a.reason,
        "used_at_ms": a.used_at_ms,
        "rules": a.rules,
    })
}
