//! One websocket session: reads envelopes from the peer and routes them, and writes the
//! session's queue to the peer with confirmed delivery.
//!
//! Confirmation: after each batch of data frames the writer sends a websocket Ping carrying
//! a sequence number. Every RFC 6455 client answers a Ping with a Pong after reading the
//! frames before it, so the Pong proves the batch was received. Entries are released only
//! then; whatever is unconfirmed when the session ends goes back to the front of the queue.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;

use crate::backplane::Backplane;
use crate::hub::{Attachment, CloseReason, Queued, Receipt};
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
    /// Keep-alive ping period.
    pub ping_every: Duration,
    /// Close after this long without any frame from the peer.
    pub idle_after: Duration,
    /// Most entries written and not yet confirmed.
    pub max_unconfirmed: usize,
    /// Most entries written between two confirmation pings.
    pub batch: usize,
    /// How long a draining session waits for its last confirmations.
    pub drain_confirm: Duration,
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

/// Runs a session until it ends. `att` is its claim on the queue for `key`.
pub async fn run<S>(
    ws: WebSocketStream<S>,
    att: Attachment,
    rate: Arc<TwinRate>,
    ctx: Arc<SessionContext>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (sink, stream) = ws.split();
    let (events_tx, events_rx) = mpsc::channel(256);
    let reader = tokio::spawn(read_loop(
        stream,
        att.key.clone(),
        rate,
        ctx.clone(),
        events_tx,
    ));
    let mut writer = Writer {
        sink,
        att,
        ctx,
        unconfirmed: VecDeque::new(),
        unconfirmed_len: 0,
        seq: 0,
        scratch: Vec::new(),
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

async fn read_loop<S>(
    mut stream: SplitStream<WebSocketStream<S>>,
    key: SessionKey,
    rate: Arc<TwinRate>,
    ctx: Arc<SessionContext>,
    events: mpsc::Sender<Event>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let idle = ctx.settings.idle_after;
    loop {
        let next = match tokio::time::timeout(idle, stream.next()).await {
            Ok(next) => next,
            Err(_) => {
                let _ = events.send(Event::Close(close_codes::IDLE, "idle")).await;
                return;
            }
        };
        let event = match next {
            Some(Ok(Message::Binary(frame))) => {
                let now = rmb_proto::unix_now();
                match ctx.router.handle(&key, &rate, frame, now).await {
                    Ok(handled) => handled.reply.map(Event::Reply),
                    Err(e) => {
                        tracing::debug!(session = %key, error = %e, "malformed envelope");
                        Some(Event::Close(
                            close_codes::INVALID_PAYLOAD,
                            "malformed envelope",
                        ))
                    }
                }
            }
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
        };
        let Some(event) = event else { continue };
        let last = matches!(event, Event::Close(..) | Event::Lost);
        if events.send(event).await.is_err() || last {
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

type Sink<S> = SplitSink<WebSocketStream<S>, Message>;

struct Writer<S> {
    sink: Sink<S>,
    att: Attachment,
    ctx: Arc<SessionContext>,
    /// Batches written and awaiting their pong, oldest first, by ping sequence number.
    unconfirmed: VecDeque<(u64, Vec<Queued>)>,
    unconfirmed_len: usize,
    seq: u64,
    scratch: Vec<Queued>,
}

/// Why a write loop stopped.
enum Stop {
    /// Close with this code and reason.
    Close(u16, &'static str),
    /// The connection is gone; nothing more can be sent.
    Broken,
}

impl<S> Writer<S>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    /// Serves the session; returns the reason it ended (a metric label).
    async fn run(&mut self, mut events: mpsc::Receiver<Event>) -> &'static str {
        let mut ticker = tokio::time::interval(self.ctx.settings.ping_every);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticker.reset();
        let signal = self.att.signal.clone();
        let mut more = false;
        let stop = loop {
            let can_write = self.unconfirmed_len < self.ctx.settings.max_unconfirmed;
            let step = tokio::select! {
                biased;
                event = events.recv() => match event {
                    Some(Event::Reply(frame)) => self.write_reply(frame).await,
                    Some(Event::Confirmed(seq)) => {
                        self.confirm(seq).await;
                        Ok(())
                    }
                    Some(Event::Close(code, reason)) => Err(Stop::Close(code, reason)),
                    Some(Event::Lost) | None => Err(Stop::Broken),
                },
                _ = signal.wait(), if can_write && !more => {
                    more = true;
                    Ok(())
                }
                _ = ticker.tick() => self.ping().await,
                _ = std::future::ready(()), if can_write && more => {
                    match self.write_batch().await {
                        Ok(remaining) => {
                            more = remaining;
                            Ok(())
                        }
                        Err(stop) => Err(stop),
                    }
                }
            };
            if let Err(stop) = step {
                break stop;
            }
            match signal.close_reason() {
                CloseReason::None => {}
                CloseReason::Replaced => break Stop::Close(close_codes::REPLACED, "replaced"),
                CloseReason::SlowConsumer => {
                    self.ctx.metrics.limit(Limit::SlowConsumer);
                    break Stop::Close(close_codes::SLOW_CONSUMER, "slow consumer");
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

    /// Pulls the next batch from the queue and writes it, followed by a confirmation ping.
    /// Returns whether more entries wait.
    async fn write_batch(&mut self) -> Result<bool, Stop> {
        let mut batch = std::mem::take(&mut self.scratch);
        let room = self.ctx.settings.max_unconfirmed - self.unconfirmed_len;
        let now = rmb_proto::unix_now();
        let pulled = self.ctx.backplane.hub().pull(
            &self.att,
            room.min(self.ctx.settings.batch),
            now,
            &mut batch,
        );
        let more = pulled.more || pulled.refill.is_some();
        if let Some(cursor) = pulled.refill {
            // Older mail waits in the durable mailbox: load it before newer entries flow.
            self.ctx.backplane.refill(&self.att, cursor).await;
        }
        if batch.is_empty() {
            self.scratch = batch;
            return Ok(more);
        }
        // The batch is recorded as unconfirmed before it is written, so a write that is
        // abandoned (slow peer, drain deadline) still gives it back when the session ends.
        self.seq += 1;
        let seq = self.seq;
        let metrics = &self.ctx.metrics;
        metrics.sent.inc_by(batch.len() as u64);
        for item in &batch {
            metrics.sent_bytes.inc_by(item.frame.len() as u64);
            metrics
                .routing_seconds
                .observe(item.accepted.elapsed().as_secs_f64());
        }
        self.unconfirmed_len += batch.len();
        self.unconfirmed.push_back((seq, batch));
        let signal = self.att.signal.clone();
        let Some((_, batch)) = self.unconfirmed.back() else {
            return Ok(more);
        };
        let result = tokio::select! {
            r = write_frames(&mut self.sink, batch, seq) => r,
            _ = signal.aborted() => Err(WsError::ConnectionClosed),
        };
        match result {
            Ok(()) => Ok(more),
            Err(_) if self.att.signal.close_reason() != CloseReason::None => Ok(more),
            Err(e) => {
                tracing::debug!(session = %self.att.key, error = %e, "websocket write failed");
                Err(Stop::Broken)
            }
        }
    }

    async fn write_reply(&mut self, frame: Bytes) -> Result<(), Stop> {
        self.sink
            .send(Message::Binary(frame))
            .await
            .map_err(|_| Stop::Broken)
    }

    async fn ping(&mut self) -> Result<(), Stop> {
        self.seq += 1;
        let payload = Bytes::copy_from_slice(&self.seq.to_be_bytes());
        self.sink
            .send(Message::Ping(payload))
            .await
            .map_err(|_| Stop::Broken)
    }

    /// Releases every batch up to `seq`. A pong for a ping we never sent is ignored: it
    /// could otherwise release entries the peer has not read.
    async fn confirm(&mut self, seq: u64) {
        if seq > self.seq {
            return;
        }
        let mut receipts = Vec::new();
        while self.unconfirmed.front().is_some_and(|(s, _)| *s <= seq) {
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
            if !more && self.unconfirmed_len == 0 {
                break;
            }
            if more && self.unconfirmed_len < self.ctx.settings.max_unconfirmed {
                continue;
            }
            match tokio::time::timeout_at(deadline, events.recv()).await {
                Ok(Some(Event::Confirmed(seq))) => self.confirm(seq).await,
                Ok(Some(Event::Reply(frame))) => {
                    if let Err(stop) = self.write_reply(frame).await {
                        return stop;
                    }
                }
                Ok(Some(Event::Close(..) | Event::Lost) | None) => return Stop::Broken,
                Err(_) => break,
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
    async fn finish(self) {
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

async fn write_frames<S>(sink: &mut Sink<S>, batch: &[Queued], seq: u64) -> Result<(), WsError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    for item in batch {
        sink.feed(Message::Binary(item.frame.clone())).await?;
    }
    sink.feed(Message::Ping(Bytes::copy_from_slice(&seq.to_be_bytes())))
        .await?;
    sink.flush().await
}
