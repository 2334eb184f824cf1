//! A raw websocket client for relay tests: it speaks the wire protocol directly, so tests can
//! send anything (spoofed, garbage, text frames) and observe exactly what the relay does.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use prost::Message as _;
use rmb_identity::{issue_token, sign_envelope, Claims};
use rmb_proto::{unix_now, Address, Envelope, Message, Payload, Request, Response};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{self, Message as WsMessage};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::twins::TestTwin;

/// How long a test waits for a frame that should come.
pub const WAIT: Duration = Duration::from_secs(10);

/// What the relay sent, as a test sees it.
#[derive(Debug)]
pub enum Received {
    /// An envelope.
    Envelope(Box<Envelope>),
    /// The relay closed the session.
    Closed(Option<CloseFrame>),
}

/// A session with a relay.
pub struct WsClient {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    /// The twin this session belongs to.
    pub twin: TestTwin,
    /// The session id, if any.
    pub sid: Option<String>,
}

/// A fresh session token for `twin`, valid for a minute.
pub fn token_for(twin: &TestTwin, sid: Option<&str>) -> String {
    let now = unix_now();
    issue_token(
        &twin.signer,
        &Claims {
            sub: twin.id,
            iat: now,
            exp: now + 60,
            sid: sid.map(str::to_string),
            aud: None,
        },
    )
}

/// A session of `twin` on `addr` over a socket the test shapes: Nagle's algorithm on or off
/// and, if given, a small receive buffer (set before connecting, so the advertised window
/// stays small: a peer that then reads nothing holds the relay's writes unconfirmed).
pub async fn connect_shaped(
    addr: std::net::SocketAddr,
    twin: &TestTwin,
    nagle: bool,
    rcvbuf: Option<usize>,
) -> WebSocketStream<TcpStream> {
    let fail = |step: &str, e: std::io::Error| -> ! {
        panic!("twin {} cannot connect to {addr} ({step}): {e}", twin.id)
    };
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )
    .unwrap_or_else(|e| fail("socket", e));
    if let Some(size) = rcvbuf {
        socket
            .set_recv_buffer_size(size)
            .unwrap_or_else(|e| fail("receive buffer", e));
    }
    socket
        .connect(&addr.into())
        .unwrap_or_else(|e| fail("connect", e));
    socket
        .set_nonblocking(true)
        .unwrap_or_else(|e| fail("non-blocking", e));
    let tcp = TcpStream::from_std(socket.into()).unwrap_or_else(|e| fail("tokio", e));
    tcp.set_nodelay(!nagle)
        .unwrap_or_else(|e| fail("nodelay", e));
    let url = format!("ws://{addr}/?{}", token_for(twin, None));
    match tokio_tungstenite::client_async(url, tcp).await {
        Ok((ws, _)) => ws,
        Err(e) => panic!("twin {} cannot open a session on {addr}: {e}", twin.id),
    }
}

impl WsClient {
    /// Connects as `twin` (optionally with a session id), token in the query string.
    pub async fn connect(url: &str, twin: &TestTwin, sid: Option<&str>) -> WsClient {
        WsClient::try_connect(url, twin, sid)
            .await
            .unwrap_or_else(|e| panic!("twin {} cannot connect to {url}: {e}", twin.id))
    }

    /// Like [`WsClient::connect`], returning the handshake error.
    pub async fn try_connect(
        url: &str,
        twin: &TestTwin,
        sid: Option<&str>,
    ) -> Result<WsClient, tungstenite::Error> {
        let token = token_for(twin, sid);
        let (ws, _) = tokio_tungstenite::connect_async(format!("{url}/?{token}")).await?;
        Ok(WsClient {
            ws,
            twin: twin.clone(),
            sid: sid.map(str::to_string),
        })
    }

    /// Connects with the token in an `Authorization: Bearer` header.
    pub async fn connect_bearer(
        url: &str,
        twin: &TestTwin,
    ) -> Result<WsClient, tungstenite::Error> {
        let mut req = format!("{url}/").into_client_request()?;
        let token = token_for(twin, None);
        if let Ok(v) = HeaderValue::from_str(&format!("Bearer {token}")) {
            req.headers_mut().insert("authorization", v);
        }
        let (ws, _) = tokio_tungstenite::connect_async(req).await?;
        Ok(WsClient {
            ws,
            twin: twin.clone(),
            sid: None,
        })
    }

    /// Opens a raw connection with an arbitrary query string (for token attacks).
    pub async fn connect_raw(url: &str, query: &str) -> Result<(), tungstenite::Error> {
        tokio_tungstenite::connect_async(format!("{url}/?{query}"))
            .await
            .map(|_| ())
    }

    /// This session's address.
    pub fn address(&self) -> Address {
        Address::new(self.twin.id, self.sid.clone())
    }

    /// A signed request from this session to `to`.
    pub fn request(&self, uid: &str, to: Address, command: &str, data: &[u8]) -> Envelope {
        let mut env = Envelope {
            uid: uid.to_string(),
            tags: None,
            timestamp: unix_now(),
            expiration: 300,
            source: Some(self.address()),
            destination: Some(to),
            message: Some(Message::Request(Request {
                command: command.to_string(),
            })),
            schema: Some("application/json".into()),
            payload: Some(Payload::Plain(data.to_vec())),
            ..Default::default()
        };
        sign_envelope(&mut env, &self.twin.signer);
        env
    }

    /// An envelope ping to the relay itself (twin 0). The relay answers with a pong only
    /// once everything this session sent before it is stored: a barrier for tests.
    pub fn relay_ping(&self, uid: &str) -> Envelope {
        let mut ping = self.request(uid, Address::new(0, None), "", b"");
        ping.message = Some(Message::Ping(rmb_proto::Ping {}));
        ping
    }

    /// A signed response from this session to the sender of `req`.
    pub fn response_to(&self, req: &Envelope, data: &[u8]) -> Envelope {
        let mut env = Envelope {
            uid: req.uid.clone(),
            timestamp: unix_now(),
            expiration: 300,
            source: Some(self.address()),
            destination: req.source.clone(),
            message: Some(Message::Response(Response {})),
            payload: Some(Payload::Plain(data.to_vec())),
            ..Default::default()
        };
        sign_envelope(&mut env, &self.twin.signer);
        env
    }

    /// Sends an envelope.
    pub async fn send(&mut self, env: &Envelope) {
        self.send_frame(WsMessage::Binary(env.encode_to_vec().into()))
            .await;
    }

    /// Sends envelopes as one write (one flush): the relay reads them together, as it reads
    /// what a peer pipelines.
    pub async fn send_pipelined(&mut self, envs: &[Envelope]) {
        for env in envs {
            let frame = WsMessage::Binary(env.encode_to_vec().into());
            if let Err(e) = self.ws.feed(frame).await {
                panic!("twin {} send failed: {e}", self.twin.id);
            }
        }
        if let Err(e) = self.ws.flush().await {
            panic!("twin {} send failed: {e}", self.twin.id);
        }
    }

    /// Sends any websocket message.
    pub async fn send_frame(&mut self, msg: WsMessage) {
        if let Err(e) = self.ws.send(msg).await {
            panic!("twin {} send failed: {e}", self.twin.id);
        }
    }

    /// Sends without panicking (the relay may have closed).
    pub async fn try_send_frame(&mut self, msg: WsMessage) -> Result<(), tungstenite::Error> {
        self.ws.send(msg).await
    }

    /// The next envelope or close within `wait`; `None` on timeout. Pings are answered by
    /// tungstenite as frames are read.
    pub async fn next(&mut self, wait: Duration) -> Option<Received> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let frame = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .ok()?;
            match frame {
                Some(Ok(WsMessage::Binary(bytes))) => {
                    let env = Envelope::decode(bytes)
                        .unwrap_or_else(|e| panic!("relay sent a non-envelope: {e}"));
                    return Some(Received::Envelope(Box::new(env)));
                }
                Some(Ok(WsMessage::Close(frame))) => return Some(Received::Closed(frame)),
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return Some(Received::Closed(None)),
            }
        }
    }

    /// The next envelope; panics on close or timeout.
    pub async fn expect_envelope(&mut self) -> Envelope {
        match self.next(WAIT).await {
            Some(Received::Envelope(env)) => *env,
            other => panic!("twin {} expected an envelope, got {other:?}", self.twin.id),
        }
    }

    /// Asserts nothing arrives within `wait`.
    pub async fn expect_silence(&mut self, wait: Duration) {
        if let Some(Received::Envelope(env)) = self.next(wait).await {
            panic!("twin {} expected nothing, got {env:?}", self.twin.id);
        }
    }

    /// Waits for the relay to close the session; returns the close code.
    pub async fn expect_close(&mut self) -> Option<u16> {
        loop {
            match self.next(WAIT).await {
                Some(Received::Closed(frame)) => return frame.map(|f| u16::from(f.code)),
                Some(Received::Envelope(_)) => continue,
                None => panic!("twin {} expected a close, timed out", self.twin.id),
            }
        }
    }

    /// Drops the connection without a close frame and without answering pending pings.
    pub fn kill(self) {
        drop(self.ws);
    }

    /// Closes politely.
    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
    }
}

/// The error code and message of an error envelope; panics for other kinds.
pub fn error_of(env: &Envelope) -> (u32, &str) {
    match &env.message {
        Some(Message::Error(e)) => (e.code, e.message.as_str()),
        other => panic!("expected an error envelope, got {other:?}"),
    }
}
