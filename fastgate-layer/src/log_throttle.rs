//! [`LogThrottle`]: at most one log line a second for a kind of failure that can come in bursts
//! (a backend outage under load, an accept loop out of file descriptors), each line saying how
//! many were not written since the one before.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// At most one line per second: a burst of failures would otherwise write a line each. The line
/// that may be written says how many were not written since the one before (`skipped`).
///
/// ```
/// use fastgate_layer::log_throttle::LogThrottle;
///
/// static ACCEPT_FAILED: LogThrottle = LogThrottle::new();
/// if let Some(skipped) = ACCEPT_FAILED.allow() {
///     eprintln!("accepting a connection failed (and {skipped} more not logged)");
/// }
/// assert_eq!(ACCEPT_FAILED.allow(), None);
/// ```
#[derive(Debug)]
pub struct LogThrottle {
    /// Milliseconds since [`LOG_EPOCH`] of the last line written, plus one (0: none yet).
    last: AtomicU64,
    skipped: AtomicU64,
}

static LOG_EPOCH: std::sync::LazyLock<Instant> = std::sync::LazyLock::new(Instant::now);

impl Default for LogThrottle {
    fn default() -> Self {
        Self::new()
    }
}

impl LogThrottle {
    const INTERVAL_MS: u64 = 1000;

    /// A throttle whose first line may be written at once.
    pub const fn new() -> Self {
        Self {
            last: AtomicU64::new(0),
            skipped: AtomicU64::new(0),
        }
    }

    /// `Some(lines skipped since the last one)` when a line may be written now; `None` (and
    /// the line counted as skipped) otherwise.
    pub fn allow(&self) -> Option<u64> {
        let now = u64::try_from(LOG_EPOCH.elapsed().as_millis()).unwrap_or(u64::MAX) + 1;
        let last = self.last.load(Ordering::Relaxed);
        if (last == 0 || now.saturating_sub(last) >= Self::INTERVAL_MS)
            && self
                .last
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            return Some(self.skipped.swap(0, Ordering::Relaxed));
        }
        self.skipped.fetch_add(1, Ordering::Relaxed);
        None
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn lines_are_throttled_and_count_what_they_skip() {
        let t = LogThrottle::new();
        assert_eq!(t.allow(), Some(0));
        for _ in 0..5 {
            assert_eq!(t.allow(), None);
        }
        // A second later the next line reports the five it did not write.
        std::thread::sleep(Duration::from_millis(1010));
        assert_eq!(t.allow(), Some(5));
        assert_eq!(t.allow(), None);
    }
}
