//! Runs the rmbctl binary the way a user would, for the CLI's integration tests.
#![allow(dead_code)]
// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Command, Output};

use serde_json::Value;

/// Runs `rmbctl args…` (without an inherited `RMB_MNEMONIC`) and returns its output.
pub fn rmbctl(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_rmbctl"))
        .args(args)
        .env_remove("RMB_MNEMONIC")
        .output()
        .expect("rmbctl runs")
}

/// stdout parsed as JSON, failing the test with the text when it is not.
pub fn json_of(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}
