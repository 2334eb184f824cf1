//! `rmbctl` run as a process: its outputs reproduce the interop vectors and its exit codes
//! tell success from failure.

mod support;

use std::process::Command;

use rmb_testkit::vectors::Vectors;

use support::{json_of, rmbctl};

#[test]
fn keys_prints_the_typescript_public_keys() {
    let v = Vectors::load();
    for id in &v.identities {
        let out = rmbctl(&["keys", "--mnemonic", &id.mnemonic, "--json"]);
        assert!(out.status.success());
        let j = json_of(&out);
        assert_eq!(j["ed25519_public"], id.ed25519_public.as_str());
        assert_eq!(j["ed25519_ss58"], id.ed25519_ss58.as_str());
        assert_eq!(j["sr25519_public"], id.sr25519_public.as_str());
        assert_eq!(j["sr25519_ss58"], id.sr25519_ss58.as_str());
        assert_eq!(
            j["secp256k1_public"],
            id.secp256k1_public_compressed.as_str()
        );
    }
}

#[test]
fn keys_reads_the_mnemonic_from_the_environment() {
    let v = Vectors::load();
    let out = Command::new(env!("CARGO_BIN_EXE_rmbctl"))
        .args(["keys", "--json"])
        .env("RMB_MNEMONIC", &v.identities[0].mnemonic)
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(
        json_of(&out)["ed25519_public"],
        v.identities[0].ed25519_public.as_str()
    );
}

#[test]
fn bad_mnemonic_fails_with_a_reason() {
    let out = rmbctl(&["keys", "--mnemonic", "one two three", "--json"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(json_of(&out)["error"]
        .as_str()
        .unwrap()
        .contains("invalid mnemonic"));
}

#[test]
fn envelope_decode_shows_fields_and_challenge() {
    let v = Vectors::load();
    for ev in &v.envelopes {
        let out = rmbctl(&[
            "envelope",
            "decode",
            &ev.protobuf_with_ed25519_signature,
            "--json",
        ]);
        assert!(out.status.success(), "{}", ev.name);
        let j = json_of(&out);
        assert_eq!(j["challenge"], ev.challenge_md5.as_str());
        assert_eq!(j["uid"], ev.fields.uid.as_str());
        assert_eq!(j["source"]["twin"], ev.fields.source.twin);
        assert_eq!(j["signature"], ev.signature_ed25519.as_str());
    }
    // Base64 input and the human format work too.
    use base64::Engine as _;
    let bytes = hex::decode(&v.envelopes[0].protobuf_with_ed25519_signature).unwrap();
    let b64 = base64::engine::general_purpose::STANDARD.encode(bytes);
    let out = rmbctl(&["envelope", "decode", &b64]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("challenge") && text.contains(&v.envelopes[0].challenge_md5));
    assert!(text.contains("message.command") && text.contains("calculator.add"));
}

#[test]
fn envelope_decode_refuses_garbage() {
    let out = rmbctl(&["envelope", "decode", "ffffffff"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not an RMB envelope"));
}

#[test]
fn envelope_verify_exit_code_follows_the_signature() {
    let v = Vectors::load();
    for ev in &v.envelopes {
        let signer = v.identity(&ev.signer);
        let other = v.identities.iter().find(|i| i.name != ev.signer).unwrap();
        let pb = &ev.protobuf_with_ed25519_signature;
        let good = rmbctl(&[
            "envelope",
            "verify",
            pb,
            "--public-key",
            &signer.ed25519_public,
        ]);
        assert_eq!(good.status.code(), Some(0), "{}", ev.name);
        let by_ss58 = rmbctl(&[
            "envelope",
            "verify",
            pb,
            "--public-key",
            &signer.ed25519_ss58,
        ]);
        assert_eq!(by_ss58.status.code(), Some(0));
        let wrong = rmbctl(&[
            "envelope",
            "verify",
            pb,
            "--public-key",
            &other.ed25519_public,
            "--json",
        ]);
        assert_eq!(wrong.status.code(), Some(1));
        assert_eq!(json_of(&wrong)["valid"], false);
    }
    // One flipped payload byte (the last byte of the frame) breaks it.
    let ev = &v.envelopes[0];
    let mut bytes = hex::decode(&ev.protobuf_with_ed25519_signature).unwrap();
    *bytes.last_mut().unwrap() ^= 1;
    let out = rmbctl(&[
        "envelope",
        "verify",
        &hex::encode(bytes),
        "--public-key",
        &v.identity(&ev.signer).ed25519_public,
    ]);
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn token_verify_checks_time_and_key() {
    let v = Vectors::load();
    for jv in &v.jwts {
        let id = v.identity(&jv.identity);
        let at = (jv.iat + 5).to_string();
        for (token, key) in [
            (&jv.token_ed25519, &id.ed25519_public),
            (&jv.token_sr25519_verify_only, &id.sr25519_public),
        ] {
            let ok = rmbctl(&[
                "token",
                "verify",
                token,
                "--public-key",
                key,
                "--at",
                &at,
                "--json",
            ]);
            assert_eq!(ok.status.code(), Some(0));
            assert_eq!(json_of(&ok)["claims"]["sub"], jv.twin);
            // As of now, the 2024 vectors are long expired.
            let now = rmbctl(&["token", "verify", token, "--public-key", key, "--json"]);
            assert_eq!(now.status.code(), Some(1));
            assert!(json_of(&now)["reason"]
                .as_str()
                .unwrap()
                .contains("expired"));
        }
    }
}

#[test]
fn issued_tokens_verify_for_both_key_types() {
    let v = Vectors::load();
    let id = &v.identities[1];
    for (kt, key) in [
        ("ed25519", &id.ed25519_public),
        ("sr25519", &id.sr25519_public),
    ] {
        let issued = rmbctl(&[
            "token",
            "issue",
            "--mnemonic",
            &id.mnemonic,
            "--key-type",
            kt,
            "--twin",
            "11",
            "--sid",
            "s1",
            "--ttl",
            "120",
            "--json",
        ]);
        assert!(issued.status.success());
        let token = json_of(&issued)["token"].as_str().unwrap().to_string();
        let ok = rmbctl(&["token", "verify", &token, "--public-key", key, "--json"]);
        assert_eq!(ok.status.code(), Some(0), "{kt}");
        assert_eq!(json_of(&ok)["claims"]["sid"], "s1");
        let other = &v.identities[0].ed25519_public;
        let bad = rmbctl(&["token", "verify", &token, "--public-key", other]);
        assert_eq!(bad.status.code(), Some(1));
    }
}

#[test]
fn e2e_decrypts_typescript_ciphertexts_and_round_trips() {
    let v = Vectors::load();
    let ev = &v.e2e[0];
    let sender = v.identity(&ev.sender);
    let receiver = v.identity(&ev.receiver);
    let out = rmbctl(&[
        "e2e",
        "decrypt",
        "--mnemonic",
        &receiver.mnemonic,
        "--peer-pk",
        &sender.secp256k1_public_compressed,
        &ev.cipher_field,
        "--json",
    ]);
    assert!(out.status.success());
    assert_eq!(json_of(&out)["plaintext"], ev.plaintext.as_str());

    let enc = rmbctl(&[
        "e2e",
        "encrypt",
        "--mnemonic",
        &sender.mnemonic,
        "--peer-pk",
        &receiver.secp256k1_public_compressed,
        "round trip",
        "--json",
    ]);
    let cipher = json_of(&enc)["cipher"].as_str().unwrap().to_string();
    let dec = rmbctl(&[
        "e2e",
        "decrypt",
        "--mnemonic",
        &receiver.mnemonic,
        "--peer-pk",
        &sender.secp256k1_public_compressed,
        &cipher,
        "--json",
    ]);
    assert_eq!(json_of(&dec)["plaintext"], "round trip");

    // The wrong receiver cannot decrypt.
    let wrong = rmbctl(&[
        "e2e",
        "decrypt",
        "--mnemonic",
        &sender.mnemonic,
        "--peer-pk",
        &sender.secp256k1_public_compressed,
        &cipher,
    ]);
    assert_eq!(wrong.status.code(), Some(1));
}

#[test]
fn keys_generate_prints_a_fresh_mnemonic_and_its_keys() {
    let first = rmbctl(&["keys", "--generate", "--json"]);
    assert!(first.status.success());
    let first = json_of(&first);
    let mnemonic = first["mnemonic"].as_str().expect("a mnemonic").to_string();
    assert_eq!(mnemonic.split(' ').count(), 12, "{mnemonic}");
    // The printed keys are the ones the mnemonic derives.
    let derived = json_of(&rmbctl(&["keys", "--mnemonic", &mnemonic, "--json"]));
    for key in [
        "ed25519_public",
        "ed25519_ss58",
        "sr25519_public",
        "sr25519_ss58",
        "secp256k1_public",
    ] {
        assert_eq!(first[key], derived[key], "{key}");
    }
    let second = json_of(&rmbctl(&["keys", "--generate", "--json"]));
    assert_ne!(first["mnemonic"], second["mnemonic"]);
}

#[test]
fn keys_generate_excludes_a_mnemonic_but_ignores_the_environment() {
    let v = Vectors::load();
    let both = rmbctl(&[
        "keys",
        "--generate",
        "--mnemonic",
        &v.identities[0].mnemonic,
    ]);
    assert_eq!(both.status.code(), Some(2));
    let with_env = Command::new(env!("CARGO_BIN_EXE_rmbctl"))
        .args(["keys", "--generate", "--json"])
        .env("RMB_MNEMONIC", &v.identities[0].mnemonic)
        .output()
        .unwrap();
    assert!(with_env.status.success());
    assert_ne!(
        json_of(&with_env)["ed25519_public"],
        v.identities[0].ed25519_public.as_str()
    );
    let neither = rmbctl(&["keys"]);
    assert_eq!(neither.status.code(), Some(2));
}
