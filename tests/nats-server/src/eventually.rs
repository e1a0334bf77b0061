//! Polling a condition until it holds or a deadline passes, instead of sleeping and hoping.

use std::future::Future;
use std::panic::Location;
use std::time::Duration;

/// How often a condition is checked again.
const POLL: Duration = Duration::from_millis(20);

/// What a polled condition returns: `Some(value)` / `true` when it holds.
pub trait Outcome {
    /// What [`eventually`] returns once the condition holds.
    type Value;
    /// `Some` when the condition holds.
    fn settled(self) -> Option<Self::Value>;
}

impl Outcome for bool {
    type Value = ();
    fn settled(self) -> Option<()> {
        self.then_some(())
    }
}

impl<T> Outcome for Option<T> {
    type Value = T;
    fn settled(self) -> Option<T> {
        self
    }
}

/// Checks `condition` every 20 ms until it returns `true` / `Some(value)` and returns the value.
/// Panics, naming the caller's line, if that has not happened within `timeout`. A check that
/// itself hangs is cut off at the deadline too.
///
/// ```no_run
/// # async fn scenario(nats: &execmesh_nats_server::NatsServer) {
/// # use std::time::Duration;
/// # use execmesh_nats_server::eventually;
/// let log = nats.log_path();
/// let text = eventually(Duration::from_secs(5), || async { std::fs::read_to_string(&log).ok() }).await;
/// eventually(Duration::from_secs(5), || async { nats.pid().await.is_none() }).await;
/// # }
/// ```
#[track_caller]
pub fn eventually<F, Fut>(
    timeout: Duration,
    mut condition: F,
) -> impl Future<Output = <Fut::Output as Outcome>::Value>
where
    F: FnMut() -> Fut,
    Fut: Future,
    Fut::Output: Outcome,
{
    let caller = Location::caller();
    async move {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Ok(outcome) = tokio::time::timeout_at(deadline, condition()).await
                && let Some(value) = outcome.settled()
            {
                return value;
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                panic!("condition at {caller} did not hold within {timeout:?}");
            }
            // One last check lands on the deadline itself.
            tokio::time::sleep_until((now + POLL).min(deadline)).await;
        }
    }
}
