//! The Rust SDK's client for a gateway's local Redis API: call other twins and serve
//! commands through an `rmb-peer` running next to the program, exactly as Go, Python or
//! TypeScript services do (see `docs/peer.md` for the documents).
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use rmb_peer::local_client::LocalClient;
//! use rmb_peer::router::{Incoming, Router};
//!
//! let local = LocalClient::connect("redis://127.0.0.1:6379").await?;
//! let sum = local.call(7, "calc.add", b"[1,2]", Duration::from_secs(10)).await?;
//! let router = Router::new().route("calc.echo", |req: Incoming| async move { Ok(req.data) });
//! let stop = tokio_util::sync::CancellationToken::new();
//! local.serve(router, stop).await?;
//! # Ok(()) }
//! ```

use std::time::Duration;

use fred::prelude::*;
use rmb_common::redis::ClientSettings;
use rmb_proto::unix_now;
use tokio_util::sync::CancellationToken;

use crate::direct::new_uid;
use crate::gateway::messages::{
    command_queue, decode_data, encode_data, parse_address, IncomingRequest, IncomingResponse,
    JsonError, OutgoingRequest, OutgoingResponse, DOC_VERSION, LOCAL_QUEUE, REPLY_QUEUE,
};
pub use crate::router::CallError;
use crate::router::{Incoming, Router};

/// How long one `BRPOP` of [`LocalClient::serve`] blocks (also how fast it notices a stop).
const POP_BLOCK_SECS: f64 = 1.0;

/// One destination's answer to a [`LocalClient::call_many`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// The twin that answered (`"twin"` or `"twin:sid"`).
    pub source: String,
    /// The payload, or the error it answered with (or the gateway's timeout error when it
    /// runs with `--timeout-errors`).
    pub result: Result<Vec<u8>, JsonError>,
}

/// A client of the gateway's local Redis queues.
#[derive(Clone)]
pub struct LocalClient {
    redis: Client,
}

impl std::fmt::Debug for LocalClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalClient").finish_non_exhaustive()
    }
}

fn redis_error(e: fred::error::Error) -> CallError {
    CallError::Redis(e.to_string())
}

impl LocalClient {
    /// Connects to the Redis the gateway serves: `redis://host:port`, or a Unix socket as
    /// `unix:///path` or `redis+unix:///path` (see [`crate::redis_url`]).
    pub async fn connect(url: &str) -> Result<LocalClient, CallError> {
        let config = crate::redis_url::config(url).map_err(|e| CallError::Redis(e.to_string()))?;
        let redis = rmb_common::redis::builder(config, &ClientSettings::default())
            .build()
            .map_err(redis_error)?;
        redis.init().await.map_err(redis_error)?;
        Ok(LocalClient { redis })
    }

    /// Calls `command` on `twin` and waits up to `timeout` for its answer.
    pub async fn call(
        &self,
        twin: u32,
        command: &str,
        payload: &[u8],
        timeout: Duration,
    ) -> Result<Vec<u8>, CallError> {
        let mut answers = self.call_many(&[twin], command, payload, timeout).await?;
        match answers.pop() {
            Some(Answer {
                result: Ok(data), ..
            }) => Ok(data),
            Some(Answer { result: Err(e), .. }) if e.message.starts_with("timeout:") => {
                Err(CallError::Timeout(timeout))
            }
            Some(Answer { result: Err(e), .. }) => Err(CallError::Remote {
                code: e.code,
                message: e.message,
            }),
            None => Err(CallError::Timeout(timeout)),
        }
    }

    /// Calls `command` on every twin of `twins` at once (one request, one envelope per
    /// destination) and collects one answer per destination, in arrival order, until
    /// `timeout`: destinations that do not answer in time are missing from the result (or,
    /// with a gateway running `--timeout-errors`, answered with its timeout error).
    pub async fn call_many(
        &self,
        twins: &[u32],
        command: &str,
        payload: &[u8],
        timeout: Duration,
    ) -> Result<Vec<Answer>, CallError> {
        let ttl = (timeout.as_secs() + u64::from(timeout.subsec_nanos() > 0)).max(1);
        let reply_to = format!("msgbus.sdk.ret.{}", new_uid());
        let request = OutgoingRequest {
            version: DOC_VERSION,
            reference: Some(new_uid()),
            command: command.to_string(),
            expiration: ttl,
            data: encode_data(payload),
            tags: None,
            destinations: twins.to_vec(),
            reply_to: reply_to.clone(),
            schema: Some(crate::direct::JSON_SCHEMA.to_string()),
            timestamp: unix_now(),
        };
        let doc = serde_json::to_string(&request).map_err(|e| CallError::Invalid(e.to_string()))?;
        let _: i64 = self
            .redis
            .lpush(LOCAL_QUEUE, doc)
            .await
            .map_err(redis_error)?;
        let mut expected = twins.to_vec();
        expected.sort_unstable();
        expected.dedup();
        let mut answers = Vec::new();
        // Our own deadline: the request's expiry, and a little slack for a gateway that
        // answers silent destinations with timeout errors at expiry (`--timeout-errors`).
        let deadline = tokio::time::Instant::now()
            .checked_add(Duration::from_secs(ttl.saturating_add(2)))
            .unwrap_or_else(far_future);
        // Pops on a connection of its own, so blocking does not hold up other commands.
        let popper = self.redis.clone_new();
        popper.init().await.map_err(redis_error)?;
        while answers.len() < expected.len() {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                break;
            }
            let popped: Result<Option<(String, String)>, _> = popper
                // Whole seconds: Redis before 6.0 refuses fractional timeouts.
                .brpop(reply_to.as_str(), left.as_secs().max(1) as f64)
                .await;
            let doc = match popped {
                Ok(Some((_, doc))) => doc,
                Ok(None) => continue,
                Err(e) if *e.kind() == fred::error::ErrorKind::Timeout => continue,
                Err(e) => {
                    let _ = popper.quit().await;
                    return Err(redis_error(e));
                }
            };
            let response: IncomingResponse =
                serde_json::from_str(&doc).map_err(|e| CallError::Invalid(e.to_string()))?;
            let result = match response.error {
                Some(e) => Err(e),
                None => decode_data(&response.data).map_err(|e| JsonError {
                    code: rmb_proto::codes::INVALID_PAYLOAD,
                    message: e.to_string(),
                }),
            };
            answers.push(Answer {
                source: response.source,
                result,
            });
        }
        let _ = popper.quit().await;
        let _: Result<i64, _> = self.redis.del(reply_to.as_str()).await;
        Ok(answers)
    }

    /// Serves the router's commands until `stop`: pops `msgbus.<cmd>` for each of them and
    /// answers on `msgbus.system.reply`. Each request is handled in its own task.
    pub async fn serve(&self, router: Router, stop: CancellationToken) -> Result<(), CallError> {
        let queues: Vec<String> = router.commands().iter().map(|c| command_queue(c)).collect();
        if queues.is_empty() {
            stop.cancelled().await;
            return Ok(());
        }
        let popper = self.redis.clone_new();
        popper.init().await.map_err(redis_error)?;
        while !stop.is_cancelled() {
            let popped: Result<Option<(String, String)>, _> =
                popper.brpop(queues.clone(), POP_BLOCK_SECS).await;
            let doc = match popped {
                Ok(Some((_, doc))) => doc,
                Ok(None) => continue,
                Err(e) if *e.kind() == fred::error::ErrorKind::Timeout => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "local redis pop failed; retrying");
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        _ = tokio::time::sleep(Duration::from_millis(500)) => continue,
                    }
                }
            };
            let request: IncomingRequest = match serde_json::from_str(&doc) {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(error = %e, "skipping an invalid request document");
                    continue;
                }
            };
            let router = router.clone();
            let redis = self.redis.clone();
            tokio::spawn(async move { answer(&redis, &router, request).await });
        }
        let _ = popper.quit().await;
        Ok(())
    }
}

async fn answer(redis: &Client, router: &Router, request: IncomingRequest) {
    let mut reply = OutgoingResponse {
        version: DOC_VERSION,
        reference: request.reference.clone(),
        data: String::new(),
        destination: request.source.clone(),
        schema: request.schema.clone(),
        timestamp: unix_now(),
        error: None,
    };
    let result = match (parse_address(&request.source), decode_data(&request.data)) {
        (Some(source), Ok(data)) => {
            let incoming = Incoming {
                source,
                command: request.command.clone(),
                data,
                schema: request.schema.clone(),
            };
            let limit = Duration::from_secs(request.expiration.max(1));
            router.handle(incoming, limit).await
        }
        _ => Err(crate::router::HandlerError::new(
            rmb_proto::codes::INVALID_PAYLOAD,
            "invalid request document",
        )),
    };
    match result {
        Ok(data) => reply.data = encode_data(&data),
        Err(e) => {
            reply.error = Some(JsonError {
                code: e.code,
                message: e.message,
            })
        }
    }
    match serde_json::to_string(&reply) {
        Ok(doc) => {
            let pushed: Result<i64, _> = redis.lpush(REPLY_QUEUE, doc).await;
            if let Err(e) = pushed {
                tracing::warn!(error = %e, "cannot push a reply");
            }
        }
        Err(e) => tracing::warn!(error = %e, "cannot encode a reply"),
    }
}

/// A deadline no call reaches (about thirty years on), for an expiry too far to add to now.
fn far_future() -> tokio::time::Instant {
    tokio::time::Instant::now() + Duration::from_secs(30 * 365 * 86_400)
}
