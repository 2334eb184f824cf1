//! The run report: JSON for machines, a summary for people.

use std::collections::BTreeMap;

use serde::Serialize;

/// Latency percentiles, in milliseconds.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Percentiles {
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// Worst.
    pub max: f64,
}

/// One second of the run (for plots).
#[derive(Debug, Clone, Serialize)]
pub struct Second {
    /// Seconds since the start.
    pub t: usize,
    /// Envelopes delivered in that second.
    pub delivered: u64,
    /// Median latency, ms.
    pub p50: f64,
    /// 99th percentile latency, ms.
    pub p99: f64,
}

/// Everything a run measured.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Scenario name.
    pub scenario: String,
    /// Relay URLs.
    pub relays: Vec<String>,
    /// Requested rate (envelopes/s), 0 for unbounded scenarios.
    pub rate: u64,
    /// Connections used.
    pub connections: usize,
    /// Payload size, bytes.
    pub payload_bytes: usize,
    /// Seconds the load ran.
    pub duration_s: f64,
    /// Envelopes sent (accepted by the socket).
    pub sent: u64,
    /// Distinct envelopes delivered (for echo: responses received).
    pub delivered: u64,
    /// Sent but never delivered: `sent - delivered`.
    pub lost: u64,
    /// Deliveries beyond the first of the same envelope.
    pub duplicates: u64,
    /// Error envelopes received, by code.
    pub errors: BTreeMap<u32, u64>,
    /// Envelopes relayed per second (echo counts requests and responses).
    pub throughput_per_s: f64,
    /// Latency from the scheduled send time to delivery.
    pub latency_ms: Percentiles,
    /// Relay resident memory at the end (sum over relays), from their `/metrics`.
    pub relay_rss_bytes: Option<u64>,
    /// Relay resident memory before the run.
    pub relay_rss_before_bytes: Option<u64>,
    /// Scenario-specific figures (sessions opened, drain time, bytes per session…).
    pub extra: BTreeMap<String, f64>,
    /// Per-second series.
    pub seconds: Vec<Second>,
}

impl Report {
    /// A plain-text summary.
    pub fn summary(&self) -> String {
        let l = &self.latency_ms;
        let mut out = format!(
            "scenario {} · {} connections · {} B payload · {:.1} s\n\
             sent {} · delivered {} · lost {} · duplicates {} · errors {:?}\n\
             throughput {:.0} envelopes/s\n\
             latency ms: p50 {:.2} · p90 {:.2} · p99 {:.2} · p99.9 {:.2} · max {:.2}\n",
            self.scenario,
            self.connections,
            self.payload_bytes,
            self.duration_s,
            self.sent,
            self.delivered,
            self.lost,
            self.duplicates,
            self.errors,
            self.throughput_per_s,
            l.p50,
            l.p90,
            l.p99,
            l.p999,
            l.max
        );
        if let Some(rss) = self.relay_rss_bytes {
            out.push_str(&format!(
                "relay RSS {:.1} MiB\n",
                rss as f64 / (1 << 20) as f64
            ));
        }
        for (k, v) in &self.extra {
            out.push_str(&format!("{k}: {v:.2}\n"));
        }
        out
    }
}
