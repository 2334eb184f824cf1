//! The Substrate JSON-RPC surface over websocket: the legacy `chain_*` / `state_*` /
//! `system_*` methods that subxt's legacy backend and polkadot.js use to read storage,
//! fetch metadata and follow heads.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use futures_util::{SinkExt, StreamExt};
use parity_scale_codec::{Decode, Encode};
use serde_json::{json, Value};
use sp_crypto_hashing::{blake2_256, blake2_64};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{broadcast::error::RecvError, mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use super::chain::{hex0x, Block, Chain, Hash};

/// What the RPC layer serves besides the chain: metadata and runtime version.
pub struct Node {
    /// The blocks.
    pub chain: Arc<Chain>,
    /// SCALE-encoded `RuntimeMetadataPrefixed`.
    pub metadata: Vec<u8>,
    /// Its version (14 or 15).
    pub metadata_version: u32,
    /// `specVersion`.
    pub spec_version: u32,
}

const SPEC_NAME: &str = "rmb-testchain";

/// Method names served, as `rpc_methods` lists them.
const METHODS: &[&str] = &[
    "rpc_methods",
    "system_chain",
    "system_name",
    "system_version",
    "system_properties",
    "system_health",
    "system_chainType",
    "chain_getBlockHash",
    "chain_getHeader",
    "chain_getBlock",
    "chain_getFinalizedHead",
    "chain_getFinalisedHead",
    "chain_subscribeNewHeads",
    "chain_unsubscribeNewHeads",
    "chain_subscribeFinalizedHeads",
    "chain_unsubscribeFinalizedHeads",
    "chain_subscribeFinalisedHeads",
    "chain_unsubscribeFinalisedHeads",
    "chain_subscribeAllHeads",
    "chain_unsubscribeAllHeads",
    "state_getRuntimeVersion",
    "chain_getRuntimeVersion",
    "state_subscribeRuntimeVersion",
    "state_unsubscribeRuntimeVersion",
    "state_getMetadata",
    "state_call",
    "state_getStorage",
    "state_getStorageAt",
    "state_getStorageHash",
    "state_getStorageSize",
    "state_getKeys",
    "state_getKeysPaged",
    "state_queryStorageAt",
    "state_subscribeStorage",
    "state_unsubscribeStorage",
    "author_submitExtrinsic",
    "author_submitAndWatchExtrinsic",
    "author_unwatchExtrinsic",
];

/// Accepts websocket connections until `shutdown`; each connection stops with it too.
pub async fn serve(listener: TcpListener, node: Arc<Node>, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    tokio::spawn(connection(stream, node.clone(), shutdown.child_token()));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            },
        }
    }
}

async fn connection(stream: TcpStream, node: Arc<Node>, shutdown: CancellationToken) {
    let Ok(ws) = tokio_tungstenite::accept_async(stream).await else {
        return;
    };
    let (mut sink, mut source) = ws.split();
    let (out, mut outgoing) = mpsc::unbounded_channel::<String>();
    let mut conn = Connection {
        node,
        out,
        subscriptions: HashMap::new(),
        starts: Vec::new(),
    };
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            Some(text) = outgoing.recv() => {
                if sink.send(Message::text(text)).await.is_err() {
                    break;
                }
            }
            incoming = source.next() => match incoming {
                Some(Ok(Message::Text(text))) => conn.handle(text.as_str()),
                Some(Ok(Message::Binary(bytes))) => conn.handle(&String::from_utf8_lossy(&bytes)),
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                Some(Ok(_)) => {}
            },
        }
    }
    for (_, task) in conn.subscriptions.drain() {
        task.abort();
    }
    let _ = sink.close().await;
}

struct Connection {
    node: Arc<Node>,
    out: mpsc::UnboundedSender<String>,
    subscriptions: HashMap<String, JoinHandle<()>>,
    /// Subscriptions wait for this before notifying, so the reply carrying their id is
    /// always sent first.
    starts: Vec<oneshot::Sender<()>>,
}

/// A JSON-RPC error object.
struct RpcError {
    code: i64,
    message: String,
}

impl RpcError {
    fn invalid(message: impl Into<String>) -> RpcError {
        RpcError {
            code: -32602,
            message: message.into(),
        }
    }
}

type RpcResult = Result<Value, RpcError>;

impl Connection {
    fn handle(&mut self, text: &str) {
        let parsed: Result<Value, _> = serde_json::from_str(text);
        let reply = match parsed {
            Ok(Value::Array(calls)) => {
                let replies: Vec<Value> = calls.iter().map(|c| self.call(c)).collect();
                Value::Array(replies)
            }
            Ok(call) => self.call(&call),
            Err(e) => error_reply(Value::Null, -32700, &format!("parse error: {e}")),
        };
        let _ = self.out.send(reply.to_string());
        for start in self.starts.drain(..) {
            let _ = start.send(());
        }
    }

    /// A signal the new subscription's task waits on (fired once its id has been replied).
    fn started(&mut self) -> oneshot::Receiver<()> {
        let (tx, rx) = oneshot::channel();
        self.starts.push(tx);
        rx
    }

    fn call(&mut self, call: &Value) -> Value {
        let id = call.get("id").cloned().unwrap_or(Value::Null);
        let Some(method) = call.get("method").and_then(Value::as_str) else {
            return error_reply(id, -32600, "invalid request: no method");
        };
        let params = match call.get("params") {
            Some(Value::Array(p)) => p.clone(),
            _ => Vec::new(),
        };
        match self.dispatch(method, &params) {
            Ok(result) => json!({"jsonrpc": "2.0", "id": id, "result": result}),
            Err(e) => error_reply(id, e.code, &e.message),
        }
    }

    fn dispatch(&mut self, method: &str, params: &[Value]) -> RpcResult {
        let chain = self.node.chain.clone();
        match method {
            "rpc_methods" => Ok(json!({"version": 1, "methods": METHODS})),
            "system_chain" | "system_name" => Ok(json!(SPEC_NAME)),
            "system_version" => Ok(json!(env!("CARGO_PKG_VERSION"))),
            "system_chainType" => Ok(json!("Development")),
            "system_properties" => {
                Ok(json!({"ss58Format": 42, "tokenDecimals": 7, "tokenSymbol": "TFT"}))
            }
            "system_health" => {
                Ok(json!({"peers": 0, "isSyncing": false, "shouldHavePeers": false}))
            }
            "chain_getBlockHash" => Ok(self
                .block_by_number(params.first())?
                .map(|b| json!(hex0x(&b.hash)))
                .unwrap_or(Value::Null)),
            "chain_getHeader" => Ok(self
                .optional_block(params.first())?
                .map(|b| b.header_json())
                .unwrap_or(Value::Null)),
            "chain_getBlock" => Ok(self
                .optional_block(params.first())?
                .map(|b| json!({"block": {"header": b.header_json(), "extrinsics": []}, "justifications": null}))
                .unwrap_or(Value::Null)),
            "chain_getFinalizedHead" | "chain_getFinalisedHead" => {
                Ok(json!(hex0x(&chain.head().hash)))
            }
            "chain_subscribeNewHeads" => Ok(self.subscribe_heads("chain_newHead")),
            "chain_subscribeFinalizedHeads" | "chain_subscribeFinalisedHeads" => {
                Ok(self.subscribe_heads("chain_finalizedHead"))
            }
            "chain_subscribeAllHeads" => Ok(self.subscribe_heads("chain_allHead")),
            "state_subscribeRuntimeVersion" => Ok(self.subscribe_runtime_version()),
            "state_subscribeStorage" => self.subscribe_storage(params.first()),
            m if m.contains("_unsubscribe") || m == "author_unwatchExtrinsic" => {
                Ok(json!(self.unsubscribe(params.first())))
            }
            "author_submitExtrinsic" => {
                let (hash, _) = self.submit(params.first())?;
                Ok(json!(hash))
            }
            "author_submitAndWatchExtrinsic" => self.submit_and_watch(params.first()),
            "state_getRuntimeVersion" | "chain_getRuntimeVersion" => {
                self.block(params.first())?;
                Ok(self.runtime_version_json())
            }
            "state_getMetadata" => {
                self.block(params.first())?;
                Ok(json!(hex0x(&self.node.metadata)))
            }
            "state_call" => self.state_call(params),
            "state_getStorage" | "state_getStorageAt" => {
                let (key, block) = self.key_at(params)?;
                Ok(block
                    .storage
                    .get(&key)
                    .map(|v| json!(hex0x(v)))
                    .unwrap_or(Value::Null))
            }
            "state_getStorageHash" => {
                let (key, block) = self.key_at(params)?;
                Ok(block
                    .storage
                    .get(&key)
                    .map(|v| json!(hex0x(&blake2_256(v))))
                    .unwrap_or(Value::Null))
            }
            "state_getStorageSize" => {
                let (key, block) = self.key_at(params)?;
                Ok(block
                    .storage
                    .get(&key)
                    .map(|v| json!(v.len()))
                    .unwrap_or(Value::Null))
            }
            "state_getKeys" => {
                let (prefix, block) = self.key_at(params)?;
                Ok(keys_page(&block, &prefix, None, usize::MAX))
            }
            "state_getKeysPaged" => self.keys_paged(params),
            "state_queryStorageAt" => self.query_storage_at(params),
            _ => Err(RpcError {
                code: -32601,
                message: format!("Method not found: {method}"),
            }),
        }
    }

    /// The block named by an optional hash parameter; the head when absent.
    fn block(&self, param: Option<&Value>) -> Result<Arc<Block>, RpcError> {
        self.optional_block(param)?
            .ok_or_else(|| RpcError::invalid("unknown block hash"))
    }

    fn optional_block(&self, param: Option<&Value>) -> Result<Option<Arc<Block>>, RpcError> {
        match param {
            None | Some(Value::Null) => Ok(Some(self.node.chain.head())),
            Some(value) => {
                let hash: Hash = parse_hex(value)?
                    .try_into()
                    .map_err(|_| RpcError::invalid("a block hash is 32 bytes"))?;
                Ok(self.node.chain.block(&hash))
            }
        }
    }

    fn block_by_number(&self, param: Option<&Value>) -> Result<Option<Arc<Block>>, RpcError> {
        let number = match param {
            None | Some(Value::Null) => return Ok(Some(self.node.chain.head())),
            Some(Value::Number(n)) => n.as_u64(),
            Some(Value::String(s)) => u64::from_str_radix(s.trim_start_matches("0x"), 16).ok(),
            Some(_) => None,
        }
        .and_then(|n| u32::try_from(n).ok())
        .ok_or_else(|| RpcError::invalid("block number expected"))?;
        Ok(self.node.chain.block_at(number))
    }

    fn key_at(&self, params: &[Value]) -> Result<(Vec<u8>, Arc<Block>), RpcError> {
        let key = parse_hex(params.first().unwrap_or(&Value::Null))?;
        Ok((key, self.block(params.get(1))?))
    }

    fn keys_paged(&self, params: &[Value]) -> RpcResult {
        let prefix = match params.first() {
            None | Some(Value::Null) => Vec::new(),
            Some(v) => parse_hex(v)?,
        };
        let count = params
            .get(1)
            .and_then(Value::as_u64)
            .ok_or_else(|| RpcError::invalid("count expected"))? as usize;
        let start = match params.get(2) {
            None | Some(Value::Null) => None,
            Some(v) => Some(parse_hex(v)?),
        };
        let block = self.block(params.get(3))?;
        Ok(keys_page(&block, &prefix, start, count.min(1000)))
    }

    fn query_storage_at(&self, params: &[Value]) -> RpcResult {
        let keys = params
            .first()
            .and_then(Value::as_array)
            .ok_or_else(|| RpcError::invalid("a list of keys expected"))?;
        let block = self.block(params.get(1))?;
        let mut changes = Vec::new();
        for key in keys {
            let key = parse_hex(key)?;
            let value = block.storage.get(&key).map(|v| hex0x(v));
            changes.push(json!([hex0x(&key), value]));
        }
        Ok(json!([{"block": hex0x(&block.hash), "changes": changes}]))
    }

    fn state_call(&self, params: &[Value]) -> RpcResult {
        let method = params
            .first()
            .and_then(Value::as_str)
            .ok_or_else(|| RpcError::invalid("runtime API method expected"))?;
        let data = match params.get(1) {
            None | Some(Value::Null) => Vec::new(),
            Some(v) => parse_hex(v)?,
        };
        self.block(params.get(2))?;
        let node = &self.node;
        let bytes = match method {
            "Core_version" => runtime_version_scale(node.spec_version),
            "Metadata_metadata" => node.metadata.encode(),
            "Metadata_metadata_versions" => vec![node.metadata_version].encode(),
            // No balances, no nonces: every account is at 0.
            "AccountNonceApi_account_nonce" => 0u32.encode(),
            "Metadata_metadata_at_version" => {
                let asked = u32::decode(&mut &data[..])
                    .map_err(|_| RpcError::invalid("a u32 version expected"))?;
                (asked == node.metadata_version)
                    .then(|| node.metadata.clone())
                    .encode()
            }
            other => {
                return Err(RpcError {
                    code: -32000,
                    message: format!("runtime API {other} is not provided by rmb-testchain"),
                })
            }
        };
        Ok(json!(hex0x(&bytes)))
    }

    fn runtime_version_json(&self) -> Value {
        let apis: Vec<Value> = runtime_apis()
            .into_iter()
            .map(|(id, version)| json!([hex0x(&id), version]))
            .collect();
        json!({
            "specName": SPEC_NAME,
            "implName": SPEC_NAME,
            "authoringVersion": 1,
            "specVersion": self.node.spec_version,
            "implVersion": 1,
            "apis": apis,
            "transactionVersion": 1,
            "stateVersion": 1,
        })
    }

    fn new_subscription_id() -> String {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        format!("{:016x}", NEXT.fetch_add(1, Ordering::Relaxed))
    }

    fn subscribe_heads(&mut self, notification: &'static str) -> Value {
        self.follow_blocks(notification, |block| Some(block.header_json()))
    }

    /// Starts a subscription that calls `per_block` on the head and then on every new block,
    /// sending a `method` notification for each `Some` it returns.
    fn follow_blocks(
        &mut self,
        method: &'static str,
        mut per_block: impl FnMut(&Block) -> Option<Value> + Send + 'static,
    ) -> Value {
        let id = Self::new_subscription_id();
        let chain = self.node.chain.clone();
        let out = self.out.clone();
        let sub = id.clone();
        // Subscribe before reading the head so no block falls between the two.
        let mut blocks = chain.subscribe();
        let mut block = chain.head();
        let started = self.started();
        let task = tokio::spawn(async move {
            if started.await.is_err() {
                return;
            }
            let mut last = None;
            loop {
                if last.is_none_or(|n| block.number > n) {
                    last = Some(block.number);
                    if let Some(result) = per_block(&block) {
                        if !notify(&out, method, &sub, result) {
                            return;
                        }
                    }
                }
                block = match blocks.recv().await {
                    Ok(next) => next,
                    Err(RecvError::Lagged(_)) => chain.head(),
                    Err(RecvError::Closed) => return,
                };
            }
        });
        self.subscriptions.insert(id.clone(), task);
        json!(id)
    }

    fn subscribe_runtime_version(&mut self) -> Value {
        let id = Self::new_subscription_id();
        let out = self.out.clone();
        let version = self.runtime_version_json();
        let sub = id.clone();
        let started = self.started();
        let task = tokio::spawn(async move {
            if started.await.is_ok() {
                notify(&out, "state_runtimeVersion", &sub, version);
            }
        });
        self.subscriptions.insert(id.clone(), task);
        json!(id)
    }

    fn subscribe_storage(&mut self, keys: Option<&Value>) -> RpcResult {
        let keys: Vec<Vec<u8>> = keys
            .and_then(Value::as_array)
            .ok_or_else(|| RpcError::invalid("a list of keys expected"))?
            .iter()
            .map(parse_hex)
            .collect::<Result<_, _>>()?;
        // The first notification lists every key; later ones only the keys that changed.
        let mut seen: Option<Vec<Option<Vec<u8>>>> = None;
        Ok(self.follow_blocks("state_storage", move |block| {
            let now: Vec<Option<Vec<u8>>> =
                keys.iter().map(|k| block.storage.get(k).cloned()).collect();
            let changes: Vec<Value> = keys
                .iter()
                .zip(&now)
                .enumerate()
                .filter(|(i, (_, value))| seen.as_ref().is_none_or(|old| old[*i] != **value))
                .map(|(_, (key, value))| json!([hex0x(key), value.as_deref().map(hex0x)]))
                .collect();
            seen = Some(now);
            (!changes.is_empty()).then(|| json!({"block": hex0x(&block.hash), "changes": changes}))
        }))
    }

    /// Executes a signed extrinsic; its hash and the block it was sealed in.
    fn submit(&self, param: Option<&Value>) -> Result<(String, Arc<Block>), RpcError> {
        let bytes = parse_hex(param.unwrap_or(&Value::Null))?;
        let number = super::extrinsic::apply(&self.node.chain, &bytes).map_err(|e| RpcError {
            code: 1010,
            message: format!("Invalid Transaction: {e}"),
        })?;
        let block = self
            .node
            .chain
            .block_at(number)
            .unwrap_or_else(|| self.node.chain.head());
        Ok((hex0x(&blake2_256(&bytes)), block))
    }

    /// Like `submit`, then reports ready, in block and finalized (the same block: every block
    /// is final here).
    fn submit_and_watch(&mut self, param: Option<&Value>) -> RpcResult {
        let (_, block) = self.submit(param)?;
        let id = Self::new_subscription_id();
        let out = self.out.clone();
        let sub = id.clone();
        let started = self.started();
        let hash = hex0x(&block.hash);
        let task = tokio::spawn(async move {
            if started.await.is_err() {
                return;
            }
            for status in [
                json!("ready"),
                json!({"inBlock": hash}),
                json!({"finalized": hash}),
            ] {
                if !notify(&out, "author_extrinsicUpdate", &sub, status) {
                    return;
                }
            }
        });
        self.subscriptions.insert(id.clone(), task);
        Ok(json!(id))
    }

    fn unsubscribe(&mut self, id: Option<&Value>) -> bool {
        let id = match id {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Number(n)) => n.to_string(),
            _ => return false,
        };
        match self.subscriptions.remove(&id) {
            Some(task) => {
                task.abort();
                true
            }
            None => false,
        }
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        for (_, task) in self.subscriptions.drain() {
            task.abort();
        }
    }
}

fn notify(
    out: &mpsc::UnboundedSender<String>,
    method: &str,
    subscription: &str,
    result: Value,
) -> bool {
    let message = json!({
        "jsonrpc": "2.0",
        "method": method,
        "params": {"subscription": subscription, "result": result},
    });
    out.send(message.to_string()).is_ok()
}

fn error_reply(id: Value, code: i64, message: &str) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": message}})
}

fn parse_hex(value: &Value) -> Result<Vec<u8>, RpcError> {
    let text = value
        .as_str()
        .ok_or_else(|| RpcError::invalid("hex string expected"))?;
    hex::decode(text.trim_start_matches("0x"))
        .map_err(|e| RpcError::invalid(format!("bad hex: {e}")))
}

fn keys_page(block: &Block, prefix: &[u8], start: Option<Vec<u8>>, count: usize) -> Value {
    let keys: Vec<String> = block
        .storage
        .range(prefix.to_vec()..)
        .take_while(|(k, _)| k.starts_with(prefix))
        .filter(|(k, _)| start.as_ref().is_none_or(|s| *k > s))
        .take(count)
        .map(|(k, _)| hex0x(k))
        .collect();
    json!(keys)
}

/// Runtime APIs this node answers through `state_call`: id (blake2-64 of the name), version.
fn runtime_apis() -> Vec<([u8; 8], u32)> {
    vec![(blake2_64(b"Core"), 4), (blake2_64(b"Metadata"), 2)]
}

/// `Core_version` as the runtime returns it (SCALE `RuntimeVersion`).
fn runtime_version_scale(spec_version: u32) -> Vec<u8> {
    let mut out = SPEC_NAME.encode();
    SPEC_NAME.encode_to(&mut out);
    1u32.encode_to(&mut out); // authoring
    spec_version.encode_to(&mut out);
    1u32.encode_to(&mut out); // impl
    runtime_apis().encode_to(&mut out);
    1u32.encode_to(&mut out); // transaction
    1u8.encode_to(&mut out); // state (system) version
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runtime_api_ids_match_substrate() {
        // Well-known ids of the Core and Metadata runtime APIs.
        let apis = runtime_apis();
        assert_eq!(hex::encode(apis[0].0), "df6acb689907609b");
        assert_eq!(hex::encode(apis[1].0), "37e397fc7c91f5e4");
    }
}
