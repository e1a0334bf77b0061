//! The client's address as the socket saw it: what the login forms (OAuth's and the console's)
//! rate-limit and log by.

use std::net::SocketAddr;

use axum::extract::ConnectInfo;

/// The client's address as the socket saw it (`unknown` in handler tests without a socket).
#[derive(Debug, Clone)]
pub struct ClientAddr(pub String);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for ClientAddr {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _state: &S,
    ) -> Result<Self, Self::Rejection> {
        Ok(Self(
            parts
                .extensions
                .get::<ConnectInfo<SocketAddr>>()
                .map(|c| c.0.ip().to_string())
                .unwrap_or_else(|| "unknown".to_string()),
        ))
    }
}
