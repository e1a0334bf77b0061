//! The tools' way to one host: [`crate::core::dispatch`] on behalf of the call's caller, under
//! its trace, audited in its trail.

use std::time::Duration;

use execmesh_proto::{Token, pb};

use super::Call;
use crate::core::error::ToolError;

pub use crate::core::dispatch::{random_suffix, request_id};

/// Sends `body` to `host` as request `id` for `call` and waits up to `wait` for the reply (see
/// [`crate::core::dispatch::Dispatcher::send`]).
pub async fn send(
    call: &Call<'_>,
    host: &Token,
    id: &Token,
    body: pb::exec_request::Body,
    wait: Duration,
) -> Result<pb::exec_reply::Body, ToolError> {
    call.dispatcher().send(host, id, body, wait).await
}
