//! The wire format reproduces, byte for byte, what the official TypeScript client produced.

use prost::Message as _;
use rmb_proto::{challenge, decode_envelope, Envelope};
use rmb_testkit::vectors::{unhex, Vectors};

#[test]
fn challenges_match_typescript_client() {
    let vectors = Vectors::load();
    assert_eq!(vectors.envelopes.len(), 6, "vector file changed shape");
    for v in &vectors.envelopes {
        let env = v.unsigned_envelope();
        assert_eq!(
            hex::encode(challenge(&env)),
            v.challenge_md5,
            "challenge of {}",
            v.name
        );
    }
}

#[test]
fn protobuf_bytes_match_typescript_client() {
    let vectors = Vectors::load();
    for v in &vectors.envelopes {
        let mut env = v.unsigned_envelope();
        env.signature = Some(unhex(&v.signature_ed25519));
        assert_eq!(
            hex::encode(env.encode_to_vec()),
            v.protobuf_with_ed25519_signature,
            "protobuf bytes of {}",
            v.name
        );
    }
}

#[test]
fn typescript_bytes_decode_to_the_same_fields() {
    let vectors = Vectors::load();
    for v in &vectors.envelopes {
        let bytes = unhex(&v.protobuf_with_ed25519_signature);
        let decoded = decode_envelope(&bytes, 1 << 20).expect("vector decodes");
        let mut expected = v.unsigned_envelope();
        expected.signature = Some(unhex(&v.signature_ed25519));
        assert_eq!(decoded, expected, "decoded fields of {}", v.name);
        assert_eq!(hex::encode(challenge(&decoded)), v.challenge_md5);
    }
}

type Tamper = Box<dyn Fn(&mut Envelope)>;

#[test]
fn every_covered_field_changes_the_challenge() {
    let vectors = Vectors::load();
    let base = vectors.envelopes[1].unsigned_envelope();
    let original = challenge(&base);
    let tampers: Vec<(&str, Tamper)> = vec![
        ("uid", Box::new(|e| e.uid.push('x'))),
        ("tags", Box::new(|e| e.tags = Some("other".into()))),
        ("timestamp", Box::new(|e| e.timestamp += 1)),
        ("expiration", Box::new(|e| e.expiration += 1)),
        (
            "source twin",
            Box::new(|e| e.source.as_mut().unwrap().twin += 1),
        ),
        (
            "source connection",
            Box::new(|e| e.source.as_mut().unwrap().connection = None),
        ),
        (
            "destination twin",
            Box::new(|e| e.destination.as_mut().unwrap().twin += 1),
        ),
        (
            "command",
            Box::new(|e| {
                e.message = Some(rmb_proto::Message::Request(rmb_proto::Request {
                    command: "other".into(),
                }))
            }),
        ),
        ("schema", Box::new(|e| e.schema = None)),
        ("federation", Box::new(|e| e.federation = Some("x".into()))),
        (
            "payload",
            Box::new(|e| e.payload = Some(rmb_proto::Payload::Plain(b"[1]".to_vec()))),
        ),
        ("relays", Box::new(|e| e.relays.push("r".into()))),
    ];
    for (name, tamper) in tampers {
        let mut env = base.clone();
        tamper(&mut env);
        assert_ne!(
            challenge(&env),
            original,
            "changing {name} must change the challenge"
        );
    }
}
