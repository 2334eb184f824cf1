//! The local Redis: where callers and services meet the gateway.
//!
//! Two connections: one blocks in `BRPOP` on [`LOCAL_QUEUE`] and [`REPLY_QUEUE`], the other
//! pushes documents (`LPUSH`). Callers and services push with `LPUSH` (as the existing SDKs
//! do) and the gateway pops the other end with `BRPOP`, so each list is processed first in,
//! first out. Services popping their `msgbus.<cmd>` list with `BRPOP` get requests in arrival
//! order too (`BLPOP`, as some SDKs use, serves the newest first under load).

use std::time::Duration;

use fred::prelude::*;
use rmb_common::redis::ClientSettings;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::messages::{LOCAL_QUEUE, REPLY_QUEUE};
use crate::metrics::Metrics;

/// How long one `BRPOP` blocks; also the longest the reader takes to notice a shutdown. A
/// whole number: Redis before 6.0 refuses fractional timeouts.
const POP_BLOCK_SECS: f64 = 1.0;

/// Longest any Redis command may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(5);

/// A document popped from one of the gateway's input lists.
#[derive(Debug)]
pub(crate) enum LocalItem {
    /// From [`LOCAL_QUEUE`]: a caller's request.
    Request(String),
    /// From [`REPLY_QUEUE`]: a service's reply.
    Reply(String),
}

/// Connects a client to `url` (see [`crate::redis_url`]), failing if the first connection
/// fails.
pub(crate) async fn connect(url: &str) -> Result<Client, fred::error::Error> {
    let config = crate::redis_url::config(url)
        .map_err(|e| fred::error::Error::new(fred::error::ErrorKind::Config, e.to_string()))?;
    let settings = ClientSettings {
        // Longer than a pop blocks; bounds every command while Redis is unreachable, so the
        // gateway can always stop.
        command_timeout: Some(COMMAND_TIMEOUT),
        connection_timeout: Some(Duration::from_secs(5)),
        ..ClientSettings::default()
    };
    let client = rmb_common::redis::builder(config, &settings).build()?;
    client.init().await?;
    Ok(client)
}

/// Pops documents until cancelled and hands them to the gateway. A pop in progress is
/// always finished (never cancelled), so no document is lost at shutdown.
pub(crate) async fn pop_loop(
    client: Client,
    items: mpsc::Sender<LocalItem>,
    metrics: std::sync::Arc<Metrics>,
    cancel: CancellationToken,
) {
    while !cancel.is_cancelled() {
        let popped: Result<Option<(String, String)>, _> = client
            .brpop(vec![LOCAL_QUEUE, REPLY_QUEUE], POP_BLOCK_SECS)
            .await;
        let item = match popped {
            Ok(None) => continue,
            // fred reports BRPOP's empty answer (nothing arrived in time) as a timeout error.
            Err(e) if *e.kind() == fred::error::ErrorKind::Timeout => continue,
            Ok(Some((list, doc))) if list == LOCAL_QUEUE => LocalItem::Request(doc),
            Ok(Some((_, doc))) => LocalItem::Reply(doc),
            Err(e) => {
                metrics.redis_errors.inc();
                tracing::warn!(error = %e, "local redis pop failed; retrying");
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    _ = tokio::time::sleep(Duration::from_millis(500)) => continue,
                }
            }
        };
        if items.send(item).await.is_err() {
            break;
        }
    }
    let _ = client.quit().await;
}

/// Pushes `doc` on the head of `list` (a caller's `ret` list: never bounded, since it holds
/// at most one answer per destination of the caller's own requests).
pub(crate) async fn push(client: &Client, metrics: &Metrics, list: &str, doc: String) {
    let pushed: Result<i64, _> = client.lpush(list, doc).await;
    if let Err(e) = pushed {
        metrics.redis_errors.inc();
        tracing::warn!(list, error = %e, "local redis push failed; document lost");
    }
}

/// What happened to a document pushed on a bounded list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pushed {
    /// Stored; the list now holds this many documents.
    Stored(usize),
    /// Not stored: the list already holds this many documents.
    Full(usize),
    /// Redis failed.
    Failed,
}

/// Checks the length and pushes in one step, so the bound holds with several writers.
const CAPPED_PUSH: &str = r#"
local limit = tonumber(ARGV[2])
if limit > 0 then
  local len = redis.call('LLEN', KEYS[1])
  if len >= limit then return -len - 1 end
end
local n = redis.call('LPUSH', KEYS[1], ARGV[1])
local keep = tonumber(ARGV[3])
if keep > 0 and redis.call('TTL', KEYS[1]) < keep then
  redis.call('EXPIRE', KEYS[1], keep)
end
return n
"#;

/// Longest a service list is kept after its last push, in seconds: a request that waited
/// longer has expired anyway.
pub(crate) const MAX_LIST_KEEP_SECS: u64 = 86_400 + 60;

/// Pushes `doc` on the head of `list` unless it already holds `limit` documents (0: no
/// bound). Nothing is ever trimmed. With `keep_secs` > 0 the list lives at least that long
/// after this push and then goes if nobody popped it: lists named by other twins' commands
/// for services that do not exist do not pile up in Redis.
pub(crate) async fn push_capped(
    client: &Client,
    metrics: &Metrics,
    list: &str,
    doc: String,
    limit: usize,
    keep_secs: u64,
) -> Pushed {
    let keep = keep_secs.min(MAX_LIST_KEEP_SECS);
    let pushed: Result<i64, _> = client
        .eval(
            CAPPED_PUSH,
            vec![list],
            vec![doc, limit.to_string(), keep.to_string()],
        )
        .await;
    match pushed {
        Ok(n) if n < 0 => Pushed::Full(n.unsigned_abs().saturating_sub(1) as usize),
        Ok(n) => Pushed::Stored(n as usize),
        Err(e) => {
            metrics.redis_errors.inc();
            tracing::warn!(list, error = %e, "local redis push failed");
            Pushed::Failed
        }
    }
}

/// Puts documents popped but not handled (the gateway stopped first) back on the tail of
/// their lists, oldest last, so they are the next ones popped, in their order.
pub(crate) async fn give_back(
    client: &Client,
    metrics: &Metrics,
    items: impl IntoIterator<Item = LocalItem, IntoIter: DoubleEndedIterator>,
) {
    for item in items.into_iter().rev() {
        let (list, doc) = match item {
            LocalItem::Request(doc) => (LOCAL_QUEUE, doc),
            LocalItem::Reply(doc) => (REPLY_QUEUE, doc),
        };
        let pushed: Result<i64, _> = client.rpush(list, doc).await;
        if let Err(e) = pushed {
            metrics.redis_errors.inc();
            tracing::warn!(list, error = %e, "cannot give a document back; it is lost");
        }
    }
}
