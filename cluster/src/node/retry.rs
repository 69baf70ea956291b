//! The bounded retry of `submit`, `read` and admin operations: one
//! schedule of pauses, so every path gives up after the same window.

use std::time::{Duration, Instant};

const BACKOFF_FIRST: Duration = Duration::from_millis(10);
const BACKOFF_MAX: Duration = Duration::from_millis(200);

/// The bounded retry of `submit`, `read` and admin operations: exponential
/// backoff from 10 ms to 200 ms, for at most `retry_window_ms`.
pub(super) struct Retry {
    deadline: Instant,
    backoff: Duration,
}

impl Retry {
    pub(super) fn new(window_ms: u64) -> Self {
        Self { deadline: Instant::now() + Duration::from_millis(window_ms), backoff: BACKOFF_FIRST }
    }

    /// Time left in the window (at least the first backoff).
    pub(super) fn remaining(&self) -> Duration {
        self.deadline.saturating_duration_since(Instant::now()).max(BACKOFF_FIRST)
    }

    /// Sleeps before the next attempt; false when the window has no room
    /// left for one, and the caller gives up.
    pub(super) async fn pause(&mut self) -> bool {
        if Instant::now() + self.backoff > self.deadline {
            return false;
        }
        tokio::time::sleep(self.backoff).await;
        self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
        true
    }
}
