//! The Rust SDK against real relays and gateways: the direct client calling and serving
//! gateway twins (interop), the local Redis API client, and `wss://` relays behind TLS.

mod support;

use std::sync::Arc;
use std::time::Duration;

use rmb_peer::direct::DirectClient;
use rmb_peer::local_client::LocalClient;
use rmb_peer::pool::PoolSettings;
use rmb_peer::router::{CallError, HandlerError, Incoming, Router, UNKNOWN_COMMAND_CODE};
use rmb_peer::tls::TlsSettings;
use rmb_testkit::relay::TestRelay;
use rmb_testkit::twins::{twins, write_twins_file};
use serde_json::Value;
use support::tls_proxy::TlsProxy;
use support::{relays, request, sdk_client, serve_one, unb64, Side};

const WAIT: Duration = Duration::from_secs(10);

fn calculator() -> Router {
    Router::new()
        .route("calc.add", |req: Incoming| async move {
            let terms: Vec<i64> = serde_json::from_slice(&req.data)
                .map_err(|e| HandlerError::new(101, e.to_string()))?;
            Ok(terms.iter().sum::<i64>().to_string().into_bytes())
        })
        .route("calc.fail", |_req: Incoming| async move {
            Err(HandlerError::new(42, "refused"))
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_client_and_gateway_call_each_other_through_a_relay() {
    let ts = twins(1, 2);
    let relay = TestRelay::start(&ts, &[]).await;
    let dir = tempfile::tempdir().unwrap();
    let file = write_twins_file(dir.path(), &ts);
    let gateway = Side::start(&relay.url, &ts[0], &file).await;
    let sdk = Arc::new(sdk_client(relays(&[&relay.url]), &ts[1], &file).await);
    sdk.set_router(calculator());
    let serving = {
        let sdk = sdk.clone();
        tokio::spawn(async move { sdk.serve(calculator()).await })
    };

    // Gateway caller → SDK service (encrypted: both twins publish a key).
    gateway
        .push(
            "msgbus.system.local",
            request("add", "calc.add", &[ts[1].id], "sdk.ret", 10, b"[1,2,3]"),
        )
        .await;
    let resp = gateway.pop("sdk.ret").await;
    assert_eq!(resp["ref"], "add");
    assert_eq!(resp["err"], Value::Null, "{resp}");
    assert_eq!(unb64(&resp["dat"]), b"6");
    // An error answer and an unknown command.
    for (cmd, code) in [("calc.fail", 42), ("calc.nope", UNKNOWN_COMMAND_CODE)] {
        gateway
            .push(
                "msgbus.system.local",
                request(cmd, cmd, &[ts[1].id], "sdk.ret", 10, b"[]"),
            )
            .await;
        let resp = gateway.pop("sdk.ret").await;
        assert_eq!(resp["ref"], cmd);
        assert_eq!(resp["err"]["code"], code, "{resp}");
    }

    // SDK caller → gateway service (a plain Redis client).
    let call = {
        let sdk = sdk.clone();
        let twin = ts[0].id;
        tokio::spawn(async move { sdk.call(twin, "svc.hello", b"\"sdk\"", WAIT).await })
    };
    let req = serve_one(&gateway, "svc.hello", support::echo).await;
    assert_eq!(req["src"], ts[1].id.to_string());
    assert_eq!(call.await.unwrap().unwrap(), b"\"sdk\"");

    // A call nobody answers times out; the gateway itself answers rmb.version.
    let err = sdk
        .call(ts[0].id, "svc.silent", b"{}", Duration::from_millis(500))
        .await
        .unwrap_err();
    assert!(matches!(err, CallError::Timeout(_)), "{err}");
    let version = sdk.call(ts[0].id, "rmb.version", b"", WAIT).await.unwrap();
    assert_eq!(
        serde_json::from_slice::<String>(&version).unwrap(),
        rmb_peer::VERSION
    );

    sdk.close().await;
    serving.await.unwrap();
    let err = sdk
        .call(ts[0].id, "svc.hello", b"", WAIT)
        .await
        .unwrap_err();
    assert!(matches!(err, CallError::Closed), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_redis_client_calls_and_serves_through_gateways() {
    let ts = twins(1, 3);
    let relay = TestRelay::start(&ts, &[]).await;
    let dir = tempfile::tempdir().unwrap();
    let file = write_twins_file(dir.path(), &ts);
    let sides = [
        Side::start(&relay.url, &ts[0], &file).await,
        Side::start(&relay.url, &ts[1], &file).await,
        Side::start(&relay.url, &ts[2], &file).await,
    ];
    let stop = tokio_util::sync::CancellationToken::new();
    let mut servers = Vec::new();
    for side in &sides[1..] {
        let local = LocalClient::connect(&side.server.url()).await.unwrap();
        let stop = stop.clone();
        servers.push(tokio::spawn(async move {
            local.serve(calculator(), stop).await
        }));
    }
    let caller = LocalClient::connect(&sides[0].server.url()).await.unwrap();
    assert_eq!(
        caller
            .call(ts[1].id, "calc.add", b"[40,2]", WAIT)
            .await
            .unwrap(),
        b"42"
    );
    match caller.call(ts[1].id, "calc.fail", b"", WAIT).await {
        Err(CallError::Remote { code: 42, message }) => assert_eq!(message, "refused"),
        other => panic!("expected the service's error, got {other:?}"),
    }
    let mut answers = caller
        .call_many(&[ts[1].id, ts[2].id], "calc.add", b"[1,1]", WAIT)
        .await
        .unwrap();
    answers.sort_by(|a, b| a.source.cmp(&b.source));
    assert_eq!(answers.len(), 2);
    for (answer, twin) in answers.iter().zip(&ts[1..]) {
        assert_eq!(answer.source, twin.id.to_string());
        assert_eq!(answer.result, Ok(b"2".to_vec()));
    }
    let err = caller
        .call(ts[1].id, "calc.unserved", b"", Duration::from_secs(1))
        .await
        .unwrap_err();
    assert!(matches!(err, CallError::Timeout(_)), "{err}");
    stop.cancel();
    for server in servers {
        server.await.unwrap().unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wss_relay_behind_a_private_ca_is_reached_only_when_the_ca_is_trusted() {
    let ts = twins(1, 2);
    let relay = TestRelay::start(&ts, &[]).await;
    let proxy = TlsProxy::start(relay.addr).await;
    let dir = tempfile::tempdir().unwrap();
    let file = write_twins_file(dir.path(), &ts);

    // Not trusted by default: the handshake fails on the certificate.
    let err = DirectClient::connect(&proxy.url, ts[0].signer.clone(), ts[0].id, None)
        .await
        .expect_err("untrusted certificate");
    assert!(
        err.to_string().to_lowercase().contains("certificate"),
        "{err}"
    );

    let tls = TlsSettings::with_ca_files(std::slice::from_ref(&proxy.ca)).unwrap();
    let mut direct =
        DirectClient::connect_with(&proxy.url, ts[0].signer.clone(), ts[0].id, None, &tls)
            .await
            .expect("trusted through the CA file");
    let ping = direct.ping();
    direct.send(&ping).await.unwrap();
    direct
        .wait_for(&ping.uid, WAIT)
        .await
        .expect("pong over TLS");
    direct.close().await.unwrap();

    // A gateway and an SDK client over wss:// call each other.
    let settings = PoolSettings {
        tls: Some(tls),
        ..relays(&[&proxy.url])
    };
    let gateway = Side::start_with(settings.clone(), &ts[0], &file, 100).await;
    let sdk = sdk_client(settings, &ts[1], &file).await;
    sdk.set_router(calculator());
    gateway
        .push(
            "msgbus.system.local",
            request("tls", "calc.add", &[ts[1].id], "tls.ret", 10, b"[2,2]"),
        )
        .await;
    let resp = gateway.pop("tls.ret").await;
    assert_eq!(unb64(&resp["dat"]), b"4", "{resp}");
    sdk.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rmb_peer_binary_trusts_relay_ca_and_serves_metrics() {
    let ts = twins(1, 1);
    let relay = TestRelay::start(&ts, &[]).await;
    let proxy = TlsProxy::start(relay.addr).await;
    let dir = tempfile::tempdir().unwrap();
    let file = write_twins_file(dir.path(), &ts);
    let redis = rmb_testkit::redis::RedisServer::start();
    let metrics = rmb_testkit::relay::free_addr();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_rmb-peer"))
        .args(["--relay", &proxy.url, "--twins"])
        .arg(&file)
        .arg("--relay-ca")
        .arg(&proxy.ca)
        .args([
            "--redis",
            &redis.url(),
            "--metrics-listen",
            &metrics.to_string(),
        ])
        .env("RMB_MNEMONIC", &ts[0].secret)
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut connected = None;
    for _ in 0..500 {
        if let Some((200, text)) = rmb_testkit::relay::http_get(metrics, "/metrics").await {
            let label = format!("relay=\"{}\"", proxy.url);
            connected = support::series(&text, "rmb_peer_relay_connected", &label);
            if connected == Some(1.0) {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(connected, Some(1.0), "the peer reached the wss relay");
}
