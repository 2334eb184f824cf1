//! Session tokens: the JWT a twin presents when it opens a relay session.
//!
//! Compatibility shape: header `{"alg":"RS512","typ":"JWT"}` (a label only: the real scheme is
//! in the signature's prefix byte), claims `sub` (twin id), `sid` (optional session id), `iat`,
//! `exp`, and a signature that is the base64url (no padding) of a 65-byte prefixed signature over
//! the ASCII `header.claims`. A token is parsed first (to learn the twin), then verified against
//! that twin's account key.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde::{Deserialize, Serialize};

use crate::keys::Signer;
use crate::signature::{verify_prefixed, SignatureError};

/// The only `alg` value accepted: every existing client sends it.
pub const COMPAT_ALG: &str = "RS512";
/// Tokens longer than this are refused before any decoding.
pub const MAX_TOKEN_LEN: usize = 4096;

/// Token claims.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The twin id.
    pub sub: u32,
    /// Issued at (unix seconds).
    pub iat: u64,
    /// Expires at (unix seconds).
    pub exp: u64,
    /// The session id, when the twin runs several sessions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sid: Option<String>,
    /// The relay domain the token is meant for. Optional (no known client sends it yet);
    /// when given, a relay serving another domain refuses the token, so a token seen by one
    /// relay operator cannot open sessions on another.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<String>,
}

impl Claims {
    /// Claims for `sub` valid from `iat` to `exp`, without session id or audience.
    pub fn new(sub: u32, iat: u64, exp: u64) -> Claims {
        Claims {
            sub,
            iat,
            exp,
            sid: None,
            aud: None,
        }
    }

    /// Checks `aud` against the relay's `domains`: no `aud` passes (compatibility), an `aud`
    /// naming none of them does not.
    pub fn check_audience(&self, domains: &[String]) -> Result<(), TokenError> {
        match &self.aud {
            None => Ok(()),
            Some(aud) if domains.iter().any(|d| d.eq_ignore_ascii_case(aud)) => Ok(()),
            Some(aud) => Err(TokenError::WrongAudience(aud.clone())),
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Header {
    alg: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    typ: Option<String>,
}

/// The default longest token lifetime, in seconds: the longest a known client issues (the
/// TypeScript client, 1000 s; the Go SDK issues 60 s, the original Rust peer 60-300 s).
pub const DEFAULT_MAX_LIFETIME: u64 = 1000;

/// How strictly tokens are checked.
#[derive(Debug, Clone, Copy)]
pub struct TokenPolicy {
    /// Longest accepted `exp - iat`, in seconds.
    pub max_lifetime: u64,
    /// Tolerated clock difference with the issuer, in seconds.
    pub clock_skew: u64,
}

impl Default for TokenPolicy {
    fn default() -> Self {
        TokenPolicy {
            max_lifetime: DEFAULT_MAX_LIFETIME,
            clock_skew: 60,
        }
    }
}

/// Which part of a token was bad.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// The first segment.
    Header,
    /// The second segment.
    Claims,
    /// The third segment.
    Signature,
}

impl std::fmt::Display for Part {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Part::Header => "header",
            Part::Claims => "claims",
            Part::Signature => "signature",
        })
    }
}

/// Why a token was refused. Each variant is a distinct reason an operator can act on.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    /// Longer than [`MAX_TOKEN_LEN`].
    #[error("token of {0} bytes is too long")]
    TooLong(usize),
    /// Not three dot-separated segments.
    #[error("token must have 3 dot-separated parts, got {0}")]
    Segments(usize),
    /// A segment is not base64url.
    #[error("token {0} is not valid base64url")]
    Base64(Part),
    /// A segment is not the JSON expected.
    #[error("token {0} is not valid JSON: {1}")]
    Json(Part, String),
    /// `alg` other than the compatibility label.
    #[error("unsupported token alg {0:?} (expected {COMPAT_ALG:?})")]
    UnsupportedAlg(String),
    /// Signature bad for this twin's key.
    #[error("token signature: {0}")]
    Signature(#[from] SignatureError),
    /// `exp` is in the past.
    #[error("token expired at {exp} (now {now})")]
    Expired {
        /// Token expiry.
        exp: u64,
        /// Verifier's clock.
        now: u64,
    },
    /// `iat` is in the future beyond the clock skew.
    #[error("token not valid yet: issued at {iat} (now {now})")]
    NotYetValid {
        /// Token issue time.
        iat: u64,
        /// Verifier's clock.
        now: u64,
    },
    /// `aud` names a relay domain other than this relay's.
    #[error("token audience {0:?} is not this relay")]
    WrongAudience(String),
    /// `exp - iat` exceeds the policy's maximum lifetime, or `exp < iat`.
    #[error("token lifetime {lifetime}s exceeds the maximum of {max}s")]
    LifetimeTooLong {
        /// `exp - iat` (saturating).
        lifetime: u64,
        /// The policy maximum.
        max: u64,
    },
}

/// A parsed but not yet verified token.
#[derive(Debug, Clone)]
pub struct SessionToken {
    claims: Claims,
    signing_input_len: usize,
    raw: String,
    signature: Vec<u8>,
}

impl SessionToken {
    /// Parses the token structure and claims; does not check the signature.
    pub fn parse(token: &str) -> Result<SessionToken, TokenError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(TokenError::TooLong(token.len()));
        }
        let parts: Vec<&str> = token.split('.').collect();
        let [header, claims, signature] = parts[..] else {
            return Err(TokenError::Segments(parts.len()));
        };
        let header: Header = decode_json(header, Part::Header)?;
        if header.alg != COMPAT_ALG {
            return Err(TokenError::UnsupportedAlg(header.alg));
        }
        let claims_json: Claims = decode_json(claims, Part::Claims)?;
        let signature = URL_SAFE_NO_PAD
            .decode(signature)
            .map_err(|_| TokenError::Base64(Part::Signature))?;
        Ok(SessionToken {
            claims: claims_json,
            signing_input_len: token.len() - parts[2].len() - 1,
            raw: token.to_string(),
            signature,
        })
    }

    /// The claims, unverified: use them only to find the key to verify with.
    pub fn claims(&self) -> &Claims {
        &self.claims
    }

    /// Verifies the signature against `account` and the times against `now` and `policy`.
    pub fn verify(
        &self,
        account: &[u8; 32],
        now: u64,
        policy: &TokenPolicy,
    ) -> Result<&Claims, TokenError> {
        let signing_input = &self.raw.as_bytes()[..self.signing_input_len];
        verify_prefixed(account, signing_input, &self.signature)?;
        let Claims { iat, exp, .. } = self.claims;
        if exp < iat || exp - iat > policy.max_lifetime {
            return Err(TokenError::LifetimeTooLong {
                lifetime: exp.saturating_sub(iat),
                max: policy.max_lifetime,
            });
        }
        if iat > now.saturating_add(policy.clock_skew) {
            return Err(TokenError::NotYetValid { iat, now });
        }
        if exp.saturating_add(policy.clock_skew) < now {
            return Err(TokenError::Expired { exp, now });
        }
        Ok(&self.claims)
    }
}

/// Issues a token for `claims`, signed by `signer`.
pub fn issue_token(signer: &Signer, claims: &Claims) -> String {
    let header = Header {
        alg: COMPAT_ALG.to_string(),
        typ: Some("JWT".to_string()),
    };
    let mut token = format!("{}.{}", encode_json(&header), encode_json(claims));
    let signature = signer.sign(token.as_bytes());
    token.push('.');
    token.push_str(&URL_SAFE_NO_PAD.encode(signature));
    token
}

fn encode_json<T: Serialize>(value: &T) -> String {
    // Serialising these plain structs cannot fail.
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(value).unwrap_or_default())
}

fn decode_json<T: for<'de> Deserialize<'de>>(segment: &str, part: Part) -> Result<T, TokenError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(segment)
        .map_err(|_| TokenError::Base64(part))?;
    serde_json::from_slice(&bytes).map_err(|e| TokenError::Json(part, e.to_string()))
}
