//! The MCP protocol at `/mcp` as strict clients and browsers see it: only the declared
//! capability (`tools`) is served, on the current era and the older ones, and a browser page
//! may call from the gateway's own origin but not from a foreign one.

use rmcp::ServiceError;
use rmcp::model::{
    ErrorCode, GetPromptRequestParams, ReadResourceRequestParams, SubscriptionFilter,
};
use serde_json::{Value, json};

use execmesh_tests::{Gateway, McpClient, Nats};

/// Asserts `result` is the JSON-RPC error "method not found" (-32601), as the spec answers a
/// method of a capability the server did not declare.
#[track_caller]
fn method_not_found<T: std::fmt::Debug>(result: Result<T, ServiceError>, method: &str, era: &str) {
    match result {
        Err(ServiceError::McpError(e)) => {
            assert_eq!(
                e.code,
                ErrorCode::METHOD_NOT_FOUND,
                "{method} ({era}): {e:?}"
            )
        }
        other => panic!("{method} ({era}): expected method not found, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn methods_of_undeclared_capabilities_are_not_found_on_every_era() {
    let nats = Nats::start().await;
    let gw = Gateway::new(&nats).start().await;
    let clients: Vec<McpClient> = vec![
        gw.client("alice").await,
        gw.legacy_client("alice", "2025-11-25").await,
        gw.legacy_client("alice", "2025-06-18").await,
        gw.legacy_client("alice", "2025-03-26").await,
    ];
    for client in &clients {
        let era = client.protocol_version().to_string();
        let info = client.service().peer_info().expect("the server's info");
        let declared = &info.capabilities;
        assert!(declared.tools.is_some(), "{era}: tools declared");
        assert!(declared.prompts.is_none(), "{era}: no prompts declared");
        assert!(declared.resources.is_none(), "{era}: no resources declared");
        assert!(
            declared.completions.is_none(),
            "{era}: no completions declared"
        );
        let peer = client.service().peer();
        method_not_found(peer.list_prompts(None).await, "prompts/list", &era);
        let prompt = GetPromptRequestParams::new("deploy");
        method_not_found(peer.get_prompt(prompt).await, "prompts/get", &era);
        method_not_found(peer.list_resources(None).await, "resources/list", &era);
        let templates = peer.list_resource_templates(None).await;
        method_not_found(templates, "resources/templates/list", &era);
        let resource = ReadResourceRequestParams::new("file:///etc/passwd");
        method_not_found(peer.read_resource(resource).await, "resources/read", &era);
        // What is declared still works.
        assert!(!client.tool_names().await.is_empty(), "{era}: tools/list");
    }
    // A subscription to anything but tasks' states (the only notifications served, see
    // `tasks::a_listening_client_…`) is refused too.
    let filter = SubscriptionFilter::builder().tools_list_changed().build();
    let listen = clients[0].service().peer().listen(filter).await.map(|_| ());
    method_not_found(listen, "subscriptions/listen", "2026-07-28");

    // On the wire, for a client that sends the method without asking first.
    let body = json!({"jsonrpc": "2.0", "id": 7, "method": "prompts/list", "params": {}});
    let response = reqwest::Client::new()
        .post(gw.url())
        .bearer_auth(gw.mint("alice"))
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", "2025-06-18")
        .json(&body)
        .send()
        .await
        .expect("POST prompts/list");
    assert_eq!(response.status(), 200);
    let answer: Value = response.json().await.expect("a JSON-RPC answer");
    assert_eq!(answer["id"], 7, "{answer}");
    assert_eq!(answer["error"]["code"], -32601, "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_same_origin_page_may_call_and_a_foreign_one_may_not() {
    let nats = Nats::start().await;
    let gw = Gateway::new(&nats)
        .public_name("mesh.example.com")
        .configure(|config| config.public_url = Some("https://mesh.example.com/mcp".into()))
        .start()
        .await;
    let token = gw.mint("alice");
    let port = gw.addr().port();
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}});
    let post = |host: String, origin: String| {
        reqwest::Client::new()
            .post(gw.url())
            .bearer_auth(&token)
            .header("accept", "application/json, text/event-stream")
            .header("mcp-protocol-version", "2025-06-18")
            .header("host", host)
            .header("origin", origin)
            .json(&body)
            .send()
    };
    let local = format!("127.0.0.1:{port}");
    for (host, origin, status) in [
        // The page the gateway itself serves, by every name it answers to.
        (local.clone(), format!("http://127.0.0.1:{port}"), 200),
        (
            format!("localhost:{port}"),
            format!("http://localhost:{port}"),
            200,
        ),
        (format!("[::1]:{port}"), format!("http://[::1]:{port}"), 200),
        (
            format!("mesh.example.com:{port}"),
            format!("http://mesh.example.com:{port}"),
            200,
        ),
        // Behind a TLS-terminating proxy: the public URL's origin.
        (local.clone(), "https://mesh.example.com".into(), 200),
        // Another origin on the same machine: another port, another scheme, another name.
        (local.clone(), "http://127.0.0.1:3000".into(), 403),
        (local.clone(), format!("https://127.0.0.1:{port}"), 403),
        (local.clone(), format!("http://localhost:{port}"), 403),
        (local.clone(), "https://evil.example.net".into(), 403),
        (local.clone(), "null".into(), 403),
        // Same origin, but a Host the gateway does not answer to (DNS rebinding).
        (
            format!("evil.example.net:{port}"),
            format!("http://evil.example.net:{port}"),
            403,
        ),
    ] {
        let response = post(host.clone(), origin.clone()).await.expect("POST /mcp");
        assert_eq!(response.status(), status, "Host {host}, Origin {origin}");
    }
}
