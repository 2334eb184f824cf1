//! A request to the signed federation endpoint, as the inbound handler sees it: the
//! `Authorization` header, the body hash check, the batch split, each envelope decoded and its
//! signature checked; plus the remote relay's key document (JSON) used to find the key.
//!
//! Input layout: first byte selects the part, the rest is split at the first 0x00 into header
//! and body (header) or is the document (key document).
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use rmb_federation::auth::{body_hash, ENDPOINT};
use rmb_federation::{split_batch, KeyDocument, LinkAuth};

const KEY: [u8; 32] = [
    0x84, 0xa2, 0x4f, 0xf3, 0x6e, 0xfe, 0xf6, 0x06, 0x8a, 0x56, 0xac, 0x96, 0x51, 0x25, 0xf9, 0x4d,
    0x60, 0xdc, 0xac, 0x42, 0x8d, 0x2b, 0x3e, 0x45, 0xfa, 0x9a, 0x16, 0x08, 0x37, 0xbe, 0x89, 0xae,
];

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    if selector & 1 == 1 {
        if let Ok(doc) = serde_json::from_slice::<KeyDocument>(rest) {
            for entry in &doc.keys {
                let _ = doc.key(&entry.kid, 0);
                let _ = doc.key(&entry.kid, u64::MAX);
            }
        }
        return;
    }
    let split = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
    let header = String::from_utf8_lossy(&rest[..split]);
    let body = Bytes::copy_from_slice(rest.get(split + 1..).unwrap_or_default());
    if let Ok(auth) = LinkAuth::parse(Some(&header)) {
        let _ = auth.canonical("POST", ENDPOINT);
        let _ = auth.to_header();
        let _ = auth.verify("POST", ENDPOINT, &KEY);
        let _ = auth.body_sha256 == body_hash(&body);
    }
    if let Ok(frames) = split_batch(body, 1024) {
        for frame in frames {
            if let Ok(env) = rmb_proto::decode_envelope(&frame, 64 * 1024) {
                let _ = rmb_identity::verify_envelope(&env, &KEY);
            }
        }
    }
});
