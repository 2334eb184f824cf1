//! One websocket session: reads envelopes from the peer and routes them, and writes the
//! session's queue to the peer with confirmed delivery.
//!
//! Confirmation (`--delivery-confirmation`, docs/architecture.md): entries written to the
//! peer are released only once their receipt is confirmed; whatever is unconfirmed when the
//! session ends goes back to the front of the queue.
//! - `tcp-ack`: after a batch is written, the socket's count of written bytes is its mark; the
//!   batch is confirmed once the kernel's send queue shows the peer's TCP acknowledged every
//!   byte up to the mark. Nothing is added to the wire, so a client that leaves Nagle's
//!   algorithm on never waits for an ACK of a frame it had to answer.
//! - `websocket-ping`: a Ping carrying a sequence number follows each batch. Every RFC 6455
//!   client answers a Ping with a Pong after reading the frames before it, so the Pong proves
//!   the batch was read. Also the fallback where the kernel cannot tell (not Linux).

use std::collections::VecDeque;
use std::future::Future;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{FutureExt, SinkExt, StreamExt};
use rmb_net::AckProbe;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;

use crate::backplane::Backplane;
pub use crate::config::DeliveryConfirmation;
use crate::hub::{frame_bytes, Attachment, CloseReason, Queued, Receipt, SessionSignal};
use crate::key::SessionKey;
use crate::limits::TwinRate;
use crate::metrics::{Limit, Metrics};
use crate::router::Router;

/// Close codes the relay uses.
pub mod close_codes {
    /// Another connection registered the same `(twin, sid)`.
    pub const REPLACED: u16 = 4000;
    /// The session did not keep up with its queue.
    pub const SLOW_CONSUMER: u16 = 4008;
    /// Service restart (RFC 6455): reconnect, to another pod.
    pub const RESTART: u16 = 1012;
    /// Text frames are not part of the protocol.
    pub const UNSUPPORTED: u16 = 1003;
    /// A binary frame that is not an envelope.
    pub const INVALID_PAYLOAD: u16 = 1007;
    /// Frame over the size limit.
    pub const TOO_BIG: u16 = 1009;
    /// Nothing heard from the peer for too long.
    pub const IDLE: u16 = 1001;
}

/// Timing and bounds of a session.
#[derive(Debug, Clone, Copy)]
pub struct SessionSettings {
    /// Keep-alive period: a peer silent for 1.5 of these gets a Ping, others a Pong heartbeat.
    pub ping_every: Duration,
    /// How delivery is confirmed.
    pub confirmation: DeliveryConfirmation,
    /// With `tcp-ack`: how often the send queue is checked while bytes are unconfirmed and
    /// nothing else wakes the session.
    pub ack_poll: Duration,
    /// Close after this long without any frame from the peer.
    pub idle_after: Duration,
    /// Most entries written and not yet confirmed.
    pub max_unconfirmed: usize,
    /// Most entries written between two confirmation pings.
    pub batch: usize,
    /// How long a draining session waits for its last confirmations.
    pub drain_confirm: Duration,
    /// Longest wait for the socket to take one write, or for room in the writer's queue.
    pub write_timeout: Duration,
    /// Most bytes of replies (pongs, errors) handed to the writer and not yet written.
    pub reply_backlog_bytes: usize,
}

/// Everything a session needs, shared with the server.
pub struct SessionContext {
    /// Routes what the peer sends.
    pub router: Arc<Router>,
    /// Where the session's queue lives.
    pub backplane: Arc<dyn Backplane>,
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// Timing and bounds.
    pub settings: SessionSettings,
}

/// What the reader tells the writer.
enum Event {
    /// A frame the relay sends back to this peer (error, pong envelope).
    Reply(Bytes),
    /// The peer answered the ping with this sequence number.
    Confirmed(u64),
    /// The session must end, with this close code and reason.
    Close(u16, &'static str),
    /// The connection failed; no close frame can be sent.
    Lost,
}

/// How this session confirms delivery: the setting, narrowed by what the socket can tell.
enum Confirmer {
    /// Bytes acknowledged by the peer's TCP.
    TcpAck(AckProbe),
    /// Pongs to our pings.
    Ping,
}

impl Confirmer {
    fn choose(setting: DeliveryConfirmation, probe: Option<&AckProbe>) -> Confirmer {
        match probe {
            Some(probe)
                if setting == DeliveryConfirmation::TcpAck && probe.acknowledged().is_ok() =>
            {
                Confirmer::TcpAck(probe.clone())
            }
            _ => Confirmer::Ping,
        }
    }
}

/// When the peer was last heard from, in milliseconds since the session started.
struct LastHeard {
    start: Instant,
    at_ms: AtomicU64,
}

impl LastHeard {
    fn new() -> LastHeard {
        LastHeard {
            start: Instant::now(),
            at_ms: AtomicU64::new(0),
        }
    }

    fn mark(&self) {
        let ms = self.start.elapsed().as_millis() as u64;
        self.at_ms.store(ms, Ordering::Relaxed);
    }

    fn silence(&self) -> Duration {
        let at = Duration::from_millis(self.at_ms.load(Ordering::Relaxed));
        self.start.elapsed().saturating_sub(at)
    }
}

/// Runs a session until it ends. `att` is its claim on the queue for `key`; `probe` asks the
/// kernel about the session's TCP connection, when the relay holds it directly.
pub async fn run<S>(
    ws: WebSocketStream<S>,
    probe: Option<AckProbe>,
    att: Attachment,
    rate: Arc<TwinRate>,
    ctx: Arc<SessionContext>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let confirmer = Confirmer::choose(ctx.settings.confirmation, probe.as_ref());
    let ctx_ack_poll = ctx.settings.ack_poll;
    // With pings, the Pong must not wait for a delayed ACK of the frame before it.
    let quick_ack = match confirmer {
        Confirmer::Ping => probe,
        Confirmer::TcpAck(_) => None,
    };
    let heard = Arc::new(LastHeard::new());
    let replies = Arc::new(AtomicUsize::new(0));
    let (sink, stream) = ws.split();
    let (events_tx, events_rx) = mpsc::channel(256);
    let reader = tokio::spawn(read_loop(
        stream,
        Peer {
            key: att.key.clone(),
            quick_ack,
            heard: heard.clone(),
            signal: att.signal.clone(),
            replies: replies.clone(),
        },
        rate,
        ctx.clone(),
        events_tx,
    ));
    let mut writer = Writer {
        sink,
        att,
        ctx,
        confirmer,
        heard,
        replies,
        unconfirmed: VecDeque::new(),
        unconfirmed_len: 0,
        seq: 0,
        scratch: Vec::new(),
        ack_wait: ctx_ack_poll,
    };
    let reason = writer.run(events_rx).await;
    writer.ctx.metrics.session_closed(reason);
    // Give the peer a moment to answer our close frame, then drop the connection.
    let abort = reader.abort_handle();
    if tokio::time::timeout(Duration::from_secs(2), reader)
        .await
        .is_err()
    {
        abort.abort();
    }
    writer.finish().await;
}

/// What the reader knows about its peer.
struct Peer {
    key: SessionKey,
    /// Set after each read when confirming by ping.
    quick_ack: Option<AckProbe>,
    heard: Arc<LastHeard>,
    /// Asks the writer to stop when the peer is stuck.
    signal: Arc<SessionSignal>,
    /// Bytes of replies handed to the writer and not yet written.
    replies: Arc<AtomicUsize>,
}

impl Peer {
    /// Counts `reply` against the session's reply bound; false when it does not fit: the
    /// peer sends faster than it reads what it asked for (pings with huge tags).
    fn reserve_reply(&self, reply: &Bytes, bound: usize) -> bool {
        let held = self.replies.fetch_add(reply.len(), Ordering::AcqRel);
        held.saturating_add(reply.len()) <= bound
    }
}

async fn read_loop<S>(
    mut stream: SplitStream<WebSocketStream<S>>,
    peer: Peer,
    rate: Arc<TwinRate>,
    ctx: Arc<SessionContext>,
    events: mpsc::Sender<Event>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let idle = ctx.settings.idle_after;
    let key = &peer.key;
    // A message read while collecting a batch that ended it; handled next.
    let mut held = None;
    loop {
        let next = match held.take() {
            Some(next) => next,
            None => match tokio::time::timeout(idle, stream.next()).await {
                Ok(next) => next,
                Err(_) => {
                    let close = Event::Close(close_codes::IDLE, "idle");
                    let _ =
                        tokio::time::timeout(ctx.settings.write_timeout, events.send(close)).await;
                    return;
                }
            },
        };
        peer.heard.mark();
        if let Some(probe) = &peer.quick_ack {
            let _ = probe.quick_ack();
        }
        let answers = match next {
            Some(Ok(Message::Binary(frame))) => {
                let frames = collect_frames(&mut stream, frame, &mut held);
                ctx.metrics.read_batch_frames.observe(frames.len() as f64);
                let now = rmb_proto::unix_now();
                // Boxed: the routing state lives only while a batch is routed, not in every
                // idle session's reader task (about 1.5 KB of its future).
                let batch = Box::pin(ctx.router.handle_many(key, &rate, frames, now)).await;
                let mut answers: Vec<Event> = batch
                    .handled
                    .into_iter()
                    .filter_map(|handled| handled.reply.map(Event::Reply))
                    .collect();
                if let Some(e) = batch.malformed {
                    tracing::debug!(session = %key, error = %e, "malformed envelope");
                    answers.push(Event::Close(
                        close_codes::INVALID_PAYLOAD,
                        "malformed envelope",
                    ));
                }
                answers
            }
            other => message_event(other, key, &ctx).into_iter().collect(),
        };
        for event in answers {
            if let Event::Reply(reply) = &event {
                if !peer.reserve_reply(reply, ctx.settings.reply_backlog_bytes) {
                    tracing::debug!(session = %key, "replies not read: closing");
                    peer.signal.close(CloseReason::Stuck);
                    return discard(stream).await;
                }
            }
            let last = matches!(event, Event::Close(..) | Event::Lost);
            match tokio::time::timeout(ctx.settings.write_timeout, events.send(event)).await {
                Ok(Ok(())) if !last => {}
                Ok(_) => return,
                Err(_) => {
                    tracing::debug!(session = %key, "writer stuck: closing");
                    peer.signal.close(CloseReason::Stuck);
                    return discard(stream).await;
                }
            }
        }
    }
}

/// Most frames routed together from one read of a session, and their most bytes: what a
/// peer pipelined is routed as one batch (one inbox append per pod), bounded so one session
/// cannot hold a batch open for long.
const READ_BATCH_FRAMES: usize = 64;
const READ_BATCH_BYTES: usize = 1 << 20;

/// The binary frames the peer sent that can be read now without waiting, after `first`.
/// Another kind of message ends the batch and is left in `held`.
fn collect_frames<S>(
    stream: &mut SplitStream<WebSocketStream<S>>,
    first: Bytes,
    held: &mut Option<Option<Result<Message, WsError>>>,
) -> Vec<Bytes>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut bytes = first.len();
    let mut frames = vec![first];
    while frames.len() < READ_BATCH_FRAMES && bytes < READ_BATCH_BYTES {
        match stream.next().now_or_never() {
            Some(Some(Ok(Message::Binary(frame)))) => {
                bytes += frame.len();
                frames.push(frame);
            }
            Some(other) => {
                *held = Some(other);
                break;
            }
            None => break,
        }
    }
    frames
}

/// What a message other than a binary frame means for the session.
fn message_event(
    next: Option<Result<Message, WsError>>,
    key: &SessionKey,
    ctx: &SessionContext,
) -> Option<Event> {
    match next {
        Some(Ok(Message::Binary(_))) => None,
        Some(Ok(Message::Pong(payload))) => confirmation(&payload).map(Event::Confirmed),
        Some(Ok(Message::Text(_))) => {
            ctx.metrics.malformed.inc();
            Some(Event::Close(
                close_codes::UNSUPPORTED,
                "text frames are not supported",
            ))
        }
        Some(Ok(Message::Ping(_) | Message::Frame(_))) => None,
        Some(Ok(Message::Close(_))) | None => Some(Event::Close(1000, "closed by peer")),
        Some(Err(WsError::Capacity(e))) => {
            tracing::debug!(session = %key, error = %e, "frame over the size limit");
            ctx.metrics.limit(Limit::EnvelopeSize);
            Some(Event::Close(close_codes::TOO_BIG, "frame too large"))
        }
        Some(Err(e)) => {
            tracing::debug!(session = %key, error = %e, "websocket read failed");
            Some(Event::Lost)
        }
    }
}

/// Reads and drops what a stuck peer still sends while the writer closes the session (the
/// session's end aborts this): a socket dropped with unread bytes is reset, and the reset
/// would discard the close frame before the peer reads it.
async fn discard<S>(mut stream: SplitStream<WebSocketStream<S>>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    while let Some(Ok(message)) = stream.next().await {
        if matches!(message, Message::Close(_)) {
            return;
        }
    }
}

/// The metric label for a session that ended with `code`.
fn close_label(code: u16) -> &'static str {
    match code {
        close_codes::REPLACED => "replaced",
        close_codes::SLOW_CONSUMER => "slow_consumer",
        close_codes::RESTART => "draining",
        close_codes::UNSUPPORTED => "text_frame",
        close_codes::INVALID_PAYLOAD => "malformed_envelope",
        close_codes::TOO_BIG => "frame_too_large",
        close_codes::IDLE => "idle",
        _ => "closed_by_peer",
    }
}

/// Decodes the sequence number our pings carry; other payloads are not ours.
fn confirmation(payload: &[u8]) -> Option<u64> {
    let bytes: [u8; 8] = payload.try_into().ok()?;
    Some(u64::from_be_bytes(bytes))
}

/// What keep-alive sends on a tick: a Ping only to a peer silent for 1.5 periods (or, with an
/// idle timeout close to the period, early enough that its Pong beats the timeout), else a
/// Pong heartbeat once per period. Pings cost clients like the original rmb-peer an error
/// log line each; an unsolicited Pong is a heartbeat RFC 6455 allows, and it is what such a
/// peer watches to tell its connection is alive.
#[derive(Debug, PartialEq, Eq)]
enum KeepAlive {
    Ping,
    Pong,
    Nothing,
}

fn keep_alive(
    silence: Duration,
    since_heartbeat: Duration,
    period: Duration,
    idle: Duration,
) -> KeepAlive {
    let ping_after = (period * 3 / 2).min(idle.saturating_sub(period / 2));
    if silence >= ping_after {
        KeepAlive::Ping
    } else if since_heartbeat >= period {
        KeepAlive::Pong
    } else {
        KeepAlive::Nothing
    }
}

type Sink<S> = SplitSink<WebSocketStream<S>, Message>;

struct Writer<S> {
    sink: Sink<S>,
    att: Attachment,
    ctx: Arc<SessionContext>,
    confirmer: Confirmer,
    heard: Arc<LastHeard>,
    /// Bytes of replies the reader handed over and the writer has not yet written.
    replies: Arc<AtomicUsize>,
    /// Batches written and not yet confirmed, oldest first, each with its mark: the ping
    /// sequence number, or the socket's written-byte count after the batch.
    unconfirmed: VecDeque<(u64, Vec<Queued>)>,
    unconfirmed_len: usize,
    seq: u64,
    scratch: Vec<Queued>,
    /// Current send-queue check period: `ack_poll`, doubled after each timed check that
    /// confirmed nothing (a client that stopped reading), up to [`ACK_POLL_MAX`].
    ack_wait: Duration,
}

/// Longest period between send-queue checks of a session whose client stopped reading.
const ACK_POLL_MAX: Duration = Duration::from_millis(50);

/// Why a write loop stopped.
enum Stop {
    /// Close with this code and reason.
    Close(u16, &'static str),
    /// The connection is gone; nothing more can be sent.
    Broken,
}

/// The mark of a batch whose write has not completed: never confirmed.
const UNWRITTEN: u64 = u64::MAX;

impl<S> Writer<S>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    /// Serves the session; returns the reason it ended (a metric label).
    async fn run(&mut self, mut events: mpsc::Receiver<Event>) -> &'static str {
        let period = self.ctx.settings.ping_every;
        let mut ticker = tokio::time::interval(period / 2);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticker.reset();
        let mut last_heartbeat = Instant::now();
        let signal = self.att.signal.clone();
        let mut more = false;
        let stop = loop {
            let can_write = self.unconfirmed_len < self.ctx.settings.max_unconfirmed;
            let polling = self.awaits_acks();
            let mut timed = false;
            let step = tokio::select! {
                biased;
                event = events.recv() => match event {
                    Some(Event::Reply(frame)) => self.write_reply(frame).await,
                    Some(Event::Confirmed(seq)) => {
                        self.on_pong(seq).await;
                        Ok(())
                    }
                    Some(Event::Close(code, reason)) => Err(Stop::Close(code, reason)),
                    Some(Event::Lost) | None => Err(Stop::Broken),
                },
                _ = signal.wait(), if can_write && !more => {
                    more = true;
                    Ok(())
                }
                _ = ticker.tick() => {
                    self.keep_alive(&mut last_heartbeat).await
                }
                _ = std::future::ready(()), if can_write && more => {
                    match self.write_batch().await {
                        Ok(remaining) => {
                            more = remaining;
                            Ok(())
                        }
                        Err(stop) => Err(stop),
                    }
                }
                _ = tokio::time::sleep(self.ack_wait), if polling => {
                    timed = true;
                    Ok(())
                }
            };
            if let Err(stop) = step {
                break stop;
            }
            let released = self.check_acks().await;
            if released {
                self.ack_wait = self.ctx.settings.ack_poll;
            } else if timed {
                self.ack_wait = (self.ack_wait * 2).min(ACK_POLL_MAX);
            }
            match signal.close_reason() {
                CloseReason::None => {}
                CloseReason::Replaced => break Stop::Close(close_codes::REPLACED, "replaced"),
                CloseReason::SlowConsumer => {
                    self.ctx.metrics.limit(Limit::SlowConsumer);
                    break Stop::Close(close_codes::SLOW_CONSUMER, "slow consumer");
                }
                CloseReason::Stuck => {
                    self.ctx.metrics.limit(Limit::StuckSession);
                    break Stop::Close(close_codes::SLOW_CONSUMER, "stuck");
                }
                CloseReason::Draining => break self.drain(&mut events).await,
            }
        };
        match stop {
            Stop::Close(code, reason) => {
                self.close(code, reason).await;
                close_label(code)
            }
            Stop::Broken => "connection_lost",
        }
    }

    /// Whether bytes wait for the peer's TCP acknowledgement.
    fn awaits_acks(&self) -> bool {
        matches!(self.confirmer, Confirmer::TcpAck(_)) && !self.unconfirmed.is_empty()
    }

    /// Pulls the next batch from the queue and writes it (followed by a confirmation ping
    /// when confirming by ping). Returns whether more entries wait.
    async fn write_batch(&mut self) -> Result<bool, Stop> {
        let mut batch = std::mem::take(&mut self.scratch);
        let room = self.ctx.settings.max_unconfirmed - self.unconfirmed_len;
        let now = rmb_proto::unix_now();
        let pulled = self
            .att
            .pull(room.min(self.ctx.settings.batch), now, &mut batch);
        let more = pulled.more || pulled.refill.is_some();
        if let Some(cursor) = pulled.refill {
            // Older mail waits in the durable mailbox: load it before newer entries flow.
            self.ctx.backplane.refill(&self.att, cursor).await;
        }
        if batch.is_empty() {
            self.scratch = batch;
            return Ok(more);
        }
        let metrics = &self.ctx.metrics;
        metrics.sent.inc_by(batch.len() as u64);
        metrics.sent_bytes.inc_by(frame_bytes(&batch));
        let pulled_at = Instant::now();
        for item in &batch {
            let waited = pulled_at.saturating_duration_since(item.accepted);
            metrics.routing_seconds.observe(waited.as_secs_f64());
        }
        // The batch is recorded as unconfirmed before it is written, so a write that is
        // abandoned (slow peer, drain deadline) still gives it back when the session ends.
        let ping = match self.confirmer {
            Confirmer::Ping => {
                self.seq += 1;
                Some(self.seq)
            }
            Confirmer::TcpAck(_) => None,
        };
        self.unconfirmed_len += batch.len();
        self.unconfirmed
            .push_back((ping.unwrap_or(UNWRITTEN), batch));
        let Some((_, batch)) = self.unconfirmed.back() else {
            return Ok(more);
        };
        let write = write_frames(&mut self.sink, batch, ping);
        if guarded(write, &self.att, self.ctx.settings.write_timeout).await? {
            if let (Confirmer::TcpAck(probe), Some(last)) =
                (&self.confirmer, self.unconfirmed.back_mut())
            {
                // Flushed: every byte of the batch is in the kernel, counted.
                last.0 = probe.written();
            }
        }
        Ok(more)
    }

    async fn write_reply(&mut self, frame: Bytes) -> Result<(), Stop> {
        let len = frame.len();
        let write = self.sink.send(Message::Binary(frame));
        let result = guarded(write, &self.att, self.ctx.settings.write_timeout).await;
        self.replies.fetch_sub(len, Ordering::AcqRel);
        result.map(|_| ())
    }

    async fn keep_alive(&mut self, last_heartbeat: &mut Instant) -> Result<(), Stop> {
        let settings = &self.ctx.settings;
        let message = match keep_alive(
            self.heard.silence(),
            last_heartbeat.elapsed(),
            settings.ping_every,
            settings.idle_after,
        ) {
            KeepAlive::Ping => {
                self.seq += 1;
                Message::Ping(Bytes::copy_from_slice(&self.seq.to_be_bytes()))
            }
            KeepAlive::Pong => Message::Pong(Bytes::new()),
            KeepAlive::Nothing => return Ok(()),
        };
        *last_heartbeat = Instant::now();
        let write = self.sink.send(message);
        guarded(write, &self.att, self.ctx.settings.write_timeout)
            .await
            .map(|_| ())
    }

    /// A Pong with sequence number `seq`: confirms the batches up to it when confirming by
    /// ping. A pong for a ping we never sent is ignored: it could otherwise release entries
    /// the peer has not read.
    async fn on_pong(&mut self, seq: u64) {
        if matches!(self.confirmer, Confirmer::Ping) && seq <= self.seq {
            self.release_through(seq).await;
        }
    }

    /// Confirms the batches whose bytes the peer's TCP acknowledged; whether any were.
    async fn check_acks(&mut self) -> bool {
        if !self.awaits_acks() {
            return false;
        }
        let Confirmer::TcpAck(probe) = &self.confirmer else {
            return false;
        };
        match probe.acknowledged() {
            Ok(acked) => self.release_through(acked).await,
            // The connection failed; the reader reports it. Nothing is confirmed.
            Err(e) => {
                tracing::debug!(session = %self.att.key, error = %e, "send queue unknown");
                false
            }
        }
    }

    /// Releases every batch whose mark is at most `mark`; whether any was.
    async fn release_through(&mut self, mark: u64) -> bool {
        let mut receipts = Vec::new();
        let released = self.unconfirmed.front().is_some_and(|(m, _)| *m <= mark);
        while self.unconfirmed.front().is_some_and(|(m, _)| *m <= mark) {
            let Some((_, batch)) = self.unconfirmed.pop_front() else {
                break;
            };
            self.unconfirmed_len -= batch.len();
            self.ctx.metrics.confirmed.inc_by(batch.len() as u64);
            receipts.extend(
                batch
                    .into_iter()
                    .map(|q| q.receipt)
                    .filter(|r| *r != Receipt::Local),
            );
        }
        if !receipts.is_empty() {
            self.ctx.backplane.confirm(receipts).await;
        }
        released
    }

    /// Draining: deliver what is queued, wait for its confirmation (bounded), then ask the
    /// peer to reconnect elsewhere.
    async fn drain(&mut self, events: &mut mpsc::Receiver<Event>) -> Stop {
        let deadline = tokio::time::Instant::now() + self.ctx.settings.drain_confirm;
        loop {
            // A peer that stopped reading must not hold the drain past its deadline.
            let more = match tokio::time::timeout_at(deadline, self.write_batch()).await {
                Ok(Ok(more)) => more,
                Ok(Err(stop)) => return stop,
                Err(_) => return Stop::Broken,
            };
            self.check_acks().await;
            if !more && self.unconfirmed_len == 0 {
                break;
            }
            if more && self.unconfirmed_len < self.ctx.settings.max_unconfirmed {
                continue;
            }
            let wake = if self.awaits_acks() {
                deadline.min(tokio::time::Instant::now() + self.ctx.settings.ack_poll)
            } else {
                deadline
            };
            match tokio::time::timeout_at(wake, events.recv()).await {
                Ok(Some(Event::Confirmed(seq))) => self.on_pong(seq).await,
                Ok(Some(Event::Reply(frame))) => {
                    if let Err(stop) = self.write_reply(frame).await {
                        return stop;
                    }
                }
                Ok(Some(Event::Close(..) | Event::Lost) | None) => return Stop::Broken,
                Err(_) if wake >= deadline => break,
                Err(_) => {}
            }
        }
        Stop::Close(close_codes::RESTART, "service restart")
    }

    async fn close(&mut self, code: u16, reason: &'static str) {
        let frame = CloseFrame {
            code: CloseCode::from(code),
            reason: reason.into(),
        };
        let send = self.sink.send(Message::Close(Some(frame)));
        let _ = tokio::time::timeout(Duration::from_secs(1), send).await;
    }

    /// Gives unconfirmed entries back to the queue and releases the session key.
    async fn finish(mut self) {
        // A last look: what the peer's TCP acknowledged before the end is delivered.
        self.check_acks().await;
        let unconfirmed: Vec<Queued> = self
            .unconfirmed
            .into_iter()
            .flat_map(|(_, batch)| batch)
            .collect();
        self.ctx.metrics.requeued.inc_by(unconfirmed.len() as u64);
        self.ctx.metrics.sessions.dec();
        self.ctx.backplane.detach(self.att, unconfirmed).await;
    }
}

/// Runs one write to the peer under the session's write deadline. `Ok(true)`: written.
/// `Ok(false)`: abandoned because the session must close (replaced, slow consumer, or stuck:
/// this write took longer than `limit`); the close reason ends the session and what was not
/// confirmed goes back to the queue. `Err`: the connection failed.
async fn guarded<F>(write: F, att: &Attachment, limit: Duration) -> Result<bool, Stop>
where
    F: Future<Output = Result<(), WsError>>,
{
    let result = tokio::select! {
        r = tokio::time::timeout(limit, write) => r,
        _ = att.signal.aborted() => return Ok(false),
    };
    match result {
        Ok(Ok(())) => Ok(true),
        Ok(Err(_)) if att.signal.close_reason() != CloseReason::None => Ok(false),
        Ok(Err(e)) => {
            tracing::debug!(session = %att.key, error = %e, "websocket write failed");
            Err(Stop::Broken)
        }
        Err(_) => {
            tracing::debug!(session = %att.key, "write not taken in time: closing");
            att.signal.close(CloseReason::Stuck);
            Ok(false)
        }
    }
}

/// Writes a batch with one flush, followed by the confirmation ping `ping` if given.
async fn write_frames<S>(
    sink: &mut Sink<S>,
    batch: &[Queued],
    ping: Option<u64>,
) -> Result<(), WsError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    for item in batch {
        sink.feed(Message::Binary(item.frame.clone())).await?;
    }
    if let Some(seq) = ping {
        sink.feed(Message::Ping(Bytes::copy_from_slice(&seq.to_be_bytes())))
            .await?;
    }
    sink.flush().await
}

#[cfg(test)]
mod tests {
    use super::*;

    const PERIOD: Duration = Duration::from_secs(20);
    const IDLE: Duration = Duration::from_secs(60);

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn a_peer_heard_within_one_and_a_half_periods_gets_no_ping() {
        assert_eq!(
            keep_alive(secs(29), secs(5), PERIOD, IDLE),
            KeepAlive::Nothing
        );
        assert_eq!(
            keep_alive(secs(29), secs(20), PERIOD, IDLE),
            KeepAlive::Pong
        );
        assert_eq!(keep_alive(secs(30), secs(5), PERIOD, IDLE), KeepAlive::Ping);
    }

    #[test]
    fn a_short_idle_timeout_brings_the_ping_forward() {
        // Idle after 25 s: the ping goes out by 15 s of silence, so its Pong beats the timeout.
        assert_eq!(
            keep_alive(secs(15), secs(0), PERIOD, secs(25)),
            KeepAlive::Ping
        );
        assert_eq!(
            keep_alive(secs(14), secs(0), PERIOD, secs(25)),
            KeepAlive::Nothing
        );
    }
}
