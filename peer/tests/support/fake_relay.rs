//! A relay stand-in for what a real relay never does: it delivers whatever the test injects
//! (an envelope that expired on the way, as from a relay whose clock runs behind the peer's)
//! and hands the test every envelope the peer writes. It accepts any session token and
//! answers envelope pings with pongs, as a relay does.
// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use rmb_proto::{decode_envelope, Envelope, Kind, Message, Pong};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message as WsMessage;

use futures_util::{SinkExt as _, StreamExt as _};

/// A running stand-in; stops on drop.
pub struct FakeRelay {
    /// `ws://127.0.0.1:port`.
    pub url: String,
    inject: mpsc::Sender<Envelope>,
    written: mpsc::Receiver<Envelope>,
    task: JoinHandle<()>,
}

impl FakeRelay {
    /// Listens on a free loopback port; serves one session at a time.
    pub async fn start() -> FakeRelay {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("ws://{}", listener.local_addr().unwrap());
        let (inject, mut injected) = mpsc::channel::<Envelope>(64);
        let (written_tx, written) = mpsc::channel::<Envelope>(64);
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let Ok(ws) = tokio_tungstenite::accept_async(stream).await else {
                    continue;
                };
                let (mut sink, mut frames) = ws.split();
                loop {
                    tokio::select! {
                        env = injected.recv() => match env {
                            Some(env) => {
                                if sink.send(WsMessage::Binary(env.to_bytes().into())).await.is_err() {
                                    break;
                                }
                            }
                            None => return,
                        },
                        frame = frames.next() => match frame {
                            Some(Ok(WsMessage::Binary(bytes))) => {
                                let Ok(env) = decode_envelope(&bytes, usize::MAX) else { continue };
                                if env.kind() == Kind::Ping {
                                    let pong = Envelope {
                                        uid: env.uid.clone(),
                                        message: Some(Message::Pong(Pong {})),
                                        ..Default::default()
                                    };
                                    if sink.send(WsMessage::Binary(pong.to_bytes().into())).await.is_err() {
                                        break;
                                    }
                                } else {
                                    let _ = written_tx.send(env).await;
                                }
                            }
                            Some(Ok(_)) => {}
                            Some(Err(_)) | None => break,
                        },
                    }
                }
            }
        });
        FakeRelay {
            url,
            inject,
            written,
            task,
        }
    }

    /// Delivers `env` to the connected peer.
    pub async fn deliver(&self, env: Envelope) {
        self.inject.send(env).await.unwrap();
    }

    /// The next envelope the peer wrote (pings excepted), waiting up to 10 s.
    pub async fn next_written(&mut self) -> Envelope {
        tokio::time::timeout(std::time::Duration::from_secs(10), self.written.recv())
            .await
            .expect("the peer writes an envelope")
            .expect("the stand-in runs")
    }
}

impl Drop for FakeRelay {
    fn drop(&mut self) {
        self.task.abort();
    }
}
