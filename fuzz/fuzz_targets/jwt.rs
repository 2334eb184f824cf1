//! The session token from the upgrade request. Two inputs in one: arbitrary claim fields
//! assembled into a token and signed with a fixed key (so generated input, not only the seeds,
//! reaches the checks after the signature), optionally with one byte of the token changed;
//! and raw text as the relay sees it (query string or header value). Both are parsed, then
//! verified at several clocks with the default policy; any accepted token must have a lifetime
//! within the policy, claims exactly as signed, and pass the audience check only for its own
//! audience.
#![no_main]

use libfuzzer_sys::arbitrary::{self, Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use rmb_identity::{issue_token, Claims, Identity, KeyType, SessionToken, Signer, TokenPolicy};

#[derive(Debug)]
struct Input {
    sub: u32,
    iat: u64,
    /// Most generated lifetimes are short, so accepted tokens are common.
    lifetime: u16,
    /// An `exp` of its own instead of `iat + lifetime` (negative, huge, overflowing).
    exp: Option<u64>,
    sid: Option<String>,
    aud: Option<String>,
    sr25519: bool,
    /// Byte position and xor mask for one changed byte of the issued token.
    tamper: Option<(u16, u8)>,
    /// Verifier clock relative to `iat`.
    clock: i32,
    /// Raw token text, checked as the relay would check a stranger's.
    raw: Vec<u8>,
}

// Field by field (libfuzzer-sys brings `arbitrary` without its derive macro).
impl<'a> Arbitrary<'a> for Input {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        Ok(Input {
            sub: u.arbitrary()?,
            iat: u.arbitrary()?,
            lifetime: u.arbitrary()?,
            exp: u.arbitrary()?,
            sid: u.arbitrary()?,
            aud: u.arbitrary()?,
            sr25519: u.arbitrary()?,
            tamper: u.arbitrary()?,
            clock: u.arbitrary()?,
            raw: u.arbitrary()?,
        })
    }
}

fn check(token: &SessionToken, account: &[u8; 32], at: &[u64], issued: Option<&Claims>) {
    let policy = TokenPolicy::default();
    for &now in at {
        if let Ok(ok) = token.verify(account, now, &policy) {
            assert!(ok.exp >= ok.iat && ok.exp - ok.iat <= policy.max_lifetime);
            assert!(ok.iat <= now.saturating_add(policy.clock_skew));
            assert!(ok.exp.saturating_add(policy.clock_skew) >= now);
            if let Some(issued) = issued {
                assert_eq!(ok, issued, "a verified token says what was signed");
            }
            let mine = vec!["relay.example".to_string()];
            let fits = ok.check_audience(&mine).is_ok();
            let expected = ok
                .aud
                .as_deref()
                .is_none_or(|a| a.eq_ignore_ascii_case("relay.example"));
            assert_eq!(fits, expected);
        }
    }
}

fuzz_target!(|input: Input| {
    let Ok(identity) = Identity::from_seed(&[7u8; 32]) else {
        return;
    };
    let key_type = if input.sr25519 {
        KeyType::Sr25519
    } else {
        KeyType::Ed25519
    };
    let signer = Signer::new(identity, key_type);
    let account = signer.public_key();
    let claims = Claims {
        sub: input.sub,
        iat: input.iat,
        exp: input
            .exp
            .unwrap_or(input.iat.saturating_add(u64::from(input.lifetime))),
        sid: input.sid,
        aud: input.aud,
    };
    let mut token = issue_token(&signer, &claims).into_bytes();
    let tampered = match input.tamper {
        Some((at, mask)) if mask != 0 && !token.is_empty() => {
            let i = usize::from(at) % token.len();
            token[i] ^= mask;
            true
        }
        _ => false,
    };
    let text = String::from_utf8_lossy(&token);
    let now = input.iat.saturating_add_signed(i64::from(input.clock));
    let clocks = [now, claims.iat, claims.exp, 0, u64::MAX];
    if let Ok(parsed) = SessionToken::parse(&text) {
        check(&parsed, &account, &clocks, (!tampered).then_some(&claims));
    }
    let raw = String::from_utf8_lossy(&input.raw);
    if let Ok(parsed) = SessionToken::parse(&raw) {
        let stranger_clocks = [now, parsed.claims().iat, parsed.claims().exp, 0, u64::MAX];
        check(&parsed, &account, &stranger_clocks, None);
    }
});
