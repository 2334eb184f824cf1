//! Property tests: whatever a twin signs, encrypts or issues, the other side accepts, for both
//! key types, over random envelopes.

use proptest::prelude::*;
use rmb_identity::{
    issue_token, sign_envelope, verify_envelope, Claims, Identity, KeyType, SessionToken,
    SharedKey, Signer, TokenPolicy,
};
use rmb_proto::{Address, Envelope, Error, Message, Payload, Request, Response};

fn key_type() -> impl Strategy<Value = KeyType> {
    prop_oneof![Just(KeyType::Ed25519), Just(KeyType::Sr25519)]
}

fn message() -> impl Strategy<Value = Option<Message>> {
    prop_oneof![
        ".{0,30}".prop_map(|command| Some(Message::Request(Request { command }))),
        Just(Some(Message::Response(Response {}))),
        (any::<u32>(), ".{0,30}")
            .prop_map(|(code, message)| Some(Message::Error(Error { code, message }))),
        Just(None),
    ]
}

prop_compose! {
    fn envelope()(uid in ".{0,40}", tags in proptest::option::of(".{0,10}"),
                  timestamp in any::<u64>(), expiration in any::<u64>(),
                  src in any::<u32>(), src_sid in proptest::option::of("[a-z0-9-]{1,12}"),
                  dst in any::<u32>(), dst_sid in proptest::option::of("[a-z0-9-]{1,12}"),
                  message in message(), schema in proptest::option::of("[a-z/]{0,20}"),
                  data in proptest::collection::vec(any::<u8>(), 0..300), cipher in any::<bool>(),
                  relays in proptest::collection::vec("[a-z.]{1,15}", 0..3)) -> Envelope {
        Envelope {
            uid, tags, timestamp, expiration,
            source: Some(Address::new(src, src_sid)),
            destination: Some(Address::new(dst, dst_sid)),
            message, signature: None, schema, federation: None,
            payload: Some(if cipher { Payload::Cipher(data) } else { Payload::Plain(data) }),
            relays,
        }
    }
}

fn seed_identity(seed: [u8; 32]) -> Option<Identity> {
    Identity::from_seed(&seed).ok()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn signed_envelopes_verify(env in envelope(), seed in any::<[u8; 32]>(), kt in key_type()) {
        let Some(id) = seed_identity(seed) else { return Ok(()) };
        let signer = Signer::new(id, kt);
        let mut env = env;
        sign_envelope(&mut env, &signer);
        prop_assert_eq!(verify_envelope(&env, &signer.public_key()), Ok(kt));
        // After a wire round trip too.
        let decoded = rmb_proto::decode_envelope(&env.to_bytes(), usize::MAX).unwrap();
        prop_assert_eq!(verify_envelope(&decoded, &signer.public_key()), Ok(kt));
    }

    #[test]
    fn encrypted_payloads_decrypt(a in any::<[u8; 32]>(), b in any::<[u8; 32]>(),
                                  data in proptest::collection::vec(any::<u8>(), 0..2000)) {
        let (Some(a), Some(b)) = (seed_identity(a), seed_identity(b)) else { return Ok(()) };
        let ka = SharedKey::derive(&a, &b.encryption_public_key()).unwrap();
        let kb = SharedKey::derive(&b, &a.encryption_public_key()).unwrap();
        let field = ka.encrypt(&data);
        prop_assert_eq!(field.len(), data.len() + 28);
        prop_assert_eq!(kb.decrypt(&field).unwrap(), data);
    }

    #[test]
    fn issued_tokens_verify(seed in any::<[u8; 32]>(), kt in key_type(), sub in 1u32..,
                            sid in proptest::option::of("[a-zA-Z0-9_-]{1,20}"),
                            iat in 1_000_000u64..4_000_000_000, ttl in 1u64..=1000) {
        let Some(id) = seed_identity(seed) else { return Ok(()) };
        let signer = Signer::new(id, kt);
        let claims = Claims { sub, iat, exp: iat + ttl, sid, aud: None };
        let token = issue_token(&signer, &claims);
        let parsed = SessionToken::parse(&token).unwrap();
        let verified = parsed.verify(&signer.public_key(), iat, &TokenPolicy::default()).unwrap();
        prop_assert_eq!(verified, &claims);
    }
}
