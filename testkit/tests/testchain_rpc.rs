//! `rmb-testchain`'s JSON-RPC surface as a plain websocket client sees it: errors for what it
//! does not serve, and storage subscriptions that report a twin's record when it changes.
// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use rmb_testkit::testchain::chain::{hex0x, map_key};
use rmb_testkit::testchain::TestChain;
use rmb_testkit::twins::{twins, write_twins_file};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn send(ws: &mut Ws, id: u64, method: &str, params: Value) {
    let call = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params});
    ws.send(Message::text(call.to_string()))
        .await
        .expect("send");
}

async fn next(ws: &mut Ws) -> Value {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("an answer within 10 s")
            .expect("open")
            .expect("frame");
        if let Message::Text(text) = msg {
            return serde_json::from_str(text.as_str()).expect("json");
        }
    }
}

#[tokio::test]
async fn unknown_methods_and_bad_params_get_json_rpc_errors() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let chain = TestChain::for_twins(&write_twins_file(tmp.path(), &twins(1, 1))).await;
    let (mut ws, _) = tokio_tungstenite::connect_async(chain.url())
        .await
        .expect("connect");

    send(&mut ws, 1, "author_rotateKeys", json!([])).await;
    assert_eq!(next(&mut ws).await["error"]["code"], -32601);
    send(&mut ws, 4, "author_submitExtrinsic", json!(["0x00"])).await;
    assert_eq!(
        next(&mut ws).await["error"]["code"],
        1010,
        "invalid transaction"
    );
    send(&mut ws, 2, "state_getStorage", json!(["not hex"])).await;
    assert_eq!(next(&mut ws).await["error"]["code"], -32602);
    send(&mut ws, 3, "chain_getHeader", json!([hex0x(&[9u8; 32])])).await;
    assert_eq!(next(&mut ws).await["result"], Value::Null, "unknown block");
    ws.send(Message::text("{not json")).await.expect("send");
    assert_eq!(next(&mut ws).await["error"]["code"], -32700);
}

#[tokio::test]
async fn storage_subscription_reports_a_twin_record_when_the_file_changes() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let all = twins(1, 1);
    let path = write_twins_file(tmp.path(), &[all[0].clone().on_relays(&["a.example"])]);
    let chain = TestChain::for_twins(&path).await;
    let (mut ws, _) = tokio_tungstenite::connect_async(chain.url())
        .await
        .expect("connect");
    let key = hex0x(&map_key("TfgridModule", "Twins", &1u32));

    send(&mut ws, 1, "state_subscribeStorage", json!([[key]])).await;
    let reply = next(&mut ws).await;
    let sub = reply["result"]
        .as_str()
        .expect("subscription id")
        .to_string();
    let first = next(&mut ws).await;
    assert_eq!(first["method"], "state_storage");
    assert_eq!(first["params"]["subscription"], sub.as_str());
    let before = first["params"]["result"]["changes"][0][1].clone();
    assert!(before.is_string(), "twin 1 is stored");

    write_twins_file(tmp.path(), &[all[0].clone().on_relays(&["b.example"])]);
    let changed = next(&mut ws).await;
    assert_eq!(changed["params"]["result"]["changes"][0][0], key.as_str());
    let after = changed["params"]["result"]["changes"][0][1].clone();
    assert_ne!(after, before);
    let bytes = hex::decode(after.as_str().unwrap_or("").trim_start_matches("0x")).expect("hex");
    assert!(
        bytes.windows(9).any(|w| w == b"b.example"),
        "the new relay is in the record"
    );

    send(&mut ws, 2, "state_unsubscribeStorage", json!([sub])).await;
    assert_eq!(next(&mut ws).await["result"], true);
}
