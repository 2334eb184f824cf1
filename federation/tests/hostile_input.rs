//! Hostile input to the federation parsers: any `Authorization` header value and any batch
//! body give a typed answer, never a panic, and well-formed values round-trip.

use proptest::prelude::*;
use rmb_federation::{encode_batch, LinkAuth, RelayKey};

proptest! {
    #[test]
    fn any_authorization_header_parses_or_is_refused(value in ".{0,400}") {
        let _ = LinkAuth::parse(Some(&value));
    }

    #[test]
    fn mutated_headers_never_verify(flip in 0usize..200, byte in any::<u8>()) {
        let key = RelayKey::generate(1);
        let auth = LinkAuth::sign(&key, "POST", "/federation/v1/envelopes", "a.example", "b.example", 7, b"body");
        let mut header = auth.to_header().into_bytes();
        let at = flip % header.len();
        if header[at] == byte {
            return Ok(());
        }
        header[at] = byte;
        if let Ok(text) = String::from_utf8(header) {
            if let Ok(parsed) = LinkAuth::parse(Some(&text)) {
                if parsed != auth {
                    prop_assert!(!parsed.verify("POST", "/federation/v1/envelopes", &key.public_key()));
                }
            }
        }
    }

    #[test]
    fn envelopes_survive_batch_framing(uids in proptest::collection::vec("[a-z0-9-]{0,40}", 0..20)) {
        let envelopes: Vec<rmb_proto::Envelope> = uids
            .iter()
            .map(|uid| rmb_proto::Envelope { uid: uid.clone(), ..Default::default() })
            .collect();
        let body = encode_batch(&envelopes);
        let frames = rmb_federation::split_batch(body, usize::MAX).expect("well formed");
        prop_assert_eq!(frames.len(), envelopes.len());
        for (frame, env) in frames.iter().zip(&envelopes) {
            let decoded = <rmb_proto::Envelope as prost::Message>::decode(frame.clone()).expect("decodes");
            prop_assert_eq!(&decoded, env);
        }
    }

    #[test]
    fn any_batch_body_splits_or_is_refused(body in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = rmb_federation::split_batch(bytes::Bytes::from(body), usize::MAX);
    }
}
