//! The rmb-peer gateway end to end: two gateways in-process, each with its own real
//! redis-server, talking through a real in-process relay. Callers and services are plain
//! Redis clients pushing and popping JSON, exactly as a Python or Go service would.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use fred::prelude::*;
use rmb_identity::{CacheSettings, CachedDirectory, FileDirectory, SharedKey};
use rmb_peer::direct::DirectClient;
use rmb_peer::gateway::{self, Stats, TIMEOUT_CODE};
use rmb_proto::{Address, Payload};
use rmb_testkit::redis::RedisServer;
use rmb_testkit::relay::TestRelay;
use rmb_testkit::twins::{twins, write_twins_file, TestTwin};
use serde_json::{json, Value};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

const WAIT: f64 = 10.0;

/// One twin's side: its redis-server, its gateway, and a plain Redis client.
struct Side {
    server: RedisServer,
    redis: Client,
    stats: Arc<Stats>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), gateway::GatewayError>>,
}

impl Side {
    async fn start(relay: &TestRelay, twin: &TestTwin, twins_file: &Path) -> Side {
        let server = RedisServer::start();
        let directory = CachedDirectory::new(
            FileDirectory::open(twins_file).unwrap(),
            CacheSettings::default(),
        );
        let stats = Arc::new(Stats::default());
        let config = gateway::Config {
            signer: twin.signer.clone(),
            twin: None,
            redis_url: server.url(),
            relays: vec![relay.url.clone()],
            directory,
            stats: stats.clone(),
        };
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(gateway::run(config, async {
            let _ = stopped.await;
        }));
        let redis = Builder::from_config(fred::prelude::Config::from_url(&server.url()).unwrap())
            .set_policy(ReconnectPolicy::new_constant(0, 100))
            .build()
            .unwrap();
        redis.init().await.unwrap();
        let side = Side {
            server,
            redis,
            stats,
            stop: Some(stop),
            task,
        };
        side.wait_connected().await;
        side
    }

    async fn wait_connected(&self) {
        for _ in 0..500 {
            if Stats::get(&self.stats.relay_connects) > 0 {
                return;
            }
            assert!(!self.task.is_finished(), "gateway stopped at start");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("gateway did not connect to the relay");
    }

    /// Pushes a document on `list`, as callers and services do.
    async fn push(&self, list: &str, doc: Value) {
        let _: i64 = self.redis.lpush(list, doc.to_string()).await.unwrap();
    }

    /// Pops the next document from `list`, failing after a while.
    async fn pop(&self, list: &str) -> Value {
        let popped: Option<(String, String)> = self.redis.brpop(list, WAIT).await.unwrap();
        let (_, doc) = popped.unwrap_or_else(|| panic!("nothing arrived on {list}"));
        serde_json::from_str(&doc).unwrap()
    }

    async fn len(&self, list: &str) -> i64 {
        self.redis.llen(list).await.unwrap()
    }

    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let result = tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("gateway stops in time")
            .expect("gateway task does not panic");
        result.expect("gateway ran cleanly");
    }
}

fn b64(bytes: &[u8]) -> String {
    STANDARD.encode(bytes)
}

fn unb64(v: &Value) -> Vec<u8> {
    STANDARD
        .decode(v.as_str().expect("dat is a string"))
        .unwrap()
}

fn request(reference: &str, cmd: &str, dst: &[u32], ret: &str, exp: u64, dat: &[u8]) -> Value {
    json!({
        "ver": 1, "ref": reference, "cmd": cmd, "exp": exp, "dat": b64(dat), "tag": null,
        "dst": dst, "ret": ret, "shm": "application/json", "now": rmb_proto::unix_now(),
    })
}

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
        sides.push(Side::start(&relay, t, &file).await);
    }
    (relay, ts, sides, dir)
}

/// Serves one request for `cmd` on `side`: checks it and answers with `answer`.
async fn serve_one(side: &Side, cmd: &str, answer: impl FnOnce(&Value) -> Value) -> Value {
    let req = side.pop(&format!("msgbus.{cmd}")).await;
    assert_eq!(req["cmd"], cmd);
    assert_eq!(req["ret"], "msgbus.system.reply");
    let reply = answer(&req);
    side.push("msgbus.system.reply", reply).await;
    req
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
async fn request_nobody_serves_times_out_with_an_error_per_silent_destination() {
    let (_relay, ts, sides, _dir) = setup(3, 3).await;
    let caller = &sides[0];

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
        &sides[1],
        "nobody.home",
        |req| json!({"ver": 1, "ref": req["ref"], "dat": b64(b"\"here\""), "dst": req["src"]}),
    )
    .await;

    let first = caller.pop("caller.ret").await;
    assert_eq!(first["src"], ts[1].id.to_string());
    assert_eq!(first["err"], Value::Null);

    let started = std::time::Instant::now();
    let timeout = caller.pop("caller.ret").await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "expiry enforced promptly"
    );
    assert_eq!(timeout["ref"], "r-late");
    assert_eq!(timeout["src"], ts[2].id.to_string());
    assert_eq!(timeout["err"]["code"], TIMEOUT_CODE);
    assert!(timeout["err"]["message"]
        .as_str()
        .unwrap()
        .starts_with("timeout:"));
    assert_eq!(
        sides[2].len("msgbus.nobody.home").await,
        1,
        "the request reached twin 3's queue; nobody popped it"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        caller.len("caller.ret").await,
        0,
        "one answer per destination"
    );
    assert_eq!(Stats::get(&caller.stats.timeouts), 1);
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
    assert_eq!(Stats::get(&gw.stats.duplicates), 1);
    assert_eq!(Stats::get(&gw.stats.bad_signatures), 1);
    assert_eq!(Stats::get(&gw.stats.unexpected), 1);

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
    config.listen = rmb_testkit::relay::free_addr();
    let relay = TestRelay::start_with(config.clone()).await;
    let caller = Side::start(&relay, &ts[0], &file).await;
    let service = Side::start(&relay, &ts[1], &file).await;

    relay.shutdown().await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let relay = TestRelay::start_with(config).await;
    // Both sessions come back: a fresh token is signed for each attempt.
    for side in [&caller, &service] {
        for _ in 0..500 {
            if Stats::get(&side.stats.relay_connects) >= 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(Stats::get(&side.stats.relay_connects) >= 2, "reconnected");
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
fn cli_refuses_substrate_and_a_missing_directory_clearly() {
    let run = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_rmb-peer"))
            .args(args)
            .env_remove("RMB_MNEMONIC")
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?} must fail");
        String::from_utf8_lossy(&out.stderr).to_string()
    };
    let seed = twins(1, 1)[0].secret.clone();
    let base = ["-m", seed.as_str(), "--relay", "ws://127.0.0.1:1"];
    let mut substrate = base.to_vec();
    substrate.extend(["-s", "wss://tfchain.grid.tf", "--no-update"]);
    assert!(run(&substrate).contains("not yet supported"));
    assert!(run(&base).contains("--twins FILE"));
    let mut bad_key = base.to_vec();
    bad_key.extend(["-k", "rsa"]);
    assert!(run(&bad_key).contains("rsa"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_refusal_reaches_the_caller_without_waiting_for_expiry() {
    let (_relay, _ts, sides, _dir) = setup(1, 1).await;
    let caller = &sides[0];

    caller
        .push(
            "msgbus.system.local",
            request("ghost", "svc.ping", &[999], "caller.ret", 30, b"{}"),
        )
        .await;
    let started = std::time::Instant::now();
    let resp = caller.pop("caller.ret").await;
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(resp["ref"], "ghost");
    assert_eq!(resp["src"], "999");
    assert_eq!(
        resp["err"]["code"],
        rmb_proto::codes::UNKNOWN_TWIN,
        "{resp}"
    );
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
    let caller = Side::start(&relay, &ts[0], &file).await;
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
    assert_eq!(Stats::get(&caller.stats.timeouts), 0);
}
