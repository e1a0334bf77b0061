//! Publishes one output record to MESH_OUT, signed as this agent, and retries it, same message id, until it is acked.

use async_nats::HeaderMap;
use async_nats::jetstream;
use bytes::Bytes;
use execmesh_proto::signing::RecordKey;
use execmesh_proto::{headers, pb};
use prost::Message as _;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::retry::{self, GaveUp};

/// Publishes `record` on `subject` with `Nats-Msg-Id: msg_id`, signed with `signer` when the
/// agent has a key, and waits for the ack. A failed publish or a missing ack is retried with the
/// same id, so a NATS restart loses nothing and the stream's duplicate window stores a record
/// that did arrive only once. Gives up only when `stop` fires.
pub async fn publish_acked(
    js: &jetstream::Context,
    subject: &str,
    msg_id: &str,
    record: &pb::OutputRecord,
    signer: Option<&RecordKey>,
    stop: &CancellationToken,
) -> Result<(), GaveUp> {
    let payload = Bytes::from(record.encode_to_vec());
    let mut signed = HeaderMap::new();
    signed.insert(headers::MSG_ID, msg_id);
    if let Some(signer) = signer {
        signer.sign(subject, &mut signed, &payload);
    }
    let mut backoff = retry::backoff();
    loop {
        let headers = signed.clone();
        let attempt = async {
            js.publish_with_headers(subject.to_string(), headers, payload.clone())
                .await?
                .await
        };
        let result = tokio::select! {
            _ = stop.cancelled() => return Err(GaveUp),
            result = attempt => result,
        };
        match result {
            Ok(_) => {
                if backoff.attempts > 0 {
                    info!(
                        subject,
                        msg_id,
                        attempts = backoff.attempts + 1,
                        "output record acked after retries"
                    );
                }
                return Ok(());
            }
            Err(e) => {
                warn!(subject, msg_id, attempt = backoff.attempts + 1, error = %e,
                      "publishing output record failed; retrying");
                backoff.wait(stop).await?;
            }
        }
    }
}
