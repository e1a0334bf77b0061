//! The console's two static files, compiled into the binary: its stylesheet and its one script
//! (no third-party code, no build step). Pages reference them with Subresource Integrity
//! hashes, and the content security policy allows scripts and styles from the gateway only.

use std::sync::OnceLock;

use axum::extract::Path;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use sha2::{Digest, Sha256};

/// One static file.
pub struct Asset {
    /// Where pages load it from.
    pub path: &'static str,
    content_type: &'static str,
    body: &'static str,
    /// `sha256-…` of `body`, computed once.
    integrity: OnceLock<String>,
}

/// The stylesheet.
pub static STYLE: Asset = Asset {
    path: "/console/assets/console.css",
    content_type: "text/css; charset=utf-8",
    body: include_str!("assets/console.css"),
    integrity: OnceLock::new(),
};

/// The script: live updates over server-sent events; every page works without it.
pub static SCRIPT: Asset = Asset {
    path: "/console/assets/console.js",
    content_type: "text/javascript; charset=utf-8",
    body: include_str!("assets/console.js"),
    integrity: OnceLock::new(),
};

// === impl Asset ===

impl Asset {
    /// The Subresource Integrity value of the file.
    pub fn integrity(&self) -> &str {
        self.integrity.get_or_init(|| {
            let digest = Sha256::digest(self.body.as_bytes());
            format!(
                "sha256-{}",
                base64::engine::general_purpose::STANDARD.encode(digest)
            )
        })
    }
}

/// GET `/console/assets/{name}`.
pub async fn serve(Path(name): Path<String>) -> Response {
    let Some(asset) = [&STYLE, &SCRIPT]
        .into_iter()
        .find(|a| a.path.rsplit('/').next() == Some(name.as_str()))
    else {
        return (StatusCode::NOT_FOUND, "no such file\n").into_response();
    };
    let mut response = asset.body.into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(asset.content_type),
    );
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=300"),
    );
    response
}
