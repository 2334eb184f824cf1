//! The interop vectors produced by the official TypeScript RMB client
//! (`../shared/vectors/rmb-interop.json`, or the file named by `RMB_VECTORS`).

use std::path::PathBuf;

use serde::Deserialize;

/// Every vector in the file.
#[derive(Debug, Deserialize)]
pub struct Vectors {
    /// Mnemonic to public keys.
    pub identities: Vec<IdentityVector>,
    /// Envelope fields to bytes, challenges and signatures.
    pub envelopes: Vec<EnvelopeVector>,
    /// Session tokens.
    pub jwts: Vec<JwtVector>,
    /// End-to-end encryption.
    pub e2e: Vec<E2eVector>,
}

/// One identity: its mnemonic and the keys the TypeScript client derived from it.
#[derive(Debug, Deserialize)]
#[allow(missing_docs)]
pub struct IdentityVector {
    pub name: String,
    pub mnemonic: String,
    pub twin: u32,
    pub ed25519_public: String,
    pub ed25519_ss58: String,
    pub sr25519_public: String,
    pub sr25519_ss58: String,
    pub secp256k1_secret: String,
    pub secp256k1_public_compressed: String,
}

/// An envelope as fields, with what the TypeScript client made of it.
#[derive(Debug, Deserialize)]
#[allow(missing_docs)]
pub struct EnvelopeVector {
    pub name: String,
    pub fields: EnvelopeFields,
    pub signer: String,
    pub challenge_md5: String,
    pub signature_ed25519: String,
    pub signature_sr25519_verify_only: String,
    pub protobuf_with_ed25519_signature: String,
}

/// Envelope fields, named as in the schema.
#[derive(Debug, Deserialize)]
#[allow(missing_docs)]
pub struct EnvelopeFields {
    pub uid: String,
    pub tags: Option<String>,
    pub timestamp: u64,
    pub expiration: u64,
    pub source: AddressFields,
    pub destination: AddressFields,
    pub request: Option<RequestFields>,
    pub response: Option<serde_json::Value>,
    pub error: Option<ErrorFields>,
    pub schema: Option<String>,
    pub federation: Option<String>,
    #[serde(default)]
    pub relays: Vec<String>,
    pub plain_hex: Option<String>,
    pub cipher_hex: Option<String>,
}

/// A twin address.
#[derive(Debug, Deserialize)]
#[allow(missing_docs)]
pub struct AddressFields {
    pub twin: u32,
    pub connection: Option<String>,
}

/// A request body.
#[derive(Debug, Deserialize)]
#[allow(missing_docs)]
pub struct RequestFields {
    pub command: String,
}

/// An error body.
#[derive(Debug, Deserialize)]
#[allow(missing_docs)]
pub struct ErrorFields {
    pub code: u32,
    pub message: String,
}

/// A session token and the claims it carries.
#[derive(Debug, Deserialize)]
#[allow(missing_docs)]
pub struct JwtVector {
    pub identity: String,
    pub twin: u32,
    pub sid: Option<String>,
    pub iat: u64,
    pub exp: u64,
    pub token_ed25519: String,
    pub token_sr25519_verify_only: String,
}

/// An end-to-end encrypted payload.
#[derive(Debug, Deserialize)]
#[allow(missing_docs)]
pub struct E2eVector {
    pub sender: String,
    pub receiver: String,
    pub shared_key: String,
    pub plaintext: String,
    pub cipher_field: String,
}

impl Vectors {
    /// Loads the vectors; panics with a clear message when the file is missing (tests only).
    pub fn load() -> Vectors {
        let path = vectors_path();
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("cannot read interop vectors {}: {e}", path.display()));
        serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("cannot parse interop vectors {}: {e}", path.display()))
    }

    /// The identity named `name`.
    pub fn identity(&self, name: &str) -> &IdentityVector {
        self.identities
            .iter()
            .find(|i| i.name == name)
            .unwrap_or_else(|| panic!("no identity {name} in vectors"))
    }
}

/// Where the vectors live: `RMB_VECTORS`, else `<workspace>/../shared/vectors/rmb-interop.json`.
pub fn vectors_path() -> PathBuf {
    if let Some(p) = std::env::var_os("RMB_VECTORS") {
        return PathBuf::from(p);
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/vectors/rmb-interop.json")
}

/// Decodes hex, panicking on bad input (vectors are trusted test data).
pub fn unhex(s: &str) -> Vec<u8> {
    hex::decode(s).unwrap_or_else(|e| panic!("bad hex in vectors: {e}"))
}

impl EnvelopeVector {
    /// The envelope these fields describe, unsigned. The TypeScript client always sets `tags`
    /// (to "" when there are none), which shows in the protobuf bytes, so this does too.
    pub fn unsigned_envelope(&self) -> rmb_proto::Envelope {
        use rmb_proto::{Address, Error, Message, Payload, Request, Response};
        let f = &self.fields;
        let message = if let Some(req) = &f.request {
            Some(Message::Request(Request {
                command: req.command.clone(),
            }))
        } else if let Some(err) = &f.error {
            Some(Message::Error(Error {
                code: err.code,
                message: err.message.clone(),
            }))
        } else {
            f.response.as_ref().map(|_| Message::Response(Response {}))
        };
        let payload = match (&f.plain_hex, &f.cipher_hex) {
            (Some(p), _) => Some(Payload::Plain(unhex(p))),
            (None, Some(c)) => Some(Payload::Cipher(unhex(c))),
            (None, None) => None,
        };
        rmb_proto::Envelope {
            uid: f.uid.clone(),
            tags: Some(f.tags.clone().unwrap_or_default()),
            timestamp: f.timestamp,
            expiration: f.expiration,
            source: Some(Address::new(f.source.twin, f.source.connection.clone())),
            destination: Some(Address::new(
                f.destination.twin,
                f.destination.connection.clone(),
            )),
            message,
            signature: None,
            schema: f.schema.clone(),
            federation: f.federation.clone(),
            payload,
            relays: f.relays.clone(),
        }
    }
}
