//! One load connection: a websocket to a relay, a writer task fed by a channel, and a reader
//! that hands every envelope to a callback.

use std::net::{IpAddr, SocketAddr};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use rmb_identity::{issue_token, Claims, Signer};
use tokio::net::TcpSocket;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

/// Why a connection failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    /// The relay URL is not `ws://host:port`.
    #[error("relay url {0:?}: expected ws://host:port")]
    Url(String),
    /// TCP or websocket handshake failed.
    #[error("connecting to {url}: {reason}")]
    Connect {
        /// Relay.
        url: String,
        /// Why.
        reason: String,
    },
}

/// Where to connect.
#[derive(Debug, Clone)]
pub struct Target {
    /// `ws://host:port`.
    pub url: String,
    /// Resolved address.
    pub addr: SocketAddr,
}

impl Target {
    /// Resolves a `ws://host:port` URL.
    pub async fn resolve(url: &str) -> Result<Target, ConnError> {
        let hostport = url
            .strip_prefix("ws://")
            .map(|r| r.trim_end_matches('/'))
            .ok_or_else(|| ConnError::Url(url.to_string()))?;
        let addr = tokio::net::lookup_host(hostport)
            .await
            .ok()
            .and_then(|mut a| a.next())
            .ok_or_else(|| ConnError::Url(url.to_string()))?;
        Ok(Target {
            url: url.trim_end_matches('/').to_string(),
            addr,
        })
    }

    /// The relay's metrics endpoint.
    pub fn metrics_addr(&self) -> SocketAddr {
        self.addr
    }
}

/// Frames to write on a connection.
pub type Outbox = mpsc::Sender<Message>;

/// Opens a session as `twin`, optionally from a chosen local address, and starts its writer.
/// Returns the outbox and the stream of incoming binary frames. `nagle` leaves Nagle's
/// algorithm on, as the original rmb-peer and tokio-tungstenite's `connect_async` do.
pub async fn open(
    target: &Target,
    signer: &Signer,
    twin: u32,
    bind: Option<IpAddr>,
    nagle: bool,
) -> Result<(Outbox, mpsc::Receiver<Bytes>), ConnError> {
    let fail = |reason: String| ConnError::Connect {
        url: target.url.clone(),
        reason,
    };
    let socket = if target.addr.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(|e| fail(e.to_string()))?;
    if let Some(ip) = bind {
        socket
            .bind(SocketAddr::new(ip, 0))
            .map_err(|e| fail(format!("bind {ip}: {e}")))?;
    }
    let stream = socket
        .connect(target.addr)
        .await
        .map_err(|e| fail(e.to_string()))?;
    let _ = stream.set_nodelay(!nagle);
    let now = rmb_proto::unix_now();
    let token = issue_token(
        signer,
        &Claims {
            sub: twin,
            iat: now,
            exp: now + 60,
            sid: None,
            aud: None,
        },
    );
    let config = WebSocketConfig::default()
        .read_buffer_size(16 * 1024)
        .max_message_size(Some(64 << 20));
    let (ws, _) = tokio_tungstenite::client_async_with_config(
        format!("{}/?{token}", target.url),
        stream,
        Some(config),
    )
    .await
    .map_err(|e| fail(e.to_string()))?;
    let (mut sink, mut source) = ws.split();
    let (out_tx, mut out_rx) = mpsc::channel::<Message>(8192);
    let (in_tx, in_rx) = mpsc::channel::<Bytes>(8192);
    tokio::spawn(async move {
        while let Some(first) = out_rx.recv().await {
            if sink.feed(first).await.is_err() {
                return;
            }
            // Batch whatever else is ready into one flush.
            while let Ok(next) = out_rx.try_recv() {
                if sink.feed(next).await.is_err() {
                    return;
                }
            }
            if sink.flush().await.is_err() {
                return;
            }
        }
        let _ = sink.close().await;
    });
    tokio::spawn(async move {
        while let Some(frame) = source.next().await {
            match frame {
                Ok(Message::Binary(bytes)) => {
                    if in_tx.send(bytes).await.is_err() {
                        return;
                    }
                }
                Ok(Message::Close(_)) | Err(_) => return,
                Ok(_) => {}
            }
        }
    });
    Ok((out_tx, in_rx))
}
