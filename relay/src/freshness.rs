//! Token freshness per session key: a session opened with a token issued at `iat` can only be
//! replaced by a token issued at `iat` or later. A replayed older token (from a proxy log, a
//! `ws://` observer, another relay's operator) then cannot take the session over, while the
//! twin itself, which signs a fresh token per connection, always can.
//!
//! Equal `iat` is accepted: clients reconnecting within the same second present a token with
//! the same `iat` (ed25519 signatures are deterministic, so even the very same token).
//!
//! The state is per pod, bounded and expiring: an entry is needed only while a token older
//! than the one it remembers could still be valid (`max lifetime + 2 × clock skew`).

use parking_lot::Mutex;
use std::collections::{HashMap, VecDeque};

use crate::key::SessionKey;

/// Most session keys remembered; past it the entry closest to expiry is dropped first.
pub const MAX_REMEMBERED_SESSIONS: usize = 1_000_000;

/// A token older than the one that opened the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("token issued at {iat} is older than the session's current token (issued at {newest})")]
pub struct StaleToken {
    /// The refused token's `iat`.
    pub iat: u64,
    /// The `iat` of the newest token accepted for this session key.
    pub newest: u64,
}

#[derive(Default)]
struct State {
    /// Newest `iat` per key and until when it matters (unix seconds).
    newest: HashMap<SessionKey, (u64, u64)>,
    /// One (until, key) per key, in insertion order, so the front expires first. A key
    /// admitted again keeps its place with a later `until` in the map; it is moved to the
    /// back when its old place comes up.
    order: VecDeque<(u64, SessionKey)>,
}

/// The newest token `iat` accepted for each session key.
pub struct Freshness {
    state: Mutex<State>,
    keep_secs: u64,
    max: usize,
}

impl Freshness {
    /// Remembers each key `max_lifetime + 2 × clock_skew` seconds, at most `max` keys.
    pub fn new(max_lifetime: u64, clock_skew: u64, max: usize) -> Freshness {
        Freshness {
            state: Mutex::default(),
            keep_secs: max_lifetime.saturating_add(clock_skew.saturating_mul(2)),
            max: max.max(1),
        }
    }

    /// How long (seconds) a newest `iat` matters: after it every older token has expired.
    pub fn keep_secs(&self) -> u64 {
        self.keep_secs
    }

    /// Accepts a verified token issued at `iat` for `key` at time `now` (unix seconds), or
    /// refuses it as older than the newest one accepted.
    pub fn admit(&self, key: &SessionKey, iat: u64, now: u64) -> Result<(), StaleToken> {
        let mut state = self.state.lock();
        expire(&mut state, now);
        if let Some(&(newest, _)) = state.newest.get(key) {
            if iat < newest {
                return Err(StaleToken { iat, newest });
            }
        }
        let until = now.saturating_add(self.keep_secs);
        if let Some(entry) = state.newest.get_mut(key) {
            *entry = (iat, until);
            return Ok(());
        }
        if state.newest.len() >= self.max {
            if let Some((_, oldest)) = state.order.pop_front() {
                state.newest.remove(&oldest);
            }
        }
        state.newest.insert(key.clone(), (iat, until));
        state.order.push_back((until, key.clone()));
        Ok(())
    }

    /// Session keys remembered now.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.state.lock().newest.len()
    }
}

/// Drops entries past their time; a key admitted again since goes to the back instead.
fn expire(state: &mut State, now: u64) {
    while let Some((until, _)) = state.order.front() {
        if *until > now {
            break;
        }
        let Some((_, key)) = state.order.pop_front() else {
            break;
        };
        match state.newest.get(&key) {
            Some(&(_, current)) if current > now => state.order.push_back((current, key)),
            _ => {
                state.newest.remove(&key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_older_token_cannot_follow_a_newer_one_until_both_expired() {
        let f = Freshness::new(100, 10, 10);
        let key = SessionKey::new(7, None);
        f.admit(&key, 1_000, 1_000).expect("first");
        f.admit(&key, 1_000, 1_001).expect("same iat: a reconnect");
        assert_eq!(
            f.admit(&key, 990, 1_002),
            Err(StaleToken {
                iat: 990,
                newest: 1_000
            })
        );
        f.admit(&SessionKey::new(7, Some("other")), 990, 1_002)
            .expect("another session id is another session");
        // 120 s later every token older than 1000 has expired: the entry may go.
        f.admit(&key, 1_005, 1_003).expect("newer");
        f.admit(&SessionKey::new(8, None), 1, 1_200)
            .expect("expiry");
        assert_eq!(f.len(), 1);
    }

    #[test]
    fn the_map_stays_within_its_cap() {
        let f = Freshness::new(100, 10, 3);
        for twin in 0..10 {
            f.admit(&SessionKey::new(twin, None), 1_000, 1_000)
                .expect("admit");
        }
        assert_eq!(f.len(), 3);
    }
}
