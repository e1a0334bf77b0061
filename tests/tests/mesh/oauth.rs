//! OAuth 2.1 end to end: rmcp's OAuth client signs in through the gateway's login page (driven
//! headlessly), calls tools with the tokens, refreshes them; every way a token or a login can be
//! wrong is refused, and revocation reaches every replica.

use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rmcp::model::CallToolRequestParams;
use rmcp::transport::auth::AuthorizationManager;
use serde_json::{Value, json};

use execmesh_gateway::core::policy::password;
use execmesh_gateway::core::tier::Tier;
use execmesh_tests::oauth::{self, Browser, LoginOutcome, REDIRECT_URI};
use execmesh_tests::{Gateway, Nats, Policy, RunningGateway, eventually};

const PASSWORD: &str = "correct horse battery staple";

/// alice (standard, every host) with a password; bob without one.
fn policy() -> Policy {
    let hash = password::hash(PASSWORD).expect("hash a password");
    Policy::new()
        .group("ops", Tier::Standard, &["*"], &["alice", "bob"])
        .password_hash("alice", &hash)
}

/// A nats-server and a gateway enforcing [`policy`].
async fn gateway() -> (Nats, RunningGateway) {
    let nats = Nats::start().await;
    let gw = Gateway::new(&nats).policy(policy()).start().await;
    (nats, gw)
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(15))
        .build()
        .expect("an HTTP client")
}

async fn get_json(url: &str) -> Value {
    let response = http().get(url).send().await.expect("GET");
    assert_eq!(response.status(), 200, "GET {url}");
    response.json().await.expect("a JSON document")
}

/// POSTs a form to `/token` (or `/revoke`) and returns the status and the JSON body.
async fn post_form(url: &str, fields: &[(&str, &str)]) -> (u16, Value) {
    let response = http().post(url).form(fields).send().await.expect("POST");
    let status = response.status().as_u16();
    let body = response.json().await.unwrap_or(Value::Null);
    (status, body)
}

/// Redeems the authorization `code` of `client_id` with `verifier` at the token endpoint, for a
/// token bound to `resource` (the gateway's own without one).
async fn redeem(
    gw: &RunningGateway,
    client_id: &str,
    code: &str,
    verifier: &str,
    resource: Option<&str>,
) -> (u16, Value) {
    let mut fields = vec![
        ("grant_type", "authorization_code"),
        ("code", code),
        ("redirect_uri", REDIRECT_URI),
        ("client_id", client_id),
        ("code_verifier", verifier),
    ];
    fields.extend(resource.map(|resource| ("resource", resource)));
    post_form(&format!("{}/token", gw.base_url()), &fields).await
}

/// The status of `tools/list` with `token`, and the challenge of a refusal.
async fn list_status(gw: &RunningGateway, token: &str) -> (u16, String) {
    let list = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}});
    let response = gw.post_raw(Some(token), list).await;
    let challenge = response
        .headers()
        .get("www-authenticate")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    (response.status().as_u16(), challenge)
}

/// The claims of a JWT, unverified.
fn claims(token: &str) -> Value {
    let payload = token.split('.').nth(1).expect("a JWT");
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).expect("base64url")).expect("JSON")
}

/// Registers a client with `redirect_uris` through `/register`.
async fn register(gw: &RunningGateway, redirect_uris: &[&str]) -> (u16, Value) {
    let response = http()
        .post(format!("{}/register", gw.base_url()))
        .json(&json!({"client_name": "test client", "redirect_uris": redirect_uris}))
        .send()
        .await
        .expect("POST /register");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// The sign-in page of an authorization request by a newly registered client (with PKCE).
async fn sign_in_url(gw: &RunningGateway) -> String {
    let (_, client) = register(gw, &[REDIRECT_URI]).await;
    let client_id = client["client_id"].as_str().expect("a client id");
    let (_, challenge) = oauth::pkce();
    authorize_url(gw, client_id, &challenge, &[])
}

/// An authorization URL for `client_id` with the PKCE `challenge`, plus `extra` parameters
/// (which replace the defaults of the same name).
fn authorize_url(
    gw: &RunningGateway,
    client_id: &str,
    challenge: &str,
    extra: &[(&str, &str)],
) -> String {
    let mut params: Vec<(&str, &str)> = vec![
        ("response_type", "code"),
        ("client_id", client_id),
        ("redirect_uri", REDIRECT_URI),
        ("code_challenge", challenge),
        ("code_challenge_method", "S256"),
        ("state", "st4te"),
        ("scope", "mcp"),
    ];
    let resource = gw.url();
    params.push(("resource", &resource));
    for (name, value) in extra {
        params.retain(|(n, _)| n != name);
        if !value.is_empty() {
            params.push((name, value));
        }
    }
    let mut url = reqwest::Url::parse(&format!("{}/authorize", gw.base_url())).expect("a URL");
    url.query_pairs_mut().extend_pairs(params);
    url.to_string()
}

/// A query parameter of a redirect.
fn param(location: &str, name: &str) -> Option<String> {
    reqwest::Url::parse(location)
        .ok()?
        .query_pairs()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.into_owned())
}

/// Signs alice in for `client_id` and returns the code.
async fn code_for(gw: &RunningGateway, client_id: &str, challenge: &str) -> String {
    let url = authorize_url(gw, client_id, challenge, &[]);
    match Browser::new().sign_in(&url, "alice", PASSWORD).await {
        LoginOutcome::Redirected(location) => {
            assert_eq!(param(&location, "state").as_deref(), Some("st4te"));
            assert_eq!(param(&location, "iss"), Some(gw.base_url()));
            param(&location, "code").unwrap_or_else(|| panic!("no code in {location}"))
        }
        other => panic!("login failed: {other:?}"),
    }
}

async fn signed_in(gw: &RunningGateway) -> AuthorizationManager {
    oauth::login(&gw.url(), "alice", PASSWORD)
        .await
        .unwrap_or_else(|outcome| panic!("alice cannot sign in: {outcome:?}"))
}

/// The client id, access token and refresh token a manager holds.
async fn tokens(manager: &AuthorizationManager) -> (String, String, String) {
    let (client_id, response) = manager.get_credentials().await.expect("credentials");
    let response = serde_json::to_value(response.expect("a token response")).expect("JSON");
    let field = |name: &str| {
        response[name]
            .as_str()
            .unwrap_or_else(|| panic!("no {name} in {response}"))
            .to_string()
    };
    (client_id, field("access_token"), field("refresh_token"))
}

#[tokio::test]
async fn discovery_documents_name_the_resource_and_the_authorization_server() {
    let (_nats, gw) = gateway().await;
    let base = gw.base_url();
    for path in [
        "/.well-known/oauth-protected-resource",
        "/.well-known/oauth-protected-resource/mcp",
    ] {
        let doc = get_json(&format!("{base}{path}")).await;
        assert_eq!(doc["resource"], json!(gw.url()), "{path}");
        assert_eq!(doc["authorization_servers"], json!([base]), "{path}");
        assert_eq!(doc["scopes_supported"], json!(["mcp"]), "{path}");
    }
    for path in [
        "/.well-known/oauth-authorization-server",
        "/.well-known/openid-configuration",
    ] {
        let doc = get_json(&format!("{base}{path}")).await;
        assert_eq!(doc["issuer"], json!(base));
        assert_eq!(doc["code_challenge_methods_supported"], json!(["S256"]));
        assert_eq!(
            doc["authorization_endpoint"],
            json!(format!("{base}/authorize"))
        );
        assert_eq!(doc["token_endpoint"], json!(format!("{base}/token")));
        assert_eq!(
            doc["registration_endpoint"],
            json!(format!("{base}/register"))
        );
        assert_eq!(
            doc["authorization_response_iss_parameter_supported"],
            json!(true)
        );
        assert_eq!(doc["client_id_metadata_document_supported"], json!(true));
    }
    let list = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}});
    let response = gw.post_raw(None, list).await;
    assert_eq!(response.status(), 401);
    let challenge = response.headers()["www-authenticate"]
        .to_str()
        .unwrap_or_default();
    assert!(
        challenge.contains(&format!(
            r#"resource_metadata="{base}/.well-known/oauth-protected-resource/mcp""#
        )),
        "{challenge}"
    );
    assert!(challenge.contains(r#"scope="mcp""#), "{challenge}");
}

#[tokio::test]
async fn an_oauth_client_signs_in_headlessly_and_calls_tools_refreshing_its_tokens() {
    let nats = Nats::start().await;
    // Short access tokens: rmcp's client refreshes one (and the refresh token rotates) once
    // less than half its life is left, within seconds.
    let gw = Gateway::new(&nats)
        .policy(policy())
        .configure(|c| c.access_token_ttl = Duration::from_secs(10))
        .start()
        .await;
    let manager = signed_in(&gw).await;
    let (_, access, first_refresh) = tokens(&manager).await;
    let c = claims(&access);
    assert_eq!(c["iss"], json!(gw.base_url()));
    assert_eq!(c["aud"], json!(gw.url()));
    assert_eq!(c["sub"], json!("alice"));
    assert_eq!(c["tier"], json!("standard"));
    assert_eq!(c["scope"], json!("mcp"));
    assert!(c["jti"].is_string() && c["client_id"].is_string(), "{c}");

    let (client, shared) = oauth::mcp_client(&gw.url(), manager).await;
    let tools = client.list_all_tools().await.expect("tools/list");
    assert!(tools.iter().any(|t| t.name == "bash"), "standard sees bash");
    // Calls go on working across the refresh, which rotates the refresh token.
    eventually(Duration::from_secs(15), || async {
        let result = client
            .call_tool(CallToolRequestParams::new("whoami"))
            .await
            .expect("whoami");
        let s = result.structured_content.expect("structured whoami");
        assert_eq!(s["user"], json!("alice"));
        assert_eq!(s["tier"], json!("standard"));
        let (_, _, refresh_now) = tokens(&*shared.lock().await).await;
        refresh_now != first_refresh
    })
    .await;
    let _ = client.cancel().await;
}

#[tokio::test]
async fn a_reused_refresh_token_revokes_the_whole_login() {
    let (_nats, gw) = gateway().await;
    let manager = signed_in(&gw).await;
    let (client_id, _, first_refresh) = tokens(&manager).await;

    manager.refresh_token().await.expect("a refresh");
    let (_, second_access, second_refresh) = tokens(&manager).await;
    assert_ne!(second_refresh, first_refresh);
    assert_eq!(list_status(&gw, &second_access).await.0, 200);

    // The rotated token comes back: someone else holds a copy.
    let (status, body) = post_form(
        &format!("{}/token", gw.base_url()),
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", &first_refresh),
            ("client_id", &client_id),
        ],
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"], json!("invalid_grant"), "{body}");
    // Every token of that login stops working: the current refresh token, the access token.
    assert!(manager.refresh_token().await.is_err());
    let (status, challenge) = list_status(&gw, &second_access).await;
    assert_eq!(status, 401);
    assert!(challenge.contains("revoked"), "{challenge}");
}

#[tokio::test]
async fn a_wrong_password_is_refused_and_repeated_failures_are_rate_limited() {
    let (_nats, gw) = gateway().await;
    let url = sign_in_url(&gw).await;
    let browser = Browser::new();

    for user in ["alice", "nobody", "bob"] {
        match browser.sign_in(&url, user, "wrong password").await {
            LoginOutcome::Page { status, body } => {
                assert_eq!(status, 401, "{user}");
                assert!(body.contains("Wrong user name or password"), "{body}");
            }
            other => panic!("{user} with a wrong password: {other:?}"),
        }
    }
    // Four more failures for alice (five in all): now even the right password waits.
    for _ in 0..4 {
        let _ = browser.sign_in(&url, "alice", "wrong password").await;
    }
    match browser.sign_in(&url, "alice", PASSWORD).await {
        LoginOutcome::Page { status, body } => {
            assert_eq!(status, 429);
            assert!(body.contains("Too many failed sign-ins"), "{body}");
        }
        other => panic!("a held-back login went through: {other:?}"),
    }
    assert!(
        oauth::login(&gw.url(), "alice", "wrong password")
            .await
            .is_err()
    );
}

#[tokio::test]
async fn logins_from_one_address_are_rate_limited() {
    let (_nats, gw) = gateway().await;
    let url = sign_in_url(&gw).await;
    let browser = Browser::new();
    // Different (unknown) users each time: only the per-address limit can stop them.
    let mut limited = None;
    for i in 0..30 {
        if let LoginOutcome::Page { status, body } =
            browser.sign_in(&url, &format!("guess-{i}"), "x").await
            && status == 429
        {
            assert!(body.contains("from your address"), "{body}");
            limited = Some(i);
            break;
        }
    }
    assert_eq!(
        limited,
        Some(20),
        "the 21st attempt in a minute is held back"
    );
}

#[tokio::test]
async fn pkce_and_resource_mismatches_are_refused() {
    let (_nats, gw) = gateway().await;
    let (_, client) = register(&gw, &[REDIRECT_URI]).await;
    let client_id = client["client_id"].as_str().expect("a client id");
    let browser = Browser::new();

    // Without PKCE, or with `plain`, the request goes back with an error.
    let (verifier, challenge) = oauth::pkce();
    for extra in [
        vec![("code_challenge_method", "plain")],
        vec![("code_challenge", ""), ("code_challenge_method", "")],
    ] {
        match browser
            .open(&authorize_url(&gw, client_id, &challenge, &extra))
            .await
        {
            Err(LoginOutcome::Redirected(location)) => {
                assert_eq!(
                    param(&location, "error").as_deref(),
                    Some("invalid_request")
                );
                assert_eq!(param(&location, "state").as_deref(), Some("st4te"));
            }
            other => panic!("{extra:?} accepted: {other:?}"),
        }
    }
    // Another resource than this gateway's.
    let other = "http://127.0.0.1:1/mcp";
    match browser
        .open(&authorize_url(
            &gw,
            client_id,
            &challenge,
            &[("resource", other)],
        ))
        .await
    {
        Err(LoginOutcome::Redirected(location)) => {
            assert_eq!(param(&location, "error").as_deref(), Some("invalid_target"));
        }
        other => panic!("a foreign resource was accepted: {other:?}"),
    }
    // A redirect URI the client did not register is never redirected to.
    match browser
        .open(&authorize_url(
            &gw,
            client_id,
            &challenge,
            &[("redirect_uri", "https://evil.example/cb")],
        ))
        .await
    {
        Err(LoginOutcome::Page { status, .. }) => assert_eq!(status, 400),
        other => panic!("an unregistered redirect URI was used: {other:?}"),
    }

    // A wrong verifier burns the code.
    let code = code_for(&gw, client_id, &challenge).await;
    let (wrong, _) = oauth::pkce();
    let resource = gw.url();
    let (status, body) = redeem(&gw, client_id, &code, &wrong, Some(&resource)).await;
    assert_eq!(
        (status, body["error"].clone()),
        (400, json!("invalid_grant")),
        "{body}"
    );
    assert!(
        body["error_description"]
            .as_str()
            .unwrap_or_default()
            .contains("PKCE"),
        "{body}"
    );
    let (status, body) = redeem(&gw, client_id, &code, &verifier, Some(&resource)).await;
    assert_eq!(status, 400, "a code is redeemed at most once: {body}");

    // The right verifier, but a token for another resource.
    let (verifier, challenge) = oauth::pkce();
    let code = code_for(&gw, client_id, &challenge).await;
    let (status, body) = redeem(&gw, client_id, &code, &verifier, Some(other)).await;
    assert_eq!(
        (status, body["error"].clone()),
        (400, json!("invalid_target")),
        "{body}"
    );
}

#[tokio::test]
async fn tokens_bound_to_another_resource_or_without_the_mcp_scope_are_refused() {
    let (nats, gw) = gateway().await;
    // Same key, another public URL: its tokens name another audience.
    let elsewhere = Gateway::new(&nats)
        .key_file(gw.key_file())
        .policy(policy())
        .configure(|c| c.public_url = Some("https://elsewhere.example/mcp".into()))
        .start()
        .await;
    let foreign = elsewhere.issue("alice", Duration::from_secs(600), "mcp", Tier::Standard);
    let (status, challenge) = list_status(&gw, &foreign).await;
    assert_eq!(status, 401);
    assert!(challenge.contains("invalid_token"), "{challenge}");

    let unscoped = gw.issue("alice", Duration::from_secs(600), "profile", Tier::Standard);
    let (status, challenge) = list_status(&gw, &unscoped).await;
    assert_eq!(status, 403);
    assert!(
        challenge.contains(r#"error="insufficient_scope""#),
        "{challenge}"
    );
    assert!(challenge.contains(r#"scope="mcp""#), "{challenge}");
}

#[tokio::test]
async fn expired_and_revoked_tokens_are_refused_by_another_replica() {
    let nats = Nats::start().await;
    let one = Gateway::new(&nats).policy(policy()).start().await;
    // A second replica behind the same public URL, with the same key and policy.
    let two = Gateway::new(&nats).replica_of(&one).start().await;

    let manager = signed_in(&one).await;
    let (client_id, access, _) = tokens(&manager).await;
    assert_eq!(list_status(&two, &access).await.0, 200);
    let (status, _) = post_form(
        &format!("{}/revoke", one.base_url()),
        &[("token", &access), ("client_id", &client_id)],
    )
    .await;
    assert_eq!(status, 200);
    let revoked_at = Instant::now();
    eventually(Duration::from_secs(5), || async {
        let (status, challenge) = list_status(&two, &access).await;
        status == 401 && challenge.contains("revoked")
    })
    .await;
    let took = revoked_at.elapsed();
    eprintln!("revocation seen by the second replica after {took:?}");
    assert!(took < Duration::from_secs(3), "took {took:?}");

    let short = one.issue("alice", Duration::from_secs(2), "mcp", Tier::Standard);
    assert_eq!(list_status(&two, &short).await.0, 200);
    eventually(Duration::from_secs(6), || async {
        let (status, challenge) = list_status(&two, &short).await;
        status == 401 && challenge.contains("expired")
    })
    .await;
}

#[tokio::test]
async fn a_client_id_metadata_document_identifies_the_client() {
    let (_nats, gw) = gateway().await;
    // The client's metadata, served on loopback (https in real life; http is accepted from
    // loopback only).
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let client_id = format!(
        "http://{}/client.json",
        listener.local_addr().expect("addr")
    );
    let document = json!({
        "client_id": client_id,
        "client_name": "Metadata Client",
        "redirect_uris": [REDIRECT_URI],
        "token_endpoint_auth_method": "none",
    });
    let app = axum::Router::new().route(
        "/client.json",
        axum::routing::get(move || {
            let document = document.clone();
            async move { axum::Json(document) }
        }),
    );
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    let (verifier, challenge) = oauth::pkce();
    let page = Browser::new()
        .open(&authorize_url(&gw, &client_id, &challenge, &[]))
        .await;
    assert!(page.is_ok(), "{page:?}");
    let code = code_for(&gw, &client_id, &challenge).await;
    let (status, body) = redeem(&gw, &client_id, &code, &verifier, None).await;
    assert_eq!(status, 200, "{body}");
    let access = body["access_token"].as_str().expect("an access token");
    assert_eq!(claims(access)["client_id"], json!(client_id));
    assert_eq!(list_status(&gw, access).await.0, 200);
    server.abort();
}

#[tokio::test]
async fn registration_refuses_unsafe_redirect_uris() {
    let (_nats, gw) = gateway().await;
    for uri in [
        "http://evil.example/cb",
        "javascript:alert(1)",
        "https://a.example/cb#frag",
    ] {
        let (status, body) = register(&gw, &[uri]).await;
        assert_eq!(status, 400, "{uri}: {body}");
        assert_eq!(body["error"], json!("invalid_redirect_uri"), "{uri}");
    }
    let (status, body) = register(&gw, &[REDIRECT_URI, "https://app.example/cb"]).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["token_endpoint_auth_method"], json!("none"));
}

#[tokio::test]
async fn tokens_from_the_future_not_yet_valid_or_living_too_long_are_refused() {
    let nats = Nats::start().await;
    let gw = Gateway::new(&nats)
        .policy(policy())
        .configure(|c| c.max_token_lifetime = Duration::from_secs(30 * 86400))
        .start()
        .await;
    let now = execmesh_proto::now_ms() / 1000;
    let audience = gw.audience().clone();
    let claims = |iat: u64, exp: u64| {
        json!({
            "iss": audience.issuer,
            "sub": "alice",
            "aud": audience.resource,
            "iat": iat,
            "exp": exp,
            "jti": format!("handmade-{iat}-{exp}"),
            "scope": "mcp",
            "tier": "standard",
        })
    };
    // Hand-made, well-formed and in the window: accepted, so the refusals below are the claims'.
    let fine = gw.sign_claims(&claims(now, now + 600));
    assert_eq!(list_status(&gw, &fine).await.0, 200);
    // The quickstart's 30-day tokens are within the maximum.
    let month = gw.sign_claims(&claims(now, now + 30 * 86400));
    assert_eq!(list_status(&gw, &month).await.0, 200);

    let future = gw.sign_claims(&claims(now + 3600, now + 7200));
    let mut not_yet = claims(now, now + 7200);
    not_yet["nbf"] = json!(now + 3600);
    let not_yet = gw.sign_claims(&not_yet);
    let forever = gw.sign_claims(&claims(now, now + 400 * 86400));
    for (token, needle) in [
        (future, "issued 3"),
        (not_yet, "not valid yet"),
        (forever, "longer than this gateway allows"),
    ] {
        let (status, challenge) = list_status(&gw, &token).await;
        assert_eq!(status, 401, "{needle}: {challenge}");
        assert!(challenge.contains("invalid_token"), "{challenge}");
        assert!(challenge.contains(needle), "{needle} not in {challenge}");
    }
}
