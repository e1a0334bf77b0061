//! Capped exponential backoff for NATS writes that must eventually succeed.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

const FIRST: Duration = Duration::from_millis(50);
const MAX: Duration = Duration::from_secs(1);

/// The write was abandoned because the agent is stopping for good.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("gave up: the agent is stopping")]
pub struct GaveUp;

/// 50 ms, doubling to 1 s.
#[derive(Debug)]
pub struct Backoff {
    next: Duration,
    /// Failed attempts so far.
    pub attempts: u32,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            next: FIRST,
            attempts: 0,
        }
    }
}

impl Backoff {
    /// Sleeps before the next attempt; `Err(GaveUp)` if `stop` fires first.
    pub async fn wait(&mut self, stop: &CancellationToken) -> Result<(), GaveUp> {
        self.attempts += 1;
        let delay = self.next;
        self.next = (self.next * 2).min(MAX);
        tokio::select! {
            _ = stop.cancelled() => Err(GaveUp),
            _ = tokio::time::sleep(delay) => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn delays_double_up_to_one_second() {
        let stop = CancellationToken::new();
        let mut b = Backoff::default();
        let start = tokio::time::Instant::now();
        for _ in 0..7 {
            b.wait(&stop).await.expect("not stopped");
        }
        // 50 + 100 + 200 + 400 + 800 + 1000 + 1000 ms
        assert_eq!(start.elapsed(), Duration::from_millis(3550));
        stop.cancel();
        assert_eq!(b.wait(&stop).await, Err(GaveUp));
    }
}
