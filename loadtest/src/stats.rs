//! Accounting: which envelopes were delivered (once, or more), errors by code, and latency
//! histograms overall and per second.

use std::collections::BTreeMap;

use hdrhistogram::{CreationError, Histogram};
use parking_lot::Mutex;

/// Delivery record of one sender's envelopes, by sequence number.
struct SenderTrack {
    seen: Vec<u64>,
    delivered: u64,
    duplicates: u64,
}

/// Latency, in microseconds.
pub struct Latency {
    /// Whole run.
    pub all: Histogram<u64>,
    /// One histogram per second of the run (for the over-time plot).
    pub per_second: Vec<Histogram<u64>>,
    /// The empty shape each second's histogram starts from.
    second_shape: Histogram<u64>,
}

impl Latency {
    /// 1 µs .. 10 min; three significant digits overall, two per second.
    fn new() -> Result<Latency, CreationError> {
        Ok(Latency {
            all: Histogram::new_with_bounds(1, 600_000_000, 3)?,
            per_second: Vec::new(),
            second_shape: Histogram::new_with_bounds(1, 600_000_000, 2)?,
        })
    }

    /// An empty record of the same shape.
    fn fresh(&self) -> Latency {
        Latency {
            all: Histogram::new_from(&self.all),
            per_second: Vec::new(),
            second_shape: Histogram::new_from(&self.second_shape),
        }
    }

    fn record(&mut self, second: usize, micros: u64) {
        let v = micros.max(1);
        let _ = self.all.record(v);
        while self.per_second.len() <= second {
            self.per_second
                .push(Histogram::new_from(&self.second_shape));
        }
        let _ = self.per_second[second].record(v);
    }
}

/// Everything observed during a run, shared by all connections.
pub struct Tracker {
    senders: Vec<Mutex<SenderTrack>>,
    latency: Mutex<Latency>,
    errors: Mutex<BTreeMap<u32, u64>>,
    sent: Vec<std::sync::atomic::AtomicU64>,
    last_delivery_nanos: std::sync::atomic::AtomicU64,
}

impl Tracker {
    /// A tracker for `senders` senders.
    pub fn new(senders: usize) -> Result<Tracker, CreationError> {
        Ok(Tracker {
            senders: (0..senders)
                .map(|_| {
                    Mutex::new(SenderTrack {
                        seen: Vec::new(),
                        delivered: 0,
                        duplicates: 0,
                    })
                })
                .collect(),
            latency: Mutex::new(Latency::new()?),
            errors: Mutex::default(),
            sent: (0..senders).map(|_| Default::default()).collect(),
            last_delivery_nanos: Default::default(),
        })
    }

    /// Counts one envelope sent by `sender`.
    pub fn sent(&self, sender: usize, n: u64) {
        if let Some(c) = self.sent.get(sender) {
            c.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// Records the delivery of `sender`'s envelope `seq` at `now_nanos` (since the start),
    /// `micros` after it was scheduled.
    pub fn delivered(&self, sender: usize, seq: u64, now_nanos: u64, micros: u64) {
        let second = (now_nanos / 1_000_000_000) as usize;
        self.last_delivery_nanos
            .fetch_max(now_nanos, std::sync::atomic::Ordering::Relaxed);
        let Some(track) = self.senders.get(sender) else {
            return;
        };
        let first = {
            let mut t = track.lock();
            let (word, bit) = ((seq / 64) as usize, seq % 64);
            if t.seen.len() <= word {
                t.seen.resize(word + 1, 0);
            }
            let fresh = t.seen[word] & (1 << bit) == 0;
            t.seen[word] |= 1 << bit;
            if fresh {
                t.delivered += 1;
            } else {
                t.duplicates += 1;
            }
            fresh
        };
        if first {
            self.latency.lock().record(second, micros);
        }
    }

    /// Records an error envelope.
    pub fn error(&self, code: u32) {
        *self.errors.lock().entry(code).or_default() += 1;
    }

    /// Totals: (sent, delivered, duplicates).
    pub fn totals(&self) -> (u64, u64, u64) {
        let sent = self
            .sent
            .iter()
            .map(|c| c.load(std::sync::atomic::Ordering::Relaxed))
            .sum();
        let (mut delivered, mut dups) = (0, 0);
        for t in &self.senders {
            let t = t.lock();
            delivered += t.delivered;
            dups += t.duplicates;
        }
        (sent, delivered, dups)
    }

    /// When the last delivery happened, in seconds since the start.
    pub fn last_delivery_secs(&self) -> f64 {
        self.last_delivery_nanos
            .load(std::sync::atomic::Ordering::Relaxed) as f64
            / 1e9
    }

    /// Errors by code.
    pub fn errors(&self) -> BTreeMap<u32, u64> {
        self.errors.lock().clone()
    }

    /// Takes the latency histograms.
    pub fn latency(&self) -> Latency {
        let mut latency = self.latency.lock();
        let fresh = latency.fresh();
        std::mem::replace(&mut *latency, fresh)
    }
}

#[cfg(test)]
mod tests {
    use super::Tracker;

    #[test]
    fn latency_is_taken_whole_and_starts_over_empty() {
        let tracker = Tracker::new(1).expect("constant bounds");
        tracker.delivered(0, 0, 0, 1_500);
        tracker.delivered(0, 1, 2_000_000_000, 3_000);
        let taken = tracker.latency();
        assert_eq!(taken.all.len(), 2);
        assert_eq!(taken.per_second.len(), 3, "seconds 0, 1 (empty) and 2");
        assert_eq!(taken.per_second[2].len(), 1);
        assert_eq!(taken.per_second[2].sigfig(), 2);
        let again = tracker.latency();
        assert_eq!(again.all.len(), 0);
        assert_eq!(again.all.sigfig(), 3);
        assert!(again.per_second.is_empty());
    }
}
