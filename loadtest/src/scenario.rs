//! The scenarios. Every envelope carries its scheduled send time (nanoseconds since the
//! start, first 8 payload bytes) and a uid `<sender>-<seq>`, so latency is measured from
//! when it should have been sent (open loop: a stalled relay cannot hide behind a slow
//! generator) and every delivery is counted exactly once per uid.

use std::net::IpAddr;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use prost::Message as _;
use rmb_identity::Signer;
use rmb_proto::{Address, Envelope, Message, Payload, Request, Response};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message as WsMessage;

use crate::conn::{self, ConnError, Outbox, Target};
use crate::identities::LoadIdentity;
use crate::report::{Percentiles, Report, Second};
use crate::stats::Tracker;

/// What to measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    /// Every connection sends to the next one, which answers; round trips are measured.
    Echo,
    /// Connection 0 sends each message to every other connection; each answers.
    Fanout,
    /// Half the connections send to the other half while those are offline; then they
    /// connect and drain their mailboxes.
    Mailbox,
    /// Half the connections run echo traffic while the other half connect and disconnect.
    Churn,
    /// Open the connections and hold them: memory per session.
    Idle,
    /// Closed-loop request/response pairs (module `rpc`).
    Rpc,
}

impl FromStr for Scenario {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "echo" => Scenario::Echo,
            "fanout" => Scenario::Fanout,
            "mailbox" => Scenario::Mailbox,
            "churn" => Scenario::Churn,
            "idle" => Scenario::Idle,
            "rpc" => Scenario::Rpc,
            _ => {
                return Err(format!(
                    "unknown scenario {s:?}: echo|fanout|mailbox|churn|idle|rpc"
                ))
            }
        })
    }
}

impl Scenario {
    fn name(self) -> &'static str {
        match self {
            Scenario::Echo => "echo",
            Scenario::Fanout => "fanout",
            Scenario::Mailbox => "mailbox",
            Scenario::Churn => "churn",
            Scenario::Idle => "idle",
            Scenario::Rpc => "rpc",
        }
    }
}

/// A run's settings.
#[derive(Clone)]
pub struct RunConfig {
    /// Relay URLs (`ws://host:port`); connections are spread over them.
    pub relays: Vec<String>,
    /// Identities to act as (at least `connections`).
    pub identities: Vec<(LoadIdentity, Signer)>,
    /// What to run.
    pub scenario: Scenario,
    /// Envelopes per second to send (requests; echo answers add as many again).
    pub rate: u64,
    /// How long to send.
    pub duration: Duration,
    /// Payload size (at least 8 bytes: the scheduled time).
    pub payload_bytes: usize,
    /// Connections (sessions) to open.
    pub connections: usize,
    /// Local addresses to connect from, round robin (past ~28k connections per address).
    pub source_ips: Vec<IpAddr>,
    /// Sign every envelope (relays do not check session traffic; signing costs the
    /// generator CPU).
    pub sign: bool,
    /// How long to wait for stragglers after sending stops.
    pub grace: Duration,
    /// Print a progress line every second.
    pub progress: bool,
}

/// Why a run could not be carried out.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// Bad settings.
    #[error("{0}")]
    Config(String),
    /// A connection failed.
    #[error(transparent)]
    Conn(#[from] ConnError),
    /// The latency histograms cannot be set up (their bounds are constants: a bug).
    #[error("latency histograms: {0}")]
    Histogram(#[from] hdrhistogram::CreationError),
}

struct Peer {
    index: usize,
    twin: u32,
    signer: Signer,
    outbox: Outbox,
}

struct Run {
    cfg: RunConfig,
    targets: Vec<Target>,
    tracker: Arc<Tracker>,
    start: Instant,
    received: AtomicU64,
    /// Nanoseconds after `start` when sending began.
    send_started: AtomicU64,
}

/// Runs `cfg`; returns the report and the latency histogram buckets (for HTML).
pub async fn run(cfg: RunConfig) -> Result<(Report, Vec<(f64, u64)>), RunError> {
    if cfg.identities.len() < cfg.connections || cfg.connections < 2 {
        return Err(RunError::Config(format!(
            "need at least 2 connections and as many identities ({} given for {})",
            cfg.identities.len(),
            cfg.connections
        )));
    }
    if cfg.relays.is_empty() {
        return Err(RunError::Config("give at least one --relay".into()));
    }
    let mut targets = Vec::new();
    for url in &cfg.relays {
        targets.push(Target::resolve(url).await?);
    }
    let rss_before = relay_rss(&targets).await;
    let run = Arc::new(Run {
        tracker: Arc::new(Tracker::new(cfg.connections)?),
        targets,
        start: Instant::now(),
        received: AtomicU64::new(0),
        send_started: AtomicU64::new(0),
        cfg,
    });
    let mut extra = std::collections::BTreeMap::new();
    let sending = match run.cfg.scenario {
        Scenario::Echo => echo(&run, run.cfg.connections, false).await?,
        Scenario::Fanout => echo(&run, run.cfg.connections, true).await?,
        Scenario::Mailbox => mailbox(&run, &mut extra).await?,
        Scenario::Churn => churn(&run, &mut extra).await?,
        Scenario::Idle => idle(&run, &mut extra).await?,
        Scenario::Rpc => return Err(RunError::Config("rpc runs through rpc::run".into())),
    };
    let rss_after = relay_rss(&run.targets).await;
    if let (Some(before), Some(after), Scenario::Idle) = (rss_before, rss_after, run.cfg.scenario) {
        let per = after.saturating_sub(before) as f64 / run.cfg.connections as f64;
        extra.insert("relay_bytes_per_session".into(), per);
    }
    Ok(report(&run, sending, rss_before, rss_after, extra))
}

fn report(
    run: &Run,
    sending: Duration,
    rss_before: Option<u64>,
    rss_after: Option<u64>,
    extra: std::collections::BTreeMap<String, f64>,
) -> (Report, Vec<(f64, u64)>) {
    let (sent, delivered, duplicates) = run.tracker.totals();
    let latency = run.tracker.latency();
    let ms = |v: u64| v as f64 / 1000.0;
    let h = &latency.all;
    let percentiles = if h.is_empty() {
        Percentiles::default()
    } else {
        Percentiles {
            p50: ms(h.value_at_quantile(0.50)),
            p90: ms(h.value_at_quantile(0.90)),
            p99: ms(h.value_at_quantile(0.99)),
            p999: ms(h.value_at_quantile(0.999)),
            max: ms(h.max()),
        }
    };
    let seconds = latency
        .per_second
        .iter()
        .enumerate()
        .map(|(t, h)| Second {
            t,
            delivered: h.len(),
            p50: if h.is_empty() {
                0.0
            } else {
                ms(h.value_at_quantile(0.5))
            },
            p99: if h.is_empty() {
                0.0
            } else {
                ms(h.value_at_quantile(0.99))
            },
        })
        .collect();
    let buckets = if h.is_empty() {
        Vec::new()
    } else {
        h.iter_log(10, 1.5)
            .map(|v| (ms(v.value_iterated_to()), v.count_since_last_iteration()))
            .collect()
    };
    let relayed = match run.cfg.scenario {
        Scenario::Echo | Scenario::Fanout | Scenario::Churn | Scenario::Rpc => delivered * 2,
        Scenario::Mailbox | Scenario::Idle => delivered,
    };
    // Throughput over the time deliveries really took: a relay that queues instead of
    // keeping up must not look faster because the backlog drained during the grace period.
    let secs = sending.as_secs_f64().max(0.001);
    let busy = match run.cfg.scenario {
        Scenario::Mailbox | Scenario::Idle => secs,
        _ => secs.max(run.tracker.last_delivery_secs() - run_start_offset(run)),
    };
    let report = Report {
        scenario: run.cfg.scenario.name().to_string(),
        relays: run.cfg.relays.clone(),
        rate: run.cfg.rate,
        connections: run.cfg.connections,
        payload_bytes: run.cfg.payload_bytes,
        duration_s: secs,
        sent,
        delivered,
        lost: sent.saturating_sub(delivered),
        duplicates,
        errors: run.tracker.errors(),
        throughput_per_s: relayed as f64 / busy,
        latency_ms: percentiles,
        relay_rss_bytes: rss_after,
        relay_rss_before_bytes: rss_before,
        extra,
        seconds,
    };
    (report, buckets)
}

/// Seconds between the run's start and the first send (connection set-up).
fn run_start_offset(run: &Run) -> f64 {
    run.send_started.load(Ordering::Relaxed) as f64 / 1e9
}

impl Run {
    fn elapsed_nanos(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    async fn connect(&self, index: usize, echo: bool) -> Result<Peer, RunError> {
        let (identity, signer) = &self.cfg.identities[index];
        let target = &self.targets[index % self.targets.len()];
        let bind = (!self.cfg.source_ips.is_empty())
            .then(|| self.cfg.source_ips[index % self.cfg.source_ips.len()]);
        let (outbox, inbox) = conn::open(target, signer, identity.twin, bind, false).await?;
        let peer = Peer {
            index,
            twin: identity.twin,
            signer: signer.clone(),
            outbox,
        };
        let answer = echo.then(|| peer.outbox.clone());
        tokio::spawn(receive(
            self.tracker.clone(),
            self.start,
            inbox,
            answer,
            peer.address(),
        ));
        Ok(peer)
    }

    async fn connect_all(
        &self,
        range: std::ops::Range<usize>,
        echo: bool,
    ) -> Result<Vec<Peer>, RunError> {
        let mut peers = Vec::new();
        for chunk in range.collect::<Vec<_>>().chunks(64) {
            let batch =
                futures_util::future::join_all(chunk.iter().map(|i| self.connect(*i, echo))).await;
            for p in batch {
                peers.push(p?);
            }
        }
        Ok(peers)
    }

    /// Waits until every sent envelope was delivered, or the grace period ends.
    async fn settle(&self) {
        let deadline = Instant::now() + self.cfg.grace;
        while Instant::now() < deadline {
            let (sent, delivered, _) = self.tracker.totals();
            if delivered >= sent {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Peer {
    fn address(&self) -> Address {
        Address::new(self.twin, None)
    }

    fn request(&self, seq: u64, to: u32, scheduled: u64, size: usize, sign: bool) -> Bytes {
        let mut payload = vec![0u8; size.max(8)];
        payload[..8].copy_from_slice(&scheduled.to_be_bytes());
        let mut env = Envelope {
            uid: format!("{}-{seq}", self.index),
            timestamp: rmb_proto::unix_now(),
            expiration: 300,
            source: Some(self.address()),
            destination: Some(Address::new(to, None)),
            message: Some(Message::Request(Request {
                command: "loadtest.echo".into(),
            })),
            payload: Some(Payload::Plain(payload)),
            ..Default::default()
        };
        if sign {
            rmb_identity::sign_envelope(&mut env, &self.signer);
        }
        Bytes::from(env.encode_to_vec())
    }
}

/// Handles what a connection receives: answers requests (when `echo`), records deliveries.
async fn receive(
    tracker: Arc<Tracker>,
    start: Instant,
    mut inbox: mpsc::Receiver<Bytes>,
    answer: Option<Outbox>,
    me: Address,
) {
    while let Some(frame) = inbox.recv().await {
        let Ok(mut env) = Envelope::decode(frame) else {
            continue;
        };
        match &env.message {
            Some(Message::Request(_)) if answer.is_some() => {
                env.destination = env.source.take();
                env.source = Some(me.clone());
                env.message = Some(Message::Response(Response {}));
                env.signature = None;
                if let Some(outbox) = &answer {
                    let _ = outbox
                        .send(WsMessage::Binary(env.encode_to_vec().into()))
                        .await;
                }
            }
            Some(Message::Request(_) | Message::Response(_)) => record(&tracker, start, &env),
            Some(Message::Error(e)) => tracker.error(e.code),
            _ => {}
        }
    }
}

fn record(tracker: &Tracker, start: Instant, env: &Envelope) {
    let Some((sender, seq)) = env.uid.split_once('-') else {
        return;
    };
    let (Ok(sender), Ok(seq)) = (sender.parse::<usize>(), seq.parse::<u64>()) else {
        return;
    };
    let scheduled = match &env.payload {
        Some(Payload::Plain(p)) if p.len() >= 8 => {
            let mut b = [0u8; 8];
            b.copy_from_slice(&p[..8]);
            u64::from_be_bytes(b)
        }
        _ => return,
    };
    let now = start.elapsed().as_nanos() as u64;
    let micros = now.saturating_sub(scheduled) / 1000;
    tracker.delivered(sender, seq, now, micros);
}

/// Sends from `senders` at the configured rate (split evenly), open loop, for the duration.
/// `dests(i, seq)` lists the destinations of sender i's message number seq.
async fn send_load(
    run: &Arc<Run>,
    senders: Vec<Peer>,
    dests: impl Fn(usize, u64) -> Vec<u32> + Send + Sync + Clone + 'static,
    settle: bool,
) -> Duration {
    let per_sender = run.cfg.rate as f64 / senders.len().max(1) as f64;
    let stop = Arc::new(AtomicBool::new(false));
    let progress = run
        .cfg
        .progress
        .then(|| tokio::spawn(progress_line(run.clone(), stop.clone())));
    let began = Instant::now();
    run.send_started
        .store(run.elapsed_nanos(), Ordering::Relaxed);
    let tasks: Vec<_> = senders
        .into_iter()
        .map(|peer| {
            let run = run.clone();
            let dests = dests.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_millis(1));
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
                let t0 = run.elapsed_nanos();
                let mut seq = 0u64;
                let mut msg = 0u64;
                loop {
                    tick.tick().await;
                    let elapsed = run.elapsed_nanos().saturating_sub(t0);
                    if elapsed >= run.cfg.duration.as_nanos() as u64 {
                        break;
                    }
                    let due = (elapsed as f64 / 1e9 * per_sender) as u64;
                    while msg < due {
                        let scheduled = t0 + (msg as f64 / per_sender * 1e9) as u64;
                        for to in dests(peer.index, msg) {
                            let frame = peer.request(
                                seq,
                                to,
                                scheduled,
                                run.cfg.payload_bytes,
                                run.cfg.sign,
                            );
                            if peer.outbox.send(WsMessage::Binary(frame)).await.is_err() {
                                return;
                            }
                            run.tracker.sent(peer.index, 1);
                            seq += 1;
                        }
                        msg += 1;
                    }
                }
            })
        })
        .collect();
    futures_util::future::join_all(tasks).await;
    let sending = began.elapsed();
    if settle {
        run.settle().await;
    }
    stop.store(true, Ordering::Relaxed);
    if let Some(p) = progress {
        let _ = p.await;
    }
    sending
}

async fn progress_line(run: Arc<Run>, stop: Arc<AtomicBool>) {
    let mut last = 0;
    while !stop.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let (sent, delivered, dups) = run.tracker.totals();
        eprintln!(
            "t={:>4.0}s sent={sent} delivered={delivered} (+{}/s) dup={dups} errors={:?}",
            run.start.elapsed().as_secs_f64(),
            delivered - last.min(delivered),
            run.tracker.errors()
        );
        last = delivered;
        run.received.store(delivered, Ordering::Relaxed);
    }
}

async fn echo(run: &Arc<Run>, n: usize, fanout: bool) -> Result<Duration, RunError> {
    let peers = run.connect_all(0..n, true).await?;
    let twins: Vec<u32> = peers.iter().map(|p| p.twin).collect();
    let senders: Vec<Peer> = if fanout {
        peers.into_iter().take(1).collect()
    } else {
        peers
    };
    // Keep the responders' outboxes alive: they live in the receive tasks.
    let dests = move |i: usize, msg: u64| -> Vec<u32> {
        if fanout {
            twins[1..].to_vec()
        } else {
            let _ = msg;
            vec![twins[(i + 1) % twins.len()]]
        }
    };
    Ok(send_load(run, senders, dests, true).await)
}

async fn mailbox(
    run: &Arc<Run>,
    extra: &mut std::collections::BTreeMap<String, f64>,
) -> Result<Duration, RunError> {
    let half = run.cfg.connections / 2;
    let senders = run.connect_all(0..half, false).await?;
    let receivers: Vec<u32> = (half..half * 2)
        .map(|i| run.cfg.identities[i].0.twin)
        .collect();
    let dests = move |i: usize, _msg: u64| vec![receivers[i % receivers.len()]];
    let sending = send_load(run, senders, dests, false).await;
    // Let the relay take the last frames off the sockets before the receivers connect.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let drain_start = Instant::now();
    let _receivers = run.connect_all(half..half * 2, false).await?;
    run.settle().await;
    extra.insert("drain_seconds".into(), drain_start.elapsed().as_secs_f64());
    let (_, delivered, _) = run.tracker.totals();
    extra.insert(
        "drain_per_s".into(),
        delivered as f64 / drain_start.elapsed().as_secs_f64().max(0.001),
    );
    Ok(sending)
}

async fn churn(
    run: &Arc<Run>,
    extra: &mut std::collections::BTreeMap<String, f64>,
) -> Result<Duration, RunError> {
    let half = (run.cfg.connections / 2).max(2);
    let stable = run.connect_all(0..half, true).await?;
    let stop = Arc::new(AtomicBool::new(false));
    let connects = Arc::new(AtomicU64::new(0));
    let churners: Vec<_> = (half..run.cfg.connections)
        .map(|i| {
            let (run, stop, connects) = (run.clone(), stop.clone(), connects.clone());
            tokio::spawn(async move {
                let mut round = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    if let Ok(peer) = run.connect(i, true).await {
                        connects.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(
                            50 + (round * 37 + i as u64 * 13) % 200,
                        ))
                        .await;
                        drop(peer);
                    }
                    round += 1;
                }
            })
        })
        .collect();
    let twins: Vec<u32> = stable.iter().map(|p| p.twin).collect();
    let dests = move |i: usize, _msg: u64| vec![twins[(i + 1) % twins.len()]];
    let sending = send_load(run, stable, dests, true).await;
    stop.store(true, Ordering::Relaxed);
    futures_util::future::join_all(churners).await;
    extra.insert(
        "churn_connects_per_s".into(),
        connects.load(Ordering::Relaxed) as f64 / sending.as_secs_f64().max(0.001),
    );
    Ok(sending)
}

async fn idle(
    run: &Arc<Run>,
    extra: &mut std::collections::BTreeMap<String, f64>,
) -> Result<Duration, RunError> {
    let began = Instant::now();
    let peers = run.connect_all(0..run.cfg.connections, false).await?;
    extra.insert("connect_seconds".into(), began.elapsed().as_secs_f64());
    extra.insert("sessions".into(), peers.len() as f64);
    tokio::time::sleep(run.cfg.duration).await;
    Ok(began.elapsed())
}

/// Sum of `process_resident_memory_bytes` over the relays' `/metrics`.
async fn relay_rss(targets: &[Target]) -> Option<u64> {
    let mut total = 0u64;
    for t in targets {
        let text = http_get(t.metrics_addr(), "/metrics").await?;
        let line = text
            .lines()
            .find(|l| l.starts_with("process_resident_memory_bytes "))?;
        total += line.rsplit(' ').next()?.parse::<f64>().ok()? as u64;
    }
    Some(total)
}

async fn http_get(addr: std::net::SocketAddr, path: &str) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.ok()?;
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf))
        .await
        .ok()?
        .ok()?;
    let text = String::from_utf8_lossy(&buf).to_string();
    text.split_once("\r\n\r\n").map(|(_, b)| b.to_string())
}
