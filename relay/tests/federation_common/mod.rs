//! Shared set-up for the federation tests: two relays with different domains on loopback,
//! each with its own Redis (or the memory backplane), their identity keys, and a raw HTTP
//! client for crafted federation requests.
// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rmb_federation::RelayKey;
use rmb_relay::Config;
use rmb_testkit::redis::RedisServer;
use rmb_testkit::relay::{free_addr, test_config, TempDir, TestRelay};
use rmb_testkit::twins::{write_twins_file, TestTwin};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub const A: &str = "a.example";
pub const B: &str = "b.example";
/// A relay domain nobody answers for.
pub const DOWN: &str = "down.example";

/// One relay of the pair: its domain, address, key and (for restarts) its config.
pub struct Side {
    pub domain: &'static str,
    pub addr: SocketAddr,
    pub key: RelayKey,
    pub relay: Option<TestRelay>,
    pub redis: Option<RedisServer>,
    /// The identity key file.
    pub key_path: PathBuf,
    /// The relay's flags, without `--listen` and `--twins` (to start more pods).
    pub args: Vec<String>,
    /// The twins file.
    pub twins_file: PathBuf,
    config: Config,
}

impl Side {
    pub fn url(&self) -> String {
        format!("ws://{}", self.addr)
    }

    /// Stops the relay (its Redis keeps running).
    pub async fn stop(&mut self) {
        if let Some(relay) = self.relay.take() {
            relay.shutdown().await;
        }
    }

    /// Starts it again on the same address, with the same Redis.
    pub async fn start(&mut self) {
        self.relay = Some(TestRelay::start_with(self.config.clone()).await);
    }
}

/// Two federated relays, `a.example` and `b.example`.
pub struct Pair {
    pub a: Side,
    pub b: Side,
    pub dir: TempDir,
    pub down_addr: SocketAddr,
}

pub struct Twins {
    /// On a.example.
    pub alice: TestTwin,
    /// On b.example.
    pub bob: TestTwin,
    /// On down.example first, then b.example.
    pub carol: TestTwin,
    /// On down.example only.
    pub dave: TestTwin,
}

pub fn test_twins() -> Twins {
    use rmb_identity::KeyType;
    Twins {
        alice: TestTwin::new(10, KeyType::Ed25519).on_relays(&[A]),
        bob: TestTwin::new(11, KeyType::Sr25519).on_relays(&[B]),
        carol: TestTwin::new(12, KeyType::Ed25519).on_relays(&[DOWN, B]),
        dave: TestTwin::new(13, KeyType::Ed25519).on_relays(&[DOWN]),
    }
}

impl Twins {
    pub fn all(&self) -> Vec<TestTwin> {
        vec![
            self.alice.clone(),
            self.bob.clone(),
            self.carol.clone(),
            self.dave.clone(),
        ]
    }
}

/// Starts both relays. `redis`: each with its own Redis server, else the memory backplane.
pub async fn start_pair(twins: &Twins, redis: bool, extra: &[&str]) -> Pair {
    start_pair_with(twins, &[], redis, extra).await
}

/// [`start_pair`] with `more` twins in the directory besides the four test twins.
pub async fn start_pair_with(
    twins: &Twins,
    more: &[TestTwin],
    redis: bool,
    extra: &[&str],
) -> Pair {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut all = twins.all();
    all.extend_from_slice(more);
    let file = write_twins_file(dir.path(), &all);
    let (addr_a, addr_b, down_addr) = (free_addr(), free_addr(), free_addr());
    let now = rmb_proto::unix_now();
    let (key_a, key_b) = (RelayKey::generate(now), RelayKey::generate(now));
    let mut sides = Vec::new();
    for (domain, addr, key) in [(A, addr_a, key_a), (B, addr_b, key_b)] {
        let key_path: PathBuf = dir.path().join(format!("{domain}.key"));
        key.save(&key_path).expect("writing a relay key");
        let redis_server = redis.then(RedisServer::start);
        let resolve = format!("{A}={addr_a},{B}={addr_b},{DOWN}={down_addr}");
        let insecure = format!("{A},{B},{DOWN}");
        let listen = addr.to_string();
        let key_arg = key_path.display().to_string();
        let redis_url = redis_server.as_ref().map(|r| r.url());
        let mut args: Vec<&str> = vec![
            "--domain",
            domain,
            "--identity-key",
            &key_arg,
            "--federation-resolve",
            &resolve,
            "--federation-insecure-http",
            &insecure,
            "--federation-max-backoff-seconds",
            "1",
            "--federation-timeout-ms",
            "3000",
        ];
        if let Some(url) = &redis_url {
            args.extend(["--redis", url.as_str(), "--redis-lease-seconds", "2"]);
        }
        args.extend_from_slice(extra);
        let pod_args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        args.extend(["--listen", listen.as_str()]);
        let config = test_config(&file, &args);
        let relay = TestRelay::start_with(config.clone()).await;
        sides.push(Side {
            domain,
            addr,
            key,
            relay: Some(relay),
            redis: redis_server,
            key_path,
            args: pod_args,
            twins_file: file.clone(),
            config,
        });
    }
    let b = sides.pop().expect("side b");
    let a = sides.pop().expect("side a");
    let pair = Pair {
        a,
        b,
        dir,
        down_addr,
    };
    if redis {
        pair.wait_ready().await;
    }
    pair
}

impl Pair {
    /// Waits until both relays answer `/readyz` (Redis probes went through).
    pub async fn wait_ready(&self) {
        for side in [&self.a, &self.b] {
            rmb_testkit::relay::wait_ready(side.addr).await;
        }
    }
}

/// A relay of the original implementation, as far as federation goes: 404 for every path
/// but `POST /`, which it answers 202 and hands (path, body) over; a `fast-fail` envelope gets
/// its 404 "destination offline" (nobody is connected to it).
pub async fn old_relay(
    received: tokio::sync::mpsc::UnboundedSender<(String, Bytes)>,
) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let received = received.clone();
            tokio::spawn(async move {
                let service =
                    hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                        let received = received.clone();
                        async move {
                            let path = req.uri().path().to_string();
                            let post = req.method() == hyper::Method::POST;
                            let body = req
                                .into_body()
                                .collect()
                                .await
                                .map(|b| b.to_bytes())
                                .unwrap_or_default();
                            let fast_fail =
                                <rmb_proto::Envelope as prost::Message>::decode(body.clone())
                                    .ok()
                                    .and_then(|env| env.tags)
                                    .is_some_and(|tags| tags.contains("fast-fail"));
                            let status = if post && path == "/" && fast_fail {
                                StatusCode::NOT_FOUND
                            } else if post && path == "/" {
                                let _ = received.send((path, body));
                                StatusCode::ACCEPTED
                            } else {
                                StatusCode::NOT_FOUND
                            };
                            let mut resp = Response::new(Full::new(Bytes::new()));
                            *resp.status_mut() = status;
                            Ok::<_, Infallible>(resp)
                        }
                    });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

/// A raw HTTP/1.1 request; returns the status and body.
pub async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, String)],
    body: &[u8],
) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect to relay");
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).await.expect("write head");
    stream.write_all(body).await.expect("write body");
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(15), stream.read_to_end(&mut buf))
        .await
        .expect("relay answered in time")
        .expect("read answer");
    let text = String::from_utf8_lossy(&buf).to_string();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status line");
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// The value of one labelled series in a Prometheus exposition (0 if absent).
pub fn series(exposition: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    exposition
        .lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with('{'))
        .filter(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
        .sum()
}

/// The relay's metrics text.
pub async fn metrics(addr: SocketAddr) -> String {
    rmb_testkit::relay::http_get(addr, "/metrics")
        .await
        .map(|(_, body)| body)
        .unwrap_or_default()
}

/// Waits (up to 20 s) until a labelled series reaches `min`: counters are updated after the
/// answer that makes an envelope arrive, so a test may look a moment too early.
pub async fn wait_series(addr: SocketAddr, name: &str, labels: &[(&str, &str)], min: f64) {
    let mut last = 0.0;
    for _ in 0..200 {
        last = series(&metrics(addr).await, name, labels);
        if last >= min {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{name}{labels:?} stayed at {last}, expected at least {min}");
}
