//! Wall-clock time as the wire and the stores count it.

use std::time::{SystemTime, UNIX_EPOCH};

/// Unix time in milliseconds (0 for a clock set before 1970).
pub fn now_ms() -> u64 {
    since_epoch().map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Unix time in seconds (0 for a clock set before 1970).
pub fn now_secs() -> u64 {
    since_epoch().map_or(0, |d| d.as_secs())
}

fn since_epoch() -> Option<std::time::Duration> {
    SystemTime::now().duration_since(UNIX_EPOCH).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn milliseconds_and_seconds_tell_the_same_time() {
        let secs = now_secs();
        let ms = now_ms();
        // 2023-11-14 or later: the clock is set, and both read it in the same unit.
        assert!(secs > 1_700_000_000, "{secs}");
        assert!(ms / 1000 >= secs && ms / 1000 <= secs + 1, "{ms} {secs}");
    }
}
