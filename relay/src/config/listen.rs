//! Where the relay listens, and how sessions live on their connection: keep-alive, idle
//! close, handshake budget, drain window.

use std::net::SocketAddr;
use std::time::Duration;

use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use super::{invalid, require_positive, ConfigError, DEFAULT_LISTEN};
use crate::session::SessionSettings;

/// How a session learns that its peer received what was written to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum DeliveryConfirmation {
    /// The peer's TCP acknowledged the bytes (Linux `SIOCOUTQ`): nothing extra on the wire,
    /// so clients that leave Nagle's algorithm on see no delayed-ACK stalls. Sessions fall back
    /// to `websocket-ping` where the kernel cannot tell.
    TcpAck,
    /// A websocket Ping after each batch; its Pong confirms the batch (the relay also asks its
    /// kernel for quick ACKs after reads, which shortens the stall Nagle clients see).
    WebsocketPing,
}

/// How often a session checks its send queue while bytes wait for the peer's TCP
/// acknowledgement and nothing else wakes it (docs/architecture.md, delivery confirmation).
const ACK_POLL: Duration = Duration::from_millis(2);

/// Listening and sessions settings.
#[derive(Debug, Clone, clap::Args, serde::Serialize)]
#[command(next_help_heading = "Listening and sessions")]
pub struct ListenArgs {
    /// Address to listen on for websocket sessions, federation, metrics and probes. The
    /// default `[::]:8080` takes IPv6 and IPv4 (dual-stack; IPv4 only where the host has no
    /// IPv6); `:PORT` alone means the same on PORT.
    #[arg(id = "listen", short = 'l', long = "listen", env = "RMB_LISTEN", default_value = DEFAULT_LISTEN, value_parser = parse_listen)]
    #[serde(rename = "listen")]
    pub addr: SocketAddr,

    /// Most websocket connections this pod holds; more get HTTP 503.
    #[arg(long, env = "RMB_MAX_CONNECTIONS", default_value_t = 100_000)]
    pub max_connections: usize,

    /// Seconds a client has to send its HTTP request headers.
    #[arg(long, env = "RMB_HANDSHAKE_TIMEOUT", default_value_t = 10)]
    pub handshake_timeout: u64,

    /// Websocket handshakes per second one client address may start (token bucket, burst
    /// twice this; IPv6 counted per /64); more get HTTP 429. 0 (the default) turns it off:
    /// behind a load balancer every client shares the balancer's address.
    #[arg(long, env = "RMB_HANDSHAKE_RATE_PER_IP", default_value_t = 0)]
    pub handshake_rate_per_ip: u64,

    /// Bytes read from a session's socket per read call; also the buffer every session holds
    /// while idle. Smaller saves memory per idle session, larger saves syscalls under load.
    #[arg(long, env = "RMB_WS_READ_BUFFER", default_value_t = 4096)]
    pub ws_read_buffer: usize,

    /// How delivery to a session is confirmed before an envelope is forgotten: `tcp-ack` (the
    /// peer's TCP acknowledged it; no frames added) or `websocket-ping` (a Ping after each
    /// batch, answered by a Pong; the previous behaviour).
    #[arg(
        long,
        env = "RMB_DELIVERY_CONFIRMATION",
        value_enum,
        default_value = "tcp-ack"
    )]
    pub delivery_confirmation: DeliveryConfirmation,

    /// Keep-alive period in seconds: a session whose peer was silent for 1.5 periods gets a
    /// websocket Ping; others get an unsolicited Pong each period (a heartbeat that needs no
    /// answer).
    #[arg(long, env = "RMB_PING_INTERVAL", default_value_t = 20)]
    pub ping_interval: u64,

    /// Seconds of silence (no frame, no pong) after which a session is closed.
    #[arg(long, env = "RMB_IDLE_TIMEOUT", default_value_t = 60)]
    pub idle_timeout: u64,

    /// Seconds a session's socket may take to accept one write (a batch, a reply, a
    /// keep-alive frame), and a session's reader may wait for room to hand its writer a
    /// reply. Past it the session is stuck: closed with 4008, its unconfirmed mail re-queued
    /// and its lease released. 30 s is far above what a reading client needs on any real
    /// link, and below the time mail for a frozen client would wait on its next session.
    #[arg(long, env = "RMB_WRITE_TIMEOUT", default_value_t = 30)]
    pub write_timeout: u64,

    /// Seconds to drain on SIGTERM: sessions are closed (1012) paced over this window.
    #[arg(long, env = "RMB_DRAIN_SECONDS", default_value_t = 10)]
    pub drain_seconds: u64,

    /// Original relay: switch workers (Redis readers). Here only `--workers` ×
    /// `--user-per-worker` matters: it becomes --max-connections (unless that is given).
    #[arg(short = 'w', long, env = "RMB_WORKERS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workers: Option<u32>,

    /// Original relay: sessions per switch worker. See --workers.
    #[arg(short = 'u', long, env = "RMB_USER_PER_WORKER")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_per_worker: Option<u32>,
}

impl ListenArgs {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        require_positive(&[
            ("ws-read-buffer", self.ws_read_buffer as u64),
            ("handshake-timeout", self.handshake_timeout),
            ("max-connections", self.max_connections as u64),
            ("ping-interval", self.ping_interval),
            ("write-timeout", self.write_timeout),
        ])?;
        if self.idle_timeout <= self.ping_interval {
            return Err(invalid(
                "idle-timeout",
                format!(
                    "must be longer than ping-interval ({}s), or every session would time out",
                    self.ping_interval
                ),
            ));
        }
        Ok(())
    }

    /// Ping interval as a duration.
    pub fn ping_every(&self) -> Duration {
        Duration::from_secs(self.ping_interval)
    }

    /// Idle timeout as a duration.
    pub fn idle_after(&self) -> Duration {
        Duration::from_secs(self.idle_timeout)
    }

    /// How long a client may take to send its request headers.
    pub fn handshake_deadline(&self) -> Duration {
        Duration::from_secs(self.handshake_timeout)
    }

    /// What each session's writer and reader take.
    pub(crate) fn session_settings(
        &self,
        max_unconfirmed: usize,
        max_envelope_bytes: usize,
    ) -> SessionSettings {
        SessionSettings {
            ping_every: self.ping_every(),
            confirmation: self.delivery_confirmation,
            ack_poll: ACK_POLL,
            idle_after: self.idle_after(),
            max_unconfirmed,
            batch: 256,
            drain_confirm: Duration::from_secs(5),
            write_timeout: Duration::from_secs(self.write_timeout),
            // Two of the largest replies: a pong always fits, a peer that stops reading
            // cannot make the relay hold more than this in replies.
            reply_backlog_bytes: max_envelope_bytes.saturating_mul(2),
        }
    }

    /// The websocket codec: frames and messages up to `max_envelope_bytes`, writes not held
    /// back in a buffer.
    pub(crate) fn ws_config(&self, max_envelope_bytes: usize) -> WebSocketConfig {
        WebSocketConfig::default()
            .read_buffer_size(self.ws_read_buffer)
            .write_buffer_size(0)
            .max_message_size(Some(max_envelope_bytes))
            .max_frame_size(Some(max_envelope_bytes))
    }
}

/// Why a listen address is refused.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    /// `:PORT` with something else than a port number.
    #[error("{text:?}: {port:?} is not a port")]
    Port {
        /// The whole value.
        text: String,
        /// The part after the colon.
        port: String,
    },
    /// Not `HOST:PORT`, or the host cannot be resolved.
    #[error("{text:?} is not HOST:PORT: {source}")]
    Address {
        /// The value.
        text: String,
        /// The resolver's answer.
        source: std::io::Error,
    },
    /// The host resolves to nothing.
    #[error("{0:?} resolves to no address")]
    Unresolved(String),
}

/// A listen address: `HOST:PORT`, `[V6]:PORT`, or `:PORT` for every address (dual-stack).
fn parse_listen(text: &str) -> Result<SocketAddr, ListenError> {
    let text = text.trim();
    if let Some(port) = text.strip_prefix(':') {
        let port: u16 = port.parse().map_err(|_| ListenError::Port {
            text: text.to_string(),
            port: port.to_string(),
        })?;
        return Ok(SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, port)));
    }
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(addr);
    }
    use std::net::ToSocketAddrs;
    text.to_socket_addrs()
        .map_err(|source| ListenError::Address {
            text: text.to_string(),
            source,
        })?
        .next()
        .ok_or_else(|| ListenError::Unresolved(text.to_string()))
}
