//! The login page of `/authorize`, and the error page shown when a request cannot be sent back
//! to its client. Plain HTML without scripts; every value is escaped; no framing.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};

/// What the login page shows and carries.
pub struct LoginPage<'a> {
    /// Who asks for access (the client's name, or its id).
    pub client: &'a str,
    /// Where the browser will be sent back (shown so the user can spot a stranger).
    pub redirect_uri: &'a str,
    /// The authorization request, carried through the form as hidden fields.
    pub hidden: &'a [(&'a str, &'a str)],
    /// The user name to prefill after a failed attempt.
    pub username: &'a str,
    /// Why the previous attempt failed.
    pub error: Option<&'a str>,
}

/// The login form, with `status` (200, or 401/429 after a failed attempt).
pub fn page(status: StatusCode, page: &LoginPage<'_>) -> Response {
    let hidden: String = page
        .hidden
        .iter()
        .map(|(name, value)| {
            format!(
                r#"<input type="hidden" name="{}" value="{}">"#,
                escape(name),
                escape(value)
            )
        })
        .collect::<Vec<_>>()
        .join("\n      ");
    let error = page
        .error
        .map(|e| format!(r#"<p class="error" role="alert">{}</p>"#, escape(e)))
        .unwrap_or_default();
    let body = format!(
        r#"<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <meta name="viewport" content="width=device-width, initial-scale=1">
  <title>Sign in to execmesh</title>
  <style>
    body {{ font-family: system-ui, sans-serif; max-width: 26rem; margin: 4rem auto; padding: 0 1rem; color: #222; }}
    h1 {{ font-size: 1.4rem; }}
    label {{ display: block; margin-top: 1rem; }}
    input[type=text], input[type=password] {{ width: 100%; padding: .5rem; box-sizing: border-box; }}
    button {{ margin-top: 1.5rem; padding: .6rem 1.2rem; }}
    .error {{ color: #a00; }}
    .small {{ color: #666; font-size: .85rem; word-break: break-all; }}
  </style>
</head>
<body>
  <h1>Sign in to execmesh</h1>
  <p><strong>{client}</strong> asks to use execmesh on your behalf.</p>
  <p class="small">You will be sent back to {redirect}</p>
  {error}
  <form method="post" action="/authorize">
      {hidden}
    <label>User <input type="text" name="username" value="{username}" autocomplete="username" autocapitalize="none" required autofocus></label>
    <label>Password <input type="password" name="password" autocomplete="current-password" required></label>
    <button type="submit">Sign in</button>
  </form>
</body>
</html>
"#,
        client = escape(page.client),
        redirect = escape(page.redirect_uri),
        username = escape(page.username),
    );
    with_headers(status, body)
}

/// A page saying why the authorization request cannot proceed (bad client or redirect URI:
/// such errors must not be sent to the redirect URI).
pub fn error(status: StatusCode, message: &str) -> Response {
    let body = format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>execmesh: cannot sign in</title></head>
<body style="font-family: system-ui, sans-serif; max-width: 32rem; margin: 4rem auto">
<h1>Cannot sign in</h1>
<p>{}</p>
</body></html>
"#,
        escape(message)
    );
    with_headers(status, body)
}

fn with_headers(status: StatusCode, body: String) -> Response {
    let mut response = (status, Html(body)).into_response();
    let headers = response.headers_mut();
    super::no_store(headers);
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'",
        ),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}

/// HTML-escapes text for element content and double-quoted attributes.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_escaped() {
        assert_eq!(
            escape(r#"<script>"x"&'y'"#),
            "&lt;script&gt;&quot;x&quot;&amp;&#39;y&#39;"
        );
    }
}
