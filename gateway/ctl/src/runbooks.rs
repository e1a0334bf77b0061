//! `execmeshctl runbooks`: the runbooks the caller may run, with the hashes hosts pin.

use serde_json::{Value, json};

use execmesh_proto::pb;

use crate::connect::Admin;
use crate::table::Table;
use crate::{CtlError, enum_word, print, print_json};

/// `runbooks`: a table of name, tier, hosts, approval, command and hash, or JSON with each
/// runbook's parameter schema.
pub async fn list(admin: &mut Admin, json: bool) -> Result<(), CtlError> {
    let request = admin.unary(pb::ListRunbooksRequest {});
    let reply = admin.client.runbooks.list(request).await;
    let response = admin.answer(reply)?;
    if json {
        return print_json(&json!({
            "runbooks": response.runbooks.iter().map(runbook_json).collect::<Vec<_>>(),
            "policy_version": response.policy_version,
        }));
    }
    if response.runbooks.is_empty() {
        return print("no runbooks you may run\n");
    }
    let mut table = Table::new(&["NAME", "TIER", "HOSTS", "APPROVAL", "RUNS", "HASH"]);
    for rb in &response.runbooks {
        table.row(vec![
            rb.name.clone(),
            tier_word(rb.tier),
            if rb.hosts.is_empty() {
                "*".into()
            } else {
                rb.hosts.clone()
            },
            if rb.approval {
                "yes".into()
            } else {
                "no".into()
            },
            rb.command.clone(),
            rb.hash.clone(),
        ]);
    }
    print(&format!("{}\n", table.render()))
}

fn tier_word(tier: i32) -> String {
    pb::Tier::try_from(tier)
        .map(|t| enum_word(t.as_str_name(), "TIER_"))
        .unwrap_or_else(|_| tier.to_string())
}

fn runbook_json(rb: &pb::Runbook) -> Value {
    json!({
        "name": rb.name,
        "description": rb.description,
        "hash": rb.hash,
        "tier": tier_word(rb.tier),
        "hosts": (!rb.hosts.is_empty()).then_some(&rb.hosts),
        "approval": rb.approval,
        "timeout_ms": rb.timeout_ms,
        "command": rb.command,
        "params": serde_json::from_str::<Value>(&rb.params_schema).unwrap_or(Value::Null),
        "source": rb.source,
    })
}
