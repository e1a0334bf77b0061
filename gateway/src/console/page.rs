//! The frame every console page shares (title, navigation, who is signed in, sign-out), the
//! error page, and how times and durations read. Pages are plain HTML that reads without
//! colour or JavaScript: states are words, buttons are labelled forms.

use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use maud::{DOCTYPE, Markup, html};

use super::assets;
use super::session::Session;

/// The console's sections, in navigation order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Section {
    Approvals,
    Jobs,
    Hosts,
    Audit,
    Tokens,
    SignIn,
}

impl Section {
    fn title(self) -> &'static str {
        match self {
            Self::Approvals => "Approvals",
            Self::Jobs => "Jobs",
            Self::Hosts => "Hosts",
            Self::Audit => "Audit",
            Self::Tokens => "Tokens",
            Self::SignIn => "Sign in",
        }
    }

    fn path(self) -> &'static str {
        match self {
            Self::Approvals => "/console/approvals",
            Self::Jobs => "/console/jobs",
            Self::Hosts => "/console/hosts",
            Self::Audit => "/console/audit",
            Self::Tokens => "/console/tokens",
            Self::SignIn => "/console/login",
        }
    }
}

/// The sections a signed-in person can open.
const NAVIGATION: [Section; 5] = [
    Section::Approvals,
    Section::Jobs,
    Section::Hosts,
    Section::Audit,
    Section::Tokens,
];

/// A whole page: `title` in the window and as the heading, under `section` of the navigation.
pub fn frame(section: Section, title: &str, session: Option<&Session>, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · execmesh console" }
                link rel="stylesheet" href=(assets::STYLE.path) integrity=(assets::STYLE.integrity());
                script src=(assets::SCRIPT.path) integrity=(assets::SCRIPT.integrity()) defer {}
            }
            body {
                header {
                    a.brand href="/console" { "execmesh" }
                    @if let Some(session) = session {
                        nav aria-label="Console" {
                            ul {
                                @for item in NAVIGATION {
                                    li {
                                        @if item == section {
                                            a href=(item.path()) aria-current="page" { (item.title()) }
                                        } @else {
                                            a href=(item.path()) { (item.title()) }
                                        }
                                    }
                                }
                            }
                        }
                        form.signout method="post" action="/console/logout" {
                            span.who {
                                "Signed in as " strong #whoami { (session.identity.user) }
                                " (" (session.identity.tier) ")"
                            }
                            (csrf(session))
                            button type="submit" { "Sign out" }
                        }
                    }
                }
                main #main {
                    h1 { (title) }
                    (body)
                }
            }
        }
    }
}

/// The hidden field carrying the session's CSRF token.
pub fn csrf(session: &Session) -> Markup {
    html! { input type="hidden" name="csrf" value=(session.csrf); }
}

/// `markup` as an HTML response with `status`.
pub fn respond(status: StatusCode, markup: Markup) -> Response {
    (status, Html(markup.into_string())).into_response()
}

/// A page saying why something was refused or failed.
pub fn error(
    status: StatusCode,
    title: &str,
    message: &str,
    session: Option<&Session>,
) -> Response {
    let body = html! {
        p.error role="alert" { (message) }
        p { a href="/console" { "Back to the console" } }
    };
    respond(status, frame(Section::SignIn, title, session, body))
}

/// `2026-12-02 13:45:01 UTC`.
pub fn time(ms: u64) -> String {
    match ::time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000) {
        Ok(t) => format!(
            "{:04}-{:02}-{:02} {:02}:{:02}:{:02} UTC",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second()
        ),
        Err(_) => ms.to_string(),
    }
}

/// How long `ms` milliseconds is, in the largest unit that fits: `45 s`, `12 min`, `3 h`, `2 d`.
pub fn span(ms: u64) -> String {
    let secs = ms / 1000;
    match secs {
        0..60 => format!("{secs} s"),
        60..3600 => format!("{} min", secs / 60),
        3600..86400 => format!("{} h", secs / 3600),
        _ => format!("{} d", secs / 86400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_and_spans_read_plainly() {
        assert_eq!(time(1_796_219_101_000), "2026-12-02 13:45:01 UTC");
        assert_eq!(span(45_000), "45 s");
        assert_eq!(span(12 * 60_000), "12 min");
        assert_eq!(span(3 * 3_600_000), "3 h");
    }
}
