//! Refusals both ways, as the original `rmb-peer` makes them:
//! - a remote caller whose request fails the peer's checks gets an error envelope back at
//!   once, signed by the peer, with the original's code (102 expired, 103 unknown twin,
//!   104 bad or missing signature, 105 no public key, 106 crypto), from the gateway and from
//!   the Rust SDK's direct client alike;
//! - a local request whose destination cannot be looked up (the chain is down) is not sent
//!   at all, in plain text or otherwise: the caller gets an error document saying why.
// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::Arc;
use std::time::Duration;

use rmb_identity::directory::{SubstrateDirectory, SubstrateSettings};
use rmb_identity::{sign_envelope, CacheSettings, CachedDirectory, SharedKey, TwinDirectory};
use rmb_peer::direct::DirectClient;
use rmb_peer::metrics::Metrics;
use rmb_peer::pool::PoolSettings;
use rmb_peer::router::{CallError, Incoming, Router};
use rmb_peer::sdk::{Client as SdkClient, ClientConfig};
use rmb_peer::{remote_error, verify_from};
use rmb_proto::{codes, unix_now, Envelope, Kind, Payload};
use rmb_testkit::redis::RedisServer;
use rmb_testkit::relay::TestRelay;
use rmb_testkit::testchain::TestChain;
use rmb_testkit::twins::{twins, write_twins_file, TestTwin};
use support::fake_relay::FakeRelay;
use support::{directory, relays, request, Side};

const WAIT: Duration = Duration::from_secs(10);

/// The peer under test: a gateway or an SDK client, serving `svc.echo`.
enum Server {
    Gateway(Side),
    Sdk(SdkClient),
}

impl Server {
    async fn start(
        gateway: bool,
        twin: &TestTwin,
        dir: Arc<dyn TwinDirectory>,
        relay: PoolSettings,
    ) -> Server {
        if gateway {
            let side = Side::start_custom(twin, dir, RedisServer::start(), |config| {
                config.relay = relay;
            })
            .await;
            return Server::Gateway(side);
        }
        let client = SdkClient::connect(ClientConfig {
            signer: twin.signer.clone(),
            twin: None,
            directory: dir,
            relay,
            metrics: Arc::new(Metrics::new().expect("valid metrics")),
        })
        .await
        .unwrap();
        client.set_router(Router::new().route("svc.echo", |r: Incoming| async move { Ok(r.data) }));
        Server::Sdk(client)
    }

    /// Nothing refused ever reached the service.
    async fn served_nothing(&self) {
        if let Server::Gateway(side) = self {
            assert_eq!(side.len("msgbus.svc.echo").await, 0);
        }
    }
}

/// The twins file the peer under test reads: twin 2 without its encryption key, twin 3
/// missing (the relay knows all four).
fn server_view(dir: &std::path::Path, ts: &[TestTwin]) -> std::path::PathBuf {
    let file = write_twins_file(dir, &[ts[0].clone(), ts[1].clone(), ts[3].clone()]);
    let text = std::fs::read_to_string(&file).unwrap();
    let pk2 = format!(
        "    pk: 0x{}\n",
        hex(&ts[1].signer.identity().encryption_public_key())
    );
    assert!(text.contains(&pk2));
    std::fs::write(&file, text.replace(&pk2, "")).unwrap();
    file
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Sends `env` and checks the peer of `server` answers it with `code` and a message
/// starting with `text`, signed by it, back to the sender.
async fn expect_refusal(
    raw: &mut DirectClient,
    env: &Envelope,
    server: &TestTwin,
    code: u32,
    text: &str,
) {
    raw.send(env).await.unwrap();
    let reply = raw
        .wait_for(&env.uid, WAIT)
        .await
        .unwrap_or_else(|e| panic!("no answer to a request that should get {code}: {e}"));
    assert_eq!(reply.kind(), Kind::Error);
    let (got, message) = remote_error(&reply).unwrap();
    assert_eq!(got, code, "{message}");
    assert!(
        message.starts_with(text),
        "{message:?} should start with {text:?}"
    );
    verify_from(&reply, &server.signer.public_key()).expect("signed by the peer");
    assert_eq!(reply.source.as_ref().map(|s| s.twin), Some(server.id));
    assert_eq!(reply.destination.as_ref().map(|d| d.twin), Some(raw.twin()));
}

async fn remote_callers_get_the_original_error_codes(gateway: bool) {
    let ts = twins(1, 4);
    let relay = TestRelay::start(&ts, &[]).await;
    let dir = tempfile::tempdir().unwrap();
    let view = server_view(dir.path(), &ts);
    let server = Server::start(gateway, &ts[0], directory(&view), relays(&[&relay.url])).await;
    let connect = |t: &TestTwin| DirectClient::connect(&relay.url, t.signer.clone(), t.id, None);
    let (mut no_pk, mut unknown, mut known) = (
        connect(&ts[1]).await.unwrap(),
        connect(&ts[2]).await.unwrap(),
        connect(&ts[3]).await.unwrap(),
    );
    let to = ts[0].id;

    // 103: the peer's directory does not know twin 3.
    let env = unknown.request(to, None, "svc.echo", b"1".to_vec(), 30);
    expect_refusal(
        &mut unknown,
        &env,
        &ts[0],
        codes::UNKNOWN_TWIN,
        "unknown twin id '3'",
    )
    .await;

    // 104: altered after signing, and not signed at all.
    let mut env = known.request(to, None, "svc.echo", b"1".to_vec(), 30);
    env.payload = Some(Payload::Plain(b"tampered".to_vec()));
    expect_refusal(
        &mut known,
        &env,
        &ts[0],
        codes::INVALID_SIGNATURE,
        "invalid envelope signature: ",
    )
    .await;
    let mut env = known.request(to, None, "svc.echo", b"1".to_vec(), 30);
    env.signature = None;
    expect_refusal(
        &mut known,
        &env,
        &ts[0],
        codes::INVALID_SIGNATURE,
        "invalid envelope signature: message is not signed",
    )
    .await;

    // 105: a cipher payload from a twin that publishes no encryption key.
    let shared = SharedKey::derive(
        ts[1].signer.identity(),
        &ts[0].signer.identity().encryption_public_key(),
    )
    .unwrap();
    let mut env = no_pk.request(to, None, "svc.echo", Vec::new(), 30);
    env.payload = Some(Payload::Cipher(shared.encrypt(b"secret")));
    sign_envelope(&mut env, &ts[1].signer);
    expect_refusal(
        &mut no_pk,
        &env,
        &ts[0],
        codes::NO_PUBLIC_KEY,
        "sender twin has no public key",
    )
    .await;

    // 106: a cipher payload that does not decrypt.
    let mut env = known.request(to, None, "svc.echo", Vec::new(), 30);
    env.payload = Some(Payload::Cipher(vec![7; 64]));
    sign_envelope(&mut env, &ts[3].signer);
    expect_refusal(&mut known, &env, &ts[0], codes::CRYPTO, "e2e error: ").await;

    server.served_nothing().await;
    // A good request still goes through.
    let env = known.request(to, None, "svc.echo", b"2".to_vec(), 30);
    known.send(&env).await.unwrap();
    if let Server::Gateway(side) = &server {
        let req = side.pop("msgbus.svc.echo").await;
        assert_eq!(req["ref"], env.uid.as_str());
    } else {
        let reply = known.wait_for(&env.uid, WAIT).await.unwrap();
        assert_eq!(reply.kind(), Kind::Response);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_answers_refused_requests_with_codes_103_to_106() {
    remote_callers_get_the_original_error_codes(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_client_answers_refused_requests_with_codes_103_to_106() {
    remote_callers_get_the_original_error_codes(false).await;
}

async fn an_expired_request_is_answered_with_102(gateway: bool) {
    // A real relay drops expired envelopes; a request still reaches a peer expired when the
    // relay's clock runs behind the peer's. The stand-in delivers one as such a relay would.
    let ts = twins(1, 4);
    let dir = tempfile::tempdir().unwrap();
    let view = server_view(dir.path(), &ts);
    let mut relay = FakeRelay::start().await;
    let server = Server::start(gateway, &ts[0], directory(&view), relays(&[&relay.url])).await;
    let mut env = Envelope {
        uid: "expired-1".into(),
        timestamp: unix_now() - 100,
        expiration: 10,
        source: Some(rmb_proto::Address::new(ts[3].id, None)),
        destination: Some(rmb_proto::Address::new(ts[0].id, None)),
        message: Some(rmb_proto::Message::Request(rmb_proto::Request {
            command: "svc.echo".into(),
        })),
        payload: Some(Payload::Plain(b"late".to_vec())),
        ..Default::default()
    };
    sign_envelope(&mut env, &ts[3].signer);
    relay.deliver(env).await;
    let reply = relay.next_written().await;
    assert_eq!(reply.uid, "expired-1");
    let (code, message) = remote_error(&reply).expect("an error answer");
    assert_eq!(code, codes::VALIDATION);
    assert_eq!(message, "envelope validation error: message has expired");
    verify_from(&reply, &ts[0].signer.public_key()).unwrap();
    assert_eq!(reply.destination.as_ref().map(|d| d.twin), Some(ts[3].id));
    server.served_nothing().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_answers_an_expired_request_with_102() {
    an_expired_request_is_answered_with_102(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_client_answers_an_expired_request_with_102() {
    an_expired_request_is_answered_with_102(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chain_outage_refuses_the_send_with_an_error_document_and_nothing_goes_out() {
    let ts = twins(1, 3);
    let dir = tempfile::tempdir().unwrap();
    let file = write_twins_file(dir.path(), &ts);
    let mut chain = TestChain::for_twins(&file).await;
    // The relay reads the file: it keeps working while the peers' chain is down.
    let relay = TestRelay::start(&ts, &[]).await;
    let chain_url = chain.url();
    let on_chain = || -> Arc<dyn TwinDirectory> {
        CachedDirectory::new(
            SubstrateDirectory::start(SubstrateSettings::new(vec![chain_url.clone()])),
            CacheSettings::default(),
        )
    };
    let gateway = Side::start_custom(&ts[0], on_chain(), RedisServer::start(), |config| {
        config.relay = relays(&[&relay.url]);
    })
    .await;
    let sdk = match Server::start(false, &ts[2], on_chain(), relays(&[&relay.url])).await {
        Server::Sdk(client) => client,
        Server::Gateway(_) => unreachable!(),
    };
    let mut destination = DirectClient::connect(&relay.url, ts[1].signer.clone(), ts[1].id, None)
        .await
        .unwrap();

    chain.stop();
    gateway
        .push(
            "msgbus.system.local",
            request("down", "svc.secret", &[ts[1].id], "down.ret", 30, b"secret"),
        )
        .await;
    let doc = gateway.pop("down.ret").await;
    assert_eq!(doc["ref"], "down");
    assert_eq!(doc["src"], ts[1].id.to_string());
    assert_eq!(doc["err"]["code"], codes::OTHER, "{doc}");
    let message = doc["err"]["message"].as_str().unwrap();
    assert!(
        message.contains("failed to get twin 2 information"),
        "{message}"
    );
    assert!(message.contains("not sent"), "{message}");
    let err = sdk
        .call(ts[1].id, "svc.secret", b"secret", Duration::from_secs(5))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, CallError::NotSent { code, .. } if *code == codes::OTHER),
        "{err}"
    );
    // Nothing was written to the relay, so nothing can reach the destination.
    assert_eq!(gateway.metrics.sent_count("request"), 0);
    assert_eq!(gateway.metrics.not_sent_count(), 1);
    let silence = tokio::time::timeout(Duration::from_secs(2), destination.recv()).await;
    assert!(silence.is_err(), "the destination received {silence:?}");

    // Back online: the same request goes out, encrypted end to end.
    chain.resume().await.unwrap();
    let shared = SharedKey::derive(
        ts[1].signer.identity(),
        &ts[0].signer.identity().encryption_public_key(),
    )
    .unwrap();
    let mut delivered = None;
    'attempts: for attempt in 0..40 {
        let reference = format!("up-{attempt}");
        gateway
            .push(
                "msgbus.system.local",
                request(
                    &reference,
                    "svc.secret",
                    &[ts[1].id],
                    "up.ret",
                    30,
                    b"secret",
                ),
            )
            .await;
        // Either it goes out, or it is refused again with a document (never both).
        for _ in 0..50 {
            if let Ok(Ok(env)) =
                tokio::time::timeout(Duration::from_millis(100), destination.recv()).await
            {
                delivered = Some(env);
                break 'attempts;
            }
            if gateway.len("up.ret").await > 0 {
                let refused = gateway.pop("up.ret").await;
                assert_eq!(refused["err"]["code"], codes::OTHER, "{refused}");
                tokio::time::sleep(Duration::from_millis(300)).await;
                continue 'attempts;
            }
        }
        panic!("request {reference} neither went out nor was refused");
    }
    let env = delivered.expect("delivered once the chain is back");
    let Some(Payload::Cipher(cipher)) = &env.payload else {
        panic!("expected a cipher payload, got {:?}", env.payload);
    };
    assert_eq!(shared.decrypt(cipher).unwrap(), b"secret");
    sdk.close().await;
}
