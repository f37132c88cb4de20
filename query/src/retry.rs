//! How work that failed waits before its next attempt: segment loads and
//! the tail's consumer back off alike.

use std::time::Duration;

/// The wait before retry number `attempts` + 1: `min`, doubling, at most
/// `max`.
pub(crate) fn backoff(min: Duration, max: Duration, attempts: u32) -> Duration {
    min.saturating_mul(1 << attempts.min(16)).min(max)
}
