//! `rmb-testchain` works for the polkadot.js API (what the TypeScript RMB SDK uses): it
//! decorates the chain from our metadata, reads twins, and follows finalized heads, seeing the
//! `TwinStored` event of a block sealed when the twins file changed.
//!
//! Needs Node.js and `npm ci --prefix tests/polkadotjs` (scripts/test.sh does both).

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use rmb_testkit::testchain::TestChain;
use rmb_testkit::twins::{twins, write_twins_file};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

fn script_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/polkadotjs")
}

#[tokio::test]
async fn polkadot_js_reads_twins_and_follows_finalized_heads() {
    let dir = script_dir();
    assert!(
        dir.join("node_modules/@polkadot/api").exists(),
        "polkadot.js is not installed: run `npm ci --prefix tests/polkadotjs` (scripts/test.sh does)"
    );
    let tmp = tempfile::tempdir().expect("tempdir");
    let all = twins(1, 2);
    let first = all[0].clone().on_relays(&["r1.example", "r2.example"]);
    let path = write_twins_file(tmp.path(), std::slice::from_ref(&first));
    let chain = TestChain::for_twins(&path).await;
    let account = format!("0x{}", hex::encode(first.signer.public_key()));

    let mut node = Command::new("node")
        .arg("check.mjs")
        .arg(chain.url())
        .arg("1")
        .arg(&account)
        .arg("2")
        .current_dir(&dir)
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("node is installed");
    let stdout = node.stdout.take().expect("piped stdout");
    let mut lines = BufReader::new(stdout).lines();
    let mut next = async || -> Value {
        let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
            .await
            .expect("polkadot.js answers within a minute")
            .expect("read stdout")
            .expect("polkadot.js exited early");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"))
    };

    assert_eq!(next().await["chain"], "rmb-testchain");
    let twin = next().await;
    assert_eq!(twin["twin"], 1);
    assert_eq!(twin["account"], account.as_str());
    assert_eq!(twin["relay"], "r1.example_r2.example");
    assert_eq!(
        twin["pk"],
        format!(
            "0x{}",
            hex::encode(first.signer.identity().encryption_public_key())
        )
        .as_str()
    );
    assert_eq!(next().await["twinIdByAccount"], 1);
    assert_eq!(next().await["missing"], true);

    let head = next().await;
    assert_eq!(head["finalized"], chain.chain().head().number);

    write_twins_file(tmp.path(), &[first, all[1].clone()]);
    let sealed = next().await;
    assert_eq!(
        sealed["finalized"],
        head["finalized"].as_u64().unwrap_or(0) + 1
    );
    assert_eq!(
        sealed["events"],
        serde_json::json!(["tfgridModule.TwinStored"])
    );
    let status = tokio::time::timeout(Duration::from_secs(30), node.wait())
        .await
        .expect("node exits")
        .expect("wait");
    assert!(status.success());
}
