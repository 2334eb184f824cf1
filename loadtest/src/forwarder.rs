//! A trivial websocket forwarder: the floor a relay is measured against. It takes the twin from
//! the session token without checking it, decodes each envelope only for its destination twin,
//! and writes the frame to that twin's connection. No queue, no confirmation, no limits.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use parking_lot::Mutex;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use prost::Message as _;
use rmb_identity::SessionToken;
use rmb_proto::Envelope;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::Message;

type Routes = Arc<Mutex<HashMap<u32, mpsc::Sender<Bytes>>>>;

/// Serves on `listener` until the process ends.
pub async fn serve(listener: TcpListener) {
    let routes: Routes = Arc::default();
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(connection(stream, routes.clone()));
    }
}

/// Binds `addr` and serves; prints the bound address first (for whoever started us).
pub async fn run(addr: SocketAddr) -> std::io::Result<()> {
    let listener = TcpListener::bind(addr).await?;
    println!("forwarder listening on {}", listener.local_addr()?);
    serve(listener).await;
    Ok(())
}

/// The twin a session token names (the token is the whole query string); not verified.
fn twin_of(query: Option<&str>) -> Option<u32> {
    Some(SessionToken::parse(query?).ok()?.claims().sub)
}

// tungstenite's handshake callback type fixes the error variant's size.
#[allow(clippy::result_large_err)]
async fn connection(stream: TcpStream, routes: Routes) {
    let mut twin = None;
    let ws = tokio_tungstenite::accept_hdr_async(stream, |req: &Request, resp: Response| {
        twin = twin_of(req.uri().query());
        Ok(resp)
    })
    .await;
    let (Ok(ws), Some(twin)) = (ws, twin) else {
        return;
    };
    let (mut sink, mut source) = ws.split();
    let (tx, mut rx) = mpsc::channel::<Bytes>(8192);
    routes.lock().insert(twin, tx);
    let writer = tokio::spawn(async move {
        while let Some(first) = rx.recv().await {
            if sink.feed(Message::Binary(first)).await.is_err() {
                return;
            }
            while let Ok(next) = rx.try_recv() {
                if sink.feed(Message::Binary(next)).await.is_err() {
                    return;
                }
            }
            if sink.flush().await.is_err() {
                return;
            }
        }
    });
    while let Some(Ok(frame)) = source.next().await {
        let Message::Binary(bytes) = frame else {
            continue;
        };
        let Some(dest) = Envelope::decode(bytes.clone())
            .ok()
            .and_then(|e| e.destination)
            .map(|d| d.twin)
        else {
            continue;
        };
        let route = routes.lock().get(&dest).cloned();
        if let Some(route) = route {
            let _ = route.send(bytes).await;
        }
    }
    writer.abort();
}
