//! Announces each new approval request to an incoming webhook (Slack's JSON, which Mattermost,
//! Rocket.Chat, Discord's `/slack` endpoint and most chat tools take too), with a link to the
//! request's page in the console, so an approver can open it from chat.
//!
//! Best effort and off the call's path: the request is held whether or not the webhook answers;
//! a failure is logged with the URL's host and the reason. Only the replica that created the
//! request announces it, so N replicas send one message.

use std::time::Duration;

use serde_json::{Value, json};
use tracing::{info, warn};

use crate::core::approvals::ApprovalRecord;

/// How long one announcement may take.
const TIMEOUT: Duration = Duration::from_secs(5);

/// Where new approval requests go, and where their pages are.
#[derive(Clone)]
pub struct ApprovalWebhook {
    /// The incoming webhook.
    url: url::Url,
    /// The gateway's public origin (`https://gw.example.com`), under which the console serves
    /// `/console/approvals/<id>`.
    origin: String,
    /// No redirects: a webhook URL that redirects is misconfigured, and following it would
    /// send the message somewhere nobody configured.
    http: reqwest::Client,
}

/// Why a webhook could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error("approval_webhook_url `{url}`: {reason}")]
    Url { url: String, reason: String },
}

// === impl ApprovalWebhook ===

impl ApprovalWebhook {
    /// A webhook posting to `url`, linking pages under `origin`.
    pub fn new(url: &str, origin: &str) -> Result<Self, WebhookError> {
        let bad = |reason: String| WebhookError::Url {
            url: url.to_string(),
            reason,
        };
        let parsed = url::Url::parse(url).map_err(|e| bad(e.to_string()))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(bad("must start with https:// or http://".to_string()));
        }
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(TIMEOUT)
            .build()
            .map_err(|e| bad(e.to_string()))?;
        Ok(Self {
            url: parsed,
            origin: origin.trim_end_matches('/').to_string(),
            http,
        })
    }

    /// Sends the announcement of `record` in the background.
    pub fn announce(&self, record: &ApprovalRecord) {
        let message = message(record, &page_url(&self.origin, &record.id));
        let (http, url, id) = (self.http.clone(), self.url.clone(), record.id.clone());
        tokio::spawn(async move {
            let host = url.host_str().unwrap_or_default().to_string();
            match http.post(url).json(&message).send().await {
                Ok(response) if response.status().is_success() => {
                    info!(approval = %id, webhook = %host, "approval request announced");
                }
                Ok(response) => {
                    warn!(approval = %id, webhook = %host, status = %response.status(), "the approval webhook refused the announcement");
                }
                Err(e) => {
                    warn!(approval = %id, webhook = %host, error = %e, "cannot announce an approval request");
                }
            }
        });
    }
}

/// The console page of approval `id` under the gateway's public `origin`.
pub fn page_url(origin: &str, id: &str) -> String {
    format!("{}/console/approvals/{id}", origin.trim_end_matches('/'))
}

/// The message: `text` for every client (and notifications), `blocks` for a richer card.
fn message(record: &ApprovalRecord, link: &str) -> Value {
    let who = &record.user;
    let what = match &record.action {
        Some(action) => format!("{} {action}", record.tool),
        None => record.tool.clone(),
    };
    let hosts = record.hosts.join(", ");
    let minutes = record
        .expires_at_ms
        .saturating_sub(record.requested_at_ms)
        .div_ceil(60_000);
    let text = format!(
        "{who} asks for approval of `{what}` on {hosts}: {summary}. Expires in {minutes} min. <{link}|Review {id}>",
        summary = escape(&record.summary),
        hosts = escape(&hosts),
        id = record.id,
    );
    json!({
        "text": text,
        "blocks": [
            {"type": "section", "text": {"type": "mrkdwn", "text": text}},
            {"type": "actions", "elements": [
                {"type": "button", "text": {"type": "plain_text", "text": "Review"}, "url": link}
            ]}
        ]
    })
}

/// Slack's escaping of `&`, `<` and `>` in message text (its control characters).
fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::approvals::ApprovalState;

    #[test]
    fn the_message_links_the_request_and_escapes_its_text() {
        let record = ApprovalRecord {
            id: "apr-0123456789abcdef".into(),
            state: ApprovalState::Pending,
            tool: "bash".into(),
            action: None,
            hosts: vec!["db-1".into()],
            user: "alice".into(),
            run_as: None,
            summary: "run `echo <x> & y` on db-1".into(),
            arguments: json!({}),
            request_hash: String::new(),
            policy_version: String::new(),
            rules: vec![],
            requested_at_ms: 0,
            expires_at_ms: 15 * 60_000,
            decided_by: None,
            decided_at_ms: None,
            reason: None,
            used_at_ms: None,
        };
        let link = page_url("https://gw.example.com/", &record.id);
        assert_eq!(
            link,
            "https://gw.example.com/console/approvals/apr-0123456789abcdef"
        );
        let message = message(&record, &link);
        let text = message["text"].as_str().unwrap();
        assert!(text.contains("<https://gw.example.com/console/approvals/apr-0123456789abcdef|Review apr-0123456789abcdef>"), "{text}");
        assert!(text.contains("echo &lt;x&gt; &amp; y"), "{text}");
        assert!(text.contains("15 min"), "{text}");
        assert_eq!(message["blocks"][1]["elements"][0]["url"], json!(link));
    }
}
