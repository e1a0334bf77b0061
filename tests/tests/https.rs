//! The gateway serving HTTPS itself: MCP, OAuth metadata and tokens over TLS, plain HTTP refused.

use serde_json::{Value, json};

use execmesh_tests::{Gateway, Nats, NodeAgent};

/// One JSON-RPC request to `/mcp`, answered as JSON or as an SSE stream; returns the response.
async fn mcp(client: &reqwest::Client, url: &str, token: &str, body: Value) -> Value {
    let response = client
        .post(url)
        .bearer_auth(token)
        .header("Accept", "application/json, text/event-stream")
        .header("MCP-Protocol-Version", "2025-06-18")
        .json(&body)
        .send()
        .await
        .expect("an HTTPS round trip");
    assert!(response.status().is_success(), "{}", response.status());
    let text = response.text().await.expect("a body");
    // An SSE answer carries the response as the last `data:` line.
    let json = text
        .lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .map(str::trim)
        .rfind(|l| !l.is_empty())
        .unwrap_or(text.as_str())
        .to_string();
    serde_json::from_str(&json).unwrap_or_else(|e| panic!("not JSON-RPC ({e}): {text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mcp_is_served_over_https_with_https_metadata() {
    let nats = Nats::start().await;
    let _agent = NodeAgent::new(&nats, "web-1").start().await;
    let gw = Gateway::new(&nats).https().start().await;
    assert!(gw.url().starts_with("https://127.0.0.1:"), "{}", gw.url());
    let http = gw.http_client();

    let out = mcp(
        &http,
        &gw.url(),
        &gw.mint("alice"),
        json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
               "params": {"name": "bash", "arguments": {"host": "web-1", "cmd": "echo over tls"}}}),
    )
    .await;
    assert_eq!(
        out["result"]["structuredContent"]["output"], "over tls\n",
        "{out}"
    );

    // Tokens and metadata name the https resource.
    let metadata: Value = http
        .get(format!(
            "{}/.well-known/oauth-protected-resource",
            gw.base_url()
        ))
        .send()
        .await
        .expect("metadata over HTTPS")
        .json()
        .await
        .expect("metadata JSON");
    assert_eq!(metadata["resource"], gw.url(), "{metadata}");

    // Plain HTTP to the TLS port gets no MCP answer.
    let plain = reqwest::Client::new()
        .post(gw.url().replacen("https://", "http://", 1))
        .json(&json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}))
        .send()
        .await;
    assert!(
        plain.is_err() || !plain.as_ref().is_ok_and(|r| r.status().is_success()),
        "plain HTTP was served: {plain:?}"
    );
    // A client that does not trust the certificate cannot connect.
    let untrusting = reqwest::Client::new().get(gw.url()).send().await;
    assert!(untrusting.is_err(), "an untrusted certificate was accepted");
}
