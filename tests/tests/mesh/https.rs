//! The gateway's own HTTP(S) listener: MCP, OAuth metadata and tokens over TLS, plain HTTP
//! refused; and the bounds on its connections, tried with real sockets: a slow or silent client
//! is closed within the header timeout, an idle one within the idle timeout, and one address
//! cannot hold more than its share of connections.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use execmesh_tests::{Gateway, Nats, NodeAgent, eventually};

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

/// A TCP connection to `to` from the loopback address `from` (any of 127.0.0.0/8).
async fn connect_from(from: &str, to: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().expect("a socket");
    socket
        .bind(SocketAddr::new(from.parse().expect("an address"), 0))
        .unwrap_or_else(|e| panic!("bind {from}: {e}"));
    socket.connect(to).await.expect("connect to the gateway")
}

/// Whether the gateway closes `stream` within `within` (whatever it sent before).
async fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 4096];
    tokio::time::timeout(within, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .is_ok()
}

/// Sends `GET /healthz` on `stream` (kept alive) and whether `ok` came back within 5 s.
async fn healthz(stream: &mut TcpStream) -> bool {
    let request = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";
    if stream.write_all(request).await.is_err() {
        return false;
    }
    let mut answer = Vec::new();
    let mut buf = [0u8; 1024];
    let read = tokio::time::timeout(Duration::from_secs(5), async {
        while !answer.ends_with(b"ok\n") {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    read.is_ok() && answer.starts_with(b"HTTP/1.1 200") && answer.ends_with(b"ok\n")
}

/// A connection from `from` that the gateway answers, once it does.
async fn served_from(from: &'static str, to: SocketAddr) -> TcpStream {
    eventually(Duration::from_secs(15), || async move {
        let mut stream = connect_from(from, to).await;
        healthz(&mut stream).await.then_some(stream)
    })
    .await
}

#[tokio::test]
async fn slow_headers_and_idle_connections_are_closed_within_their_bounds() {
    let nats = Nats::start().await;
    let header = Duration::from_secs(1);
    let idle = Duration::from_secs(3);
    let gw = Gateway::new(&nats)
        .configure(|c| {
            c.header_read_timeout = header;
            c.idle_timeout = idle;
        })
        .start()
        .await;
    let slack = Duration::from_secs(3);

    // Half a request head, never finished.
    let mut slow = TcpStream::connect(gw.addr()).await.expect("connect");
    slow.write_all(b"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: app")
        .await
        .expect("send half a header");
    let started = Instant::now();
    assert!(
        closed_within(&mut slow, header + slack).await,
        "a connection sending half a header stayed open"
    );
    eprintln!("slow header closed after {:?}", started.elapsed());
    // A connection that sends nothing at all.
    let mut silent = TcpStream::connect(gw.addr()).await.expect("connect");
    assert!(
        closed_within(&mut silent, header + slack).await,
        "a silent connection stayed open"
    );

    // Between requests the idle bound applies, not the header bound.
    let mut kept = TcpStream::connect(gw.addr()).await.expect("connect");
    assert!(healthz(&mut kept).await, "the first request is answered");
    tokio::time::sleep(header + Duration::from_millis(500)).await;
    assert!(
        healthz(&mut kept).await,
        "a kept-alive connection idle for longer than the header bound still serves"
    );
    let idle_from = Instant::now();
    assert!(
        closed_within(&mut kept, idle + slack).await,
        "an idle connection stayed open"
    );
    assert!(
        idle_from.elapsed() >= idle - Duration::from_millis(500),
        "closed after {:?}, before the idle bound",
        idle_from.elapsed()
    );
}

#[tokio::test]
async fn a_silent_tls_client_is_closed_within_the_header_timeout() {
    let nats = Nats::start().await;
    let gw = Gateway::new(&nats)
        .https()
        .configure(|c| c.header_read_timeout = Duration::from_secs(1))
        .start()
        .await;
    // Connected, no ClientHello.
    let mut silent = TcpStream::connect(gw.addr()).await.expect("connect");
    assert!(
        closed_within(&mut silent, Duration::from_secs(4)).await,
        "a client that never starts its TLS handshake stayed connected"
    );
}

#[tokio::test]
async fn one_address_holds_at_most_its_cap_of_connections_and_others_still_connect() {
    let nats = Nats::start().await;
    let gw = Gateway::new(&nats)
        .configure(|c| c.max_connections_per_address = 2)
        .start()
        .await;
    let addr = gw.addr();
    let first = served_from("127.0.0.1", addr).await;
    let _second = served_from("127.0.0.1", addr).await;

    // The third from the same address is closed unanswered.
    let mut third = connect_from("127.0.0.1", addr).await;
    assert!(!healthz(&mut third).await, "a third connection was served");
    assert!(closed_within(&mut third, Duration::from_secs(5)).await);
    // Another address is not affected.
    let mut other = connect_from("127.0.0.2", addr).await;
    assert!(healthz(&mut other).await, "another address was refused");
    // A connection that ends frees its place.
    drop(first);
    let _again = served_from("127.0.0.1", addr).await;
}
