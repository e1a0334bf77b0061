//! A request the agent will not act on: the error code and the sentence its reply carries.

use execmesh_proto::Token;
use execmesh_proto::pb::{self, ErrorCode};

/// A request the agent will not act on, with the code and sentence for the reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub code: ErrorCode,
    pub message: String,
}

/// What a stopping agent no longer takes, as its refusal names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NewWork {
    /// Commands (and any request once the agent no longer reads them).
    Jobs,
    /// File operations and searches.
    Requests,
}

// === impl Refusal ===

impl Refusal {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    /// The refusal of new work once `host` is shutting down.
    pub fn shutting_down(host: &Token, work: NewWork) -> Self {
        let work = match work {
            NewWork::Jobs => "jobs",
            NewWork::Requests => "requests",
        };
        Self::new(
            ErrorCode::ShuttingDown,
            format!("host {host} is shutting down and takes no new {work}"),
        )
    }

    /// The refusal of a reply of `len` bytes, over the server's `max_payload`: it could not be
    /// sent at all. `ask` says what the caller can ask for instead.
    pub fn too_large(host: &Token, len: usize, max_payload: usize, ask: &str) -> Self {
        Self::new(
            ErrorCode::TooLarge,
            format!(
                "host {host}: the reply would be {len} bytes, over the NATS max payload of {max_payload}; {ask}"
            ),
        )
    }

    pub fn to_pb(&self) -> pb::ExecError {
        pb::ExecError {
            code: self.code as i32,
            message: self.message.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stopping_host_names_what_it_no_longer_takes() {
        let host = Token::parse("host id", "web-1").expect("token");
        let r = Refusal::shutting_down(&host, NewWork::Jobs);
        assert_eq!(r.code, ErrorCode::ShuttingDown);
        assert_eq!(
            r.message,
            "host web-1 is shutting down and takes no new jobs"
        );
        let r = Refusal::shutting_down(&host, NewWork::Requests);
        assert_eq!(
            r.message,
            "host web-1 is shutting down and takes no new requests"
        );
    }

    #[test]
    fn a_reply_over_the_max_payload_says_its_size_and_what_to_ask_for() {
        let host = Token::parse("host id", "web-1").expect("token");
        let r = Refusal::too_large(&host, 2_000, 1_000, "ask for less");
        assert_eq!(r.code, ErrorCode::TooLarge);
        assert_eq!(
            r.message,
            "host web-1: the reply would be 2000 bytes, over the NATS max payload of 1000; ask for less"
        );
    }
}
