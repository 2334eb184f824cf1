//! A direct relay client: one twin, one websocket session with one relay.
//!
//! [`DirectClient::connect`] opens `ws://relay/?<jwt>` with a session token signed by the
//! twin's key. Envelopes are built and signed by the client ([`DirectClient::request`],
//! [`DirectClient::response_to`], [`DirectClient::ping`]), sent as binary frames, and read back
//! with [`DirectClient::recv`].
//!
//! Delivery confirmation: a relay confirming by TCP acknowledgement (this project's default)
//! needs nothing from the client. A relay confirming by ping (`--delivery-confirmation
//! websocket-ping`, other relays) sends a websocket Ping with a sequence number after every
//! batch and forgets the batch only when the matching Pong comes back. This client answers
//! those pings as it reads, so an envelope returned by `recv` is confirmed by the next read.
//! [`DirectClient::close`] waits briefly for such a ping (it follows its batch in the same
//! write, so it is there at once or not at all) before it closes, so nothing read is delivered
//! twice; anything not yet read is left to the relay, which delivers it again on the next
//! session.
//!
//! Both `ws://` and `wss://` relays are supported; TLS is rustls (see [`crate::tls`]), with
//! bundled and system roots by default, or extra CAs through [`DirectClient::connect_with`].

use std::fmt;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use rand::RngCore;
use rmb_identity::{issue_token, sign_envelope, verify_envelope, Claims, SignatureError, Signer};
use rmb_proto::{unix_now, Address, DecodeError, Envelope, Kind, Message, Payload};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message as WsMessage};
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream};

use crate::tls::TlsSettings;

/// Largest envelope accepted from the relay by default: the highest bound a relay can be
/// configured with, so whatever the relay forwards is readable.
pub const DEFAULT_MAX_ENVELOPE_BYTES: usize = 64 << 20;
/// Lifetime of the session token presented when connecting, in seconds.
pub const TOKEN_LIFETIME_SECS: u64 = 60;
/// How long [`DirectClient::connect`] waits for the TCP connection and websocket handshake.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// How long [`DirectClient::close`] waits for the close reply.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long [`DirectClient::close`] waits for the confirmation ping of a batch it read, from
/// a relay that confirms by ping; a relay confirming by TCP acknowledgement sends none.
pub const PING_GRACE: Duration = Duration::from_millis(250);
/// Time to live of responses built by [`DirectClient::response_to`], in seconds.
pub const REPLY_TTL_SECS: u64 = 300;
/// Time to live of pings built by [`DirectClient::ping`], in seconds.
pub const PING_TTL_SECS: u64 = 60;
/// The schema requests and responses are marked with.
pub const JSON_SCHEMA: &str = "application/json";

/// Why a client operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The relay URL is not `ws://` or `wss://host[:port][/path]`.
    #[error("invalid relay url {url:?}: {reason}")]
    InvalidUrl {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The TLS settings could not be built (unreadable CA file, for example).
    #[error("tls: {0}")]
    Tls(#[from] crate::tls::TlsError),
    /// The relay answered the websocket handshake with an HTTP error (bad token, unknown
    /// twin, relay full or draining).
    #[error("relay refused the session with HTTP {status}: {reason}")]
    Refused {
        /// The HTTP status code.
        status: u16,
        /// The relay's explanation (response body), or the status text.
        reason: String,
    },
    /// The TCP connection or websocket handshake did not complete in time.
    #[error("could not connect to the relay within {0:?}")]
    ConnectTimeout(Duration),
    /// No matching envelope arrived in time.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The session ended: the relay sent a close frame or the connection dropped.
    #[error("relay closed the session{}", close_detail(*.code, .reason))]
    Closed {
        /// The close code, when the relay sent one.
        code: Option<u16>,
        /// The close reason.
        reason: String,
    },
    /// The relay sent a text frame; the protocol only carries binary envelopes.
    #[error("relay sent a text frame; the protocol carries binary envelopes only")]
    UnexpectedText,
    /// A binary frame that is not a valid envelope.
    #[error("relay sent an invalid envelope: {0}")]
    Decode(#[from] DecodeError),
    /// An envelope signature did not verify.
    #[error("envelope signature: {0}")]
    Signature(#[from] SignatureError),
    /// Any other websocket or network failure.
    #[error("websocket: {0}")]
    WebSocket(#[source] Box<tungstenite::Error>),
}

fn close_detail(code: Option<u16>, reason: &str) -> String {
    match (code, reason.is_empty()) {
        (Some(code), true) => format!(" (code {code})"),
        (Some(code), false) => format!(" (code {code}: {reason})"),
        (None, true) => String::new(),
        (None, false) => format!(": {reason}"),
    }
}

impl From<tungstenite::Error> for ClientError {
    fn from(err: tungstenite::Error) -> Self {
        match err {
            tungstenite::Error::Http(resp) => {
                let status = resp.status();
                let body = resp
                    .body()
                    .as_deref()
                    .map(|b| String::from_utf8_lossy(b).trim().to_string())
                    .filter(|b| !b.is_empty());
                ClientError::Refused {
                    status: status.as_u16(),
                    reason: body.unwrap_or_else(|| {
                        status.canonical_reason().unwrap_or("no reason").to_string()
                    }),
                }
            }
            tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed => {
                ClientError::Closed {
                    code: None,
                    reason: "connection closed".to_string(),
                }
            }
            other => ClientError::WebSocket(Box::new(other)),
        }
    }
}

/// A session with one relay, as one twin (and optionally one session id).
pub struct DirectClient {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    signer: Signer,
    address: Address,
    max_envelope_bytes: usize,
    /// Whether envelopes were read since the last confirmation ping.
    unconfirmed: bool,
    /// When the relay last sent any frame (envelope, ping, pong).
    last_heard: Instant,
}

impl fmt::Debug for DirectClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DirectClient")
            .field("address", &self.address)
            .field("key_type", &self.signer.key_type())
            .finish_non_exhaustive()
    }
}

impl DirectClient {
    /// Opens a session with the relay at `url` (`ws://` or `wss://host[:port]`) as twin
    /// `twin`, with the session id `sid` when the twin runs several sessions. The session
    /// token is signed by `signer`, whose key must be the twin's registered account key.
    /// `wss://` relays are checked against the bundled and system roots.
    pub async fn connect(
        url: &str,
        signer: Signer,
        twin: u32,
        sid: Option<String>,
    ) -> Result<DirectClient, ClientError> {
        let base = relay_base(url)?;
        let tls = if base
            .get(..4)
            .is_some_and(|s| s.eq_ignore_ascii_case("wss:"))
        {
            Some(TlsSettings::system()?)
        } else {
            None
        };
        DirectClient::open(base, signer, twin, sid, tls.as_ref()).await
    }

    /// Like [`DirectClient::connect`], trusting the roots of `tls` for `wss://` relays (for
    /// a relay behind a private CA).
    pub async fn connect_with(
        url: &str,
        signer: Signer,
        twin: u32,
        sid: Option<String>,
        tls: &TlsSettings,
    ) -> Result<DirectClient, ClientError> {
        let base = relay_base(url)?;
        DirectClient::open(base, signer, twin, sid, Some(tls)).await
    }

    async fn open(
        base: &str,
        signer: Signer,
        twin: u32,
        sid: Option<String>,
        tls: Option<&TlsSettings>,
    ) -> Result<DirectClient, ClientError> {
        let now = unix_now();
        let claims = Claims {
            sub: twin,
            iat: now,
            exp: now.saturating_add(TOKEN_LIFETIME_SECS),
            sid: sid.clone(),
            aud: None,
        };
        let target = format!("{base}/?{}", issue_token(&signer, &claims));
        let config = WebSocketConfig::default()
            .max_message_size(Some(DEFAULT_MAX_ENVELOPE_BYTES))
            .max_frame_size(Some(DEFAULT_MAX_ENVELOPE_BYTES));
        let connector = tls.map(|t| Connector::Rustls(t.client_config()));
        let handshake =
            tokio_tungstenite::connect_async_tls_with_config(target, Some(config), true, connector);
        let (ws, _) = tokio::time::timeout(CONNECT_TIMEOUT, handshake)
            .await
            .map_err(|_| ClientError::ConnectTimeout(CONNECT_TIMEOUT))??;
        tracing::debug!(twin, sid = ?sid, relay = %base, "session opened");
        Ok(DirectClient {
            ws,
            signer,
            address: Address::new(twin, sid),
            max_envelope_bytes: DEFAULT_MAX_ENVELOPE_BYTES,
            unconfirmed: false,
            last_heard: Instant::now(),
        })
    }

    /// This session's address: the source of every envelope it builds.
    pub fn address(&self) -> &Address {
        &self.address
    }

    /// The twin id of this session.
    pub fn twin(&self) -> u32 {
        self.address.twin
    }

    /// The session id, if any.
    pub fn sid(&self) -> Option<&str> {
        self.address.connection.as_deref()
    }

    /// When the relay last sent anything: an envelope, a websocket ping or pong. A session
    /// silent for long is dead even if the socket looks open.
    pub fn last_heard(&self) -> Instant {
        self.last_heard
    }

    /// The signer envelopes are signed with.
    pub fn signer(&self) -> &Signer {
        &self.signer
    }

    /// Lowers (or raises, up to [`DEFAULT_MAX_ENVELOPE_BYTES`]) the size of envelope
    /// [`DirectClient::recv`] accepts.
    pub fn set_max_envelope_bytes(&mut self, limit: usize) {
        self.max_envelope_bytes = limit.min(DEFAULT_MAX_ENVELOPE_BYTES);
    }

    /// A signed request to `dst_twin` (session `dst_sid`, if any) calling `command` with a
    /// plain JSON `payload`, valid for `ttl_secs` seconds from now. Its uid is fresh.
    pub fn request(
        &self,
        dst_twin: u32,
        dst_sid: Option<String>,
        command: &str,
        payload: Vec<u8>,
        ttl_secs: u64,
    ) -> Envelope {
        let to = Address::new(dst_twin, dst_sid);
        let env = Envelope::request(new_uid(), to, command, unix_now(), ttl_secs)
            .with_schema(Some(JSON_SCHEMA.to_string()))
            .with_payload(Payload::Plain(payload));
        self.sign(env)
    }

    /// A signed response to `request`: same uid, back to its source, with a plain payload.
    pub fn response_to(&self, request: &Envelope, payload: Vec<u8>) -> Envelope {
        let env = Envelope::response_to(request, unix_now(), REPLY_TTL_SECS)
            .with_schema(Some(JSON_SCHEMA.to_string()))
            .with_payload(Payload::Plain(payload));
        self.sign(env)
    }

    /// A signed error answer to `request`: same uid, back to its source.
    pub fn error_to(&self, request: &Envelope, code: u32, message: &str) -> Envelope {
        self.sign(Envelope::error_reply(
            request,
            code,
            message,
            unix_now(),
            REPLY_TTL_SECS,
        ))
    }

    /// A signed envelope ping addressed to the relay itself (destination twin 0). The relay
    /// answers it with a pong envelope carrying the same uid.
    pub fn ping(&self) -> Envelope {
        let relay = Address::new(0, None);
        self.sign(Envelope::ping(new_uid(), relay, unix_now(), PING_TTL_SECS))
    }

    /// `env` from this session, signed.
    fn sign(&self, env: Envelope) -> Envelope {
        let mut env = env.with_source(self.address.clone());
        sign_envelope(&mut env, &self.signer);
        env
    }

    /// Sends an envelope as one binary frame.
    pub async fn send(&mut self, env: &Envelope) -> Result<(), ClientError> {
        self.ws
            .send(WsMessage::Binary(env.to_bytes().into()))
            .await
            .map_err(ClientError::from)
    }

    /// The next envelope from the relay. Confirmation pings are answered on the way. A text
    /// frame, a close frame or a dropped connection is an error.
    ///
    /// Cancel safe: dropping the future loses no envelope.
    pub async fn recv(&mut self) -> Result<Envelope, ClientError> {
        loop {
            let frame = match self.ws.next().await {
                Some(frame) => frame?,
                None => {
                    return Err(ClientError::Closed {
                        code: None,
                        reason: "connection ended".to_string(),
                    })
                }
            };
            self.last_heard = Instant::now();
            match frame {
                WsMessage::Binary(bytes) => {
                    self.unconfirmed = true;
                    return Ok(rmb_proto::decode_envelope(&bytes, self.max_envelope_bytes)?);
                }
                WsMessage::Ping(_) => {
                    // tungstenite queued the pong; send it now rather than on the next read,
                    // so the relay can release the batch even if we stop reading for a while.
                    self.unconfirmed = false;
                    self.ws.flush().await?;
                }
                WsMessage::Pong(_) | WsMessage::Frame(_) => {}
                WsMessage::Text(_) => return Err(ClientError::UnexpectedText),
                WsMessage::Close(frame) => {
                    return Err(ClientError::Closed {
                        code: frame.as_ref().map(|f| u16::from(f.code)),
                        reason: frame.map(|f| f.reason.to_string()).unwrap_or_default(),
                    })
                }
            }
        }
    }

    /// Waits up to `timeout` for the answer with uid `uid`: a response, an error or a pong.
    /// Other envelopes that arrive meanwhile are read and dropped.
    pub async fn wait_for(
        &mut self,
        uid: &str,
        timeout: Duration,
    ) -> Result<Envelope, ClientError> {
        let deadline = Instant::now() + timeout;
        loop {
            let env = tokio::time::timeout_at(deadline, self.recv())
                .await
                .map_err(|_| ClientError::Timeout(timeout))??;
            let is_answer = matches!(env.kind(), Kind::Response | Kind::Error | Kind::Pong);
            if is_answer && env.uid == uid {
                return Ok(env);
            }
            tracing::debug!(
                uid = %env.uid,
                kind = env.kind().as_str(),
                source = env.source_twin(),
                "dropping an envelope that is not the awaited answer"
            );
        }
    }

    /// Calls `command` on `dst` with `payload` and waits up to `timeout` for the answer: the
    /// response or error envelope with the request's uid. The request lives as long as the
    /// timeout (at least one second).
    ///
    /// Envelopes that are not the answer are dropped: a twin that also serves requests should
    /// send with [`DirectClient::request`] and [`DirectClient::send`] and dispatch what
    /// [`DirectClient::recv`] returns itself.
    pub async fn call(
        &mut self,
        dst: Address,
        command: &str,
        payload: Vec<u8>,
        timeout: Duration,
    ) -> Result<Envelope, ClientError> {
        let ttl = timeout.as_secs() + u64::from(timeout.subsec_nanos() > 0);
        let req = self.request(dst.twin, dst.connection, command, payload, ttl.max(1));
        self.send(&req).await?;
        self.wait_for(&req.uid, timeout).await
    }

    /// Ends the session politely. If envelopes were read since the last confirmation, first
    /// waits briefly for the relay's confirmation ping and answers it, so they are not
    /// delivered again; if more envelopes arrive before that ping, none of the batch is
    /// confirmed and the relay delivers it again to the next session (at least once).
    pub async fn close(mut self) -> Result<(), ClientError> {
        let deadline = Instant::now() + PING_GRACE;
        while self.unconfirmed {
            match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Ok(Some(Ok(WsMessage::Ping(_)))) => {
                    self.unconfirmed = false;
                    self.ws.flush().await?;
                }
                Ok(Some(Ok(WsMessage::Binary(_)))) | Err(_) => break,
                Ok(Some(Ok(_))) => {}
                // The session is already gone: nothing left to close.
                Ok(Some(Err(_)) | None) => return Ok(()),
            }
        }
        match self.ws.close(None).await {
            Ok(()) => {}
            Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => {
                return Ok(())
            }
            Err(e) => return Err(e.into()),
        }
        // Read until the relay answers the close, so the handshake completes.
        let deadline = Instant::now() + CLOSE_TIMEOUT;
        while let Ok(Some(Ok(_))) = tokio::time::timeout_at(deadline, self.ws.next()).await {}
        Ok(())
    }
}

/// Checks that `envelope` is signed by the holder of `account_public_key` (the source twin's
/// 32-byte account key, ed25519 or sr25519).
pub fn verify_from(
    envelope: &Envelope,
    account_public_key: &[u8; 32],
) -> Result<(), SignatureError> {
    verify_envelope(envelope, account_public_key).map(|_| ())
}

/// The code and message of an error envelope; `None` for every other kind.
pub fn remote_error(envelope: &Envelope) -> Option<(u32, &str)> {
    match &envelope.message {
        Some(Message::Error(e)) => Some((e.code, e.message.as_str())),
        _ => None,
    }
}

/// A fresh random envelope uid, formatted like a version 4 UUID.
pub fn new_uid() -> String {
    let mut b = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut b);
    b[6] = (b[6] & 0x0f) | 0x40; // version 4
    b[8] = (b[8] & 0x3f) | 0x80; // RFC 4122 variant
    let hex: String = b.iter().map(|byte| format!("{byte:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

/// Validates a relay URL and returns it without a trailing slash.
fn relay_base(url: &str) -> Result<&str, ClientError> {
    let base = url.trim().trim_end_matches('/');
    let invalid = |reason: &str| ClientError::InvalidUrl {
        url: url.to_string(),
        reason: reason.to_string(),
    };
    let (scheme, rest) = base
        .split_once("://")
        .ok_or_else(|| invalid("expected ws://host[:port] or wss://host[:port]"))?;
    if !scheme.eq_ignore_ascii_case("ws") && !scheme.eq_ignore_ascii_case("wss") {
        return Err(invalid("the scheme must be ws:// or wss://"));
    }
    if rest.is_empty() || rest.starts_with('/') {
        return Err(invalid("no host"));
    }
    if rest.contains(['?', '#']) {
        return Err(invalid(
            "no query or fragment: the session token is the query string",
        ));
    }
    Ok(base)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uids_look_like_uuid_v4_and_differ() {
        let a = new_uid();
        let b = new_uid();
        assert_ne!(a, b);
        let parts: Vec<&str> = a.split('-').collect();
        assert_eq!(
            parts.iter().map(|p| p.len()).collect::<Vec<_>>(),
            [8, 4, 4, 4, 12]
        );
        assert!(parts[2].starts_with('4'));
        assert!(matches!(parts[3].as_bytes()[0], b'8' | b'9' | b'a' | b'b'));
    }

    #[test]
    fn relay_urls_are_checked() {
        assert_eq!(
            relay_base("ws://127.0.0.1:8080/").ok(),
            Some("ws://127.0.0.1:8080")
        );
        assert_eq!(relay_base("WS://relay/path").ok(), Some("WS://relay/path"));
        assert_eq!(
            relay_base("wss://relay.grid.tf").ok(),
            Some("wss://relay.grid.tf")
        );
        for bad in ["relay:8080", "http://relay", "ws://", "ws://relay/?x=1"] {
            assert!(
                matches!(relay_base(bad), Err(ClientError::InvalidUrl { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn close_errors_read_well() {
        let e = ClientError::Closed {
            code: Some(4000),
            reason: "replaced".into(),
        };
        assert_eq!(
            e.to_string(),
            "relay closed the session (code 4000: replaced)"
        );
    }
}
