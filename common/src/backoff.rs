//! Exponential backoff with a cap and jitter: the one rule every retry loop of the workspace
//! waits by (relay sessions of a peer, federation deliveries, the tfchain block feed, twin
//! publication and resolution).
//!
//! A [`BackoffPolicy`] says how delays grow: the base delay before retry `n` (counting from
//! 0) is `first × 2ⁿ`, never above `max`; [`Jitter`] then spreads it so that many clients
//! that failed together do not come back together. [`BackoffPolicy::delay`] is a pure
//! function of the attempt number, for callers that keep the count themselves (a queued
//! federation envelope stores its attempts); [`Backoff`] keeps the count for a retry loop.

use std::time::Duration;

use rand::Rng as _;

/// How a base delay is spread at random.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Jitter {
    /// Exactly the base delay.
    None,
    /// Anywhere in `[base / 2, base]` ("equal jitter"): never longer than the cap.
    Equal,
    /// Anywhere in `[base, base × 1.5]`: never shorter than the base.
    Added,
}

/// How delays grow between attempts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackoffPolicy {
    /// The base delay before the first retry.
    pub first: Duration,
    /// The largest base delay.
    pub max: Duration,
    /// How each base delay is spread.
    pub jitter: Jitter,
}

impl BackoffPolicy {
    /// Delays from `first` doubling up to `max`, with equal jitter.
    pub const fn new(first: Duration, max: Duration) -> BackoffPolicy {
        BackoffPolicy {
            first,
            max,
            jitter: Jitter::Equal,
        }
    }

    /// The same policy with another jitter.
    pub const fn with_jitter(self, jitter: Jitter) -> BackoffPolicy {
        BackoffPolicy { jitter, ..self }
    }

    /// The base delay before retry `attempt` (0 is the first): `first × 2^attempt`, capped
    /// at `max`; no overflow however large `attempt` grows.
    pub fn base(&self, attempt: u32) -> Duration {
        let factor = 1u32 << attempt.min(31);
        self.first.saturating_mul(factor).min(self.max)
    }

    /// The delay to wait before retry `attempt`: the base delay spread by the jitter.
    pub fn delay(&self, attempt: u32) -> Duration {
        let base = self.base(attempt);
        let half = base / 2;
        match self.jitter {
            Jitter::None => base,
            Jitter::Equal => half + random_up_to(half),
            Jitter::Added => base + random_up_to(half),
        }
    }

    /// A retry loop's counter over this policy.
    pub fn start(self) -> Backoff {
        Backoff {
            policy: self,
            attempt: 0,
        }
    }
}

fn random_up_to(limit: Duration) -> Duration {
    rand::thread_rng().gen_range(Duration::ZERO..=limit)
}

/// The delays of one retry loop: each call to [`Backoff::next_delay`] is the next, longer
/// one, until [`Backoff::reset`] after a success. Also an endless [`Iterator`] of delays.
#[derive(Debug, Clone)]
pub struct Backoff {
    policy: BackoffPolicy,
    attempt: u32,
}

impl Backoff {
    /// The delay to wait now; the following call returns the next one.
    pub fn next_delay(&mut self) -> Duration {
        let delay = self.policy.delay(self.attempt);
        self.attempt = self.attempt.saturating_add(1);
        delay
    }

    /// Starts over from the first delay (after a success).
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// Delays handed out since the start or the last reset.
    pub fn attempts(&self) -> u32 {
        self.attempt
    }

    /// The policy.
    pub fn policy(&self) -> &BackoffPolicy {
        &self.policy
    }
}

impl Iterator for Backoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        Some(self.next_delay())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn without_jitter_delays_double_from_the_first_up_to_the_cap() {
        let delays: Vec<Duration> = BackoffPolicy::new(100 * MS, 1000 * MS)
            .with_jitter(Jitter::None)
            .start()
            .take(6)
            .collect();
        assert_eq!(
            delays,
            [100 * MS, 200 * MS, 400 * MS, 800 * MS, 1000 * MS, 1000 * MS]
        );
    }

    #[test]
    fn equal_jitter_stays_between_half_and_all_of_the_base() {
        let policy = BackoffPolicy::new(100 * MS, 30_000 * MS);
        for attempt in 0..20 {
            let base = policy.base(attempt);
            for _ in 0..50 {
                let d = policy.delay(attempt);
                assert!(d >= base / 2 && d <= base, "{attempt}: {d:?} vs {base:?}");
            }
        }
        assert_eq!(policy.base(30), 30_000 * MS, "capped");
    }

    #[test]
    fn added_jitter_stays_between_the_base_and_half_again() {
        let policy = BackoffPolicy::new(250 * MS, 30_000 * MS).with_jitter(Jitter::Added);
        for attempt in 0..20 {
            let base = policy.base(attempt);
            for _ in 0..50 {
                let d = policy.delay(attempt);
                assert!(d >= base && d <= base + base / 2, "{attempt}: {d:?}");
            }
        }
    }

    #[test]
    fn jitter_actually_varies_the_delay() {
        let policy = BackoffPolicy::new(Duration::from_secs(10), Duration::from_secs(10));
        let seen: std::collections::HashSet<Duration> = (0..50).map(|_| policy.delay(0)).collect();
        assert!(seen.len() > 1, "{seen:?}");
    }

    #[test]
    fn huge_attempt_counts_saturate_at_the_cap() {
        let policy = BackoffPolicy::new(500 * MS, Duration::from_secs(60));
        for attempt in [16, 31, 32, 64, u32::MAX] {
            assert_eq!(policy.base(attempt), Duration::from_secs(60), "{attempt}");
        }
        let unbounded = BackoffPolicy::new(Duration::MAX / 2, Duration::MAX);
        assert_eq!(unbounded.base(u32::MAX), Duration::MAX);
    }

    #[test]
    fn reset_starts_over_from_the_first_delay() {
        let mut b = BackoffPolicy::new(100 * MS, 1000 * MS)
            .with_jitter(Jitter::None)
            .start();
        b.next_delay();
        b.next_delay();
        assert_eq!(b.attempts(), 2);
        assert_eq!(b.next_delay(), 400 * MS);
        b.reset();
        assert_eq!(b.attempts(), 0);
        assert_eq!(b.next_delay(), 100 * MS);
    }
}
