//! A twin's keys as the protocol core uses them: signing what goes out, checking what comes
//! in against the directory's record of its sender, and end-to-end encryption. No I/O: the
//! records come from the shell's directory lookups.

use std::collections::HashMap;

use parking_lot::Mutex;
use rmb_identity::{sign_envelope, verify_envelope, SharedKey, SignatureError, Signer, Twin};
use rmb_proto::{Address, Envelope, Payload};

use super::ProtocolError;

/// Most shared keys cached.
const MAX_SHARED_KEYS: usize = 10_000;

/// Our signer and address, and the keys shared with other twins.
pub(crate) struct Keys {
    signer: Signer,
    pub(crate) me: Address,
    /// Keys shared with other twins, with the public key they were derived from.
    shared: Mutex<HashMap<u32, (Vec<u8>, SharedKey)>>,
}

impl Keys {
    pub(crate) fn new(signer: Signer, me: Address) -> Keys {
        Keys {
            signer,
            me,
            shared: Mutex::new(HashMap::new()),
        }
    }

    /// `env` from us (our address as its source), signed with our key.
    pub(crate) fn sign(&self, env: Envelope) -> Envelope {
        let mut env = env.with_source(self.me.clone());
        sign_envelope(&mut env, &self.signer);
        env
    }

    /// Checks that `env` is signed by the account key of `record`.
    pub(crate) fn verify(&self, env: &Envelope, record: &Twin) -> Result<(), ProtocolError> {
        match verify_envelope(env, &record.account) {
            Ok(_) => Ok(()),
            Err(SignatureError::Missing) => Err(ProtocolError::Unsigned),
            Err(e) => Err(ProtocolError::InvalidSignature(e.to_string())),
        }
    }

    /// The key shared with `twin`, derived from `pk` (the key it publishes).
    fn shared_key(&self, twin: u32, pk: &[u8]) -> Result<SharedKey, ProtocolError> {
        if let Some((cached_pk, key)) = self.shared.lock().get(&twin) {
            if cached_pk.as_slice() == pk {
                return Ok(key.clone());
            }
        }
        let key = SharedKey::derive(self.signer.identity(), pk).map_err(|e| {
            ProtocolError::Crypto(format!("twin {twin} publishes an unusable key: {e}"))
        })?;
        let mut cache = self.shared.lock();
        if cache.len() >= MAX_SHARED_KEYS {
            cache.clear();
        }
        cache.insert(twin, (pk.to_vec(), key.clone()));
        Ok(key)
    }

    /// The payload for `record`'s twin: encrypted when it publishes an encryption key,
    /// plain when it publishes none.
    pub(crate) fn seal(&self, record: &Twin, plain: Vec<u8>) -> Result<Payload, ProtocolError> {
        match &record.pk {
            Some(pk) => Ok(Payload::Cipher(
                self.shared_key(record.id, pk)?.encrypt(&plain),
            )),
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
}
