//! The signature challenge: the MD5 digest every RMB client signs.
//!
//! The byte layout is fixed by the existing clients; any deviation breaks signature
//! verification with them, so it is spelled out here field by field.

use std::fmt::{self, Write as _};

use md5::{Digest, Md5};

use crate::types::envelope::{Message, Payload};
use crate::types::{Address, Envelope};

/// The 16-byte MD5 digest that is signed.
pub type Challenge = [u8; 16];

/// Computes the challenge of `env`: MD5 over, with no separators, the uid, the tags if set, the
/// timestamp and expiration in decimal, source and destination (twin in decimal then connection
/// if set), the request command or the error code and message, schema and federation if set,
/// the payload bytes and every relay. The signature field itself is not covered.
pub fn challenge(env: &Envelope) -> Challenge {
    let mut h = HashWriter(Md5::new());
    h.bytes(env.uid.as_bytes());
    h.opt_str(env.tags.as_deref());
    h.decimal(env.timestamp);
    h.decimal(env.expiration);
    h.address(env.source.as_ref());
    h.address(env.destination.as_ref());
    match &env.message {
        Some(Message::Request(req)) => h.bytes(req.command.as_bytes()),
        Some(Message::Error(err)) => {
            h.decimal(u64::from(err.code));
            h.bytes(err.message.as_bytes());
        }
        Some(Message::Response(_) | Message::Ping(_) | Message::Pong(_)) | None => {}
    }
    h.opt_str(env.schema.as_deref());
    h.opt_str(env.federation.as_deref());
    match &env.payload {
        Some(Payload::Plain(data) | Payload::Cipher(data)) => h.bytes(data),
        None => {}
    }
    for relay in &env.relays {
        h.bytes(relay.as_bytes());
    }
    h.0.finalize().into()
}

/// Feeds text straight into the hasher, so decimals need no heap allocation.
struct HashWriter(Md5);

impl HashWriter {
    fn bytes(&mut self, data: &[u8]) {
        self.0.update(data);
    }

    fn opt_str(&mut self, value: Option<&str>) {
        if let Some(v) = value {
            self.bytes(v.as_bytes());
        }
    }

    fn decimal(&mut self, n: u64) {
        // Writing into the hasher cannot fail.
        let _ = write!(self, "{n}");
    }

    fn address(&mut self, addr: Option<&Address>) {
        if let Some(addr) = addr {
            self.decimal(u64::from(addr.twin));
            self.opt_str(addr.connection.as_deref());
        }
    }
}

impl fmt::Write for HashWriter {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.0.update(s.as_bytes());
        Ok(())
    }
}
