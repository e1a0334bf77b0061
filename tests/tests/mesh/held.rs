//! Held calls shown to clients that can show them: a client that declares URL-mode elicitation
//! gets the approval as an `input_required` result (what waits, for whom, a link), rmcp's
//! client answers it and retries, and the call runs once a teammate approves it, without being
//! sent again by the model. Clients without the capability keep the `approval_id` flow.

use std::time::Duration;

use rmcp::model::ElicitRequestParams;
use serde_json::json;

use execmesh_tests::admin::approve;
use execmesh_tests::{Gateway, McpClient, Nats, eventually};

use crate::task_approvals::policy;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_call_is_shown_as_a_link_and_continues_once_approved() {
    let nats = Nats::start().await;
    let db = nats.agent("db-1", &[("role", "db")]).await;
    let gw = Gateway::new(&nats).policy(policy()).admin().start().await;
    let alice = McpClient::with_elicitation(&gw.url(), &gw.mint("alice")).await;
    let bob_admin = gw.admin_client("bob").await;
    let marker = db.dir().join("ran");
    let args = json!({"host": db.host(), "cmd": format!("touch {} && echo ran", marker.display())});

    // One call: held (shown to alice as a link), approved by bob meanwhile, then run.
    let call = alice.call("bash", args.clone());
    let approve = async {
        let (message, url) = eventually(Duration::from_secs(15), || async {
            alice.elicitations().into_iter().find_map(|e| match e {
                ElicitRequestParams::UrlElicitationParams { message, url, .. } => {
                    Some((message, url))
                }
                _ => None,
            })
        })
        .await;
        // The link names the approval.
        let id = url.rsplit('/').next().unwrap_or_default().to_string();
        assert!(
            !marker.exists(),
            "a held call must not run before it is approved"
        );
        assert!(message.contains("db-1"), "what waits: {message}");
        assert!(message.contains("oncall"), "for whom: {message}");
        assert!(
            message.contains(&format!("execmeshctl approve {id}")),
            "{message}"
        );
        assert_eq!(
            url,
            format!("{}/console/approvals/{id}", gw.base_url()),
            "the link"
        );
        approve(&bob_admin, &id).await;
        id
    };
    let (out, id) = tokio::join!(call, approve);
    assert!(!out.is_error(), "{}", out.text());
    out.assert_field("output", "ran\n");
    assert!(marker.exists());
    assert!(id.starts_with("apr-"), "{id}");

    // A client without the capability still gets the approval id to re-call with.
    let plain = gw.client("alice").await;
    let held = plain
        .call("bash", json!({"host": db.host(), "cmd": "true"}))
        .await;
    assert!(held.approval_id().starts_with("apr-"));
}
