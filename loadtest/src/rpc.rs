//! The `rpc` scenario: closed-loop request/response, as services use RMB. Each of N pairs has a
//! caller and a responder; the caller keeps W requests in flight and sends the next one when a
//! response comes back, so a stall anywhere (a delayed ACK, a polling wait) shows in the
//! round trip instead of being hidden by an open-loop schedule. `nagle` leaves Nagle's
//! algorithm on in the clients, like the original rmb-peer.
//!
//! Every uid carries the run's tag: mail left from an earlier run (a Redis mailbox) is
//! neither answered nor counted.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use prost::Message as _;
use rmb_identity::Signer;
use rmb_proto::{Address, Envelope, Message, Payload, Request, Response};
use tokio_tungstenite::tungstenite::Message as WsMessage;

use crate::conn::{self, Outbox, Target};
use crate::identities::LoadIdentity;
use crate::scenario::RunError;

/// An rpc run's settings.
#[derive(Clone)]
pub struct RpcConfig {
    /// Relays; a pair's caller uses relay `i % n`, its responder relay `(i + 1) % n`, so with
    /// several pods every pair crosses pods.
    pub relays: Vec<String>,
    /// Identities (two per pair).
    pub identities: Vec<(LoadIdentity, Signer)>,
    /// Caller/responder pairs.
    pub pairs: usize,
    /// Requests each caller keeps in flight.
    pub window: usize,
    /// Leave Nagle's algorithm on in the clients.
    pub nagle: bool,
    /// Payload bytes per envelope (at least 8).
    pub payload_bytes: usize,
    /// How long to measure.
    pub duration: Duration,
    /// Round trips in this first stretch are not recorded (connections warm up).
    pub warmup: Duration,
    /// This run's uid prefix.
    pub tag: String,
}

/// What an rpc run measured.
pub struct RpcResult {
    /// Round trip times in microseconds (after the warm-up).
    pub latency: Histogram<u64>,
    /// Seconds measured.
    pub seconds: f64,
    /// Error envelopes received.
    pub errors: u64,
}

impl RpcResult {
    /// Envelopes through the relay per second (a round trip is two).
    pub fn envelopes_per_second(&self) -> f64 {
        2.0 * self.latency.len() as f64 / self.seconds.max(1e-9)
    }
}

/// 1 µs .. 10 min, three significant digits.
fn histogram() -> Result<Histogram<u64>, hdrhistogram::CreationError> {
    Histogram::new_with_bounds(1, 600_000_000, 3)
}

/// Runs the scenario.
pub async fn run(cfg: &RpcConfig) -> Result<RpcResult, RunError> {
    if cfg.pairs == 0 || cfg.window == 0 {
        return Err(RunError::Config("--pairs and --window must be > 0".into()));
    }
    if cfg.identities.len() < 2 * cfg.pairs {
        return Err(RunError::Config(format!(
            "{} pairs need {} identities, {} given",
            cfg.pairs,
            2 * cfg.pairs,
            cfg.identities.len()
        )));
    }
    let mut targets = Vec::new();
    for url in &cfg.relays {
        targets.push(Target::resolve(url).await?);
    }
    if targets.is_empty() {
        return Err(RunError::Config("give at least one --relay".into()));
    }
    let template = histogram()?;
    let start = Instant::now();
    let measure_from = start + cfg.warmup;
    let stop_at = measure_from + cfg.duration;
    let mut callers = Vec::new();
    let mut responders = Vec::new();
    for pair in 0..cfg.pairs {
        let (caller, caller_signer) = &cfg.identities[2 * pair];
        let (responder, responder_signer) = &cfg.identities[2 * pair + 1];
        let caller_target = &targets[pair % targets.len()];
        let responder_target = &targets[(pair + 1) % targets.len()];
        let (r_out, r_in) = conn::open(
            responder_target,
            responder_signer,
            responder.twin,
            None,
            cfg.nagle,
        )
        .await?;
        responders.push(tokio::spawn(respond(
            r_out,
            r_in,
            responder.twin,
            cfg.tag.clone(),
        )));
        let (c_out, c_in) =
            conn::open(caller_target, caller_signer, caller.twin, None, cfg.nagle).await?;
        let call = Caller {
            twin: caller.twin,
            to: responder.twin,
            tag: Arc::from(format!("{}-{pair}-", cfg.tag)),
            payload: cfg.payload_bytes.max(8),
            start,
        };
        callers.push(tokio::spawn(call.run(
            Histogram::new_from(&template),
            c_out,
            c_in,
            cfg.window,
            measure_from,
            stop_at,
        )));
    }
    let mut latency = Histogram::new_from(&template);
    let mut errors = 0;
    for caller in callers {
        if let Ok((h, e)) = caller.await {
            let _ = latency.add(h);
            errors += e;
        }
    }
    for responder in responders {
        responder.abort();
    }
    Ok(RpcResult {
        latency,
        seconds: cfg.duration.as_secs_f64(),
        errors,
    })
}

/// Answers every request of this run with its own payload.
async fn respond(
    outbox: Outbox,
    mut inbox: tokio::sync::mpsc::Receiver<Bytes>,
    twin: u32,
    tag: String,
) {
    while let Some(frame) = inbox.recv().await {
        let Ok(req) = Envelope::decode(frame) else {
            continue;
        };
        if !req.uid.starts_with(&tag) || !matches!(req.message, Some(Message::Request(_))) {
            continue;
        }
        let resp = Envelope {
            uid: req.uid,
            timestamp: rmb_proto::unix_now(),
            expiration: 60,
            source: Some(Address::new(twin, None)),
            destination: req.source,
            message: Some(Message::Response(Response {})),
            payload: req.payload,
            ..Default::default()
        };
        let frame = WsMessage::Binary(resp.encode_to_vec().into());
        if outbox.send(frame).await.is_err() {
            return;
        }
    }
}

struct Caller {
    twin: u32,
    to: u32,
    tag: Arc<str>,
    payload: usize,
    start: Instant,
}

impl Caller {
    fn request(&self, seq: u64) -> WsMessage {
        let sent = self.start.elapsed().as_nanos() as u64;
        let mut data = vec![0u8; self.payload];
        data[..8].copy_from_slice(&sent.to_be_bytes());
        let env = Envelope {
            uid: format!("{}{seq}", self.tag),
            timestamp: rmb_proto::unix_now(),
            expiration: 60,
            source: Some(Address::new(self.twin, None)),
            destination: Some(Address::new(self.to, None)),
            message: Some(Message::Request(Request {
                command: "rpc".into(),
            })),
            payload: Some(Payload::Plain(data)),
            ..Default::default()
        };
        WsMessage::Binary(env.encode_to_vec().into())
    }

    /// Keeps `window` requests in flight until `stop_at`, then waits (briefly) for the last
    /// responses. Returns the round trips that started after `measure_from`, and errors seen.
    async fn run(
        self,
        mut latency: Histogram<u64>,
        outbox: Outbox,
        mut inbox: tokio::sync::mpsc::Receiver<Bytes>,
        window: usize,
        measure_from: Instant,
        stop_at: Instant,
    ) -> (Histogram<u64>, u64) {
        let mut errors = 0;
        let mut seq = 0u64;
        let mut in_flight = 0usize;
        for _ in 0..window {
            if outbox.send(self.request(seq)).await.is_err() {
                return (latency, errors);
            }
            seq += 1;
            in_flight += 1;
        }
        let measure_from_ns = (measure_from - self.start).as_nanos() as u64;
        let deadline = tokio::time::Instant::from_std(stop_at + Duration::from_secs(5));
        while in_flight > 0 {
            let Ok(Some(frame)) = tokio::time::timeout_at(deadline, inbox.recv()).await else {
                break;
            };
            let Ok(env) = Envelope::decode(frame) else {
                continue;
            };
            if !env.uid.starts_with(&*self.tag) {
                continue;
            }
            match (&env.message, &env.payload) {
                (Some(Message::Response(_)), Some(Payload::Plain(data))) if data.len() >= 8 => {
                    let mut sent = [0u8; 8];
                    sent.copy_from_slice(&data[..8]);
                    let sent = u64::from_be_bytes(sent);
                    let now = self.start.elapsed().as_nanos() as u64;
                    if sent >= measure_from_ns && Instant::now() <= stop_at {
                        let _ = latency.record((now.saturating_sub(sent) / 1000).max(1));
                    }
                }
                (Some(Message::Error(_)), _) => errors += 1,
                _ => continue,
            }
            in_flight -= 1;
            if Instant::now() < stop_at {
                if outbox.send(self.request(seq)).await.is_err() {
                    break;
                }
                seq += 1;
                in_flight += 1;
            }
        }
        (latency, errors)
    }
}

/// One row of the side-by-side table.
pub fn row(name: &str, r: &RpcResult, cpu: &crate::cpu::PerEnvelope) -> String {
    let ms = |q: f64| r.latency.value_at_quantile(q) as f64 / 1000.0;
    let us = |c: Option<f64>| c.map(|c| format!("{c:.1}")).unwrap_or_else(|| "-".into());
    format!(
        "{name:<10} {:>11} {:>10.0} {:>8.3} {:>8.3} {:>8.3} {:>8.3} {:>8.3} {:>9} {:>9} {:>9} {:>6}\n",
        r.latency.len(),
        r.envelopes_per_second(),
        ms(0.50),
        ms(0.90),
        ms(0.99),
        ms(0.999),
        r.latency.max() as f64 / 1000.0,
        us(cpu.relay_us),
        us(cpu.redis_us),
        us(cpu.total_us()),
        r.errors,
    )
}

/// The table header matching [`row`] (CPU in µs per envelope).
pub fn header() -> String {
    format!(
        "{:<10} {:>11} {:>10} {:>8} {:>8} {:>8} {:>8} {:>8} {:>9} {:>9} {:>9} {:>6}\n",
        "target",
        "round trips",
        "env/s",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "p99.9 ms",
        "max ms",
        "relay cpu",
        "redis cpu",
        "cpu µs",
        "errors"
    )
}
