//! The web console in a real browser (headless Chromium over WebDriver) against a real mesh:
//! a held call announced to a webhook and approved or denied on its page, with the MCP caller
//! going on; nobody approves their own request, whatever they post; forms without the session's
//! CSRF token are refused; a job's output is followed live and killed from its page, and a
//! readonly user can do neither; the hosts page resolves selectors; the audit page finds a call
//! by its trace and shows the chain intact; a token admin mints and revokes a token on the
//! Tokens page, and a user who is not one sees no forms and is refused when she forges a post;
//! the hosts page names a relay target's owner, and every page's controls have names.
//!
//! Set `EXECMESH_CONSOLE_SCREENSHOTS` to a directory (`docs/console`) to keep a screenshot of
//! each page.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use serde_json::{Value, json};

use execmesh_gateway::core::policy::password;
use execmesh_proto::Tier;
use execmesh_tests::relay::Relay;
use execmesh_tests::sshd::Sshd;
use execmesh_tests::{
    AuditSink, Browser, Gateway, Nats, Policy, RunningGateway, eventually, with_approval,
};

/// The password every user of these scenarios signs in with.
const PASSWORD: &str = "correct horse battery staple";
/// How long the browser may take to show a change.
const SHOWN: Duration = Duration::from_secs(20);

/// alice and bob on call (`dangerous` everywhere, approving each other's calls on database
/// hosts); carol a readonly operator who sees everyone's jobs.
fn policy() -> Policy {
    let hash = password::hash(PASSWORD).expect("hash a password");
    Policy::new()
        .group("oncall", Tier::Dangerous, &["*"], &["alice", "bob"])
        .user("carol", Tier::Readonly, &["*"])
        .operators(&["carol"])
        .password_hash("alice", &hash)
        .password_hash("bob", &hash)
        .password_hash("carol", &hash)
        .approved_by("bash", "role=db", &["oncall"])
}

/// A chat webhook's receiving end: keeps every JSON body posted to it.
struct Webhook {
    url: String,
    received: Arc<Mutex<Vec<Value>>>,
    _server: tokio::task::JoinHandle<()>,
}

impl Webhook {
    async fn start() -> Self {
        let received = Arc::new(Mutex::new(Vec::new()));
        let app =
            axum::Router::new()
                .route(
                    "/hooks/approvals",
                    axum::routing::post(
                        |State(received): State<Arc<Mutex<Vec<Value>>>>,
                         Json(body): Json<Value>| async move {
                            received.lock().expect("the webhook's list").push(body);
                            "ok"
                        },
                    ),
                )
                .with_state(received.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the webhook");
        let url = format!(
            "http://{}/hooks/approvals",
            listener.local_addr().expect("its address")
        );
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self {
            url,
            received,
            _server: server,
        }
    }

    /// The link of the announcement that names `id`, once it arrived.
    async fn link_for(&self, id: &str) -> String {
        eventually(SHOWN, || async {
            let received = self.received.lock().expect("the webhook's list").clone();
            received.iter().find_map(|message| {
                let text = message["text"].as_str()?;
                if !text.contains(id) {
                    return None;
                }
                message["blocks"][1]["elements"][0]["url"]
                    .as_str()
                    .map(str::to_string)
            })
        })
        .await
    }
}

/// Saves a screenshot of the browser's page as `name`.png when screenshots are asked for.
async fn screenshot(browser: &Browser, name: &str) {
    if let Some(dir) = std::env::var_os("EXECMESH_CONSOLE_SCREENSHOTS") {
        let mut path = PathBuf::from(dir);
        if path.is_relative() {
            path = execmesh_tests::workspace_root().join(path);
        }
        browser.screenshot(&path.join(format!("{name}.png"))).await;
    }
}

/// Posts a console form as the holder of `cookie`, the way a forged form (or a script on
/// another tab) would: the session cookie is there, the rest is whatever the forger chose.
async fn post_form(
    gw: &RunningGateway,
    cookie: &str,
    path: &str,
    form: &[(&str, &str)],
) -> (u16, String) {
    let response = reqwest::Client::new()
        .post(format!("{}{path}", gw.base_url()))
        .header("cookie", format!("execmesh_console={cookie}"))
        .form(form)
        .send()
        .await
        .expect("the console answers");
    let status = response.status().as_u16();
    (status, response.text().await.unwrap_or_default())
}

/// The CSRF token of the page the browser shows (every signed-in page has the sign-out form).
async fn csrf_of(browser: &Browser) -> String {
    browser
        .find("form.signout input[name=csrf]")
        .await
        .attr("value")
        .await
        .expect("read the CSRF field")
        .expect("a CSRF token")
}

#[tokio::test]
async fn a_held_call_is_announced_and_decided_in_the_browser_and_the_caller_goes_on() {
    let nats = Nats::start().await;
    let db = nats.agent("db-1", &[("role", "db")]).await;
    let webhook = Webhook::start().await;
    let url = webhook.url.clone();
    let gw = Gateway::new(&nats)
        .policy(policy())
        .configure(move |config| config.approval_webhook_url = Some(url))
        .start()
        .await;
    let sink = AuditSink::new(&nats).sqlite().start().await;
    let alice = gw.client("alice").await;

    let marker = db.dir().join("ran");
    let args = json!({"host": db.host(), "cmd": format!("touch {} && echo ran", marker.display())});
    let held = alice.call("bash", args.clone()).await;
    let id = held.approval_id();

    // The webhook's link opens the request's page, through the sign-in page.
    let link = webhook.link_for(&id).await;
    assert_eq!(link, format!("{}/console/approvals/{id}", gw.base_url()));
    let bob = Browser::start().await;
    bob.client().goto(&link).await.expect("open the link");
    assert!(
        bob.path().await.starts_with("/console/login?next="),
        "{}",
        bob.path().await
    );
    bob.fill("#username", "bob").await;
    bob.fill("#password", PASSWORD).await;
    bob.click("form.stack button[type=submit]").await;
    assert_eq!(bob.text("#approval-state").await, "pending");
    assert_eq!(bob.path().await, format!("/console/approvals/{id}"));
    let arguments = bob.text("#arguments").await;
    assert!(
        arguments.contains("touch "),
        "the arguments as sent: {arguments}"
    );
    let session = bob
        .client()
        .get_named_cookie("execmesh_console")
        .await
        .expect("the session cookie");
    assert_eq!(session.http_only(), Some(true));
    assert_eq!(format!("{:?}", session.same_site()), "Some(Strict)");
    screenshot(&bob, "approval").await;

    // The requester sees the request without a button, and a forged approval is refused.
    let alice_browser = Browser::start().await;
    alice_browser.sign_in(&gw, "alice", PASSWORD).await;
    alice_browser
        .open(&gw, &format!("/console/approvals/{id}"))
        .await;
    let why = alice_browser.text(".cannot-decide").await;
    assert!(why.contains("You requested it"), "{why}");
    assert!(!alice_browser.has("button[name=approve]").await);
    let alice_cookie = alice_browser.cookie("execmesh_console").await;
    let alice_csrf = csrf_of(&alice_browser).await;
    let (status, body) = post_form(
        &gw,
        &alice_cookie,
        &format!("/console/approvals/{id}/approve"),
        &[("csrf", &alice_csrf)],
    )
    .await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("may not approve their own request"), "{body}");

    // Forms without the session's CSRF token are refused, whoever holds the cookie.
    let bob_cookie = bob.cookie("execmesh_console").await;
    let approve = format!("/console/approvals/{id}/approve");
    for form in [
        vec![],
        vec![("csrf", "not-the-token")],
        vec![("csrf", alice_csrf.as_str())],
    ] {
        let (status, body) = post_form(&gw, &bob_cookie, &approve, &form).await;
        assert_eq!(status, 403, "{form:?}: {body}");
        assert!(body.contains("CSRF"), "{body}");
    }
    // The session cookie is no bearer token for /mcp.
    let refused = gw
        .post_raw(
            Some(&bob_cookie),
            json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}),
        )
        .await;
    assert_eq!(refused.status().as_u16(), 403);
    assert!(!marker.exists(), "nothing ran yet");

    // bob approves in the browser; alice's call goes on with the approval.
    bob.click("button[name=approve]").await;
    eventually(SHOWN, || async {
        bob.text("#approval-state").await == "approved"
    })
    .await;
    assert!(bob.text("#decided-by").await.starts_with("bob"));
    let out = alice.call("bash", with_approval(&args, &id)).await;
    assert!(!out.is_error(), "{}", out.text());
    assert_eq!(out.structured()["output"], json!("ran\n"), "{}", out.text());

    // The audit page finds the call by its trace, and the chain is intact.
    bob.open(&gw, "/console/audit?user=alice&tool=bash").await;
    let trace = eventually(SHOWN, || async {
        bob.open(&gw, "/console/audit?user=alice&tool=bash").await;
        let links = bob
            .client()
            .find_all(fantoccini::Locator::Css("#audit a[href*='trace=']"))
            .await
            .ok()?;
        let link = links.first()?;
        link.text().await.ok().filter(|t| !t.is_empty())
    })
    .await;
    bob.click(&format!("#audit a[href$='trace={trace}']")).await;
    let rows = bob.text("#audit tbody").await;
    assert!(rows.lines().count() >= 2, "{rows}");
    assert!(rows.lines().all(|line| line.contains(&trace)), "{rows}");
    screenshot(&bob, "audit").await;
    bob.click("#chain").await;
    assert!(bob.text("#chain-state").await.starts_with("Intact"));
    drop(sink);

    // A denial, from the list, with a reason the caller sees.
    let id = alice.call("bash", args.clone()).await.approval_id();
    bob.open(&gw, "/console/approvals").await;
    let row = format!("tr[data-approval='{id}']");
    bob.fill(
        &format!("{row} input[name=reason]"),
        "not during the backup window",
    )
    .await;
    screenshot(&bob, "approvals").await;
    bob.click(&format!("{row} button[name=deny]")).await;
    eventually(SHOWN, || async {
        bob.text("#approval-state").await == "denied"
    })
    .await;
    assert_eq!(bob.text("#reason").await, "not during the backup window");
    alice
        .call("bash", with_approval(&args, &id))
        .await
        .assert_refused_as(
            "approval_unusable",
            "bob denied it: not during the backup window",
        );
    bob.open(&gw, "/console/approvals").await;
    let decided = bob.text("#decided").await;
    assert!(
        decided.contains("denied") && decided.contains("used at"),
        "{decided}"
    );

    // Signing out revokes the session: the old cookie no longer opens a page.
    alice_browser.click("form.signout button").await;
    alice_browser.find("#username").await;
    let (status, _) = post_form(
        &gw,
        &alice_cookie,
        "/console/logout",
        &[("csrf", &alice_csrf)],
    )
    .await;
    assert_eq!(status, 401, "a revoked session is signed out");
    bob.close().await;
    alice_browser.close().await;
}

#[tokio::test]
async fn a_jobs_output_is_followed_live_and_killed_from_its_page_but_not_by_a_readonly_user() {
    let nats = Nats::start().await;
    let web = nats.agent("web-1", &[("role", "web")]).await;
    let gw = Gateway::new(&nats).policy(policy()).start().await;
    let alice = gw.client("alice").await;
    let started = alice
        .call(
            "bash",
            json!({"host": web.host(), "bg": true, "title": "ticker",
                   "cmd": "for i in $(seq 1 600); do echo tick-$i; sleep 0.1; done"}),
        )
        .await;
    let job = started.job_id();

    let browser = Browser::start().await;
    browser.sign_in(&gw, "alice", PASSWORD).await;
    browser.open(&gw, "/console/jobs").await;
    browser.click(&format!("tr[data-job='{job}'] a")).await;
    assert_eq!(browser.path().await, format!("/console/jobs/web-1/{job}"));
    assert!(browser.text("#job-state").await.starts_with("running"));
    // Live: lines the page did not have when it loaded arrive without a reload.
    let at_load = browser.text("#output").await.lines().count();
    eventually(SHOWN, || async {
        browser.text("#output").await.lines().count() >= at_load + 10
    })
    .await;
    screenshot(&browser, "job").await;

    // carol (readonly, operator) sees the job but no kill button, and a forged kill is refused.
    let carol = Browser::start().await;
    carol.sign_in(&gw, "carol", PASSWORD).await;
    carol.open(&gw, "/console/jobs").await;
    carol.click(&format!("tr[data-job='{job}'] a")).await;
    assert!(carol.text("#job-state").await.starts_with("running"));
    assert!(
        !carol.has("#kill").await,
        "no kill button for a readonly user"
    );
    let (status, body) = post_form(
        &gw,
        &carol.cookie("execmesh_console").await,
        &format!("/console/jobs/web-1/{job}/kill"),
        &[("csrf", &csrf_of(&carol).await)],
    )
    .await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("needs tier standard"), "{body}");
    carol.open(&gw, "/console/jobs").await;
    screenshot(&carol, "jobs").await;
    assert!(
        carol
            .text(&format!("tr[data-job='{job}']"))
            .await
            .contains("running")
    );

    // alice kills it from its page.
    browser.click("#kill button").await;
    eventually(SHOWN, || async {
        browser.text("#job-state").await.starts_with("killed")
    })
    .await;

    // The hosts page resolves selectors within the reach, as the `hosts` tool does.
    browser.open(&gw, "/console/hosts").await;
    let row = browser.text("tr[data-host='web-1']").await;
    assert!(row.contains("online") && row.contains("role=web"), "{row}");
    screenshot(&browser, "hosts").await;
    browser.fill("#selector", "role=db").await;
    browser.click("form[role=search] button").await;
    // The search loads a new page: the old page's answer may still be read until it has.
    eventually(SHOWN, || async {
        browser.text("#resolved").await.starts_with("0 host(s)")
    })
    .await;
    browser.fill("#selector", "role=(").await;
    browser.click("form[role=search] button").await;
    assert!(browser.text("#selector-error").await.contains("role=("));
    carol.close().await;
    browser.close().await;
}

#[tokio::test]
async fn a_token_admin_mints_and_revokes_a_token_in_the_browser_and_others_cannot() {
    let nats = Nats::start().await;
    let gw = Gateway::new(&nats)
        .policy(policy().token_admins(&["alice"]))
        .start()
        .await;
    let list = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}});

    // alice, a token admin, mints a standard token for bob; it is shown once and works on /mcp.
    let alice = Browser::start().await;
    alice.sign_in(&gw, "alice", PASSWORD).await;
    alice.open(&gw, "/console/tokens").await;
    assert!(alice.has("nav a[href='/console/tokens']").await);
    alice.fill("#mint-user", "bob").await;
    alice.click("#mint-tier option[value=standard]").await;
    alice.fill("#mint-hours", "2").await;
    alice.click("#mint button").await;
    let token = alice.text("#minted-token").await;
    let token_id = alice.text("#minted-id").await;
    assert!(!token.is_empty() && !token_id.is_empty());
    assert!(
        alice
            .text("#minted")
            .await
            .contains("standard token for bob")
    );
    assert_eq!(gw.post_raw(Some(&token), list.clone()).await.status(), 200);
    // Shown once: the page opened again does not have it.
    alice.open(&gw, "/console/tokens").await;
    assert!(!alice.has("#minted-token").await);

    // Above bob's tier is refused, not lowered.
    alice.fill("#mint-user", "carol").await;
    alice.click("#mint-tier option[value=dangerous]").await;
    alice.click("#mint button").await;
    let why = alice.text("#token-error").await;
    assert!(
        why.contains("above carol's tier in the policy (readonly)"),
        "{why}"
    );

    // alice revokes it by id; /mcp then refuses it.
    alice.fill("#revoke-id", &token_id).await;
    alice.click("#revoke button").await;
    assert!(alice.text("#revoked").await.contains(&token_id));
    assert!(alice.text("#revocations").await.contains(&token_id));
    eventually(SHOWN, || async {
        gw.post_raw(Some(&token), list.clone()).await.status() == 401
    })
    .await;
    screenshot(&alice, "tokens").await;

    // carol is no token admin: no forms, and forged posts with her own CSRF token are refused.
    let carol = Browser::start().await;
    carol.sign_in(&gw, "carol", PASSWORD).await;
    carol.open(&gw, "/console/tokens").await;
    assert!(carol.has("#not-token-admin").await);
    assert!(!carol.has("#mint").await && !carol.has("#revoke").await);
    let cookie = carol.cookie("execmesh_console").await;
    let csrf = csrf_of(&carol).await;
    let (status, body) = post_form(
        &gw,
        &cookie,
        "/console/tokens/mint",
        &[("csrf", &csrf), ("user", "carol"), ("scope_mcp", "on")],
    )
    .await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("token_admins"), "{body}");
    let (status, body) = post_form(
        &gw,
        &cookie,
        "/console/tokens/revoke",
        &[("csrf", &csrf), ("token_id", "abc")],
    )
    .await;
    assert_eq!(status, 403, "{body}");
    // And alice's forms need her session's CSRF token.
    let (status, body) = post_form(
        &gw,
        &alice.cookie("execmesh_console").await,
        "/console/tokens/mint",
        &[("csrf", &csrf)],
    )
    .await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("CSRF"), "{body}");
    carol.close().await;
    alice.close().await;
}

/// The controls of the page open in `browser` that a screen reader could not name: form fields
/// without a label (or `aria-label`) and buttons without text.
async fn unnamed_controls(browser: &Browser) -> Vec<String> {
    let found = browser
        .client()
        .execute(
            r#"const out = [];
for (const el of document.querySelectorAll('input, select, textarea')) {
  if (el.type === 'hidden') continue;
  if (!(el.labels && el.labels.length) && !el.getAttribute('aria-label')) out.push(el.outerHTML);
}
for (const b of document.querySelectorAll('button')) {
  if (!b.textContent.trim() && !b.getAttribute('aria-label')) out.push(b.outerHTML);
}
return out;"#,
            vec![],
        )
        .await
        .expect("run the label check");
    serde_json::from_value(found).expect("a list of strings")
}

#[tokio::test]
async fn the_hosts_page_shows_a_relay_targets_owner_and_every_page_names_its_controls() {
    let nats = Nats::start().await;
    let _web = nats.agent("web-1", &[("role", "web")]).await;
    let sshd = Sshd::start().await;
    let _relay = Relay::new(&nats, "alice")
        .target("box-1", &sshd)
        .start(&nats)
        .await;
    let gw = Gateway::new(&nats)
        .policy(policy().token_admins(&["alice"]))
        .start()
        .await;

    let browser = Browser::start().await;
    browser.sign_in(&gw, "alice", PASSWORD).await;
    browser.open(&gw, "/console/hosts").await;
    let relayed = browser.text("tr[data-host='box-1'] td.kind").await;
    assert_eq!(relayed, "relay of alice");
    let agent = browser.text("tr[data-host='web-1'] td.kind").await;
    assert_eq!(agent, "agent");

    // A page at a time: the count of all above each, a link on to the next.
    browser.open(&gw, "/console/hosts?selector=*&limit=1").await;
    let resolved = browser.text("#resolved").await;
    assert!(
        resolved.starts_with("2 host(s)")
            && resolved.contains("Listed here: 1, from box-1 to box-1"),
        "{resolved}"
    );
    assert!(!browser.has("tr[data-host='web-1']").await);
    browser.click("#next-hosts").await;
    eventually(SHOWN, || async {
        browser.has("tr[data-host='web-1']").await
    })
    .await;
    assert!(!browser.has("tr[data-host='box-1']").await);
    assert!(!browser.has("#next-hosts").await && browser.has("#first-hosts").await);
    browser.open(&gw, "/console/hosts?after=not.a/host").await;
    assert!(
        browser
            .text("#selector-error")
            .await
            .contains("not a host to list after")
    );

    // Keyboard and screen-reader basics: every field and button of every page has a name.
    for page in [
        "/console/approvals",
        "/console/jobs",
        "/console/hosts",
        "/console/audit",
        "/console/tokens",
    ] {
        browser.open(&gw, page).await;
        let unnamed = unnamed_controls(&browser).await;
        assert!(unnamed.is_empty(), "{page}: unnamed controls {unnamed:#?}");
    }
    browser.close().await;
}
