//! The session token from the upgrade request (query string or bearer header): parse, then
//! verify against a fixed ed25519 key with the default policy at the vectors' time.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rmb_identity::{SessionToken, TokenPolicy};

const ID0_ED25519: [u8; 32] = [
    0x84, 0xa2, 0x4f, 0xf3, 0x6e, 0xfe, 0xf6, 0x06, 0x8a, 0x56, 0xac, 0x96, 0x51, 0x25, 0xf9, 0x4d,
    0x60, 0xdc, 0xac, 0x42, 0x8d, 0x2b, 0x3e, 0x45, 0xfa, 0x9a, 0x16, 0x08, 0x37, 0xbe, 0x89, 0xae,
];

fuzz_target!(|data: &[u8]| {
    // The relay sees the token as text (URL query or header value); lossy keeps every input.
    let text = String::from_utf8_lossy(data);
    let Ok(token) = SessionToken::parse(&text) else {
        return;
    };
    let claims = token.claims().clone();
    let policy = TokenPolicy::default();
    for now in [1_732_781_000, claims.iat, claims.exp, u64::MAX, 0] {
        if let Ok(ok) = token.verify(&ID0_ED25519, now, &policy) {
            assert!(ok.exp >= ok.iat && ok.exp - ok.iat <= policy.max_lifetime);
        }
    }
});
