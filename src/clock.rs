//! The wall clock. Every wall-clock reading of the daemons goes through here, so that the
//! simulator can give one node a clock that jumps or drifts (`sim_hooks::set_clock_skew`).
//! Timeouts, leases and liveness use the monotonic clock (`tokio::time::Instant`) instead.

use std::time::{Duration, SystemTime};

/// The wall-clock time on this node.
pub fn now() -> SystemTime {
    let real = SystemTime::now();
    #[cfg(feature = "sim")]
    {
        let skew_ms = crate::sim_hooks::clock_skew_ms();
        if skew_ms >= 0 {
            return real + Duration::from_millis(skew_ms as u64);
        }
        return real
            .checked_sub(Duration::from_millis(skew_ms.unsigned_abs()))
            .unwrap_or(SystemTime::UNIX_EPOCH);
    }
    #[allow(unreachable_code)]
    real
}

/// Milliseconds since the Unix epoch on this node's wall clock (0 before it).
pub fn now_ms() -> i64 {
    now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d: Duration| d.as_millis() as i64)
}
