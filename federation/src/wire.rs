//! The fixed names of the federation protocol (specified in `docs/federation.md`): paths,
//! content type, scheme and the clock slack for keys. Kept apart so that the key document
//! (`key.rs`) and the signed link (`auth.rs`) both use them without importing each other.

/// The authorization scheme name (also the first line of the canonical string).
pub const SCHEME: &str = "RMB-Relay-V1";

/// Path of the batch endpoint.
pub const ENDPOINT: &str = "/federation/v1/envelopes";

/// Path of the key document.
pub const KEY_DOCUMENT_PATH: &str = "/.well-known/rmb/relay.json";

/// Content type of a batch body: envelopes, each prefixed by its length as a protobuf varint.
pub const BATCH_CONTENT_TYPE: &str = "application/x-rmb-envelopes";

/// A key may be used this many seconds before its `valid_from` (clock differences).
pub const FUTURE_KEY_SLACK: u64 = 300;
