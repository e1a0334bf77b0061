//! Capped exponential backoff between attempts at something that must eventually succeed (a NATS publish, a store commit, opening a stream).

use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// The wait was cut short because the service is stopping.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("stopped while waiting to try again")]
pub struct Stopped;

/// Delays that start at `first` and double up to `max`.
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
    max: Duration,
    /// Failed attempts so far (delays handed out).
    pub attempts: u32,
}

// === impl Backoff ===

impl Backoff {
    /// A backoff whose first delay is `first`, doubling up to `max`.
    pub fn new(first: Duration, max: Duration) -> Self {
        Self {
            next: first,
            max,
            attempts: 0,
        }
    }

    /// The delay before the next attempt; counts the failed one.
    pub fn next_delay(&mut self) -> Duration {
        self.attempts += 1;
        let delay = self.next;
        self.next = (self.next * 2).min(self.max);
        delay
    }

    /// Sleeps before the next attempt; `Err(Stopped)` if `stop` fires first.
    pub async fn wait(&mut self, stop: &CancellationToken) -> Result<(), Stopped> {
        let delay = self.next_delay();
        tokio::select! {
            _ = stop.cancelled() => Err(Stopped),
            _ = tokio::time::sleep(delay) => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn delays_double_up_to_the_cap_and_stop_cuts_a_wait_short() {
        let stop = CancellationToken::new();
        let mut b = Backoff::new(Duration::from_millis(50), Duration::from_secs(1));
        let start = tokio::time::Instant::now();
        for _ in 0..7 {
            b.wait(&stop).await.expect("not stopped");
        }
        // 50 + 100 + 200 + 400 + 800 + 1000 + 1000 ms
        assert_eq!(start.elapsed(), Duration::from_millis(3550));
        assert_eq!(b.attempts, 7);
        stop.cancel();
        assert_eq!(b.wait(&stop).await, Err(Stopped));
    }
}
