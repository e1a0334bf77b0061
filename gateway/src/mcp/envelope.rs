//! The HTTP envelope of `/mcp` requests the gateway answers itself, before rmcp: a body that is not JSON (400, -32700) or not a JSON-RPC message (400, -32600), one too large (413), a call that needs the mesh while NATS is unreachable or a token whose revocation cannot be checked (503 with `Retry-After`); each answer a JSON-RPC error body a client can show, each refusal logged at WARN with its reason, rate-limited.

use std::sync::LazyLock;
use std::time::{Duration, Instant};

use async_nats::connection::State;
use axum::body::{Body, Bytes};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tracing::warn;

use execmesh_runtime::logging::Throttle;

/// What a client is told to wait before retrying a call refused as unavailable.
pub const RETRY_AFTER: Duration = Duration::from_secs(5);
/// JSON-RPC: the body is not JSON.
pub const PARSE_ERROR: i32 = -32700;
/// JSON-RPC: JSON, but not a valid request.
pub const INVALID_REQUEST: i32 = -32600;
/// JSON-RPC implementation-defined server error: the server cannot serve the call now.
pub const UNAVAILABLE: i32 = -32000;
/// How often the NATS connection is looked at while a call waits for it.
const CONNECTION_POLL: Duration = Duration::from_millis(50);

/// Refusals logged at WARN: at most this many a minute, the rest counted.
static LOGGED: LazyLock<Throttle> = LazyLock::new(|| Throttle::new(20, Duration::from_secs(60)));

/// Why the gateway answered a `/mcp` request itself, as `error.data.reason` says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Rejection {
    /// The body is not JSON.
    ParseError,
    /// JSON, but not a JSON-RPC message MCP knows.
    InvalidRequest,
    /// The body is larger than `max_body_bytes`.
    TooLarge,
    /// A call that needs the mesh while this gateway has no NATS connection.
    MeshUnreachable,
    /// The token's revocation cannot be checked (NATS away longer than the staleness allowed).
    RevocationUnknown,
}

// === impl Rejection ===

impl Rejection {
    pub fn status(self) -> StatusCode {
        match self {
            Self::ParseError | Self::InvalidRequest => StatusCode::BAD_REQUEST,
            Self::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::MeshUnreachable | Self::RevocationUnknown => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    pub fn code(self) -> i32 {
        match self {
            Self::ParseError => PARSE_ERROR,
            Self::InvalidRequest | Self::TooLarge => INVALID_REQUEST,
            Self::MeshUnreachable | Self::RevocationUnknown => UNAVAILABLE,
        }
    }
}

/// A request the gateway answers itself: why, the request's `id` (`null` when it is not known)
/// and the message the client shows.
#[derive(Debug)]
pub struct Refused {
    pub rejection: Rejection,
    pub id: Value,
    pub message: String,
}

impl IntoResponse for Refused {
    /// The JSON-RPC error answer, with `Retry-After` when waiting helps; logged at WARN
    /// (rate-limited).
    fn into_response(self) -> Response {
        let Self {
            rejection,
            id,
            message,
        } = self;
        if let Some(held_back) = LOGGED.admit() {
            warn!(status = rejection.status().as_u16(), reason = ?rejection, held_back, "{message}");
        }
        let body = json!({
            "jsonrpc": "2.0",
            "id": id,
            "error": {"code": rejection.code(), "message": message, "data": {"reason": rejection}},
        });
        let mut response = (rejection.status(), axum::Json(body)).into_response();
        if rejection.status() == StatusCode::SERVICE_UNAVAILABLE {
            response.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from(RETRY_AFTER.as_secs()),
            );
        }
        response
    }
}

/// Logs a refusal rmcp answered itself (a wrong `Content-Type` or `Accept`), at WARN,
/// rate-limited: rmcp does not.
pub fn log_refused(status: StatusCode) {
    if matches!(
        status,
        StatusCode::UNSUPPORTED_MEDIA_TYPE | StatusCode::NOT_ACCEPTABLE
    ) && let Some(held_back) = LOGGED.admit()
    {
        warn!(
            status = status.as_u16(),
            held_back, "MCP request refused: wrong Content-Type or Accept header"
        );
    }
}

/// Whether the request says its body is JSON; any other body is rmcp's to refuse (415).
pub fn is_json(headers: &axum::http::HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(';')
                .next()
                .is_some_and(|essence| essence.trim().eq_ignore_ascii_case("application/json"))
        })
}

/// The body, read whole up to `max_bytes`: refused as too large past it.
pub async fn read(body: Body, max_bytes: usize) -> Result<Bytes, Refused> {
    axum::body::to_bytes(body, max_bytes)
        .await
        .map_err(|_| Refused {
            rejection: Rejection::TooLarge,
            id: Value::Null,
            message: format!("request body exceeds {max_bytes} bytes (max_body_bytes)"),
        })
}

/// A JSON-RPC message as the gateway reads it before rmcp.
pub struct Message {
    /// Its `id` (`null` for a notification or a batch).
    pub id: Value,
    /// Its `method`, when it has one.
    pub method: Option<String>,
}

/// Parses `body` as a JSON-RPC message rmcp will accept, or refuses it the JSON-RPC way.
pub fn parse(body: &[u8]) -> Result<Message, Refused> {
    let value: Value = serde_json::from_slice(body).map_err(|e| Refused {
        rejection: Rejection::ParseError,
        id: Value::Null,
        message: format!("parse error: the body is not JSON ({e})"),
    })?;
    let id = value.get("id").cloned().unwrap_or(Value::Null);
    // Checked on the parsed tree, not the text again: the body is read once here (rmcp
    // parses it once more, for itself).
    if let Err(e) = <rmcp::model::ClientJsonRpcMessage as serde::Deserialize>::deserialize(&value) {
        return Err(Refused {
            rejection: Rejection::InvalidRequest,
            id,
            message: format!("invalid request: not a JSON-RPC message of MCP ({e})"),
        });
    }
    let method = value
        .get("method")
        .and_then(Value::as_str)
        .map(str::to_string);
    Ok(Message { id, method })
}

/// Whether answering `method` needs the mesh (NATS): a tool call does; listing tools,
/// `initialize` and `ping` do not.
pub fn needs_mesh(method: Option<&str>) -> bool {
    method == Some("tools/call")
}

/// Waits up to `wait` for the NATS connection to be up; the refusal to answer otherwise.
pub async fn mesh_reachable(
    client: &async_nats::Client,
    wait: Duration,
    id: &Value,
) -> Result<(), Refused> {
    let started = Instant::now();
    while client.connection_state() != State::Connected {
        if started.elapsed() >= wait {
            return Err(Refused {
                rejection: Rejection::MeshUnreachable,
                id: id.clone(),
                message: format!(
                    "the mesh is unreachable: this gateway has no connection to NATS (waited {} ms); retry in {} s",
                    wait.as_millis(),
                    RETRY_AFTER.as_secs()
                ),
            });
        }
        tokio::time::sleep(CONNECTION_POLL).await;
    }
    Ok(())
}
