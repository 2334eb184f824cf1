//! Which of our inbox entries this pod has actually seen.
//!
//! Redis moves an entry into our consumer's pending list the moment it *executes* an
//! `XREADGROUP`, whether or not the reply ever reaches us: a read that timed out while Redis
//! was paused, a read on a connection that dropped and was retried, a read whose reply died
//! with a failed master. Such entries sit pending under our name and nobody handles them until
//! the slow reclaim (a minute idle). Every entry we did see is recorded here until it is
//! acknowledged, so the pending list minus this set is exactly what such lost replies took.

use std::collections::HashSet;

use parking_lot::Mutex;

/// A stream entry id (`<ms>-<seq>`) packed into one number, ordered like the ids.
pub type EntryId = u128;

/// Parses `<ms>-<seq>`; anything else is not a stream id.
pub fn parse_id(id: &str) -> Option<EntryId> {
    let (ms, seq) = id.split_once('-')?;
    let ms: u64 = ms.parse().ok()?;
    let seq: u64 = seq.parse().ok()?;
    Some(((ms as u128) << 64) | seq as u128)
}

/// Entries read from our inbox and not yet acknowledged.
#[derive(Default)]
pub struct InHand {
    ids: Mutex<HashSet<EntryId>>,
}

impl InHand {
    /// Records entries a read returned to us.
    pub fn seen<'a>(&self, ids: impl IntoIterator<Item = &'a str>) {
        let mut set = self.ids.lock();
        set.extend(ids.into_iter().filter_map(parse_id));
    }

    /// Forgets acknowledged entries.
    pub fn acked(&self, ids: impl IntoIterator<Item = EntryId>) {
        let mut set = self.ids.lock();
        for id in ids {
            set.remove(&id);
        }
    }

    /// How many entries we hold.
    pub fn len(&self) -> usize {
        self.ids.lock().len()
    }

    /// Compares our whole pending list (`pending`: id and idle ms) with what we hold: returns
    /// the entries a lost reply took (pending, never seen, idle at least `min_idle_ms` so a
    /// read still on its way is not raced), and forgets held ids that are no longer pending
    /// (an acknowledgement whose reply was lost).
    pub fn reconcile(&self, pending: &[(String, u64)], min_idle_ms: u64) -> Vec<String> {
        let mut set = self.ids.lock();
        let listed: HashSet<EntryId> = pending.iter().filter_map(|(id, _)| parse_id(id)).collect();
        set.retain(|id| listed.contains(id));
        pending
            .iter()
            .filter(|(id, idle)| {
                *idle >= min_idle_ms && parse_id(id).is_some_and(|n| !set.contains(&n))
            })
            .map(|(id, _)| id.clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_ordered_like_stream_ids() {
        let a = parse_id("1700000000000-5").unwrap();
        let b = parse_id("1700000000000-12").unwrap();
        let c = parse_id("1700000000001-0").unwrap();
        assert!(a < b && b < c);
        assert_eq!(parse_id("0-0"), Some(0));
        for bad in [
            "",
            "12",
            "-1",
            "1-",
            "a-b",
            "1-2-3",
            "99999999999999999999-0",
        ] {
            assert_eq!(parse_id(bad), None, "{bad}");
        }
    }

    #[test]
    fn pending_entries_never_seen_are_the_lost_ones() {
        let hand = InHand::default();
        hand.seen(["1-0", "2-0", "3-0"]);
        hand.acked(parse_id("2-0"));
        let pending = vec![
            ("1-0".to_string(), 5_000), // held by a session
            ("4-0".to_string(), 5_000), // a reply we never got
            ("5-0".to_string(), 10),    // too fresh to judge
        ];
        assert_eq!(hand.reconcile(&pending, 1_000), vec!["4-0".to_string()]);
        // 3-0 is no longer pending (its acknowledgement's reply was lost): forgotten.
        assert_eq!(hand.len(), 1);
    }

    #[test]
    fn nothing_is_lost_when_everything_pending_was_seen() {
        let hand = InHand::default();
        hand.seen(["1-0", "2-0"]);
        let pending = vec![("1-0".to_string(), 9_000), ("2-0".to_string(), 9_000)];
        assert!(hand.reconcile(&pending, 0).is_empty());
        assert_eq!(hand.len(), 2);
    }
}
