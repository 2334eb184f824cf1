//! Every identity, signature, token and ciphertext the official TypeScript client produced is
//! reproduced (or, for randomized sr25519, verified), and tampering breaks verification.
// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use rmb_identity::{
    sign_envelope, verify_envelope, verify_prefixed, Identity, KeyType, SessionToken, SharedKey,
    SignatureError, Signer, TokenError, TokenPolicy,
};
use rmb_testkit::vectors::{unhex, Vectors};

fn identity(v: &Vectors, name: &str) -> Identity {
    Identity::from_secret(&v.identity(name).mnemonic).expect("vector mnemonic is valid")
}

fn account(hex_key: &str) -> [u8; 32] {
    unhex(hex_key).try_into().expect("32-byte key")
}

#[test]
fn mnemonics_derive_the_typescript_keys() {
    let v = Vectors::load();
    assert_eq!(v.identities.len(), 2);
    for idv in &v.identities {
        let id = Identity::from_secret(&idv.mnemonic).unwrap();
        assert_eq!(
            hex::encode(id.public_key(KeyType::Ed25519)),
            idv.ed25519_public
        );
        assert_eq!(
            hex::encode(id.public_key(KeyType::Sr25519)),
            idv.sr25519_public
        );
        assert_eq!(id.ss58(KeyType::Ed25519), idv.ed25519_ss58);
        assert_eq!(id.ss58(KeyType::Sr25519), idv.sr25519_ss58);
        assert_eq!(
            hex::encode(id.encryption_public_key()),
            idv.secp256k1_public_compressed
        );
        // The secp256k1 secret is the mini-secret, so the hex seed gives the same identity.
        let from_seed = Identity::from_secret(&format!("0x{}", idv.secp256k1_secret)).unwrap();
        assert_eq!(
            from_seed.public_key(KeyType::Sr25519),
            id.public_key(KeyType::Sr25519)
        );
        assert_eq!(
            from_seed.encryption_public_key(),
            id.encryption_public_key()
        );
    }
}

#[test]
fn ed25519_envelope_signatures_are_byte_identical() {
    let v = Vectors::load();
    for ev in &v.envelopes {
        let signer = Signer::new(identity(&v, &ev.signer), KeyType::Ed25519);
        let mut env = ev.unsigned_envelope();
        sign_envelope(&mut env, &signer);
        assert_eq!(
            hex::encode(env.signature.as_ref().unwrap()),
            ev.signature_ed25519,
            "ed25519 signature of {}",
            ev.name
        );
        let key = account(&v.identity(&ev.signer).ed25519_public);
        assert_eq!(verify_envelope(&env, &key), Ok(KeyType::Ed25519));
    }
}

#[test]
fn sr25519_envelope_signatures_from_typescript_verify() {
    let v = Vectors::load();
    for ev in &v.envelopes {
        let mut env = ev.unsigned_envelope();
        env.signature = Some(unhex(&ev.signature_sr25519_verify_only));
        let key = account(&v.identity(&ev.signer).sr25519_public);
        assert_eq!(
            verify_envelope(&env, &key),
            Ok(KeyType::Sr25519),
            "{}",
            ev.name
        );
    }
}

#[test]
fn tampering_any_field_or_signature_byte_fails_verification() {
    let v = Vectors::load();
    for ev in &v.envelopes {
        let key = account(&v.identity(&ev.signer).ed25519_public);
        let mut env = ev.unsigned_envelope();
        env.signature = Some(unhex(&ev.signature_ed25519));

        let mut other = env.clone();
        other.timestamp += 1;
        assert_eq!(verify_envelope(&other, &key), Err(SignatureError::Invalid));
        let mut other = env.clone();
        other.uid.push('0');
        assert_eq!(verify_envelope(&other, &key), Err(SignatureError::Invalid));
        let mut other = env.clone();
        other.destination.as_mut().unwrap().twin += 1;
        assert_eq!(verify_envelope(&other, &key), Err(SignatureError::Invalid));

        let sig = env.signature.clone().unwrap();
        for i in 1..sig.len() {
            let mut bad = sig.clone();
            bad[i] ^= 0x01;
            let mut other = env.clone();
            other.signature = Some(bad);
            assert_eq!(
                verify_envelope(&other, &key),
                Err(SignatureError::Invalid),
                "{}: flipping signature byte {i}",
                ev.name
            );
        }
        // Another twin's key does not verify it.
        let other_key = account(&v.identity("id1").ed25519_public);
        if other_key != key {
            assert_eq!(
                verify_envelope(&env, &other_key),
                Err(SignatureError::Invalid)
            );
        }
    }
}

#[test]
fn signature_prefix_and_length_are_checked() {
    let v = Vectors::load();
    let ev = &v.envelopes[0];
    let key = account(&v.identity(&ev.signer).ed25519_public);
    let mut env = ev.unsigned_envelope();
    let sig = unhex(&ev.signature_ed25519);

    env.signature = None;
    assert_eq!(verify_envelope(&env, &key), Err(SignatureError::Missing));
    env.signature = Some(sig[..64].to_vec());
    assert_eq!(
        verify_envelope(&env, &key),
        Err(SignatureError::BadLength(64))
    );
    let mut wrong_scheme = sig.clone();
    wrong_scheme[0] = b'x';
    env.signature = Some(wrong_scheme);
    assert_eq!(
        verify_envelope(&env, &key),
        Err(SignatureError::UnknownScheme(b'x'))
    );
    // An ed25519 signature labelled sr25519 fails.
    let mut relabelled = sig.clone();
    relabelled[0] = b's';
    env.signature = Some(relabelled);
    assert_eq!(verify_envelope(&env, &key), Err(SignatureError::Invalid));
}

#[test]
fn typescript_tokens_verify_and_ed25519_tokens_reissue_identically() {
    let v = Vectors::load();
    let policy = TokenPolicy {
        max_lifetime: 3600,
        clock_skew: 60,
    };
    for jv in &v.jwts {
        let idv = v.identity(&jv.identity);
        let at = jv.iat + 10;
        for (token, key) in [
            (&jv.token_ed25519, &idv.ed25519_public),
            (&jv.token_sr25519_verify_only, &idv.sr25519_public),
        ] {
            let parsed = SessionToken::parse(token).unwrap();
            let claims = parsed.verify(&account(key), at, &policy).unwrap();
            assert_eq!(claims.sub, jv.twin);
            assert_eq!(claims.sid, jv.sid);
            assert_eq!((claims.iat, claims.exp), (jv.iat, jv.exp));
        }
        let signer = Signer::new(identity(&v, &jv.identity), KeyType::Ed25519);
        let reissued = rmb_identity::issue_token(
            &signer,
            &rmb_identity::Claims {
                sub: jv.twin,
                iat: jv.iat,
                exp: jv.exp,
                sid: jv.sid.clone(),
                aud: None,
            },
        );
        assert_eq!(&reissued, &jv.token_ed25519);
    }
}

#[test]
fn tampered_tokens_are_refused() {
    let v = Vectors::load();
    let jv = &v.jwts[1];
    let key = account(&v.identity(&jv.identity).ed25519_public);
    let policy = TokenPolicy::default();
    let at = jv.iat + 10;

    // Swap in claims for another twin under the same signature.
    let mut parts: Vec<String> = jv.token_ed25519.split('.').map(String::from).collect();
    let claims = format!(r#"{{"sub":99,"iat":{},"exp":{}}}"#, jv.iat, jv.exp);
    parts[1] = URL_SAFE_NO_PAD.encode(claims);
    let forged = SessionToken::parse(&parts.join(".")).unwrap();
    assert_eq!(forged.claims().sub, 99);
    assert_eq!(
        forged.verify(&key, at, &policy),
        Err(TokenError::Signature(SignatureError::Invalid))
    );

    // Another twin's key.
    let wrong = account(&v.identity("id0").ed25519_public);
    let token = SessionToken::parse(&jv.token_ed25519).unwrap();
    assert_eq!(
        token.verify(&wrong, at, &policy),
        Err(TokenError::Signature(SignatureError::Invalid))
    );
}

#[test]
fn shared_keys_and_ciphertexts_match_typescript() {
    let v = Vectors::load();
    for ev in &v.e2e {
        let sender = identity(&v, &ev.sender);
        let receiver = identity(&v, &ev.receiver);
        let k_sender = SharedKey::derive(&sender, &receiver.encryption_public_key()).unwrap();
        let k_receiver = SharedKey::derive(&receiver, &sender.encryption_public_key()).unwrap();
        assert_eq!(hex::encode(k_sender.as_bytes()), ev.shared_key);
        assert_eq!(k_sender, k_receiver, "ECDH is symmetric");

        let field = unhex(&ev.cipher_field);
        let plain = k_receiver.decrypt(&field).unwrap();
        assert_eq!(plain, ev.plaintext.as_bytes());

        // Same nonce, same key → same bytes as the TypeScript client.
        let nonce: [u8; 12] = field[..12].try_into().unwrap();
        assert_eq!(
            k_sender.encrypt_with_nonce(&nonce, ev.plaintext.as_bytes()),
            field
        );

        // Any flipped byte fails authentication.
        for i in [0, 12, field.len() / 2, field.len() - 1] {
            let mut bad = field.clone();
            bad[i] ^= 0x80;
            assert!(
                k_receiver.decrypt(&bad).is_err(),
                "flipped byte {i} must fail"
            );
        }
    }
}

#[test]
fn prefixed_verification_checks_the_account() {
    let v = Vectors::load();
    let id = identity(&v, "id0");
    let sig = id.sign(KeyType::Sr25519, b"hello");
    let key = id.public_key(KeyType::Sr25519);
    assert_eq!(verify_prefixed(&key, b"hello", &sig), Ok(KeyType::Sr25519));
    assert_eq!(
        verify_prefixed(&key, b"hellO", &sig),
        Err(SignatureError::Invalid)
    );
}
