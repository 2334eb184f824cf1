//! The rmb-peer gateway end to end: two gateways in-process, each with its own real
//! redis-server, talking through a real in-process relay. Callers and services are plain
//! Redis clients pushing and popping JSON, exactly as a Python or Go service would.
// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use rmb_identity::SharedKey;
use rmb_peer::direct::DirectClient;
use rmb_peer::gateway::{DropReason, TIMEOUT_CODE};
use rmb_proto::{Address, Payload};
use rmb_testkit::redis::RedisServer;
use rmb_testkit::relay::TestRelay;
use rmb_testkit::twins::{twins, write_twins_file, TestTwin};
use serde_json::{json, Value};
use support::{b64, request, serve_one, unb64, Side};

/// A relay, and gateways for the first `gateways` of `n` twins.
async fn setup(
    n: u32,
    gateways: usize,
) -> (TestRelay, Vec<TestTwin>, Vec<Side>, tempfile::TempDir) {
    let ts = twins(1, n);
    let relay = TestRelay::start(&ts, &[]).await;
    let dir = tempfile::tempdir().unwrap();
    let file = write_twins_file(dir.path(), &ts);
    let mut sides = Vec::new();
    for t in &ts[..gateways] {
        sides.push(Side::start(&relay.url, t, &file).await);
    }
    (relay, ts, sides, dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_through_two_gateways_returns_the_service_response() {
    let (_relay, ts, sides, _dir) = setup(2, 2).await;
    let (caller, service) = (&sides[0], &sides[1]);

    caller
        .push(
            "msgbus.system.local",
            request(
                "my-ref",
                "calc.add",
                &[ts[1].id],
                "caller.ret",
                10,
                b"[1,2]",
            ),
        )
        .await;
    let req = serve_one(service, "calc.add", |req| {
        json!({
            "ver": 1, "ref": req["ref"], "dat": b64(b"3"), "dst": req["src"],
            "shm": "application/json", "now": rmb_proto::unix_now(), "err": null,
        })
    })
    .await;
    assert_eq!(req["src"], ts[0].id.to_string(), "the caller's twin");
    assert_eq!(unb64(&req["dat"]), b"[1,2]");
    assert_eq!(req["exp"], 10);
    assert_eq!(req["shm"], "application/json");
    assert_ne!(
        req["ref"], "my-ref",
        "services see the envelope uid, not the caller's ref"
    );

    let resp = caller.pop("caller.ret").await;
    assert_eq!(resp["ref"], "my-ref", "the caller's ref is restored");
    assert_eq!(resp["src"], ts[1].id.to_string());
    assert_eq!(unb64(&resp["dat"]), b"3");
    assert_eq!(resp["err"], Value::Null);
    assert_eq!(resp["shm"], "application/json");

    for side in sides {
        side.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_error_reaches_the_caller_as_an_error_response() {
    let (_relay, ts, sides, _dir) = setup(2, 2).await;
    let (caller, service) = (&sides[0], &sides[1]);

    caller
        .push(
            "msgbus.system.local",
            request("r-err", "calc.div", &[ts[1].id], "caller.ret", 10, b"[1,0]"),
        )
        .await;
    serve_one(service, "calc.div", |req| {
        json!({
            "ver": 1, "ref": req["ref"], "dat": "", "dst": req["src"], "shm": null,
            "now": rmb_proto::unix_now(), "err": {"code": 42, "message": "division by zero"},
        })
    })
    .await;

    let resp = caller.pop("caller.ret").await;
    assert_eq!(resp["ref"], "r-err");
    assert_eq!(resp["src"], ts[1].id.to_string());
    assert_eq!(
        resp["err"],
        json!({"code": 42, "message": "division by zero"})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_timeout_errors_a_request_nobody_serves_gets_an_error_per_silent_destination() {
    let ts = twins(1, 3);
    let relay = TestRelay::start(&ts, &[]).await;
    let dir = tempfile::tempdir().unwrap();
    let file = write_twins_file(dir.path(), &ts);
    let caller = Side::start_custom(
        &ts[0],
        support::directory(&file),
        RedisServer::start(),
        |config| {
            config.relay = support::relays(&[&relay.url]);
            config.timeout_errors = true;
        },
    )
    .await;
    let sides = [
        Side::start(&relay.url, &ts[1], &file).await,
        Side::start(&relay.url, &ts[2], &file).await,
    ];

    // Twin 2 answers, twin 3 has no service for the command.
    caller
        .push(
            "msgbus.system.local",
            request(
                "r-late",
                "nobody.home",
                &[ts[1].id, ts[2].id],
                "caller.ret",
                1,
                b"{}",
            ),
        )
        .await;
    serve_one(
        &sides[0],
        "nobody.home",
        |req| json!({"ver": 1, "ref": req["ref"], "dat": b64(b"\"here\""), "dst": req["src"]}),
    )
    .await;

    let first = caller.pop("caller.ret").await;
    assert_eq!(first["src"], ts[1].id.to_string());
    assert_eq!(first["err"], Value::Null);

    let timeout = caller.pop("caller.ret").await;
    assert_eq!(timeout["ref"], "r-late");
    assert_eq!(timeout["src"], ts[2].id.to_string());
    assert_eq!(timeout["err"]["code"], TIMEOUT_CODE);
    assert!(timeout["err"]["message"]
        .as_str()
        .unwrap()
        .starts_with("timeout:"));
    assert_eq!(
        sides[1].len("msgbus.nobody.home").await,
        1,
        "the request reached twin 3's queue; nobody popped it"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        caller.len("caller.ret").await,
        0,
        "one answer per destination"
    );
    assert_eq!(caller.metrics.timeouts(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn by_default_an_unanswered_request_gets_no_synthetic_timeout_document() {
    let (_relay, ts, sides, _dir) = setup(2, 2).await;
    let caller = &sides[0];
    caller
        .push(
            "msgbus.system.local",
            request("quiet", "nobody.home", &[ts[1].id], "quiet.ret", 1, b"{}"),
        )
        .await;
    // The request arrives and nobody answers it.
    for _ in 0..500 {
        if sides[1].len("msgbus.nobody.home").await == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(sides[1].len("msgbus.nobody.home").await, 1);
    // Well past its expiry (1 s, in whole seconds) the gateway counted the silent
    // destination but pushed nothing: the caller keeps its own deadline, as with the
    // original peer (a Go SDK `Call` returns its context's deadline error).
    for _ in 0..500 {
        if caller.metrics.timeouts() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(caller.metrics.timeouts(), 1, "the expiry was seen");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        caller.len("quiet.ret").await,
        0,
        "no synthetic error document"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rmb_version_is_answered_by_the_remote_peer_itself() {
    let (_relay, ts, sides, _dir) = setup(2, 2).await;
    let caller = &sides[0];

    caller
        .push(
            "msgbus.system.local",
            request("v", "rmb.version", &[ts[1].id], "caller.ret", 5, b""),
        )
        .await;
    let resp = caller.pop("caller.ret").await;
    assert_eq!(resp["ref"], "v");
    assert_eq!(resp["err"], Value::Null);
    let version: String = serde_json::from_slice(&unb64(&resp["dat"])).unwrap();
    assert_eq!(version, rmb_peer::VERSION);
    assert_eq!(
        sides[1].len("msgbus.rmb.version").await,
        0,
        "no service involved"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_duplicate_and_unasked_envelopes_are_dropped_and_encryption_is_end_to_end() {
    // Twin 1 runs a gateway; twin 2 talks to it with a bare direct client.
    let (relay, ts, sides, _dir) = setup(2, 1).await;
    let gw = &sides[0];
    let mut raw = DirectClient::connect(&relay.url, ts[1].signer.clone(), ts[1].id, None)
        .await
        .unwrap();

    let good = raw.request(ts[0].id, None, "svc.echo", b"1".to_vec(), 30);
    raw.send(&good).await.unwrap();
    raw.send(&good).await.unwrap(); // a redelivery
    let mut forged = raw.request(ts[0].id, None, "svc.echo", b"2".to_vec(), 30);
    forged.payload = Some(Payload::Plain(b"tampered".to_vec()));
    raw.send(&forged).await.unwrap();
    // A response nobody asked twin 2 for.
    let unasked = raw.response_to(&good, b"?".to_vec());
    let mut unasked = unasked;
    unasked.destination = Some(Address::new(ts[0].id, None));
    rmb_identity::sign_envelope(&mut unasked, &ts[1].signer);
    raw.send(&unasked).await.unwrap();
    // The last one is encrypted end to end, as a twin with a published key may send it.
    let shared = SharedKey::derive(
        ts[1].signer.identity(),
        &ts[0].signer.identity().encryption_public_key(),
    )
    .unwrap();
    let mut last = raw.request(ts[0].id, None, "svc.echo", Vec::new(), 30);
    last.payload = Some(Payload::Cipher(shared.encrypt(b"3")));
    rmb_identity::sign_envelope(&mut last, &ts[1].signer);
    raw.send(&last).await.unwrap();

    let first = gw.pop("msgbus.svc.echo").await;
    assert_eq!(unb64(&first["dat"]), b"1");
    assert_eq!(first["ref"], good.uid.as_str());
    let second = gw.pop("msgbus.svc.echo").await;
    assert_eq!(
        unb64(&second["dat"]),
        b"3",
        "decrypted; the duplicate and the forgery never arrive"
    );
    assert_eq!(gw.metrics.dropped(DropReason::Replayed), 1);
    assert_eq!(gw.metrics.dropped(DropReason::BadSignature), 1);
    assert_eq!(gw.metrics.dropped(DropReason::Unexpected), 1);

    // The gateway's reply reaches the direct client, signed by twin 1 and encrypted, since
    // both twins publish an encryption key.
    gw.push(
        "msgbus.system.reply",
        json!({"ver": 1, "ref": first["ref"], "dat": b64(b"one"), "dst": first["src"]}),
    )
    .await;
    let answer = raw
        .wait_for(&good.uid, Duration::from_secs(10))
        .await
        .unwrap();
    rmb_peer::verify_from(&answer, &ts[0].signer.public_key()).unwrap();
    let Some(Payload::Cipher(cipher)) = &answer.payload else {
        panic!("expected an encrypted response, got {:?}", answer.payload);
    };
    assert_eq!(shared.decrypt(cipher).unwrap(), b"one");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_reconnects_when_the_relay_comes_back() {
    let ts = twins(1, 2);
    let dir = tempfile::tempdir().unwrap();
    let file = write_twins_file(dir.path(), &ts);
    let mut config = rmb_testkit::relay::test_config(&file, &[]);
    config.listen.addr = rmb_testkit::relay::free_addr();
    let relay = TestRelay::start_with(config.clone()).await;
    let caller = Side::start(&relay.url, &ts[0], &file).await;
    let service = Side::start(&relay.url, &ts[1], &file).await;

    relay.shutdown().await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let relay = TestRelay::start_with(config).await;
    // Both sessions come back: a fresh token is signed for each attempt.
    for side in [&caller, &service] {
        side.wait_connects(2).await;
    }

    caller
        .push(
            "msgbus.system.local",
            request("again", "svc.ping", &[ts[1].id], "caller.ret", 10, b"{}"),
        )
        .await;
    serve_one(
        &service,
        "svc.ping",
        |req| json!({"ver": 1, "ref": req["ref"], "dat": b64(b"\"pong\""), "dst": req["src"]}),
    )
    .await;
    let resp = caller.pop("caller.ret").await;
    assert_eq!(resp["ref"], "again");
    assert_eq!(unb64(&resp["dat"]), b"\"pong\"");
    drop(relay);
}

#[test]
fn cli_refuses_conflicting_directories_bad_relays_and_keys_clearly() {
    let run = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_rmb-peer"))
            .args(args)
            .env_remove("RMB_MNEMONIC")
            .env_remove("RMB_RELAY_CA")
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?} must fail");
        String::from_utf8_lossy(&out.stderr).to_string()
    };
    let seed = twins(1, 1)[0].secret.clone();
    let base = ["-m", seed.as_str(), "--relay", "ws://127.0.0.1:1"];
    let with = |extra: &[&'static str]| {
        let mut args = base.to_vec();
        args.extend_from_slice(extra);
        args
    };
    let both = with(&["--twins", "t.yaml", "-s", "wss://tfchain.grid.tf"]);
    assert!(run(&both).contains("choose one"));
    assert!(run(&with(&["-k", "rsa", "--twins", "t.yaml"])).contains("rsa"));
    let relay = [
        "-m",
        seed.as_str(),
        "--relay",
        "http://relay.example",
        "--twins",
        "t.yaml",
    ];
    assert!(run(&relay).contains("expected wss://host or ws://host:port"));
    let ca = with(&["--twins", "t.yaml", "--relay-ca", "/nonexistent/ca.pem"]);
    let err = run(&ca);
    assert!(
        err.contains("--relay-ca") && err.contains("/nonexistent/ca.pem"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_refusal_reaches_the_caller_without_waiting_for_expiry() {
    let (_relay, ts, sides, _dir) = setup(2, 1).await;
    let caller = &sides[0];

    // Twin 2 is known but offline; `fail-fast` asks the relay to refuse rather than queue.
    let mut doc = request("offline", "svc.ping", &[ts[1].id], "caller.ret", 30, b"{}");
    doc["tag"] = json!("fail-fast");
    caller.push("msgbus.system.local", doc).await;
    // The relay's refusal, not the request's expiry (30 s, beyond the pop's wait).
    let resp = caller.pop("caller.ret").await;
    assert_eq!(resp["ref"], "offline");
    assert_eq!(resp["src"], ts[1].id.to_string());
    assert_eq!(
        resp["err"]["code"],
        rmb_proto::codes::DESTINATION_OFFLINE,
        "{resp}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_to_an_unknown_twin_is_refused_at_once_and_not_sent() {
    let (_relay, _ts, sides, _dir) = setup(1, 1).await;
    let caller = &sides[0];
    caller
        .push(
            "msgbus.system.local",
            request("ghost", "svc.ping", &[999], "caller.ret", 30, b"{}"),
        )
        .await;
    let resp = caller.pop("caller.ret").await;
    assert_eq!(resp["ref"], "ghost");
    assert_eq!(resp["src"], "999");
    assert_eq!(
        resp["err"]["code"],
        rmb_proto::codes::UNKNOWN_TWIN,
        "{resp}"
    );
    assert!(
        resp["err"]["message"]
            .as_str()
            .unwrap()
            .starts_with("unknown twin id '999'"),
        "{resp}"
    );
    assert_eq!(caller.metrics.sent_count("request"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payload_goes_plain_to_a_twin_that_publishes_no_encryption_key() {
    let ts = twins(1, 2);
    let relay = TestRelay::start(&ts, &[]).await;
    let dir = tempfile::tempdir().unwrap();
    let file = write_twins_file(dir.path(), &ts);
    // Twin 2 publishes no `pk`.
    let text = std::fs::read_to_string(&file).unwrap();
    let pk2 = format!(
        "    pk: 0x{}\n",
        hex_lower(&ts[1].signer.identity().encryption_public_key())
    );
    assert!(text.contains(&pk2));
    std::fs::write(&file, text.replace(&pk2, "")).unwrap();
    let caller = Side::start(&relay.url, &ts[0], &file).await;
    let mut raw = DirectClient::connect(&relay.url, ts[1].signer.clone(), ts[1].id, None)
        .await
        .unwrap();

    caller
        .push(
            "msgbus.system.local",
            request("p", "svc.plain", &[ts[1].id], "caller.ret", 10, b"hello"),
        )
        .await;
    let req = tokio::time::timeout(Duration::from_secs(10), raw.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(req.payload, Some(Payload::Plain(b"hello".to_vec())));
    rmb_peer::verify_from(&req, &ts[0].signer.public_key()).unwrap();
    let resp = raw.response_to(&req, b"world".to_vec());
    raw.send(&resp).await.unwrap();
    let got = caller.pop("caller.ret").await;
    assert_eq!(got["ref"], "p");
    assert_eq!(unb64(&got["dat"]), b"world");
}

fn hex_lower(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_keeps_serving_after_its_redis_restarts() {
    let (_relay, ts, mut sides, _dir) = setup(2, 2).await;
    sides[1].server.restart(); // SIGKILL, then a fresh empty server on the same port
    let (caller, service) = (&sides[0], &sides[1]);
    // The service's gateway pops again once its Redis is back.
    caller
        .push(
            "msgbus.system.local",
            request("after", "svc.again", &[ts[1].id], "caller.ret", 10, b"{}"),
        )
        .await;
    serve_one(
        service,
        "svc.again",
        |req| json!({"ver": 1, "ref": req["ref"], "dat": b64(b"1"), "dst": req["src"]}),
    )
    .await;
    let resp = caller.pop("caller.ret").await;
    assert_eq!(resp["ref"], "after");
    assert_eq!(unb64(&resp["dat"]), b"1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_calls_each_get_their_own_answer() {
    const N: usize = 200;
    let (_relay, ts, sides, _dir) = setup(2, 2).await;
    let (caller, service) = (&sides[0], &sides[1]);

    for i in 0..N {
        let body = format!("[{i}]");
        caller
            .push(
                "msgbus.system.local",
                request(
                    &format!("r{i}"),
                    "calc.echo",
                    &[ts[1].id],
                    "bulk.ret",
                    30,
                    body.as_bytes(),
                ),
            )
            .await;
    }
    for _ in 0..N {
        serve_one(
            service,
            "calc.echo",
            |req| json!({"ver": 1, "ref": req["ref"], "dat": req["dat"], "dst": req["src"]}),
        )
        .await;
    }
    let mut seen = std::collections::HashSet::new();
    for _ in 0..N {
        let resp = caller.pop("bulk.ret").await;
        let reference = resp["ref"].as_str().unwrap().to_string();
        let i: usize = reference[1..].parse().unwrap();
        assert_eq!(unb64(&resp["dat"]), format!("[{i}]").as_bytes());
        assert!(seen.insert(reference), "answered once");
    }
    assert_eq!(seen.len(), N);
    assert_eq!(caller.metrics.timeouts(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fan_out_reaches_every_destination_and_each_answer_names_its_source() {
    let (_relay, ts, sides, _dir) = setup(3, 3).await;
    let caller = &sides[0];
    caller
        .push(
            "msgbus.system.local",
            request("fan", "svc.who", &[ts[1].id, ts[2].id], "fan.ret", 10, b"?"),
        )
        .await;
    let mut uids = Vec::new();
    for (i, side) in sides[1..].iter().enumerate() {
        let name = format!("\"twin {}\"", ts[i + 1].id);
        let req = serve_one(side, "svc.who", |req| {
            json!({"ver": 1, "ref": req["ref"], "dat": b64(name.as_bytes()), "dst": req["src"]})
        })
        .await;
        assert_eq!(req["src"], ts[0].id.to_string());
        uids.push(req["ref"].clone());
    }
    assert_eq!(
        uids[0], uids[1],
        "one request, one uid for every destination"
    );
    let mut answers = std::collections::BTreeMap::new();
    for _ in 0..2 {
        let resp = caller.pop("fan.ret").await;
        assert_eq!(resp["ref"], "fan");
        assert_eq!(resp["err"], Value::Null);
        answers.insert(
            resp["src"].as_str().unwrap().to_string(),
            unb64(&resp["dat"]),
        );
    }
    for t in &ts[1..] {
        assert_eq!(
            answers[&t.id.to_string()],
            format!("\"twin {}\"", t.id).into_bytes()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_to_a_twin_with_a_key_travels_encrypted_and_the_answer_comes_back_decrypted() {
    let (relay, ts, sides, _dir) = setup(2, 1).await;
    let caller = &sides[0];
    let mut raw = DirectClient::connect(&relay.url, ts[1].signer.clone(), ts[1].id, None)
        .await
        .unwrap();
    let shared = SharedKey::derive(
        ts[1].signer.identity(),
        &ts[0].signer.identity().encryption_public_key(),
    )
    .unwrap();
    caller
        .push(
            "msgbus.system.local",
            request(
                "enc",
                "svc.secret",
                &[ts[1].id],
                "enc.ret",
                10,
                b"open sesame",
            ),
        )
        .await;
    let req = tokio::time::timeout(Duration::from_secs(10), raw.recv())
        .await
        .unwrap()
        .unwrap();
    rmb_peer::verify_from(&req, &ts[0].signer.public_key()).unwrap();
    let Some(Payload::Cipher(cipher)) = &req.payload else {
        panic!("expected a cipher payload, got {:?}", req.payload);
    };
    assert_eq!(shared.decrypt(cipher).unwrap(), b"open sesame");
    let mut resp = raw.response_to(&req, Vec::new());
    resp.payload = Some(Payload::Cipher(shared.encrypt(b"welcome")));
    rmb_identity::sign_envelope(&mut resp, &ts[1].signer);
    raw.send(&resp).await.unwrap();
    let got = caller.pop("enc.ret").await;
    assert_eq!(got["ref"], "enc");
    assert_eq!(unb64(&got["dat"]), b"welcome");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_responses_are_dropped_and_counted_in_the_metrics() {
    // Twin 1 runs a gateway and calls twin 2; twins 2 and 3 are bare direct clients.
    let (relay, ts, sides, _dir) = setup(3, 1).await;
    let caller = &sides[0];
    let cancel = tokio_util::sync::CancellationToken::new();
    let metrics_addr = rmb_peer::metrics::spawn_server(
        "127.0.0.1:0".parse().unwrap(),
        caller.metrics.clone(),
        cancel.clone(),
    )
    .await
    .unwrap();
    let mut callee = DirectClient::connect(&relay.url, ts[1].signer.clone(), ts[1].id, None)
        .await
        .unwrap();
    let mut intruder = DirectClient::connect(&relay.url, ts[2].signer.clone(), ts[2].id, None)
        .await
        .unwrap();

    caller
        .push(
            "msgbus.system.local",
            request("real", "svc.q", &[ts[1].id], "forged.ret", 10, b"?"),
        )
        .await;
    let req = tokio::time::timeout(Duration::from_secs(10), callee.recv())
        .await
        .unwrap()
        .unwrap();
    // Wrong source: twin 3 answers a request that went to twin 2.
    let mut wrong = intruder.response_to(&req, Vec::new());
    wrong.destination = req.source.clone();
    rmb_identity::sign_envelope(&mut wrong, &ts[2].signer);
    intruder.send(&wrong).await.unwrap();
    // Twin 3's session is not ordered with twin 2's: let its forgery land first.
    for _ in 0..500 {
        if caller.metrics.dropped(DropReason::WrongSource) == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Bad signature: twin 2's answer altered after signing.
    let mut tampered = callee.response_to(&req, b"\"tampered\"".to_vec());
    tampered.payload = Some(Payload::Plain(b"\"forged\"".to_vec()));
    callee.send(&tampered).await.unwrap();
    // The genuine answer (plain: the gateway accepts either), then a replay of it.
    let genuine = callee.response_to(&req, b"\"genuine\"".to_vec());
    callee.send(&genuine).await.unwrap();
    callee.send(&genuine).await.unwrap();

    let got = caller.pop("forged.ret").await;
    assert_eq!(got["ref"], "real");
    assert_eq!(unb64(&got["dat"]), b"\"genuine\"");
    let expected = [
        ("wrong_source", 1.0),
        ("bad_signature", 1.0),
        ("replayed", 1.0),
    ];
    let mut text = String::new();
    for _ in 0..500 {
        let (status, body) = rmb_testkit::relay::http_get(metrics_addr, "/metrics")
            .await
            .expect("metrics answer");
        assert_eq!(status, 200);
        text = body;
        let done = expected.iter().all(|(reason, n)| {
            support::series(
                &text,
                "rmb_peer_envelopes_dropped_total",
                &format!("reason=\"{reason}\""),
            ) == Some(*n)
        });
        if done {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for (reason, n) in expected {
        assert_eq!(
            support::series(
                &text,
                "rmb_peer_envelopes_dropped_total",
                &format!("reason=\"{reason}\"")
            ),
            Some(n),
            "{reason} in\n{text}"
        );
    }
    assert_eq!(
        support::series(
            &text,
            "rmb_peer_envelopes_received_total",
            "kind=\"response\""
        ),
        Some(1.0)
    );
    assert_eq!(caller.len("forged.ret").await, 0, "only the genuine answer");
    cancel.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_service_queue_refuses_requests_with_an_error_to_the_sender() {
    let ts = twins(1, 2);
    let relay = TestRelay::start(&ts, &[]).await;
    let dir = tempfile::tempdir().unwrap();
    let file = write_twins_file(dir.path(), &ts);
    let caller = Side::start(&relay.url, &ts[0], &file).await;
    // The service's queue holds two requests; nobody pops it.
    let service = Side::start_with(support::relays(&[&relay.url]), &ts[1], &file, 2).await;
    for i in 0..3 {
        caller
            .push(
                "msgbus.system.local",
                request(
                    &format!("q{i}"),
                    "svc.busy",
                    &[ts[1].id],
                    "busy.ret",
                    30,
                    b"{}",
                ),
            )
            .await;
    }
    let refused = caller.pop("busy.ret").await;
    assert_eq!(refused["ref"], "q2", "the one that did not fit");
    assert_eq!(refused["src"], ts[1].id.to_string());
    assert_eq!(refused["err"]["code"], rmb_peer::gateway::QUEUE_FULL_CODE);
    assert!(refused["err"]["message"]
        .as_str()
        .unwrap()
        .starts_with("queue full:"));
    assert_eq!(service.len("msgbus.svc.busy").await, 2, "nothing trimmed");
    assert_eq!(service.metrics.dropped(DropReason::LocalQueueFull), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_on_two_relays_keeps_calling_when_one_relay_stops() {
    // Two independent relays (each its own memory backplane); both twins hold a session
    // with each, so either relay can carry a call.
    let ts = twins(1, 2);
    let first = TestRelay::start(&ts, &[]).await;
    let second = TestRelay::start(&ts, &[]).await;
    let dir = tempfile::tempdir().unwrap();
    let file = write_twins_file(dir.path(), &ts);
    let both = support::relays(&[&first.url, &second.url]);
    let caller = Side::start_with(both.clone(), &ts[0], &file, 100).await;
    let service = Side::start_with(both, &ts[1], &file, 100).await;
    caller.wait_connects(2).await;
    service.wait_connects(2).await;
    assert_eq!(caller.metrics.relays_connected(), 2);

    first.shutdown().await;
    for i in 0..5 {
        let reference = format!("after-{i}");
        caller
            .push(
                "msgbus.system.local",
                request(&reference, "svc.echo", &[ts[1].id], "two.ret", 10, b"[1]"),
            )
            .await;
        serve_one(&service, "svc.echo", support::echo).await;
        let resp = caller.pop("two.ret").await;
        assert_eq!(resp["ref"], reference.as_str());
        assert_eq!(resp["err"], Value::Null, "{resp}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_request_with_a_huge_exp_gets_an_answer_and_the_gateway_keeps_serving() {
    let (_relay, ts, sides, _dir) = setup(2, 2).await;
    let (caller, service) = (&sides[0], &sides[1]);
    // exp at u64::MAX: every deadline computed from it must saturate, not overflow.
    caller
        .push(
            "msgbus.system.local",
            request(
                "huge",
                "calc.add",
                &[ts[1].id],
                "caller.ret",
                u64::MAX,
                b"[1]",
            ),
        )
        .await;
    let resp = caller.pop("caller.ret").await;
    assert_eq!(resp["ref"], "huge");
    assert!(
        !resp["err"].is_null(),
        "the relay refuses a time to live past its maximum: {resp}"
    );
    // The gateway is alive: a normal call goes through, and the service list it filled
    // carries an expiry (lists named by other twins do not stay in Redis for ever).
    caller
        .push(
            "msgbus.system.local",
            request("normal", "calc.add", &[ts[1].id], "caller.ret", 10, b"[1]"),
        )
        .await;
    for _ in 0..200 {
        if service.len("msgbus.calc.add").await > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let ttl: i64 = fred::interfaces::KeysInterface::ttl(&service.redis, "msgbus.calc.add")
        .await
        .unwrap();
    assert!(ttl > 0 && ttl <= 10 + 60, "list expiry {ttl}");
    serve_one(service, "calc.add", support::echo).await;
    assert_eq!(caller.pop("caller.ret").await["ref"], "normal");
    for side in sides {
        side.stop().await;
    }
}
