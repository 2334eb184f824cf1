//! Per-twin rate limits (token buckets), per-key rates (handshakes per address, legacy
//! federation per address and per source twin) and the per-pod connection cap.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use parking_lot::Mutex;

/// A rate: how fast a bucket refills and how much it holds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    /// Refill per second.
    pub per_second: f64,
    /// Most that can be spent at once.
    pub burst: f64,
}

impl Rate {
    /// `n` per second, burst twice that (this relay's `--rate-*`).
    pub fn per_second(n: u64) -> Rate {
        Rate {
            per_second: n as f64,
            burst: n as f64 * 2.0,
        }
    }

    /// `n` per minute, all of it usable at once (the original relay's `--limit`, whose fixed
    /// one-minute window also lets a whole minute's allowance through at once).
    pub fn per_minute(n: u64) -> Rate {
        Rate {
            per_second: n as f64 / 60.0,
            burst: n as f64,
        }
    }
}

/// A token bucket that refills continuously at `rate` per second up to `burst`.
#[derive(Debug)]
struct Bucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl Bucket {
    fn new(rate: Rate) -> Bucket {
        Bucket {
            rate: rate.per_second,
            burst: rate.burst,
            tokens: rate.burst,
            last: Instant::now(),
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.last = now;
    }
}

/// Which rate a twin exceeded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateExceeded {
    /// Envelopes per second.
    Messages,
    /// Bytes per second.
    Bytes,
}

/// The two buckets of one twin, shared by all its sessions on this pod.
#[derive(Debug)]
pub struct TwinRate {
    inner: Mutex<(Bucket, Bucket)>,
}

impl TwinRate {
    fn is_full(&self, now: Instant) -> bool {
        let mut guard = self.inner.lock();
        let (messages, bytes) = &mut *guard;
        messages.refill(now);
        bytes.refill(now);
        messages.tokens >= messages.burst && bytes.tokens >= bytes.burst
    }

    /// Takes one envelope of `size` bytes from the buckets at `now`, or says which one is
    /// empty. Nothing is taken when refused. The caller reads the clock once for a batch.
    pub fn take(&self, size: usize, now: Instant) -> Result<(), RateExceeded> {
        let mut guard = self.inner.lock();
        let (messages, bytes) = &mut *guard;
        messages.refill(now);
        bytes.refill(now);
        if messages.tokens < 1.0 {
            return Err(RateExceeded::Messages);
        }
        if bytes.tokens < size as f64 {
            return Err(RateExceeded::Bytes);
        }
        messages.tokens -= 1.0;
        bytes.tokens -= size as f64;
        Ok(())
    }
}

/// Hands out the shared bucket pair of each twin. A twin's buckets are kept while they
/// still remember spending, even with no session, so reconnecting does not reset them.
#[derive(Debug)]
pub struct RateLimiter {
    messages: Rate,
    bytes: Rate,
    twins: Mutex<HashMap<u32, Arc<TwinRate>>>,
}

impl RateLimiter {
    /// A limiter with the given per-twin rates.
    pub fn new(messages: Rate, bytes: Rate) -> Self {
        RateLimiter {
            messages,
            bytes,
            twins: Mutex::default(),
        }
    }

    /// The buckets of `twin` (created on first use).
    pub fn for_twin(&self, twin: u32) -> Arc<TwinRate> {
        let mut twins = self.twins.lock();
        twins
            .entry(twin)
            .or_insert_with(|| {
                Arc::new(TwinRate {
                    inner: Mutex::new((Bucket::new(self.messages), Bucket::new(self.bytes))),
                })
            })
            .clone()
    }

    /// Forgets buckets no session uses that have refilled completely: they hold no state.
    pub fn prune(&self) {
        let now = Instant::now();
        let mut twins = self.twins.lock();
        twins.retain(|_, rate| Arc::strong_count(rate) > 1 || !rate.is_full(now));
    }
}

/// Most keys a [`KeyedLimiter`] remembers: past it, spent buckets that refilled are dropped,
/// and an unknown key is refused until some are (an attacker naming endless keys must not grow
/// the map without bound).
pub const MAX_LIMITER_KEYS: usize = 100_000;

/// One token bucket per key (a client address, a source twin), refilling at `rate` per second
/// up to twice that. Bounded: see [`MAX_LIMITER_KEYS`].
#[derive(Debug)]
pub struct KeyedLimiter<K> {
    rate: u64,
    keys: Mutex<HashMap<K, Bucket>>,
}

/// Websocket handshakes (and legacy federation requests) per client address: one bucket per
/// IPv4 address or IPv6 /64 (one host usually holds a whole /64).
pub type HandshakeLimiter = KeyedLimiter<IpAddr>;

impl<K: std::hash::Hash + Eq> KeyedLimiter<K> {
    /// A limiter allowing `rate` per second per key; 0 allows everything.
    pub fn new(rate: u64) -> Self {
        KeyedLimiter {
            rate,
            keys: Mutex::default(),
        }
    }

    /// Takes one token for `key`; `false` when its bucket is empty (or the limiter is full of
    /// other keys still spending).
    pub fn take(&self, key: K) -> bool {
        if self.rate == 0 {
            return true;
        }
        let now = Instant::now();
        let mut keys = self.keys.lock();
        if keys.len() >= MAX_LIMITER_KEYS && !keys.contains_key(&key) {
            retain_spending(&mut keys, now);
            if keys.len() >= MAX_LIMITER_KEYS {
                return false;
            }
        }
        let bucket = keys
            .entry(key)
            .or_insert_with(|| Bucket::new(Rate::per_second(self.rate)));
        bucket.refill(now);
        if bucket.tokens < 1.0 {
            return false;
        }
        bucket.tokens -= 1.0;
        true
    }

    /// Forgets keys whose bucket refilled completely: they hold no state.
    pub fn prune(&self) {
        let now = Instant::now();
        let mut keys = self.keys.lock();
        retain_spending(&mut keys, now);
    }
}

impl KeyedLimiter<IpAddr> {
    /// Takes one token for the address `ip` (by its IPv4 address or IPv6 /64).
    pub fn allow(&self, ip: IpAddr) -> bool {
        self.take(bucket_key(ip))
    }
}

fn retain_spending<K>(keys: &mut HashMap<K, Bucket>, now: Instant) {
    keys.retain(|_, bucket| {
        bucket.refill(now);
        bucket.tokens < bucket.burst
    });
}

/// IPv4 as is (and IPv4-mapped IPv6 as IPv4); other IPv6 addresses by their /64.
fn bucket_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

/// Counts open connections against the per-pod cap.
#[derive(Debug)]
pub struct ConnectionCap {
    max: usize,
    open: Arc<AtomicUsize>,
}

/// Holds one connection slot until dropped.
#[derive(Debug)]
pub struct ConnectionSlot {
    open: Arc<AtomicUsize>,
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::AcqRel);
    }
}

impl ConnectionCap {
    /// A cap of `max` connections.
    pub fn new(max: usize) -> Self {
        ConnectionCap {
            max,
            open: Arc::default(),
        }
    }

    /// Takes a slot, or `None` when the pod is full.
    pub fn try_acquire(&self) -> Option<ConnectionSlot> {
        let mut current = self.open.load(Ordering::Acquire);
        loop {
            if current >= self.max {
                return None;
            }
            match self.open.compare_exchange_weak(
                current,
                current + 1,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => {
                    return Some(ConnectionSlot {
                        open: self.open.clone(),
                    })
                }
                Err(actual) => current = actual,
            }
        }
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handshake_buckets_are_per_ipv4_address_and_per_ipv6_64() {
        let limiter = HandshakeLimiter::new(1); // burst 2
        let a: IpAddr = "2001:db8:1:2::1".parse().expect("ip");
        let same_64: IpAddr = "2001:db8:1:2:ffff::9".parse().expect("ip");
        let other_64: IpAddr = "2001:db8:1:3::1".parse().expect("ip");
        assert!(limiter.allow(a));
        assert!(limiter.allow(same_64));
        assert!(!limiter.allow(a), "a /64 shares one bucket");
        assert!(limiter.allow(other_64));
        let v4: IpAddr = "192.0.2.1".parse().expect("ip");
        let mapped: IpAddr = "::ffff:192.0.2.1".parse().expect("ip");
        assert!(limiter.allow(v4));
        assert!(limiter.allow(mapped));
        assert!(!limiter.allow(v4), "IPv4-mapped IPv6 is the IPv4 address");
        assert!(limiter.allow("192.0.2.2".parse().expect("ip")));
    }

    #[test]
    fn a_zero_handshake_rate_allows_everything() {
        let limiter = HandshakeLimiter::new(0);
        let ip: IpAddr = "192.0.2.1".parse().expect("ip");
        assert!((0..1000).all(|_| limiter.allow(ip)));
    }
}
