//! The command lines users of the original `rmb-peer` run today start this one and serve:
//! `rmb-peer -m "<mnemonic>"` with only the defaults (mainnet relay and chain, which this
//! machine cannot reach: it serves its local API and keeps trying them), and the original's
//! flags against a local relay and `rmb-testchain`: `-r`, `--relay` and `-s` (several values
//! after one flag), the deprecated `--mnemonics` and `--seed`, `-dd`, `-u`, and Redis over a
//! Unix socket. Each line is proven by calls both ways: a local caller to a remote twin, and
//! a remote twin's `rmb.version` to the peer.
// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::PathBuf;
use std::time::Duration;

use fred::prelude::*;
use rmb_identity::{Identity, KeyType, Signer};
use rmb_peer::local_client::LocalClient;
use rmb_peer::router::{Incoming, Router};
use rmb_peer::sdk::Client as SdkClient;
use rmb_testkit::redis::RedisServer;
use rmb_testkit::relay::TestRelay;
use rmb_testkit::testchain::TestChain;
use rmb_testkit::twins::{write_twins_file, TestTwin};
use rmb_testkit::vectors::Vectors;
use serde_json::{json, Value};
use support::process::PeerProcess;
use support::{relays, request, sdk_client, unb64, Side};

const START: Duration = Duration::from_secs(30);

/// Twin `id` with the keys of a BIP39 mnemonic from the interop vectors (`-k` default:
/// sr25519), as users start `rmb-peer -m "<mnemonic>"`.
fn mnemonic_twin(id: u32, vector: &str) -> TestTwin {
    let mnemonic = Vectors::load().identity(vector).mnemonic.clone();
    let identity = Identity::from_secret(&mnemonic).unwrap();
    TestTwin {
        id,
        signer: Signer::new(identity, KeyType::Sr25519),
        secret: mnemonic,
        relays: Vec::new(),
    }
}

/// A local network: `rmb-testchain` holding the twins, relays reading the chain, a Redis
/// for the peer under test, and a partner twin (the last one) serving `test.echo` through
/// the Rust SDK on every relay.
struct Net {
    chain: TestChain,
    relay: TestRelay,
    more_relays: Vec<TestRelay>,
    redis: RedisServer,
    twins: Vec<TestTwin>,
    partner: SdkClient,
    _file: PathBuf,
    _dir: tempfile::TempDir,
}

impl Net {
    async fn start(twins: Vec<TestTwin>) -> Net {
        Net::start_with(twins, RedisServer::start(), 1).await
    }

    async fn start_with(twins: Vec<TestTwin>, redis: RedisServer, relay_count: usize) -> Net {
        let dir = tempfile::tempdir().unwrap();
        let file = write_twins_file(dir.path(), &twins);
        let chain = TestChain::for_twins(&file).await;
        let relay = TestRelay::start_with(chain.relay_config(&[])).await;
        let mut more_relays = Vec::new();
        for _ in 1..relay_count {
            more_relays.push(TestRelay::start_with(chain.relay_config(&[])).await);
        }
        let mut urls = vec![relay.url.as_str()];
        urls.extend(more_relays.iter().map(|r| r.url.as_str()));
        let partner_twin = twins.last().unwrap();
        let partner = sdk_client(relays(&urls), partner_twin, &file).await;
        partner.set_router(
            Router::new().route("test.echo", |req: Incoming| async move { Ok(req.data) }),
        );
        Net {
            chain,
            relay,
            more_relays,
            redis,
            twins,
            partner,
            _file: file,
            _dir: dir,
        }
    }

    /// A client of the peer's Redis, as a Go or Python service uses it.
    async fn redis_client(&self) -> Client {
        let client = Builder::from_config(Config::from_url(&self.redis.url()).unwrap())
            .build()
            .unwrap();
        client.init().await.unwrap();
        client
    }

    /// Starts `rmb-peer args…`, waits for its relay session and proves it serves as the
    /// peer of the first twin.
    async fn run(&self, args: &[&str]) -> PeerProcess {
        let mut peer = PeerProcess::spawn(args, &[]);
        peer.wait_for_log("connected to relay", START).await;
        self.prove_serving(self.twins[0].id).await;
        peer
    }

    /// Proves the peer of twin `peer` serves: a local caller's request reaches the partner
    /// and its answer comes back, and the partner's `rmb.version` call is answered.
    async fn prove_serving(&self, peer: u32) {
        let client = self.redis_client().await;
        let partner = self.twins.last().unwrap().id;
        let doc = request("line", "test.echo", &[partner], "line.ret", 30, b"\"hi\"");
        let _: i64 = client
            .lpush("msgbus.system.local", doc.to_string())
            .await
            .unwrap();
        let popped: Option<(String, String)> = client.brpop("line.ret", 20.0).await.unwrap();
        let (_, answer) = popped.expect("the partner's answer reaches ret");
        let answer: Value = serde_json::from_str(&answer).unwrap();
        assert_eq!(answer["ref"], "line", "{answer}");
        assert_eq!(answer["err"], Value::Null, "{answer}");
        assert_eq!(unb64(&answer["dat"]), b"\"hi\"");

        let version = self
            .partner
            .call(peer, "rmb.version", b"", Duration::from_secs(20))
            .await
            .unwrap();
        let version: String = serde_json::from_slice(&version).unwrap();
        assert_eq!(version, rmb_peer::VERSION);
        assert!(
            version.starts_with('v'),
            "a release tag, like the original's"
        );
        let _ = client.quit().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_command_line_serves_its_local_api_and_keeps_trying_mainnet() {
    let redis = RedisServer::start();
    let twin = mnemonic_twin(1, "id0");
    // Only the Redis is redirected (port 6379 may be taken here); relay and chain are the
    // defaults: wss://relay.grid.tf:443 and wss://tfchain.grid.tf:443.
    let mut peer = PeerProcess::spawn(&["-m", &twin.secret], &[("RMB_REDIS", &redis.url())]);
    peer.wait_for_log("serving the local redis api", START)
        .await;
    let log = peer.log();
    assert!(log.contains("wss://relay.grid.tf:443"), "{log}");
    assert!(log.contains("wss://tfchain.grid.tf:443"), "{log}");

    let client = Builder::from_config(Config::from_url(&redis.url()).unwrap())
        .build()
        .unwrap();
    client.init().await.unwrap();
    // The local API answers at once: `rmb.version` for twin 0 is this peer itself.
    let version = json!({"ver": 1, "ref": "v", "cmd": "rmb.version", "exp": 10, "dat": "",
        "dst": [0], "ret": "default.ret", "shm": null, "now": 0});
    let _: i64 = client
        .lpush("msgbus.system.local", version.to_string())
        .await
        .unwrap();
    let popped: Option<(String, String)> = client.brpop("default.ret", 20.0).await.unwrap();
    let (_, answer) = popped.expect("rmb.version answered");
    let answer: Value = serde_json::from_str(&answer).unwrap();
    assert_eq!(answer["ref"], "v");
    assert_eq!(answer["src"], "0");
    let version: String = serde_json::from_slice(&unb64(&answer["dat"])).unwrap();
    assert_eq!(version, rmb_peer::VERSION);

    // Without internet the chain cannot be reached: the peer says so and tries again (with
    // internet it would find no twin for this test key and say that instead).
    let tried = ["cannot resolve our twin yet", "no twin has the account"];
    for _ in 0..1000 {
        if tried.iter().any(|t| peer.log().contains(t)) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let log = peer.log();
    assert!(tried.iter().any(|t| log.contains(t)), "{log}");

    if log.contains("cannot resolve our twin yet") {
        // A request for another twin waits for the twin id; at shutdown it goes back to
        // Redis instead of being lost.
        let call = request("held", "calc.add", &[7], "held.ret", 60, b"[1,2]");
        let _: i64 = client
            .lpush("msgbus.system.local", call.to_string())
            .await
            .unwrap();
        for _ in 0..500 {
            let left: i64 = client.llen("msgbus.system.local").await.unwrap();
            if left == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        peer.signal("TERM");
        assert_eq!(
            peer.wait(Duration::from_secs(10)).await,
            Some(0),
            "{}",
            peer.log()
        );
        let back: Vec<String> = client.lrange("msgbus.system.local", 0, -1).await.unwrap();
        assert_eq!(back.len(), 1, "the held request is back: {back:?}");
        let back: Value = serde_json::from_str(&back[0]).unwrap();
        assert_eq!(back["ref"], "held");
    }
    let _ = client.quit().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn original_command_line_with_redis_relay_and_substrate_serves() {
    let net = Net::start(vec![
        mnemonic_twin(1, "id0"),
        TestTwin::new(2, KeyType::Ed25519),
    ])
    .await;
    let (redis, relay, chain) = (net.redis.url(), net.relay.url.clone(), net.chain.url());
    let secret = &net.twins[0].secret;
    let args = [
        "-m",
        secret,
        "-r",
        &redis,
        "--relay",
        &relay,
        "--substrate",
        &chain,
    ];
    let mut peer = net.run(&args).await;
    peer.signal("TERM");
    assert_eq!(
        peer.wait(Duration::from_secs(10)).await,
        Some(0),
        "{}",
        peer.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deprecated_mnemonics_spelling_starts_and_warns() {
    let net = Net::start(vec![
        mnemonic_twin(1, "id1"),
        TestTwin::new(2, KeyType::Ed25519),
    ])
    .await;
    let (redis, relay, chain) = (net.redis.url(), net.relay.url.clone(), net.chain.url());
    let secret = &net.twins[0].secret;
    let args = [
        "--mnemonics",
        secret,
        "-r",
        &redis,
        "--relay",
        &relay,
        "-s",
        &chain,
    ];
    let peer = net.run(&args).await;
    assert!(
        peer.log().contains("--mnemonics is deprecated"),
        "{}",
        peer.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hex_seed_trace_logging_and_several_chain_urls_after_one_flag() {
    // An ed25519 twin from a 0x seed; `-s` lists a dead endpoint first and the chain second,
    // after one flag; `-dd` is trace logging.
    let net = Net::start(vec![
        TestTwin::new(2, KeyType::Ed25519),
        TestTwin::new(3, KeyType::Sr25519),
    ])
    .await;
    let (redis, relay, chain) = (net.redis.url(), net.relay.url.clone(), net.chain.url());
    let dead = format!("ws://{}", rmb_testkit::relay::free_addr());
    let secret = &net.twins[0].secret;
    #[rustfmt::skip]
    let args = [
        "--seed", secret, "-k", "ed25519", "-r", &redis, "--relay", &relay, "-s", &dead, &chain,
        "-dd",
    ];
    let peer = net.run(&args).await;
    let log = peer.log();
    assert!(log.contains("--seed is deprecated"), "{log}");
    assert!(log.contains("rmb_peer=trace"), "-dd is trace: {log}");
    assert!(log.contains("TRACE") || log.contains("DEBUG"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_flag_two_relays_after_one_flag_and_a_unix_socket_redis() {
    let net = Net::start_with(
        vec![mnemonic_twin(1, "id0"), TestTwin::new(2, KeyType::Ed25519)],
        RedisServer::start_unix(),
        2,
    )
    .await;
    let second = &net.more_relays[0];
    let (relay, chain) = (net.relay.url.clone(), net.chain.url());
    let socket = net.redis.unix_url("unix");
    let uploads = tempfile::tempdir().unwrap();
    let uploads = uploads.path().display().to_string();
    let secret = &net.twins[0].secret;
    #[rustfmt::skip]
    let args = [
        "-m", secret, "-r", &socket, "--relay", &relay, &second.url, "--substrate", &chain,
        "-u", &uploads, "-d",
    ];
    let peer = net.run(&args).await;
    let log = peer.log();
    assert!(
        log.contains("accepted and ignored"),
        "-u is accepted: {log}"
    );
    assert!(log.contains(&second.url), "both relays are used: {log}");
    assert!(log.contains("unix://"), "the unix socket is used: {log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_and_local_client_talk_over_unix_sockets() {
    let ts = vec![
        TestTwin::new(1, KeyType::Sr25519),
        TestTwin::new(2, KeyType::Ed25519),
    ];
    let relay = TestRelay::start(&ts, &[]).await;
    let dir = tempfile::tempdir().unwrap();
    let file = write_twins_file(dir.path(), &ts);
    let partner = sdk_client(relays(&[&relay.url]), &ts[1], &file).await;
    partner
        .set_router(Router::new().route("test.echo", |req: Incoming| async move { Ok(req.data) }));

    let server = RedisServer::start_unix();
    let gateway_url = server.unix_url("redis+unix");
    let client_url = server.unix_url("unix");
    let gateway = Side::start_custom(&ts[0], support::directory(&file), server, |config| {
        config.relay = relays(&[&relay.url]);
        config.redis_url = gateway_url;
    })
    .await;
    let local = LocalClient::connect(&client_url).await.unwrap();
    let answer = local
        .call(ts[1].id, "test.echo", b"[42]", Duration::from_secs(20))
        .await
        .unwrap();
    assert_eq!(answer, b"[42]");
    // The same documents as over TCP: a plain client sees the answer list in the same Redis.
    gateway
        .push(
            "msgbus.system.local",
            request("tcp", "test.echo", &[ts[1].id], "tcp.ret", 20, b"1"),
        )
        .await;
    let resp = gateway.pop("tcp.ret").await;
    assert_eq!(unb64(&resp["dat"]), b"1");
    partner.close().await;
}
