//! A twin's keys as both the gateway and the SDK client use them: signing what goes out,
//! checking what comes in against the directory, and end-to-end encryption.
//!
//! The rules, written once for both:
//! - an envelope from another twin is accepted only when the directory knows the twin and
//!   the signature verifies against its account key; a cipher payload is opened with the key
//!   the twin publishes ([`ProtocolError`] says why not, with the original's codes);
//! - a payload goes out encrypted whenever the destination publishes an encryption key
//!   (`pk`), and plain only when the directory says it publishes none. When the directory
//!   cannot be asked (chain outage), nothing is sent: a lookup failure never downgrades
//!   end-to-end encryption to plain text. Our own `pk` is not consulted, as in the original:
//!   a receiver that cannot find it answers 105.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use rmb_identity::{
    sign_envelope, verify_envelope, SharedKey, SignatureError, Signer, Twin, TwinDirectory,
};
use rmb_proto::{codes, Address, Envelope, Payload};

use crate::metrics::{DropReason, Metrics};

/// Most shared keys cached.
const MAX_SHARED_KEYS: usize = 10_000;

/// Why an envelope from another twin is refused, or why a payload cannot be sent: the
/// error codes and texts of the original `rmb-peer`, sent back to the twin that sent a
/// refused request, and to a local caller whose request could not be sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// The envelope expired (102).
    #[error("envelope validation error: {0}")]
    Validation(String),
    /// The directory knows no such twin (103).
    #[error("unknown twin id '{0}'")]
    UnknownTwin(u32),
    /// The envelope carries no signature (104).
    #[error("invalid envelope signature: message is not signed")]
    Unsigned,
    /// The signature does not verify against the twin's account key (104).
    #[error("invalid envelope signature: {0}")]
    InvalidSignature(String),
    /// A cipher payload from a twin that publishes no encryption key (105).
    #[error("sender twin has no public key")]
    NoPublicKey,
    /// Encryption or decryption failed (106).
    #[error("e2e error: {0}")]
    Crypto(String),
    /// The directory could not be asked (500).
    #[error("other: failed to get twin {twin} information: {reason}")]
    Directory {
        /// The twin looked up.
        twin: u32,
        /// What failed.
        reason: String,
    },
}

impl ProtocolError {
    /// The error code sent with it.
    pub fn code(&self) -> u32 {
        match self {
            ProtocolError::Validation(_) => codes::VALIDATION,
            ProtocolError::UnknownTwin(_) => codes::UNKNOWN_TWIN,
            ProtocolError::Unsigned | ProtocolError::InvalidSignature(_) => {
                codes::INVALID_SIGNATURE
            }
            ProtocolError::NoPublicKey => codes::NO_PUBLIC_KEY,
            ProtocolError::Crypto(_) => codes::CRYPTO,
            ProtocolError::Directory { .. } => codes::OTHER,
        }
    }

    /// How a refused incoming envelope is counted.
    pub(crate) fn drop_reason(&self) -> DropReason {
        match self {
            ProtocolError::Validation(_) => DropReason::Expired,
            ProtocolError::UnknownTwin(_) | ProtocolError::Directory { .. } => {
                DropReason::UnknownSource
            }
            ProtocolError::Unsigned => DropReason::Unsigned,
            ProtocolError::InvalidSignature(_) => DropReason::BadSignature,
            ProtocolError::NoPublicKey | ProtocolError::Crypto(_) => DropReason::Crypto,
        }
    }

    /// The refusal of an expired envelope.
    pub(crate) fn expired() -> ProtocolError {
        ProtocolError::Validation("message has expired".into())
    }
}

/// Our signer and address, the directory, and the keys shared with other twins.
pub(crate) struct Keys {
    pub(crate) signer: Signer,
    pub(crate) me: Address,
    pub(crate) directory: Arc<dyn TwinDirectory>,
    metrics: Arc<Metrics>,
    /// Keys shared with other twins, with the public key they were derived from.
    shared: Mutex<HashMap<u32, (Vec<u8>, SharedKey)>>,
}

impl Keys {
    pub(crate) fn new(
        signer: Signer,
        me: Address,
        directory: Arc<dyn TwinDirectory>,
        metrics: Arc<Metrics>,
    ) -> Keys {
        Keys {
            signer,
            me,
            directory,
            metrics,
            shared: Mutex::new(HashMap::new()),
        }
    }

    /// `env` signed with our key.
    pub(crate) fn sign(&self, mut env: Envelope) -> Envelope {
        sign_envelope(&mut env, &self.signer);
        env
    }

    /// The directory's record of `twin`.
    async fn lookup(&self, twin: u32) -> Result<Arc<Twin>, ProtocolError> {
        match self.directory.twin(twin).await {
            Ok(Some(t)) => Ok(t),
            Ok(None) => Err(ProtocolError::UnknownTwin(twin)),
            Err(e) => Err(ProtocolError::Directory {
                twin,
                reason: e.to_string(),
            }),
        }
    }

    /// Checks that `env` is signed by `twin`'s account key; returns the twin's record.
    pub(crate) async fn check(
        &self,
        env: &Envelope,
        twin: u32,
    ) -> Result<Arc<Twin>, ProtocolError> {
        let record = self.lookup(twin).await?;
        match verify_envelope(env, &record.account) {
            Ok(_) => Ok(record),
            Err(SignatureError::Missing) => Err(ProtocolError::Unsigned),
            Err(e) => Err(ProtocolError::InvalidSignature(e.to_string())),
        }
    }

    /// Counts and logs a refused incoming envelope.
    pub(crate) fn refused(&self, env: &Envelope, twin: u32, why: &ProtocolError) {
        self.metrics.drop_one(why.drop_reason());
        tracing::warn!(uid = %env.uid, twin, code = why.code(), reason = %why, "refusing an envelope");
    }

    /// Whether `env` is signed by `twin`'s account key; a refusal is logged and counted.
    pub(crate) async fn verified(&self, env: &Envelope, twin: u32) -> bool {
        match self.check(env, twin).await {
            Ok(_) => true,
            Err(why) => {
                self.refused(env, twin, &why);
                false
            }
        }
    }

    /// The key shared with `twin`, derived from `pk` (the key it publishes).
    fn shared_key(&self, twin: u32, pk: &[u8]) -> Result<SharedKey, ProtocolError> {
        let mut cache = self.shared.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((cached_pk, key)) = cache.get(&twin) {
            if cached_pk.as_slice() == pk {
                return Ok(key.clone());
            }
        }
        let key = SharedKey::derive(self.signer.identity(), pk).map_err(|e| {
            ProtocolError::Crypto(format!("twin {twin} publishes an unusable key: {e}"))
        })?;
        if cache.len() >= MAX_SHARED_KEYS {
            cache.clear();
        }
        cache.insert(twin, (pk.to_vec(), key.clone()));
        Ok(key)
    }

    /// The payload for `twin`: encrypted when it publishes an encryption key, plain when the
    /// directory says it publishes none, and an error (nothing to send) when the directory
    /// cannot tell.
    pub(crate) async fn seal(&self, twin: u32, plain: Vec<u8>) -> Result<Payload, ProtocolError> {
        let record = self.lookup(twin).await?;
        match &record.pk {
            Some(pk) => Ok(Payload::Cipher(self.shared_key(twin, pk)?.encrypt(&plain))),
            None => Ok(Payload::Plain(plain)),
        }
    }

    /// The plain bytes of the payload `record`'s twin sent.
    pub(crate) fn open(&self, record: &Twin, env: &Envelope) -> Result<Vec<u8>, ProtocolError> {
        match &env.payload {
            Some(Payload::Plain(p)) => Ok(p.clone()),
            Some(Payload::Cipher(c)) => {
                let pk = record.pk.as_deref().ok_or(ProtocolError::NoPublicKey)?;
                self.shared_key(record.id, pk)?
                    .decrypt(c)
                    .map_err(|e| ProtocolError::Crypto(e.to_string()))
            }
            None => Ok(Vec::new()),
        }
    }

    /// The plain bytes of any payload from `twin` (looked up again: cached).
    pub(crate) async fn payload(
        &self,
        twin: u32,
        env: &Envelope,
    ) -> Result<Vec<u8>, ProtocolError> {
        match &env.payload {
            Some(Payload::Cipher(_)) => {
                let record = self.lookup(twin).await?;
                self.open(&record, env)
            }
            Some(Payload::Plain(p)) => Ok(p.clone()),
            None => Ok(Vec::new()),
        }
    }

    /// Checks a request from another twin: not expired, signed by its source, payload
    /// readable. Returns the plain payload, or why it is refused.
    pub(crate) async fn check_request(
        &self,
        env: &Envelope,
        source: u32,
        now: u64,
    ) -> Result<Vec<u8>, ProtocolError> {
        if env.is_expired(now) {
            return Err(ProtocolError::expired());
        }
        let record = self.check(env, source).await?;
        self.open(&record, env)
    }

    /// The signed error envelope that answers a refused request, as the original sends it:
    /// same uid, back to the source, with the request's time to live.
    pub(crate) fn refusal(&self, request: &Envelope, why: &ProtocolError) -> Envelope {
        self.error_reply(
            request,
            why.code(),
            &why.to_string(),
            request.expiration.max(1),
        )
    }

    /// A signed error envelope answering `request`.
    pub(crate) fn error_reply(
        &self,
        request: &Envelope,
        code: u32,
        message: &str,
        ttl: u64,
    ) -> Envelope {
        self.sign(Envelope {
            uid: request.uid.clone(),
            timestamp: rmb_proto::unix_now(),
            expiration: ttl,
            source: Some(self.me.clone()),
            destination: request.source.clone(),
            message: Some(rmb_proto::Message::Error(rmb_proto::Error {
                code,
                message: message.to_string(),
            })),
            ..Default::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_carry_the_original_codes_and_texts() {
        let cases = [
            (
                ProtocolError::expired(),
                102,
                "envelope validation error: message has expired",
            ),
            (ProtocolError::UnknownTwin(7), 103, "unknown twin id '7'"),
            (
                ProtocolError::Unsigned,
                104,
                "invalid envelope signature: message is not signed",
            ),
            (
                ProtocolError::NoPublicKey,
                105,
                "sender twin has no public key",
            ),
            (
                ProtocolError::Crypto("bad tag".into()),
                106,
                "e2e error: bad tag",
            ),
        ];
        for (error, code, text) in cases {
            assert_eq!(error.code(), code);
            assert_eq!(error.to_string(), text);
        }
        assert_eq!(
            ProtocolError::Directory {
                twin: 3,
                reason: "down".into()
            }
            .code(),
            500
        );
    }
}
