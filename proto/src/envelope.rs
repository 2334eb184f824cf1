//! Envelope helpers: bounded decoding, expiry arithmetic, and the message kind.

use prost::Message as _;

use prost::bytes::Bytes;

use crate::route::Envelope as RouteEnvelope;
use crate::types::{Address, Envelope};

/// Why bytes could not be turned into an envelope.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The frame is larger than the configured bound; it was not parsed.
    #[error("envelope of {size} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        /// Size of the frame.
        size: usize,
        /// Configured bound.
        limit: usize,
    },
    /// The bytes are not a valid protobuf `Envelope`.
    #[error("malformed envelope: {0}")]
    Malformed(#[from] prost::DecodeError),
}

/// Decodes an envelope, refusing frames larger than `limit` before parsing them.
pub fn decode_envelope(bytes: &[u8], limit: usize) -> Result<Envelope, DecodeError> {
    check_size(bytes.len(), limit)?;
    Ok(Envelope::decode(bytes)?)
}

/// Decodes an envelope to route it, as [`decode_envelope`] does (the same fields, the same
/// errors), sharing the frame's payload and signature instead of copying them.
pub fn decode_for_routing(frame: &Bytes, limit: usize) -> Result<RouteEnvelope, DecodeError> {
    check_size(frame.len(), limit)?;
    Ok(RouteEnvelope::decode(frame.clone())?)
}

/// Refuses a frame larger than `limit` before it is parsed.
fn check_size(size: usize, limit: usize) -> Result<(), DecodeError> {
    if size > limit {
        return Err(DecodeError::TooLarge { size, limit });
    }
    Ok(())
}

/// Current unix time in seconds (0 if the clock is before 1970).
pub fn unix_now() -> u64 {
    rmb_common::now_secs()
}

/// What an envelope carries, without its contents: for routing decisions and metric labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// A call to a remote function.
    Request,
    /// The answer to a request.
    Response,
    /// A failure answer.
    Error,
    /// Liveness check addressed to the relay or a twin.
    Ping,
    /// Answer to a ping.
    Pong,
    /// No message set: invalid on the wire.
    Empty,
}

impl Kind {
    /// A short lowercase label, used in logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Request => "request",
            Kind::Response => "response",
            Kind::Error => "error",
            Kind::Ping => "ping",
            Kind::Pong => "pong",
            Kind::Empty => "empty",
        }
    }
}

/// The read-only helpers of an envelope, written once for the wire type and for the relay's
/// routing copy of it ([`RouteEnvelope`]), which have the same fields.
macro_rules! envelope_reading {
    ($envelope:ty, $message:path) => {
        impl $envelope {
            /// The kind of message the envelope carries.
            pub fn kind(&self) -> Kind {
                use $message as M;
                match self.message {
                    Some(M::Request(_)) => Kind::Request,
                    Some(M::Response(_)) => Kind::Response,
                    Some(M::Error(_)) => Kind::Error,
                    Some(M::Ping(_)) => Kind::Ping,
                    Some(M::Pong(_)) => Kind::Pong,
                    None => Kind::Empty,
                }
            }

            /// Unix second after which the envelope must not be delivered.
            pub fn expires_at(&self) -> u64 {
                self.timestamp.saturating_add(self.expiration)
            }

            /// Whether the envelope is past its expiry at `now` (unix seconds).
            pub fn is_expired(&self, now: u64) -> bool {
                self.expires_at() <= now
            }

            /// Seconds left before expiry at `now`; 0 when expired.
            pub fn ttl_remaining(&self, now: u64) -> u64 {
                self.expires_at().saturating_sub(now)
            }

            /// Whether the envelope has a tag equal to `tag` (tags are comma or space
            /// separated).
            pub fn has_tag(&self, tag: &str) -> bool {
                self.tags
                    .as_deref()
                    .is_some_and(|tags| tags.split([',', ' ']).any(|t| t == tag))
            }

            /// Whether the sender wants an error at once rather than mail when the
            /// destination has no session: the tag `fail-fast`, or the original relay's
            /// `fast-fail` (which it matched anywhere in the tags).
            pub fn wants_fail_fast(&self) -> bool {
                self.has_tag("fail-fast")
                    || self
                        .tags
                        .as_deref()
                        .is_some_and(|tags| tags.contains("fast-fail"))
            }

            /// Source twin id, or 0 when unset.
            pub fn source_twin(&self) -> u32 {
                self.source.as_ref().map_or(0, |a| a.twin)
            }

            /// Destination twin id, or 0 when unset.
            pub fn destination_twin(&self) -> u32 {
                self.destination.as_ref().map_or(0, |a| a.twin)
            }
        }
    };
}

envelope_reading!(Envelope, crate::types::envelope::Message);
envelope_reading!(RouteEnvelope, crate::route::envelope::Message);

impl RouteEnvelope {
    /// The same envelope as the wire type, payload copied: for the rare answer built from
    /// the whole envelope (a pong).
    pub fn to_wire(&self) -> Envelope {
        // The two types have the same fields (build.rs makes one from the other): what one
        // encodes, the other decodes, so the default is never used.
        Envelope::decode(self.encode_to_vec().as_slice()).unwrap_or_default()
    }
}

impl Envelope {
    /// Sets the timestamp to `now` and the time to live to `ttl` seconds.
    pub fn stamp(&mut self, now: u64, ttl: u64) {
        self.timestamp = now;
        self.expiration = ttl;
    }

    /// Encodes the envelope to protobuf bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.encode_to_vec()
    }
}

impl Address {
    /// An address of a twin, with an optional session id.
    pub fn new(twin: u32, connection: Option<String>) -> Self {
        Address { twin, connection }
    }
}
