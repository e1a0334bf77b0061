//! A headless OAuth login against a gateway, as a person at a browser would do it: rmcp's OAuth
//! client discovers the authorization server and registers itself; [`Browser`] opens the login
//! page, fills in the form and hands the redirect back. Nothing listens on the redirect URI: the
//! redirect is read from the `Location` header.
//!
//! ```no_run
//! # async fn scenario(gw: &execmesh_tests::RunningGateway) {
//! use execmesh_tests::oauth;
//! let manager = oauth::login(&gw.url(), "alice", "s3cret").await.expect("signed in");
//! let (client, _manager) = oauth::mcp_client(&gw.url(), manager).await;
//! # }
//! ```

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use reqwest::StatusCode;
use reqwest::redirect::Policy;
use rmcp::ServiceExt;
use rmcp::model::{ClientCapabilities, ClientConfig, Implementation, ProtocolVersion};
use rmcp::service::{RoleClient, RunningService};
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::auth::{AuthClient, AuthorizationManager, AuthorizationRequest, OAuthState};
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use sha2::{Digest, Sha256};

/// Where the authorization server sends the browser back; never contacted.
pub const REDIRECT_URI: &str = "http://127.0.0.1:9/callback";
/// How long one HTTP exchange of a login may take.
const HTTP_TIMEOUT: Duration = Duration::from_secs(15);

/// What the login form answered.
#[derive(Debug)]
pub enum LoginOutcome {
    /// 303 to the client's redirect URI (with `code`, or with `error`).
    Redirected(String),
    /// Another page: the form again (wrong password, 401), a rate limit (429), an error page.
    Page { status: StatusCode, body: String },
}

/// A browser without cookies or scripts that does not follow redirects.
#[derive(Debug, Clone)]
pub struct Browser {
    http: reqwest::Client,
}

impl Default for Browser {
    fn default() -> Self {
        Self::new()
    }
}

impl Browser {
    pub fn new() -> Self {
        Self {
            http: reqwest::Client::builder()
                .redirect(Policy::none())
                .timeout(HTTP_TIMEOUT)
                .build()
                .expect("an HTTP client"),
        }
    }

    /// Opens `authorize_url`. `Ok(hidden fields)` when it shows the login form; the outcome
    /// otherwise (a redirect with an error, an error page).
    pub async fn open(&self, authorize_url: &str) -> Result<Vec<(String, String)>, LoginOutcome> {
        let response = self
            .http
            .get(authorize_url)
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {authorize_url}: {e}"));
        let outcome = outcome(response).await;
        match outcome {
            LoginOutcome::Page { status, body } if status == StatusCode::OK => {
                Ok(hidden_fields(&body))
            }
            other => Err(other),
        }
    }

    /// Posts the login form of `authorize_url` with `user` and `password`.
    pub async fn sign_in(&self, authorize_url: &str, user: &str, password: &str) -> LoginOutcome {
        let mut fields = match self.open(authorize_url).await {
            Ok(fields) => fields,
            Err(outcome) => return outcome,
        };
        fields.push(("username".into(), user.into()));
        fields.push(("password".into(), password.into()));
        let action = form_action(authorize_url);
        self.post_form(&action, &fields).await
    }

    /// Posts `fields` to `url` as a form, as the login page does.
    pub async fn post_form(&self, url: &str, fields: &[(String, String)]) -> LoginOutcome {
        let response = self
            .http
            .post(url)
            .form(fields)
            .send()
            .await
            .unwrap_or_else(|e| panic!("POST {url}: {e}"));
        outcome(response).await
    }
}

async fn outcome(response: reqwest::Response) -> LoginOutcome {
    let status = response.status();
    if status.is_redirection() {
        let location = response
            .headers()
            .get(reqwest::header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        return LoginOutcome::Redirected(location);
    }
    LoginOutcome::Page {
        status,
        body: response.text().await.unwrap_or_default(),
    }
}

/// `/authorize` on the same origin as `authorize_url`.
fn form_action(authorize_url: &str) -> String {
    let url = reqwest::Url::parse(authorize_url).expect("an authorization URL");
    format!("{}/authorize", url.origin().ascii_serialization())
}

/// The `name`/`value` of every `<input type="hidden">` of a page.
pub fn hidden_fields(html: &str) -> Vec<(String, String)> {
    let mut fields = Vec::new();
    for tag in html.split("<input").skip(1) {
        let tag = &tag[..tag.find('>').unwrap_or(tag.len())];
        if !tag.contains(r#"type="hidden""#) {
            continue;
        }
        let attr = |name: &str| {
            let start = tag.find(&format!(r#"{name}=""#))? + name.len() + 2;
            let end = start + tag[start..].find('"')?;
            Some(unescape(&tag[start..end]))
        };
        if let (Some(name), Some(value)) = (attr("name"), attr("value")) {
            fields.push((name, value));
        }
    }
    fields
}

fn unescape(text: &str) -> String {
    text.replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&")
}

/// A PKCE pair: a random verifier and its S256 challenge.
pub fn pkce() -> (String, String) {
    let bytes: [u8; 32] = rand_bytes();
    let verifier = URL_SAFE_NO_PAD.encode(bytes);
    let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
    (verifier, challenge)
}

fn rand_bytes() -> [u8; 32] {
    // Tests need uniqueness, not secrecy: the clock and a counter.
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let seed = format!(
        "{:?}{}",
        std::time::SystemTime::now(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    );
    Sha256::digest(seed.as_bytes()).into()
}

/// Signs in to the gateway at `mcp_url` with rmcp's OAuth client: discovery from the 401,
/// dynamic registration, the login form, the code exchange. Returns the authorized manager, or
/// what the login form answered instead.
pub async fn login(
    mcp_url: &str,
    user: &str,
    password: &str,
) -> Result<AuthorizationManager, LoginOutcome> {
    let mut state = OAuthState::new(mcp_url, None)
        .await
        .unwrap_or_else(|e| panic!("OAuth client for {mcp_url}: {e}"));
    state
        .start_authorization(
            AuthorizationRequest::new(REDIRECT_URI).with_client_name("execmesh-tests"),
        )
        .await
        .unwrap_or_else(|e| panic!("OAuth discovery and registration at {mcp_url}: {e}"));
    let authorize_url = state
        .get_authorization_url()
        .await
        .expect("an authorization URL");
    match Browser::new().sign_in(&authorize_url, user, password).await {
        LoginOutcome::Redirected(location) if location.contains("code=") => {
            state
                .handle_callback_url(&location)
                .await
                .unwrap_or_else(|e| panic!("code exchange for {location}: {e}"));
            Ok(state
                .into_authorization_manager()
                .expect("an authorized manager"))
        }
        other => Err(other),
    }
}

/// The manager shared by an MCP client and the test, which may refresh or inspect its tokens.
pub type SharedManager = Arc<tokio::sync::Mutex<AuthorizationManager>>;

/// An MCP client (2025-06-18 handshake) that takes its bearer tokens from `manager`, refreshing
/// them as rmcp does, and the manager.
pub async fn mcp_client(
    mcp_url: &str,
    manager: AuthorizationManager,
) -> (RunningService<RoleClient, ClientConfig>, SharedManager) {
    let client = AuthClient::new(rmcp_reqwest::Client::new(), manager);
    let shared = client.auth_manager.clone();
    let transport = StreamableHttpClientTransport::with_client(
        client,
        StreamableHttpClientTransportConfig::with_uri(mcp_url),
    );
    let version: ProtocolVersion =
        serde_json::from_value(serde_json::json!("2025-06-18")).expect("a protocol version");
    ClientConfig::new(
        ClientCapabilities::default(),
        Implementation::new("execmesh-tests-oauth", env!("CARGO_PKG_VERSION")),
    )
    .with_protocol_version(version)
    .serve(transport)
    .await
    .map(|service| (service, shared))
    .unwrap_or_else(|e| panic!("MCP client with OAuth at {mcp_url}: {e}"))
}
