//! Attack suite, federation ingress limits: what a remote sender (or anyone pretending to be
//! one) can make a relay spend before any signature check. Oversized batches, bodies without
//! a length, bodies that trickle in, floods of legacy `POST /` from one address or one source
//! twin, more requests than the pod handles at once, requests beyond the connection limit:
//! each is refused with a clear status, and honest traffic still flows afterwards.

mod federation_common;

use std::time::Duration;

use federation_common::{http, start_pair, test_twins, A, B};
use prost::Message as _;
use rmb_federation::auth::{BATCH_CONTENT_TYPE, ENDPOINT};
use rmb_federation::LinkAuth;
use rmb_testkit::client::{Received, WsClient};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Reads what the relay answers on `stream` until it closes the connection.
async fn read_answer(stream: &mut tokio::net::TcpStream) -> String {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match tokio::time::timeout(Duration::from_secs(15), stream.read(&mut chunk)).await {
            Err(_) => panic!(
                "relay kept the request open: {:?}",
                String::from_utf8_lossy(&buf)
            ),
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    String::from_utf8_lossy(&buf).into_owned()
}

fn error_reason(body: &str) -> String {
    serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["error"].as_str().map(str::to_string))
        .unwrap_or_default()
}

#[tokio::test]
async fn a_signed_batch_of_empty_frames_beyond_the_cap_is_refused_whole() {
    let twins = test_twins();
    let pair = start_pair(&twins, false, &[]).await;
    // 2000 zero-length frames: 2000 bytes that used to become 2000 verdicts in the answer
    // (and 16 MiB of them, 16 million verdicts, gigabytes of answer).
    let body = bytes::Bytes::from(vec![0u8; 2000]);
    let auth = LinkAuth::sign(
        &pair.a.key,
        "POST",
        ENDPOINT,
        A,
        B,
        rmb_proto::unix_now(),
        &body,
    );
    let headers = [
        ("Authorization", auth.to_header()),
        ("Content-Type", BATCH_CONTENT_TYPE.to_string()),
    ];
    let (status, text) = http(pair.b.addr, "POST", ENDPOINT, &headers, &body).await;
    assert_eq!(
        (status, error_reason(&text).as_str()),
        (400, "malformed_body"),
        "{text}"
    );
    assert!(text.len() < 1024, "the refusal is one short answer: {text}");
}

#[tokio::test]
async fn federation_requests_without_a_length_or_too_long_are_refused_before_the_body() {
    let twins = test_twins();
    let pair = start_pair(&twins, false, &[]).await;
    // Chunked, no Content-Length: the size is unknown until all of it has been read.
    let mut stream = tokio::net::TcpStream::connect(pair.b.addr)
        .await
        .expect("connect");
    stream
        .write_all(b"POST / HTTP/1.1\r\nHost: b\r\nTransfer-Encoding: chunked\r\n\r\n")
        .await
        .expect("write");
    let answer = read_answer(&mut stream).await;
    assert!(answer.starts_with("HTTP/1.1 411"), "{answer}");

    // A declared length over the limit: refused at once, the gigabyte never sent.
    let mut stream = tokio::net::TcpStream::connect(pair.b.addr)
        .await
        .expect("connect");
    let head = format!(
        "POST {ENDPOINT} HTTP/1.1\r\nHost: b\r\nContent-Type: {BATCH_CONTENT_TYPE}\r\nContent-Length: {}\r\n\r\n",
        1u64 << 30
    );
    stream.write_all(head.as_bytes()).await.expect("write");
    let answer = read_answer(&mut stream).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");

    // The wrong media type on the batch endpoint.
    let (status, text) = http(
        pair.b.addr,
        "POST",
        ENDPOINT,
        &[("Content-Type", "text/plain".to_string())],
        b"x",
    )
    .await;
    assert_eq!(status, 415, "{text}");
}

#[tokio::test]
async fn a_body_that_trickles_in_is_cut_at_the_body_deadline() {
    let twins = test_twins();
    let pair = start_pair(&twins, false, &["--federation-body-timeout-ms", "300"]).await;
    let mut stream = tokio::net::TcpStream::connect(pair.b.addr)
        .await
        .expect("connect");
    stream
        .write_all(b"POST / HTTP/1.1\r\nHost: b\r\nContent-Length: 1000\r\n\r\n0123456789")
        .await
        .expect("write");
    // The rest never comes: the relay answers 408 instead of holding the request.
    let answer = read_answer(&mut stream).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
}

#[tokio::test]
async fn legacy_posts_beyond_the_rate_of_one_source_twin_get_429_and_other_twins_pass() {
    let twins = test_twins();
    let pair = start_pair(&twins, false, &["--federation-legacy-rate-per-twin", "1"]).await;
    let alice = WsClient::connect(&pair.a.url(), &twins.alice, None).await;
    let mut bob = WsClient::connect(&pair.b.url(), &twins.bob, None).await;
    let mut statuses = Vec::new();
    for i in 0..6 {
        let env = alice.request(&format!("flood-{i}"), bob.address(), "x", b"1");
        let (status, _) = http(pair.b.addr, "POST", "/", &[], &env.encode_to_vec()).await;
        statuses.push(status);
    }
    // Burst of two, then one a second: six at once cannot all pass.
    assert_eq!(&statuses[..2], &[202, 202], "{statuses:?}");
    assert!(statuses.contains(&429), "{statuses:?}");
    // Another source twin has its own budget.
    let carol = WsClient::connect(&pair.b.url(), &twins.carol, None).await;
    let env = carol.request("other-twin", bob.address(), "x", b"1");
    let (status, text) = http(pair.b.addr, "POST", "/", &[], &env.encode_to_vec()).await;
    assert_ne!(status, 429, "{text}");
    let got = bob.next(Duration::from_secs(10)).await;
    assert!(matches!(got, Some(Received::Envelope(e)) if e.uid == "flood-0"));
}

#[tokio::test]
async fn legacy_posts_beyond_the_rate_of_one_address_get_429() {
    let twins = test_twins();
    let pair = start_pair(&twins, false, &["--federation-legacy-rate-per-ip", "1"]).await;
    let mut statuses = Vec::new();
    for _ in 0..6 {
        // Not even an envelope: the address is charged before the body is read.
        let (status, _) = http(pair.b.addr, "POST", "/", &[], b"junk").await;
        statuses.push(status);
    }
    assert_eq!(&statuses[..2], &[400, 400], "{statuses:?}");
    assert!(statuses.contains(&429), "{statuses:?}");
}

#[tokio::test]
async fn federation_requests_beyond_the_inflight_limit_are_shed_at_once() {
    let twins = test_twins();
    let pair = start_pair(&twins, false, &["--federation-max-inflight", "1"]).await;
    // One request holds the only slot while its body is (slowly) coming.
    let mut slow = tokio::net::TcpStream::connect(pair.b.addr)
        .await
        .expect("connect");
    slow.write_all(b"POST / HTTP/1.1\r\nHost: b\r\nContent-Length: 100\r\n\r\n0123")
        .await
        .expect("write");
    let mut shed = None;
    for _ in 0..50 {
        let (status, text) = http(pair.b.addr, "POST", "/", &[], b"junk").await;
        if status == 503 {
            shed = Some(text);
            break;
        }
        // The slow request may not have reached the handler yet.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let text = shed.expect("a second request while the first holds the slot gets 503");
    assert!(text.contains("busy"), "{text}");
    // Once the first ends, the slot is free again.
    slow.write_all(&[0u8; 96]).await.expect("write");
    let answer = read_answer(&mut slow).await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    let (status, _) = http(pair.b.addr, "POST", "/", &[], b"junk").await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn federation_requests_count_against_the_connection_limit() {
    let twins = test_twins();
    let pair = start_pair(&twins, false, &["--max-connections", "1"]).await;
    let alice = WsClient::connect(&pair.a.url(), &twins.alice, None).await;
    // Bob's session takes relay b's only connection slot.
    let mut bob = WsClient::connect(&pair.b.url(), &twins.bob, None).await;
    let env = alice.request("over-the-cap", bob.address(), "x", b"1");
    let (status, text) = http(pair.b.addr, "POST", "/", &[], &env.encode_to_vec()).await;
    assert_eq!(status, 503, "{text}");
    assert!(text.contains("connection limit"), "{text}");
    bob.expect_silence(Duration::from_millis(300)).await;
    // With the slot free, the same envelope passes.
    drop(bob);
    let mut passed = false;
    for _ in 0..50 {
        let (status, _) = http(pair.b.addr, "POST", "/", &[], &env.encode_to_vec()).await;
        if status == 202 {
            passed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(passed, "the request passes once the session left");
}

/// One HTTP/2 frame as read off the wire.
struct H2Frame {
    kind: u8,
    flags: u8,
    stream: u32,
    payload: Vec<u8>,
}

async fn write_h2_frame(
    stream: &mut tokio::net::TcpStream,
    kind: u8,
    flags: u8,
    id: u32,
    payload: &[u8],
) -> std::io::Result<()> {
    let len = payload.len() as u32;
    let mut frame = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    frame.extend_from_slice(&id.to_be_bytes());
    frame.extend_from_slice(payload);
    stream.write_all(&frame).await
}

/// The next frame, or `None` when nothing more arrives within `wait`.
async fn read_h2_frame(stream: &mut tokio::net::TcpStream, wait: Duration) -> Option<H2Frame> {
    let mut head = [0u8; 9];
    match tokio::time::timeout(wait, stream.read_exact(&mut head)).await {
        Ok(Ok(_)) => {}
        _ => return None,
    }
    let len = (usize::from(head[0]) << 16) | (usize::from(head[1]) << 8) | usize::from(head[2]);
    let mut payload = vec![0u8; len];
    stream.read_exact(&mut payload).await.ok()?;
    Some(H2Frame {
        kind: head[3],
        flags: head[4],
        stream: u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff,
        payload,
    })
}

/// A header block of literal fields (HPACK "literal without indexing, new name", no Huffman).
fn hpack_literals(fields: &[(&str, &str)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in fields {
        out.push(0x00);
        for text in [name, value] {
            hpack_length(&mut out, text.len());
            out.extend_from_slice(text.as_bytes());
        }
    }
    out
}

/// A string length as an HPACK integer with a 7-bit prefix (RFC 7541 §5.1).
fn hpack_length(out: &mut Vec<u8>, mut len: usize) {
    if len < 127 {
        out.push(len as u8);
        return;
    }
    out.push(127);
    len -= 127;
    while len >= 128 {
        out.push((len % 128) as u8 | 0x80);
        len /= 128;
    }
    out.push(len as u8);
}

#[tokio::test]
async fn one_http2_connection_cannot_open_more_than_16_requests_at_once() {
    const SETTINGS: u8 = 0x4;
    const HEADERS: u8 = 0x1;
    const RST_STREAM: u8 = 0x3;
    const GOAWAY: u8 = 0x7;
    const MAX_CONCURRENT_STREAMS: u16 = 0x3;
    const REFUSED_STREAM: u32 = 0x7;
    let twins = test_twins();
    let pair = start_pair(&twins, false, &[]).await;
    let mut stream = tokio::net::TcpStream::connect(pair.b.addr)
        .await
        .expect("connect");
    stream
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .expect("preface");
    write_h2_frame(&mut stream, SETTINGS, 0, 0, &[])
        .await
        .expect("write an h2 frame");

    // The relay announces its stream cap and acknowledges ours.
    let mut advertised = None;
    let mut acked = false;
    while advertised.is_none() || !acked {
        let frame = read_h2_frame(&mut stream, Duration::from_secs(5))
            .await
            .expect("the relay speaks HTTP/2 with prior knowledge");
        if frame.kind != SETTINGS {
            continue;
        }
        if frame.flags & 1 == 1 {
            acked = true;
            continue;
        }
        for param in frame.payload.chunks_exact(6) {
            if u16::from_be_bytes([param[0], param[1]]) == MAX_CONCURRENT_STREAMS {
                advertised = Some(u32::from_be_bytes([param[2], param[3], param[4], param[5]]));
            }
        }
        advertised.get_or_insert(u32::MAX);
        write_h2_frame(&mut stream, SETTINGS, 1, 0, &[])
            .await
            .expect("write an h2 frame");
    }
    assert_eq!(advertised, Some(16), "SETTINGS_MAX_CONCURRENT_STREAMS");

    // 17 requests whose bodies never come: the first 16 wait for their bodies, the 17th is
    // refused at once instead of holding a 17th request (and its buffers) on one connection.
    let auth = LinkAuth::sign(
        &pair.a.key,
        "POST",
        ENDPOINT,
        A,
        B,
        rmb_proto::unix_now(),
        b"",
    );
    let authorization = auth.to_header();
    let block = hpack_literals(&[
        (":method", "POST"),
        (":scheme", "http"),
        (":path", ENDPOINT),
        (":authority", B),
        ("content-type", BATCH_CONTENT_TYPE),
        ("content-length", "100"),
        ("authorization", &authorization),
    ]);
    let ids: Vec<u32> = (0..17).map(|i| 1 + 2 * i).collect();
    for &id in &ids {
        write_h2_frame(&mut stream, HEADERS, 0x4, id, &block)
            .await
            .expect("write an h2 frame");
    }
    let mut reset = Vec::new();
    while let Some(frame) = read_h2_frame(&mut stream, Duration::from_secs(2)).await {
        assert_ne!(frame.kind, GOAWAY, "the connection itself stays up");
        if frame.kind == RST_STREAM {
            let code = frame
                .payload
                .get(..4)
                .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]));
            reset.push((frame.stream, code));
        }
    }
    assert_eq!(
        reset,
        vec![(33, Some(REFUSED_STREAM))],
        "only the 17th request is refused"
    );
}
