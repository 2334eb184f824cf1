//! Accounting: which envelopes were delivered (once, or more), errors by code, and latency
//! histograms overall and per second.

use std::collections::BTreeMap;
use std::sync::Mutex;

use hdrhistogram::Histogram;

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
}

impl Latency {
    fn new() -> Latency {
        Latency {
            all: new_histogram(3),
            per_second: Vec::new(),
        }
    }

    fn record(&mut self, second: usize, micros: u64) {
        let v = micros.max(1);
        let _ = self.all.record(v);
        while self.per_second.len() <= second {
            self.per_second.push(new_histogram(2));
        }
        let _ = self.per_second[second].record(v);
    }
}

fn new_histogram(sigfig: u8) -> Histogram<u64> {
    // 1 µs .. 10 min. Construction fails only for invalid constant bounds, never on input.
    Histogram::new_with_bounds(1, 600_000_000, sigfig)
        .unwrap_or_else(|e| panic!("histogram bounds: {e}"))
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
    pub fn new(senders: usize) -> Tracker {
        Tracker {
            senders: (0..senders)
                .map(|_| {
                    Mutex::new(SenderTrack {
                        seen: Vec::new(),
                        delivered: 0,
                        duplicates: 0,
                    })
                })
                .collect(),
            latency: Mutex::new(Latency::new()),
            errors: Mutex::default(),
            sent: (0..senders).map(|_| Default::default()).collect(),
            last_delivery_nanos: Default::default(),
        }
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
            let mut t = track.lock().unwrap_or_else(|e| e.into_inner());
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
            self.latency
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .record(second, micros);
        }
    }

    /// Records an error envelope.
    pub fn error(&self, code: u32) {
        *self
            .errors
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(code)
            .or_default() += 1;
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
            let t = t.lock().unwrap_or_else(|e| e.into_inner());
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
        self.errors
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Takes the latency histograms.
    pub fn latency(&self) -> Latency {
        std::mem::replace(
            &mut *self.latency.lock().unwrap_or_else(|e| e.into_inner()),
            Latency::new(),
        )
    }
}
