//! The YAML twins file: parsing, validation with line numbers, reload on change, and the cache.
// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::Ordering;
use std::time::Duration;

use rmb_identity::{
    CacheSettings, CachedDirectory, FileDirectory, Identity, KeyType, TwinDirectory,
};

const ID0: &str = "recipe shock tenant rather soda urge between rural code kitchen pyramid save";
const ID0_SS58_SR: &str = "5EWPqGaACm8C8w1F8ca9wDMo9M78Y7QVDQRyMfhq3jUx1MH5";
const ID1_ED_HEX: &str = "0x74b4914bfc1ef2245ce30b3156117f5a05ad4f28c5ad38ab340127f68b3be6df";
const ID0_PK: &str = "0x03bd37aee874dd317b1c6a2fde9994f816c158c0dcd9650dfacd3f433b5300cde0";

fn good_file() -> String {
    format!(
        "twins:\n  - id: 10\n    account: {ID0_SS58_SR}\n    relays: [relay.one.example, Relay.Two.example]\n    pk: {ID0_PK}\n  - id: 11\n    account: {ID1_ED_HEX}\n    relays: a.example_b.example\n"
    )
}

fn write(dir: &tempfile::TempDir, text: &str) -> std::path::PathBuf {
    let path = dir.path().join("twins.yaml");
    std::fs::write(&path, text).unwrap();
    path
}

#[tokio::test]
async fn twins_are_found_by_id_and_account() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = FileDirectory::open(write(&tmp, &good_file())).unwrap();
    assert_eq!(dir.len(), 2);

    let t10 = dir.twin(10).await.unwrap().expect("twin 10");
    let id0 = Identity::from_secret(ID0).unwrap();
    assert_eq!(t10.account, id0.public_key(KeyType::Sr25519));
    assert_eq!(t10.relays, vec!["relay.one.example", "relay.two.example"]);
    assert_eq!(t10.pk.as_deref(), Some(&id0.encryption_public_key()[..]));

    let t11 = dir.twin(11).await.unwrap().expect("twin 11");
    assert_eq!(t11.relays, vec!["a.example", "b.example"]);
    assert_eq!(t11.pk, None);

    assert_eq!(dir.twin(12).await.unwrap(), None);
    assert_eq!(
        dir.twin_id_by_account(&id0.public_key(KeyType::Sr25519))
            .await
            .unwrap(),
        Some(10)
    );
    assert_eq!(dir.twin_id_by_account(&[0u8; 32]).await.unwrap(), None);
}

fn error_for(text: &str) -> rmb_identity::TwinsFileError {
    let tmp = tempfile::tempdir().unwrap();
    FileDirectory::open(write(&tmp, text)).expect_err("file must be refused")
}

#[test]
fn invalid_files_report_line_and_reason() {
    let cases: Vec<(String, usize, &str)> = vec![
        (
            format!("twins:\n  - id: 10\n    account: {ID0_SS58_SR}\n  - id: 11\n    account: 0x1234\n"),
            4,
            "account",
        ),
        (
            format!("twins:\n  - id: 10\n    account: {ID0_SS58_SR}\n  - id: 10\n    account: {ID1_ED_HEX}\n"),
            4,
            "duplicate twin id 10",
        ),
        (
            format!("twins:\n  - id: 10\n    account: {ID0_SS58_SR}\n    pk: 0xabcd\n"),
            2,
            "pk",
        ),
        (
            format!("twins:\n  - id: 10\n    acount: {ID0_SS58_SR}\n"),
            3,
            "unknown field",
        ),
        ("twins:\n  - id: -3\n    account: x\n".to_string(), 2, "id"),
        ("twins: [\n".to_string(), 2, ""),
        (
            format!("twins:\n  - id: 0\n    account: {ID0_SS58_SR}\n"),
            2,
            "reserved",
        ),
        (
            format!("twins:\n  - id: 1\n    account: {ID0_SS58_SR}\n  - id: 2\n    account: {ID0_SS58_SR}\n"),
            4,
            "same account",
        ),
    ];
    for (text, line, reason) in cases {
        let err = error_for(&text);
        assert!(
            err.line == Some(line),
            "expected line ~{line} for {text:?}, got {err}"
        );
        assert!(err.reason.contains(reason), "expected {reason:?} in {err}");
        assert!(
            err.to_string().contains("line"),
            "message names the line: {err}"
        );
    }
    let missing = FileDirectory::open("/nonexistent/twins.yaml").unwrap_err();
    assert!(missing.reason.contains("cannot read"));
}

#[tokio::test]
async fn reload_applies_good_versions_and_keeps_the_last_good_one() {
    let tmp = tempfile::tempdir().unwrap();
    let path = write(&tmp, &good_file());
    let dir = FileDirectory::open(&path).unwrap();
    let cached = CachedDirectory::new(dir.clone(), CacheSettings::default());
    assert_eq!(cached.twin(11).await.unwrap().unwrap().relays.len(), 2);
    let _watch = dir.watch(Duration::from_millis(20));

    // A broken edit: refused, previous version still served.
    std::fs::write(&path, "twins: [oops\n").unwrap();
    wait_until(|| dir.last_error().is_some()).await;
    assert!(dir.twin(10).await.unwrap().is_some());
    assert!(cached.twin(11).await.unwrap().is_some());

    // A good edit: twin 11 moves relays, twin 10 disappears; the cache follows.
    let text =
        format!("twins:\n  - id: 11\n    account: {ID1_ED_HEX}\n    relays: [new.example]\n");
    std::fs::write(&path, text).unwrap();
    wait_until(|| dir.last_error().is_none() && dir.len() == 1).await;
    let mut relays = Vec::new();
    for _ in 0..100 {
        relays = cached.twin(11).await.unwrap().unwrap().relays.clone();
        if relays == ["new.example"] {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(relays, ["new.example"]);
    assert_eq!(dir.twin(10).await.unwrap(), None);
}

#[tokio::test]
async fn cache_serves_repeated_lookups_and_caches_misses() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = FileDirectory::open(write(&tmp, &good_file())).unwrap();
    let cached = CachedDirectory::new(
        dir,
        CacheSettings {
            ttl: Duration::from_secs(60),
            negative_ttl: Duration::from_millis(50),
            capacity: 10,
        },
    );
    let lookups: Vec<_> = (0..50).map(|_| cached.twin(10)).collect();
    for r in futures_join(lookups).await {
        assert!(r.unwrap().is_some());
    }
    let stats = cached.stats();
    assert_eq!(
        stats.misses.load(Ordering::Relaxed),
        1,
        "one lookup in flight per twin"
    );

    assert_eq!(cached.twin(99).await.unwrap(), None);
    assert_eq!(cached.twin(99).await.unwrap(), None);
    assert_eq!(stats.misses.load(Ordering::Relaxed), 2, "miss cached");
    tokio::time::sleep(Duration::from_millis(120)).await;
    assert_eq!(cached.twin(99).await.unwrap(), None);
    assert_eq!(
        stats.misses.load(Ordering::Relaxed),
        3,
        "negative entry expired"
    );
}

async fn futures_join<F: std::future::Future>(futs: Vec<F>) -> Vec<F::Output> {
    let mut out = Vec::new();
    let handles: Vec<_> = futs.into_iter().map(Box::pin).collect();
    // Poll them concurrently on one task.
    let mut pending: Vec<_> = handles.into_iter().map(Some).collect();
    std::future::poll_fn(|cx| {
        let mut done = true;
        for slot in pending.iter_mut() {
            if let Some(f) = slot {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => {
                        out.push(v);
                        *slot = None;
                    }
                    std::task::Poll::Pending => done = false,
                }
            }
        }
        if done {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await;
    out
}

async fn wait_until(mut cond: impl FnMut() -> bool) {
    for _ in 0..250 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("condition not reached in 5 s");
}
