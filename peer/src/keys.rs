//! A twin's keys as both the gateway and the SDK client use them: signing what goes out,
//! checking what comes in against the directory, and end-to-end encryption.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use rmb_identity::{
    sign_envelope, verify_envelope, SharedKey, SignatureError, Signer, TwinDirectory,
};
use rmb_proto::{Address, Envelope, Payload};

use crate::metrics::{DropReason, Metrics};

/// Most shared keys cached.
const MAX_SHARED_KEYS: usize = 10_000;

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

    /// Whether `env` is signed by `twin`'s account key; a refusal is logged and counted.
    pub(crate) async fn verified(&self, env: &Envelope, twin: u32) -> bool {
        let reason = match self.directory.twin(twin).await {
            Ok(Some(t)) => match verify_envelope(env, &t.account) {
                Ok(_) => return true,
                Err(SignatureError::Missing) => DropReason::Unsigned,
                Err(_) => DropReason::BadSignature,
            },
            Ok(None) => DropReason::UnknownSource,
            Err(e) => {
                tracing::warn!(twin, error = %e, "cannot look the source twin up");
                DropReason::UnknownSource
            }
        };
        self.metrics.drop_one(reason);
        tracing::warn!(
            uid = %env.uid,
            twin,
            reason = reason.as_str(),
            "dropping an envelope that does not verify"
        );
        false
    }

    /// The key shared with `twin`, when `twin` publishes an encryption key (and, with
    /// `need_ours`, when we publish ours too, so that `twin` can derive it).
    async fn shared_key(&self, twin: u32, need_ours: bool) -> Option<SharedKey> {
        if need_ours {
            let ours = self.directory.twin(self.me.twin).await.ok().flatten()?;
            let published = self.signer.identity().encryption_public_key();
            if ours.pk.as_deref() != Some(&published[..]) {
                return None;
            }
        }
        let pk = self.directory.twin(twin).await.ok().flatten()?.pk.clone()?;
        let mut cache = self.shared.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((cached_pk, key)) = cache.get(&twin) {
            if *cached_pk == pk {
                return Some(key.clone());
            }
        }
        let key = match SharedKey::derive(self.signer.identity(), &pk) {
            Ok(key) => key,
            Err(e) => {
                tracing::warn!(twin, error = %e, "twin publishes an unusable encryption key");
                return None;
            }
        };
        if cache.len() >= MAX_SHARED_KEYS {
            cache.clear();
        }
        cache.insert(twin, (pk, key.clone()));
        Some(key)
    }

    /// The payload for `twin`: encrypted when both twins publish encryption keys.
    pub(crate) async fn seal(&self, twin: u32, plain: Vec<u8>) -> Payload {
        match self.shared_key(twin, true).await {
            Some(key) => Payload::Cipher(key.encrypt(&plain)),
            None => Payload::Plain(plain),
        }
    }

    /// The plain bytes of a cipher payload from `twin`.
    pub(crate) async fn open(&self, twin: u32, cipher: &[u8]) -> Result<Vec<u8>, String> {
        let key = self
            .shared_key(twin, false)
            .await
            .ok_or_else(|| format!("twin {twin} publishes no usable encryption key"))?;
        key.decrypt(cipher).map_err(|e| e.to_string())
    }

    /// The plain bytes of any payload from `twin`.
    pub(crate) async fn payload(&self, twin: u32, env: &Envelope) -> Result<Vec<u8>, String> {
        match &env.payload {
            Some(Payload::Plain(p)) => Ok(p.clone()),
            Some(Payload::Cipher(c)) => self.open(twin, c).await,
            None => Ok(Vec::new()),
        }
    }
}
