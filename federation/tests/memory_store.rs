//! The in-memory federation store: claims hide envelopes until their lease ends, removal is
//! final, health and replay marks behave as the Redis store's do.

use bytes::Bytes;
use rmb_federation::store::{FederationStore, MemoryStore, Outbound};

fn item(n: u8) -> Outbound {
    Outbound {
        frame: Bytes::from(vec![n; 4]),
        expires_at: 10_000,
        relays: vec!["b.example".into()],
        refused: Vec::new(),
        attempts: 0,
        last_error: String::new(),
    }
}

#[tokio::test]
async fn claims_hide_items_until_the_lease_ends() {
    let store = MemoryStore::new();
    store.push("b.example", "1", &item(1), 100).await.unwrap();
    store.push("b.example", "2", &item(2), 200).await.unwrap();
    assert_eq!(
        store.domains().await.unwrap(),
        vec!["b.example".to_string()]
    );
    assert!(store
        .claim("b.example", 50, 10, 1000)
        .await
        .unwrap()
        .is_empty());
    let got = store.claim("b.example", 150, 10, 1000).await.unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].0, "1");
    assert_eq!(got[0].1, item(1));
    // Claimed: hidden until 1000, then due again (the claimer died).
    let got = store.claim("b.example", 500, 10, 1000).await.unwrap();
    assert_eq!(
        got.iter().map(|g| g.0.as_str()).collect::<Vec<_>>(),
        vec!["2"]
    );
    let got = store.claim("b.example", 1000, 10, 2000).await.unwrap();
    assert_eq!(got.len(), 2);
    store
        .remove("b.example", &["1".into(), "2".into()])
        .await
        .unwrap();
    assert_eq!(store.depth("b.example").await.unwrap(), 0);
    store.retire_if_empty("b.example").await.unwrap();
    assert!(store.domains().await.unwrap().is_empty());
}

#[tokio::test]
async fn health_and_replay_marks() {
    let store = MemoryStore::new();
    let domains = vec!["b.example".to_string()];
    store.report("b.example", false, 1000).await.unwrap();
    let h = store.health(&domains).await.unwrap()[0];
    assert_eq!(h.failures, 1);
    assert!(h.down_until_ms > 1000);
    store.report("b.example", true, 2000).await.unwrap();
    assert_eq!(store.health(&domains).await.unwrap()[0].failures, 0);

    assert!(store.first_seen("k", 60_000).await.unwrap());
    assert!(!store.first_seen("k", 60_000).await.unwrap());
    store.unsee("k").await.unwrap();
    assert!(store.first_seen("k", 60_000).await.unwrap());
}

#[test]
fn stored_form_round_trips() {
    let mut it = item(7);
    it.refused.push("c.example".into());
    it.attempts = 3;
    it.last_error = "boom".into();
    assert_eq!(Outbound::decode(it.encode().as_bytes()), Some(it));
    assert_eq!(Outbound::decode(b"{"), None);
}
