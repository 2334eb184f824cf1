//! Parsing of the byte and key arguments commands take.

use std::io::Read;

use anyhow::{bail, Context};
use base64::engine::general_purpose::{STANDARD, URL_SAFE, URL_SAFE_NO_PAD};
use base64::Engine as _;

/// Reads `arg`, or standard input when it is `-`.
pub fn text_arg(arg: &str) -> anyhow::Result<String> {
    if arg != "-" {
        return Ok(arg.to_string());
    }
    let mut text = String::new();
    std::io::stdin()
        .read_to_string(&mut text)
        .context("reading standard input")?;
    Ok(text.trim().to_string())
}

/// Decodes hex (with or without 0x) or base64 (standard or URL-safe).
pub fn bytes_arg(arg: &str) -> anyhow::Result<Vec<u8>> {
    let text = text_arg(arg)?;
    let text = text.trim();
    let hex_part = text.strip_prefix("0x").unwrap_or(text);
    if hex_part.len() % 2 == 0 && hex_part.bytes().all(|b| b.is_ascii_hexdigit()) {
        return hex::decode(hex_part).context("invalid hex");
    }
    for engine in [&STANDARD, &URL_SAFE] {
        if let Ok(bytes) = engine.decode(text) {
            return Ok(bytes);
        }
    }
    if let Ok(bytes) = URL_SAFE_NO_PAD.decode(text) {
        return Ok(bytes);
    }
    bail!("input is neither hex nor base64")
}
