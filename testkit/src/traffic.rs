//! Sustained traffic that survives pod failures, for the cluster guarantees: senders resend
//! whatever the relay has not provably accepted, receivers reconnect and record every uid.
//!
//! A sender writes a batch of requests followed by an envelope ping. The relay routes a
//! session's frames in order and answers a ping only once everything the session sent before
//! it is stored, so the pong proves every request before it was accepted. Without a pong (pod killed, drained), the batch is
//! sent again through another pod: duplicates are allowed, loss is not.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use rmb_proto::{Address, Message, Ping};

use crate::client::{Received, WsClient};
use crate::twins::TestTwin;

/// Pod URLs clients may use; tests swap entries as pods come and go.
pub type Pods = Arc<Mutex<Vec<String>>>;

/// Makes a shared pod list.
pub fn pods(urls: Vec<String>) -> Pods {
    Arc::new(Mutex::new(urls))
}

fn pod_url(pods: &Pods, attempt: usize) -> Option<String> {
    let list = pods.lock();
    if list.is_empty() {
        return None;
    }
    Some(list[attempt % list.len()].clone())
}

/// Connects to some pod, trying them in turn for up to 30 s.
pub async fn connect_any(pods: &Pods, twin: &TestTwin, start: usize) -> WsClient {
    for attempt in start..start + 300 {
        if let Some(url) = pod_url(pods, attempt) {
            if let Ok(c) = WsClient::try_connect(&url, twin, None).await {
                return c;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("twin {} could not connect to any pod", twin.id);
}

/// Sends `total` requests from `twin` to `dest`, `batch` at a time with `pause` between
/// batches, through `pods`, starting with pod `first`. Returns the uids, all accepted.
pub async fn send_all(
    twin: TestTwin,
    dest: u32,
    pods: Pods,
    first: usize,
    total: usize,
    batch: usize,
    pause: Duration,
) -> Vec<String> {
    let mut client = connect_any(&pods, &twin, first).await;
    let mut attempt = first;
    let uids: Vec<String> = (0..total).map(|i| format!("{}-{i}", twin.id)).collect();
    let mut next = 0;
    let mut sync = 0u64;
    while next < total {
        let end = (next + batch).min(total);
        for uid in &uids[next..end] {
            let env = client.request(uid, Address::new(dest, None), "load", b"{}");
            if client.try_send_frame(frame(&env)).await.is_err() {
                break;
            }
        }
        sync += 1;
        let mut ping = client.request(
            &format!("sync-{}-{sync}", twin.id),
            Address::new(0, None),
            "",
            b"",
        );
        ping.message = Some(Message::Ping(Ping {}));
        let sent = client.try_send_frame(frame(&ping)).await.is_ok();
        if sent && wait_pong(&mut client, &ping.uid).await {
            next = end;
            tokio::time::sleep(pause).await;
        } else {
            attempt += 1;
            client = connect_any(&pods, &twin, attempt).await;
        }
    }
    client.close().await;
    uids
}

fn frame(env: &rmb_proto::Envelope) -> tokio_tungstenite::tungstenite::Message {
    use prost::Message as _;
    tokio_tungstenite::tungstenite::Message::Binary(env.encode_to_vec().into())
}

/// Waits for the pong with `uid`; errors from the relay (for example 503 while Redis is
/// unreachable) mean the batch was not accepted.
async fn wait_pong(client: &mut WsClient, uid: &str) -> bool {
    loop {
        match client.next(Duration::from_secs(5)).await {
            Some(Received::Envelope(env)) if env.uid == uid => {
                return matches!(env.message, Some(Message::Pong(_)));
            }
            Some(Received::Envelope(env)) => {
                if matches!(env.message, Some(Message::Error(_))) {
                    return false;
                }
            }
            Some(Received::Closed(_)) | None => return false,
        }
    }
}

/// What a receiver has seen.
#[derive(Default)]
pub struct Seen {
    /// Distinct uids received.
    pub uids: HashSet<String>,
    /// Total envelopes received (duplicates included).
    pub total: usize,
}

/// A receiver running in the background.
pub struct Receiver {
    /// What it has seen so far.
    pub seen: Arc<Mutex<Seen>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Receiver {
    /// Waits up to `limit` until every uid in `sent` arrived, stops the receiver, and panics
    /// naming what never arrived.
    pub async fn expect_all(self, sent: &[String], limit: Duration) {
        let missing = wait_for_all(&self.seen, sent, limit).await;
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let _ = self.task.await;
        assert!(
            missing.is_empty(),
            "{} of {} envelopes never arrived: {:?}",
            missing.len(),
            sent.len(),
            &missing[..missing.len().min(10)]
        );
    }
}

/// Waits for a [`send_all`] task, failing the test if it takes longer than `limit`.
pub async fn sent_by(sender: tokio::task::JoinHandle<Vec<String>>, limit: Duration) -> Vec<String> {
    match tokio::time::timeout(limit, sender).await {
        Ok(Ok(sent)) => sent,
        Ok(Err(e)) => panic!("sender failed: {e}"),
        Err(_) => panic!("sender did not finish within {limit:?}"),
    }
}

/// Receives as `twin` through `pods`, reconnecting on any failure, until stopped.
pub fn receive(twin: TestTwin, pods: Pods, first: usize) -> Receiver {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (seen2, stop2) = (seen.clone(), stop.clone());
    let task = tokio::spawn(async move {
        let mut attempt = first;
        let mut client = connect_any(&pods, &twin, attempt).await;
        while !stop2.load(std::sync::atomic::Ordering::Relaxed) {
            match client.next(Duration::from_millis(200)).await {
                Some(Received::Envelope(env)) => {
                    let mut s = seen2.lock();
                    s.total += 1;
                    s.uids.insert(env.uid.clone());
                }
                Some(Received::Closed(_)) => {
                    attempt += 1;
                    client = connect_any(&pods, &twin, attempt).await;
                }
                None => {}
            }
        }
    });
    Receiver { seen, stop, task }
}

/// Waits up to `limit` until `seen` holds every uid in `expected`; returns the missing ones.
pub async fn wait_for_all(
    seen: &Arc<Mutex<Seen>>,
    expected: &[String],
    limit: Duration,
) -> Vec<String> {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let missing: Vec<String> = {
            let s = seen.lock();
            expected
                .iter()
                .filter(|u| !s.uids.contains(*u))
                .cloned()
                .collect()
        };
        if missing.is_empty() || tokio::time::Instant::now() > deadline {
            return missing;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
