//! Decoding is bounded and never panics on hostile bytes.

use proptest::prelude::*;
use prost::Message as _;
use rmb_proto::{decode_envelope, Address, DecodeError, Envelope, Message, Payload, Request};

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

proptest! {
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
