//! `rmbctl relay-key`: generates a relay identity key file the relay can load, refuses to
//! overwrite one, rotates keeping the previous public key, and shows the public side.

mod support;

use support::{json_of, rmbctl};

#[test]
fn relay_key_generate_rotate_and_show() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("relay.key");
    let path = file.to_str().expect("utf-8 path");

    let out = rmbctl(&["relay-key", "generate", "--out", path, "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let first = json_of(&out);
    let kid = first["kid"].as_str().expect("kid").to_string();
    assert_eq!(kid.len(), 16);
    let text = std::fs::read_to_string(&file).expect("key file written");
    assert!(
        !String::from_utf8_lossy(&out.stdout)
            .contains(&text[text.find("secret").unwrap_or(0)..][..20]),
        "the secret is never printed"
    );

    // No silent overwrite.
    let again = rmbctl(&["relay-key", "generate", "--out", path]);
    assert!(!again.status.success());

    let out = rmbctl(&["relay-key", "generate", "--out", path, "--rotate", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rotated = json_of(&out);
    assert_ne!(rotated["kid"], first["kid"]);
    let keys = rotated["keys"].as_array().expect("keys");
    assert_eq!(keys.len(), 2);
    assert_eq!(keys[1]["kid"], kid.as_str());
    assert!(keys[1]["valid_until"].as_u64().is_some());

    let out = rmbctl(&["relay-key", "show", path, "--json"]);
    assert!(out.status.success());
    assert_eq!(json_of(&out)["kid"], rotated["kid"]);
}
