//! Hostile or broken input gets a typed error, never a panic.
// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use proptest::prelude::*;
use rmb_identity::jwt::Part;
use rmb_identity::{
    issue_token, parse_account_key, Claims, Identity, KeyError, KeyType, SessionToken, SharedKey,
    SignatureError, Signer, TokenError, TokenPolicy,
};

const MNEMONIC: &str =
    "recipe shock tenant rather soda urge between rural code kitchen pyramid save";

fn signer(kt: KeyType) -> Signer {
    Signer::from_secret(MNEMONIC, kt).unwrap()
}

#[test]
fn invalid_mnemonics_and_seeds_are_refused() {
    // Wrong checksum (last word changed).
    let bad_checksum = MNEMONIC.replace("save", "sail");
    assert_eq!(
        Identity::from_secret(&bad_checksum).err(),
        Some(KeyError::InvalidMnemonic)
    );
    assert_eq!(
        Identity::from_secret("not a mnemonic").err(),
        Some(KeyError::InvalidMnemonic)
    );
    assert_eq!(
        Identity::from_secret("").err(),
        Some(KeyError::InvalidMnemonic)
    );
    assert_eq!(
        Identity::from_secret("0x1234").err(),
        Some(KeyError::InvalidSeed)
    );
    assert_eq!(
        Identity::from_secret(&format!("0x{}", "zz".repeat(32))).err(),
        Some(KeyError::InvalidSeed)
    );
    // The zero seed is not a secp256k1 secret.
    assert_eq!(
        Identity::from_secret(&format!("0x{}", "00".repeat(32))).err(),
        Some(KeyError::InvalidSecp256k1Secret)
    );
    // Extra white space is tolerated.
    let spaced = format!("  {}  ", MNEMONIC.replace(' ', "   "));
    assert!(Identity::from_secret(&spaced).is_ok());
}

#[test]
fn wrong_length_keys_are_refused() {
    assert!(matches!(
        parse_account_key("0x1234"),
        Err(KeyError::InvalidPublicKey(_))
    ));
    assert!(matches!(
        parse_account_key("5F4cPrFhdgZzWz6gACetD1nHL3xnzNzVChpB5bKkRWgAG4Jw"),
        Err(KeyError::InvalidPublicKey(_))
    ));
    let id = Identity::from_secret(MNEMONIC).unwrap();
    for len in [0, 1, 32, 34, 64, 66] {
        assert_eq!(
            SharedKey::derive(&id, &vec![2u8; len]).err(),
            Some(rmb_identity::CryptoError::InvalidPeerKey(len))
        );
    }
    let key = SharedKey::derive(&id, &id.encryption_public_key()).unwrap();
    assert_eq!(
        key.decrypt(&[0u8; 27]),
        Err(rmb_identity::CryptoError::TooShort(27))
    );
    assert_eq!(
        "rsa".parse::<KeyType>(),
        Err(KeyError::UnknownKeyType("rsa".into()))
    );
}

#[test]
fn garbage_tokens_get_distinct_errors() {
    assert_eq!(SessionToken::parse("").err(), Some(TokenError::Segments(1)));
    assert_eq!(
        SessionToken::parse("a.b").err(),
        Some(TokenError::Segments(2))
    );
    assert_eq!(
        SessionToken::parse("a.b.c.d").err(),
        Some(TokenError::Segments(4))
    );
    assert_eq!(
        SessionToken::parse("!!.e30.AA").err(),
        Some(TokenError::Base64(Part::Header))
    );
    assert!(matches!(
        SessionToken::parse(&format!("{}.e30.AA", URL_SAFE_NO_PAD.encode("nope"))),
        Err(TokenError::Json(Part::Header, _))
    ));
    let header = URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#);
    assert_eq!(
        SessionToken::parse(&format!("{header}.e30.AA")).err(),
        Some(TokenError::UnsupportedAlg("none".into()))
    );
    let header = URL_SAFE_NO_PAD.encode(r#"{"alg":"RS512","typ":"JWT"}"#);
    assert!(matches!(
        SessionToken::parse(&format!("{header}.e30.AA")),
        Err(TokenError::Json(Part::Claims, _))
    ));
    let claims = URL_SAFE_NO_PAD.encode(r#"{"sub":1,"iat":1,"exp":2}"#);
    assert_eq!(
        SessionToken::parse(&format!("{header}.{claims}.***")).err(),
        Some(TokenError::Base64(Part::Signature))
    );
    let huge = "a".repeat(5000);
    assert_eq!(
        SessionToken::parse(&huge).err(),
        Some(TokenError::TooLong(5000))
    );
}

#[test]
fn token_times_are_enforced() {
    let s = signer(KeyType::Sr25519);
    let key = s.public_key();
    let policy = TokenPolicy {
        max_lifetime: 3600,
        clock_skew: 60,
    };
    let token = |iat: u64, exp: u64| {
        SessionToken::parse(&issue_token(
            &s,
            &Claims {
                sub: 7,
                iat,
                exp,
                sid: None,
                aud: None,
            },
        ))
        .unwrap()
    };
    let now = 1_800_000_000;
    assert!(token(now - 10, now + 100)
        .verify(&key, now, &policy)
        .is_ok());
    // Within skew either side.
    assert!(token(now + 50, now + 100)
        .verify(&key, now, &policy)
        .is_ok());
    assert!(token(now - 200, now - 30)
        .verify(&key, now, &policy)
        .is_ok());
    assert_eq!(
        token(now - 500, now - 100).verify(&key, now, &policy),
        Err(TokenError::Expired {
            exp: now - 100,
            now
        })
    );
    assert_eq!(
        token(now + 120, now + 200).verify(&key, now, &policy),
        Err(TokenError::NotYetValid {
            iat: now + 120,
            now
        })
    );
    assert_eq!(
        token(now, now + 7200).verify(&key, now, &policy),
        Err(TokenError::LifetimeTooLong {
            lifetime: 7200,
            max: 3600
        })
    );
    assert_eq!(
        token(now, now - 1).verify(&key, now, &policy),
        Err(TokenError::LifetimeTooLong {
            lifetime: 0,
            max: 3600
        })
    );
    // Wrong signature length inside a well-formed token.
    let good = issue_token(
        &s,
        &Claims {
            sub: 7,
            iat: now,
            exp: now + 10,
            sid: None,
            aud: None,
        },
    );
    let (head, _) = good.rsplit_once('.').unwrap();
    let short = format!("{head}.{}", URL_SAFE_NO_PAD.encode([b's'; 10]));
    assert_eq!(
        SessionToken::parse(&short)
            .unwrap()
            .verify(&key, now, &policy),
        Err(TokenError::Signature(SignatureError::BadLength(10)))
    );
}

proptest! {
    #[test]
    fn arbitrary_token_text_never_panics(text in ".{0,300}") {
        if let Ok(t) = SessionToken::parse(&text) {
            let _ = t.verify(&[7u8; 32], 0, &TokenPolicy::default());
        }
    }

    #[test]
    fn arbitrary_dotted_base64_never_panics(a in any::<Vec<u8>>(), b in any::<Vec<u8>>(), c in any::<Vec<u8>>()) {
        let text = format!("{}.{}.{}", URL_SAFE_NO_PAD.encode(a), URL_SAFE_NO_PAD.encode(b), URL_SAFE_NO_PAD.encode(c));
        if let Ok(t) = SessionToken::parse(&text) {
            let _ = t.verify(&[7u8; 32], 0, &TokenPolicy::default());
        }
    }

    #[test]
    fn arbitrary_ciphertexts_never_panic(field in any::<Vec<u8>>()) {
        let id = Identity::from_secret(MNEMONIC).unwrap();
        let key = SharedKey::derive(&id, &id.encryption_public_key()).unwrap();
        let _ = key.decrypt(&field);
    }

    #[test]
    fn arbitrary_secrets_never_panic(text in ".{0,200}") {
        let _ = Identity::from_secret(&text);
        let _ = parse_account_key(&text);
    }
}
