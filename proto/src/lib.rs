//! RMB v2 wire types.
//!
//! The protobuf schema in `proto/types.proto` is the compatibility contract with every existing
//! RMB client: field numbers never change. This crate adds what every component needs on top of
//! the generated types: the signature challenge, expiry arithmetic, bounded decoding and the
//! constructors of requests and of the answers to them (responses, errors, pongs).

mod challenge;
mod envelope;
mod reply;

/// Types generated from `proto/types.proto`.
#[allow(missing_docs)]
pub mod types {
    include!(concat!(env!("OUT_DIR"), "/rmb.types.rs"));
}

pub use challenge::{challenge, Challenge};
pub use envelope::{decode_envelope, unix_now, DecodeError, Kind};
pub use types::envelope::{Message, Payload};
pub use types::{Address, Envelope, Error, Ping, Pong, Request, Response};

/// Error codes carried in `Error.code`, shared by the relay and peers.
pub mod codes {
    /// The envelope could not be parsed or is structurally invalid.
    pub const INVALID_MESSAGE: u32 = 100;
    /// The payload could not be decoded.
    pub const INVALID_PAYLOAD: u32 = 101;
    /// A validation rule failed (for example: the envelope expired).
    pub const VALIDATION: u32 = 102;
    /// The twin is not known to the directory.
    pub const UNKNOWN_TWIN: u32 = 103;
    /// The signature does not verify against the source twin's key.
    pub const INVALID_SIGNATURE: u32 = 104;
    /// The destination has no encryption key.
    pub const NO_PUBLIC_KEY: u32 = 105;
    /// Encryption or decryption failed.
    pub const CRYPTO: u32 = 106;
    /// Anything else.
    pub const OTHER: u32 = 500;

    // Codes the relay uses for envelopes it refuses. Existing peers pass any code through
    // to the caller, so these stay compatible while telling the reasons apart.

    /// The destination is offline and the envelope was tagged `fail-fast`.
    pub const DESTINATION_OFFLINE: u32 = 110;
    /// The destination's mailbox is full.
    pub const MAILBOX_FULL: u32 = 111;
    /// The sending twin exceeded its rate limit.
    pub const RATE_LIMITED: u32 = 112;
    /// The envelope's source is not the session that sent it.
    pub const SOURCE_MISMATCH: u32 = 113;
    /// The destination twin is served by another relay and this relay does not federate.
    pub const NOT_SERVED: u32 = 114;
    /// The relay cannot take the envelope now (directory or backplane unavailable,
    /// shutting down); retry later or through another relay.
    pub const UNAVAILABLE: u32 = 503;
}
