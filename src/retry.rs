//! The one retry/backoff helper: full-jitter exponential backoff from the seeded RNG (so the
//! simulator replays it), bounded by a maximum step and by the caller's deadline.

use std::time::Duration;

pub struct Backoff {
    step_ms: u64,
    max_ms: u64,
}

impl Backoff {
    pub fn new(min_ms: u64, max_ms: u64) -> Self {
        Backoff {
            step_ms: min_ms.max(1),
            max_ms: max_ms.max(1),
        }
    }

    /// Sleeps a random 1..=step ms (never past `left`, if given), then doubles the step.
    pub async fn wait(&mut self, left: Option<Duration>) {
        let sleep = self.next_delay();
        let sleep = left.map_or(sleep, |l| sleep.min(l));
        tokio::time::sleep(sleep).await;
    }

    /// The next delay (a random 1..=step ms), doubling the step; for callers that must not
    /// sleep in place and instead refuse attempts until the delay has passed.
    pub fn next_delay(&mut self) -> Duration {
        let delay = Duration::from_millis(madsim::rand::random::<u64>() % self.step_ms + 1);
        self.step_ms = (self.step_ms * 2).min(self.max_ms);
        delay
    }
}
