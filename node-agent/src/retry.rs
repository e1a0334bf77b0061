//! The agent's retries of NATS writes that must eventually succeed: 50 ms doubling to 1 s, given up only when the agent stops.

use std::time::Duration;

pub use execmesh_runtime::backoff::Backoff;
use execmesh_runtime::backoff::Stopped;

const FIRST: Duration = Duration::from_millis(50);
const MAX: Duration = Duration::from_secs(1);

/// The write was abandoned because the agent is stopping for good.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("gave up: the agent is stopping")]
pub struct GaveUp;

impl From<Stopped> for GaveUp {
    fn from(_: Stopped) -> Self {
        GaveUp
    }
}

/// The backoff of one write: 50 ms, doubling to 1 s.
pub fn backoff() -> Backoff {
    Backoff::new(FIRST, MAX)
}

/// [`backoff`] that never waits longer than `cap`.
pub fn backoff_within(cap: Duration) -> Backoff {
    Backoff::new(FIRST.min(cap), MAX.min(cap))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_util::sync::CancellationToken;

    #[tokio::test(start_paused = true)]
    async fn delays_double_up_to_one_second() {
        let mut b = backoff();
        let delays: Vec<u128> = (0..7).map(|_| b.next_delay().as_millis()).collect();
        assert_eq!(delays, [50, 100, 200, 400, 800, 1000, 1000]);
        let stop = CancellationToken::new();
        stop.cancel();
        assert_eq!(b.wait(&stop).await.map_err(GaveUp::from), Err(GaveUp));
    }
}
