//! Decoding is bounded and never panics on hostile bytes.

use proptest::prelude::*;
use prost::bytes::Bytes;
use prost::Message as _;
use rmb_proto::{
    decode_envelope, decode_for_routing, Address, DecodeError, Envelope, Message, Payload, Request,
};

fn sample() -> Envelope {
    Envelope {
        uid: "u-1".into(),
        timestamp: 100,
        expiration: 60,
        source: Some(Address::new(1, None)),
        destination: Some(Address::new(2, Some("s".into()))),
        message: Some(Message::Request(Request {
            command: "cmd".into(),
        })),
        payload: Some(Payload::Plain(b"hello".to_vec())),
        ..Default::default()
    }
}

#[test]
fn truncated_protobuf_is_a_typed_error() {
    let bytes = sample().encode_to_vec();
    let mut failures = 0;
    for cut in 1..bytes.len() {
        if let Err(e) = decode_envelope(&bytes[..cut], 1024) {
            assert!(matches!(e, DecodeError::Malformed(_)));
            failures += 1;
        }
    }
    assert!(failures > 0, "some truncations must be refused");
}

#[test]
fn oversized_frame_is_refused_before_parsing() {
    let bytes = vec![0u8; 2048];
    match decode_envelope(&bytes, 1024) {
        Err(DecodeError::TooLarge { size, limit }) => assert_eq!((size, limit), (2048, 1024)),
        other => panic!("expected TooLarge, got {other:?}"),
    }
}

#[test]
fn expiry_arithmetic_saturates() {
    let mut env = sample();
    assert_eq!(env.expires_at(), 160);
    assert!(!env.is_expired(159));
    assert!(env.is_expired(160));
    assert_eq!(env.ttl_remaining(150), 10);
    env.stamp(u64::MAX - 1, 10);
    assert_eq!(env.expires_at(), u64::MAX);
}

#[test]
fn tags_are_matched_as_words() {
    let mut env = sample();
    env.tags = Some("fail-fast".into());
    assert!(env.has_tag("fail-fast"));
    env.tags = Some("x,fail-fast".into());
    assert!(env.has_tag("fail-fast"));
    env.tags = Some("fail-faster".into());
    assert!(!env.has_tag("fail-fast"));
}

#[test]
fn fail_fast_is_asked_by_our_tag_or_the_original_relays() {
    let mut env = sample();
    assert!(!env.wants_fail_fast());
    env.tags = Some("fail-fast".into());
    assert!(env.wants_fail_fast());
    // The original relay matched `fast-fail` anywhere in the tags.
    env.tags = Some("rmb,fast-fail".into());
    assert!(env.wants_fail_fast());
    env.tags = Some("fail-slow".into());
    assert!(!env.wants_fail_fast());
}

/// An envelope with every field set, so that a corruption can land in any of them.
fn full() -> Envelope {
    Envelope {
        tags: Some("fail-fast".into()),
        signature: Some(vec![7; 64]),
        schema: Some("application/json".into()),
        federation: Some("relay.example".into()),
        relays: vec!["r1.example".into(), "r2.example".into()],
        ..sample()
    }
}

/// The relay's routing decoder accepts exactly what the wire decoder accepts and reads the
/// same fields from it (compared by encoding both again).
fn routing_agrees_with_the_wire_decoder(bytes: &[u8]) -> Result<(), TestCaseError> {
    let wire = decode_envelope(bytes, usize::MAX);
    let route = decode_for_routing(&Bytes::copy_from_slice(bytes), usize::MAX);
    match (wire, route) {
        (Ok(w), Ok(r)) => prop_assert_eq!(w.encode_to_vec(), r.encode_to_vec()),
        (Err(_), Err(_)) => {}
        (w, r) => prop_assert!(
            false,
            "wire decoder ok: {}, routing decoder ok: {}",
            w.is_ok(),
            r.is_ok()
        ),
    }
    Ok(())
}

#[test]
fn the_routing_decoder_shares_the_payload_with_the_frame() {
    let frame = Bytes::from(full().encode_to_vec());
    let env = decode_for_routing(&frame, usize::MAX).unwrap();
    let Some(rmb_proto::route::envelope::Payload::Plain(payload)) = &env.payload else {
        panic!("payload not decoded");
    };
    assert_eq!(&payload[..], b"hello");
    assert_eq!(env.to_wire(), full());
    let inside = frame.as_ptr_range();
    assert!(inside.contains(&payload.as_ptr()), "payload was copied");
    assert_eq!(env.kind(), rmb_proto::Kind::Request);
    assert!(env.wants_fail_fast());
    assert_eq!((env.source_twin(), env.destination_twin()), (1, 2));
    assert!(matches!(
        decode_for_routing(&frame, 10),
        Err(DecodeError::TooLarge { .. })
    ));
}

proptest! {
    #[test]
    fn the_routing_decoder_agrees_on_arbitrary_bytes(
        bytes in proptest::collection::vec(any::<u8>(), 0..512)
    ) {
        routing_agrees_with_the_wire_decoder(&bytes)?;
    }

    #[test]
    fn the_routing_decoder_agrees_on_corrupted_envelopes(
        changes in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..4),
        cut in any::<usize>(),
    ) {
        let mut bytes = full().encode_to_vec();
        for (at, value) in changes {
            let at = at % bytes.len();
            bytes[at] = value;
        }
        routing_agrees_with_the_wire_decoder(&bytes)?;
        routing_agrees_with_the_wire_decoder(&bytes[..cut % (bytes.len() + 1)])?;
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = decode_envelope(&bytes, 1024);
    }

    #[test]
    fn encode_decode_round_trips(uid in ".{0,40}", ts in any::<u64>(), ttl in any::<u64>(),
                                 src in any::<u32>(), dst in any::<u32>(),
                                 data in proptest::collection::vec(any::<u8>(), 0..256)) {
        let env = Envelope {
            uid,
            timestamp: ts,
            expiration: ttl,
            source: Some(Address::new(src, None)),
            destination: Some(Address::new(dst, None)),
            message: Some(Message::Request(Request { command: "c".into() })),
            payload: Some(Payload::Cipher(data)),
            ..Default::default()
        };
        let decoded = decode_envelope(&env.encode_to_vec(), usize::MAX).unwrap();
        prop_assert_eq!(decoded, env);
    }
}
