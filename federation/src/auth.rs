//! The signed link: the `Authorization` header every federation request carries, and the
//! canonical string its signature covers (specified in `docs/federation.md`).
//!
//! ```text
//! Authorization: RMB-Relay-V1 origin="a.example", destination="b.example", kid="…",
//!                ts="1732780800", nonce="…", body-sha256="…", sig="…"
//! ```

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use rand::RngCore;
use sha2::{Digest, Sha256};

use crate::key::RelayKey;

pub use crate::wire::{BATCH_CONTENT_TYPE, ENDPOINT, FUTURE_KEY_SLACK, KEY_DOCUMENT_PATH, SCHEME};

/// Longest accepted header value, before any parsing.
const MAX_HEADER_LEN: usize = 2048;

/// The signed fields of one request, as sent in the header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkAuth {
    /// The sending relay's domain (lowercase).
    pub origin: String,
    /// The receiving relay's domain (lowercase).
    pub destination: String,
    /// The signing key's id in the origin's key document.
    pub kid: String,
    /// Unix seconds when the request was signed.
    pub ts: u64,
    /// Random value that makes every request unique (base64url, 16 bytes).
    pub nonce: String,
    /// Lowercase hex SHA-256 of the body.
    pub body_sha256: String,
    /// Raw 64-byte ed25519 signature over the canonical string.
    pub sig: Vec<u8>,
}

/// Why a header is unusable (before any key is involved).
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum HeaderError {
    /// No `Authorization` header.
    #[error("missing Authorization header")]
    Missing,
    /// Not our scheme, or a parameter is missing, repeated or malformed.
    #[error("malformed Authorization header: {0}")]
    Malformed(String),
}

/// Lowercase hex SHA-256 of `body`.
pub fn body_hash(body: &[u8]) -> String {
    hex::encode(Sha256::digest(body))
}

/// The exact bytes that are signed: nine lines joined by `\n`, no trailing newline.
#[allow(clippy::too_many_arguments)]
pub fn canonical_string(
    method: &str,
    path: &str,
    origin: &str,
    destination: &str,
    ts: u64,
    nonce: &str,
    kid: &str,
    body_sha256: &str,
) -> String {
    [
        SCHEME,
        &method.to_ascii_uppercase(),
        path,
        &origin.to_ascii_lowercase(),
        &destination.to_ascii_lowercase(),
        &ts.to_string(),
        nonce,
        kid,
        body_sha256,
    ]
    .join("\n")
}

impl LinkAuth {
    /// Signs a request from `origin` to `destination` at `ts`.
    pub fn sign(
        key: &RelayKey,
        method: &str,
        path: &str,
        origin: &str,
        destination: &str,
        ts: u64,
        body: &[u8],
    ) -> LinkAuth {
        let mut nonce = [0u8; 16];
        rand::thread_rng().fill_bytes(&mut nonce);
        let nonce = URL_SAFE_NO_PAD.encode(nonce);
        let body_sha256 = body_hash(body);
        let origin = origin.to_ascii_lowercase();
        let destination = destination.to_ascii_lowercase();
        let canonical = canonical_string(
            method,
            path,
            &origin,
            &destination,
            ts,
            &nonce,
            key.kid(),
            &body_sha256,
        );
        LinkAuth {
            origin,
            destination,
            kid: key.kid().to_string(),
            ts,
            nonce,
            body_sha256,
            sig: key.sign(canonical.as_bytes()).to_vec(),
        }
    }

    /// The canonical string these fields stand for, for `method` and `path`.
    pub fn canonical(&self, method: &str, path: &str) -> String {
        canonical_string(
            method,
            path,
            &self.origin,
            &self.destination,
            self.ts,
            &self.nonce,
            &self.kid,
            &self.body_sha256,
        )
    }

    /// The header value.
    pub fn to_header(&self) -> String {
        format!(
            "{SCHEME} origin=\"{}\", destination=\"{}\", kid=\"{}\", ts=\"{}\", nonce=\"{}\", body-sha256=\"{}\", sig=\"{}\"",
            self.origin,
            self.destination,
            self.kid,
            self.ts,
            self.nonce,
            self.body_sha256,
            URL_SAFE_NO_PAD.encode(&self.sig)
        )
    }

    /// Parses a header value. Strict: every parameter exactly once, quoted, no `"` or `,`
    /// inside values; unknown parameters are refused so nothing unsigned rides along.
    pub fn parse(value: Option<&str>) -> Result<LinkAuth, HeaderError> {
        let value = value.ok_or(HeaderError::Missing)?;
        let bad = |why: &str| HeaderError::Malformed(why.to_string());
        if value.len() > MAX_HEADER_LEN {
            return Err(bad("too long"));
        }
        let rest = value
            .strip_prefix(SCHEME)
            .and_then(|r| r.strip_prefix(' '))
            .ok_or_else(|| bad("scheme must be RMB-Relay-V1"))?;
        let mut fields: [Option<&str>; 7] = [None; 7];
        const NAMES: [&str; 7] = [
            "origin",
            "destination",
            "kid",
            "ts",
            "nonce",
            "body-sha256",
            "sig",
        ];
        for part in rest.split(',') {
            let (name, quoted) = part
                .trim()
                .split_once('=')
                .ok_or_else(|| bad("parameter without `=`"))?;
            let inner = quoted
                .strip_prefix('"')
                .and_then(|q| q.strip_suffix('"'))
                .filter(|v| !v.contains('"'))
                .ok_or_else(|| bad("parameter values must be quoted"))?;
            let slot = NAMES
                .iter()
                .position(|n| *n == name)
                .ok_or_else(|| HeaderError::Malformed(format!("unknown parameter {name:?}")))?;
            if fields[slot].replace(inner).is_some() {
                return Err(HeaderError::Malformed(format!("parameter {name} repeated")));
            }
        }
        let get = |i: usize| {
            fields[i]
                .filter(|v| !v.is_empty())
                .ok_or_else(|| HeaderError::Malformed(format!("parameter {} missing", NAMES[i])))
        };
        let ts = get(3)?
            .parse::<u64>()
            .map_err(|_| bad("ts must be unix seconds"))?;
        let body_sha256 = get(5)?.to_string();
        if body_sha256.len() != 64 || !body_sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad("body-sha256 must be 64 hex digits"));
        }
        let sig = URL_SAFE_NO_PAD
            .decode(get(6)?)
            .map_err(|_| bad("sig must be base64url without padding"))?;
        if sig.len() != 64 {
            return Err(bad("sig must be 64 bytes"));
        }
        Ok(LinkAuth {
            origin: get(0)?.to_ascii_lowercase(),
            destination: get(1)?.to_ascii_lowercase(),
            kid: get(2)?.to_string(),
            ts,
            nonce: get(4)?.to_string(),
            body_sha256: body_sha256.to_ascii_lowercase(),
            sig,
        })
    }

    /// Whether the signature verifies over the canonical string with `public`.
    pub fn verify(&self, method: &str, path: &str, public: &[u8; 32]) -> bool {
        let mut prefixed = Vec::with_capacity(65);
        prefixed.push(b'e');
        prefixed.extend_from_slice(&self.sig);
        rmb_identity::verify_prefixed(public, self.canonical(method, path).as_bytes(), &prefixed)
            .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips_and_verifies() {
        let key = RelayKey::generate(1);
        let auth = LinkAuth::sign(&key, "POST", ENDPOINT, "A.example", "b.example", 5, b"x");
        let parsed = LinkAuth::parse(Some(&auth.to_header())).unwrap();
        assert_eq!(parsed, auth);
        assert_eq!(parsed.origin, "a.example");
        assert!(parsed.verify("POST", ENDPOINT, &key.public_key()));
        assert!(!parsed.verify("POST", "/other", &key.public_key()));
        let other = RelayKey::generate(1);
        assert!(!parsed.verify("POST", ENDPOINT, &other.public_key()));
    }

    #[test]
    fn malformed_headers_are_refused() {
        for h in [
            "Bearer x",
            "RMB-Relay-V1 origin=a",
            "RMB-Relay-V1 origin=\"a\", origin=\"b\"",
            "RMB-Relay-V1 origin=\"a\", extra=\"1\"",
        ] {
            assert!(LinkAuth::parse(Some(h)).is_err(), "{h}");
        }
        assert_eq!(LinkAuth::parse(None), Err(HeaderError::Missing));
    }
}
