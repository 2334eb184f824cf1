//! The tfchain directory against a running `rmb-testchain`: storage lookups, events of
//! finalized blocks, a chain that goes away and comes back, and endpoint failover.
// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use rmb_identity::directory::{SubstrateDirectory, SubstrateSettings};
use rmb_identity::{CacheSettings, CachedDirectory, DirectoryError, TwinDirectory};
use rmb_testkit::relay::free_addr;
use rmb_testkit::testchain::TestChain;
use rmb_testkit::twins::{twins, TestTwin};

/// A twins file: twin 1 on two relays with a pk, twin 2 on no relay and without a pk.
fn write_file(dir: &Path, entries: &[String]) -> std::path::PathBuf {
    let path = dir.join("twins.yaml");
    let text = format!("twins:\n{}", entries.concat());
    std::fs::write(&path, text).expect("write twins file");
    path
}

fn entry_without_pk(twin: &TestTwin) -> String {
    format!(
        "  - id: {}\n    account: 0x{}\n",
        twin.id,
        hex::encode(twin.signer.public_key())
    )
}

fn fast(urls: Vec<String>) -> SubstrateSettings {
    let mut settings = SubstrateSettings::new(urls);
    settings.connect_timeout = Duration::from_secs(2);
    settings.call_timeout = Duration::from_secs(2);
    settings.retry_after = Duration::from_millis(200);
    settings.max_backoff = Duration::from_millis(500);
    settings
}

fn cached(dir: Arc<SubstrateDirectory>) -> Arc<CachedDirectory<SubstrateDirectory>> {
    CachedDirectory::new(dir, CacheSettings::default())
}

/// Polls `check` for up to 15 s.
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..150 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out waiting for: {what}");
}

#[tokio::test]
async fn lookups_by_id_and_account_decode_the_chain_twin() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let all = twins(1, 2);
    let first = all[0]
        .clone()
        .on_relays(&["r1.example.com", "r2.example.com"]);
    let path = write_file(tmp.path(), &[first.yaml_entry(), entry_without_pk(&all[1])]);
    let chain = TestChain::for_twins(&path).await;
    let dir = SubstrateDirectory::start(fast(vec![chain.url()]));

    let one = dir.twin(1).await.expect("lookup").expect("twin 1 exists");
    assert_eq!(one.account, first.signer.public_key());
    assert_eq!(one.relays, vec!["r1.example.com", "r2.example.com"]);
    assert_eq!(
        one.pk.as_deref(),
        Some(&first.signer.identity().encryption_public_key()[..])
    );

    let two = dir.twin(2).await.expect("lookup").expect("twin 2 exists");
    assert!(two.relays.is_empty());
    assert_eq!(two.pk, None, "no pk published");

    assert_eq!(dir.twin(99).await.expect("lookup"), None);
    let account = all[1].signer.public_key();
    assert_eq!(
        dir.twin_id_by_account(&account).await.expect("lookup"),
        Some(2)
    );
    assert_eq!(
        dir.twin_id_by_account(&[7u8; 32]).await.expect("lookup"),
        None
    );

    let stats = dir.stats_handle();
    assert_eq!(stats.found.load(Ordering::Relaxed), 3);
    assert_eq!(stats.not_found.load(Ordering::Relaxed), 2);
}

#[tokio::test]
async fn edited_twins_reach_the_cache_through_finalized_block_events() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let all = twins(1, 3);
    let path = write_file(
        tmp.path(),
        &[all[0].clone().on_relays(&["old.example"]).yaml_entry()],
    );
    let chain = TestChain::for_twins(&path).await;
    let substrate = SubstrateDirectory::start(fast(vec![chain.url()]));
    let stats = substrate.stats_handle();
    let dir = cached(substrate);
    eventually("event subscription", || async {
        stats.subscriptions.load(Ordering::Relaxed) > 0
    })
    .await;

    let before = dir.twin(1).await.expect("lookup").expect("twin 1");
    assert_eq!(before.relays, vec!["old.example"]);
    assert_eq!(
        dir.twin(3).await.expect("lookup"),
        None,
        "cached as unknown"
    );

    // The cache would serve the old answers for 10 minutes: only the events can refresh it.
    let sealed = chain.chain().head().number;
    write_file(
        tmp.path(),
        &[
            all[0].clone().on_relays(&["new.example"]).yaml_entry(),
            all[2].yaml_entry(),
        ],
    );
    eventually("twin 1 on its new relay", || async {
        dir.twin(1).await.ok().flatten().map(|t| t.relays.clone())
            == Some(vec!["new.example".into()])
    })
    .await;
    eventually("twin 3 registered", || async {
        dir.twin(3).await.ok().flatten().is_some()
    })
    .await;
    assert!(chain.chain().head().number > sealed);
    assert!(
        stats.events.load(Ordering::Relaxed) >= 2,
        "TwinUpdated + TwinStored applied"
    );
    assert!(stats.finalized_block.load(Ordering::Relaxed) > sealed as u64);
}

#[tokio::test]
async fn chain_outage_keeps_cached_twins_and_fails_new_ones_until_it_returns() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let all = twins(1, 2);
    let path = write_file(tmp.path(), &[all[0].yaml_entry(), all[1].yaml_entry()]);
    let mut chain = TestChain::for_twins(&path).await;
    let substrate = SubstrateDirectory::start(fast(vec![chain.url()]));
    let stats = substrate.stats_handle();
    let dir = cached(substrate);
    assert!(dir.twin(1).await.expect("lookup").is_some());
    eventually("event subscription", || async {
        stats.subscriptions.load(Ordering::Relaxed) == 1
    })
    .await;

    chain.stop();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        dir.twin(1)
            .await
            .expect("cached twin still served")
            .is_some(),
        "a cached twin keeps working while the chain is away"
    );
    match dir.twin(2).await {
        Err(DirectoryError::Unavailable(reason)) => {
            assert!(reason.contains("tfchain unreachable"), "{reason}")
        }
        other => panic!("expected a clear 'unavailable' error, got {other:?}"),
    }

    chain.resume().await.expect("chain back");
    eventually("twin 2 found after the chain returned", || async {
        matches!(dir.twin(2).await, Ok(Some(_)))
    })
    .await;
    eventually("finalized-block feed resubscribed", || async {
        stats.subscriptions.load(Ordering::Relaxed) >= 2
    })
    .await;
}

#[tokio::test]
async fn lookups_fail_over_to_the_second_endpoint_when_the_first_is_dead() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let all = twins(1, 1);
    let path = write_file(tmp.path(), &[all[0].yaml_entry()]);
    let chain = TestChain::for_twins(&path).await;
    let dead = format!("ws://{}", free_addr());
    let dir = SubstrateDirectory::start(fast(vec![dead, chain.url()]));

    assert!(dir
        .twin(1)
        .await
        .expect("lookup through the second URL")
        .is_some());
    assert!(dir.stats_handle().failovers.load(Ordering::Relaxed) >= 1);
}

#[tokio::test]
async fn the_chain_serves_a_metadata_file_and_refuses_one_without_twins() {
    use rmb_testkit::testchain::{runtime, TestChainConfig, TestChainError};
    let tmp = tempfile::tempdir().expect("tempdir");
    let all = twins(1, 1);
    let path = write_file(tmp.path(), &[all[0].yaml_entry()]);

    // As `state_getMetadata` returns it: 0x-hex of RuntimeMetadataPrefixed.
    let blob = tmp.path().join("metadata.hex");
    let hex_text = format!("0x{}", hex::encode(runtime::builtin_metadata()));
    std::fs::write(&blob, hex_text).expect("write metadata");
    let mut config = TestChainConfig::new(free_addr(), &path);
    config.metadata = Some(blob);
    let chain = TestChain::start(config)
        .await
        .expect("chain with metadata file");
    let dir = SubstrateDirectory::start(fast(vec![chain.url()]));
    assert!(dir.twin(1).await.expect("lookup").is_some());

    let junk = tmp.path().join("junk.scale");
    std::fs::write(&junk, b"not metadata").expect("write junk");
    let mut config = TestChainConfig::new(free_addr(), &path);
    config.metadata = Some(junk);
    match TestChain::start(config).await {
        Err(TestChainError::Metadata { .. }) => {}
        Err(other) => panic!("wrong error: {other}"),
        Ok(_) => panic!("junk metadata was served"),
    }
}

#[tokio::test]
async fn publishing_relays_and_key_updates_the_twin_on_chain_once() {
    use rmb_identity::directory::TwinPublication;
    let tmp = tempfile::tempdir().expect("tempdir");
    let all = twins(1, 2); // twin 1 signs with sr25519, twin 2 with ed25519
    let path = write_file(
        tmp.path(),
        &[
            all[0].clone().on_relays(&["old.example"]).yaml_entry(),
            entry_without_pk(&all[1]),
        ],
    );
    let chain = TestChain::for_twins(&path).await;
    let dir = SubstrateDirectory::start(fast(vec![chain.url()]));

    for twin in &all {
        let pk = twin.signer.identity().encryption_public_key();
        let relays = vec!["new.example".to_string(), "second.example".to_string()];
        let first = dir.publish_twin(&twin.signer, &relays, Some(&pk)).await;
        assert_eq!(first, Ok(TwinPublication::Submitted), "twin {}", twin.id);
        let now = dir.twin(twin.id).await.expect("lookup").expect("twin");
        assert_eq!(now.relays, relays);
        assert_eq!(now.pk.as_deref(), Some(&pk[..]));
        let again = dir.publish_twin(&twin.signer, &relays, Some(&pk)).await;
        assert_eq!(again, Ok(TwinPublication::UpToDate));
    }

    let stranger = TestTwin::seeded(9, rmb_identity::KeyType::Ed25519, 3);
    let outcome = dir.publish_twin(&stranger.signer, &[], None).await;
    assert_eq!(outcome, Ok(TwinPublication::NoTwin));
}
