//! The relay key file and the key document: written and read back, rotation keeps the old
//! public key for its validity window, and a file that lies about its key id is refused.

use rmb_federation::{KeyDocument, RelayKey};

#[test]
fn key_file_round_trips_with_owner_only_permissions() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("relay.key");
    let key = RelayKey::generate(1000);
    key.save(&path).unwrap();
    let loaded = RelayKey::load(&path).unwrap();
    assert_eq!(loaded.kid(), key.kid());
    assert_eq!(loaded.public_key(), key.public_key());
    assert_eq!(loaded.sign(b"m"), key.sign(b"m"));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "key file mode {mode:o}");
    }
}

#[test]
fn rotation_publishes_the_previous_key_until_its_end() {
    let old = RelayKey::generate(1000);
    let new = old.rotate(2000, 3000);
    assert_ne!(new.kid(), old.kid());
    let doc: KeyDocument = new.document(&["a.example".into()]);
    assert_eq!(doc.keys.len(), 2);
    assert_eq!(doc.keys[0].kid, new.kid());
    assert_eq!(doc.keys[1].kid, old.kid());
    assert_eq!(doc.key(old.kid(), 2500), Some(old.public_key()));
    assert_eq!(doc.key(old.kid(), 3001), None, "past its end");
    assert_eq!(doc.key(new.kid(), 2500), Some(new.public_key()));
    assert_eq!(doc.key("0000000000000000", 2500), None);

    // A second rotation after the first previous key ended drops it.
    let newer = new.rotate(4000, 5000);
    let kids: Vec<String> = newer.public_entries().into_iter().map(|k| k.kid).collect();
    assert_eq!(kids, vec![newer.kid().to_string(), new.kid().to_string()]);

    // Saved and loaded, the previous keys survive.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("relay.key");
    new.save(&path).unwrap();
    let loaded = RelayKey::load(&path).unwrap();
    assert_eq!(loaded.public_entries(), new.public_entries());
}

#[test]
fn files_that_lie_or_are_not_key_files_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("relay.key");
    RelayKey::generate(1).save(&path).unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    let value: serde_json::Value = serde_json::from_str(&text).unwrap();
    let kid = value["current"]["kid"].as_str().unwrap().to_string();
    std::fs::write(&path, text.replace(&kid, "0123456789abcdef")).unwrap();
    let err = RelayKey::load(&path).unwrap_err().to_string();
    assert!(err.contains("key id"), "{err}");
    assert!(
        !err.contains(value["current"]["secret"].as_str().unwrap()),
        "secret leaked: {err}"
    );

    std::fs::write(&path, "not json").unwrap();
    assert!(RelayKey::load(&path).is_err());
    assert!(RelayKey::load(&dir.path().join("missing")).is_err());
}

#[test]
fn documents_with_a_mismatched_kid_are_ignored() {
    let key = RelayKey::generate(1);
    let mut doc = key.document(&["a.example".into()]);
    let other = RelayKey::generate(1);
    doc.keys[0].public = hex::encode(other.public_key());
    assert_eq!(doc.key(key.kid(), 10), None);
}
