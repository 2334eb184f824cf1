//! The JSON documents of the local Redis API, field for field as the existing `rmb-peer`
//! reads and writes them, so services written against it (Go, TypeScript, Python SDKs) work
//! unchanged.
//!
//! | list | pushed by | document |
//! | --- | --- | --- |
//! | `msgbus.system.local` | a caller | [`OutgoingRequest`] |
//! | the caller's `ret` list | the gateway | [`IncomingResponse`] |
//! | `msgbus.<cmd>` | the gateway | [`IncomingRequest`] |
//! | `msgbus.system.reply` | a service | [`OutgoingResponse`] |
//!
//! `dat` is always standard base64 (with padding) of the payload bytes.

use std::fmt;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use rmb_proto::Address;
use serde::{Deserialize, Deserializer, Serialize};

/// The list callers push their requests on.
pub const LOCAL_QUEUE: &str = "msgbus.system.local";
/// The list services push their replies on.
pub const REPLY_QUEUE: &str = "msgbus.system.reply";
/// The prefix of the list a command's requests are pushed on: `msgbus.<cmd>`.
pub const COMMAND_PREFIX: &str = "msgbus.";
/// Version written in every document the gateway produces.
pub const DOC_VERSION: u32 = 1;

/// The list incoming requests for `command` are pushed on.
pub fn command_queue(command: &str) -> String {
    format!("{COMMAND_PREFIX}{command}")
}

/// A request from a local caller, to one or more twins.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutgoingRequest {
    /// Document version.
    #[serde(rename = "ver", default)]
    pub version: u32,
    /// The caller's own reference, given back on every response.
    #[serde(rename = "ref", default)]
    pub reference: Option<String>,
    /// The command to call.
    #[serde(rename = "cmd")]
    pub command: String,
    /// Time to live in seconds (0 means the gateway default).
    #[serde(rename = "exp", default)]
    pub expiration: u64,
    /// Base64 payload.
    #[serde(rename = "dat", default)]
    pub data: String,
    /// Free-form tags carried in the envelope.
    #[serde(rename = "tag", default)]
    pub tags: Option<String>,
    /// Destination twins; each gets its own envelope, all with the same uid.
    #[serde(rename = "dst", default)]
    pub destinations: Vec<u32>,
    /// The list responses are pushed on.
    #[serde(rename = "ret", default)]
    pub reply_to: String,
    /// The payload schema (for example `application/json`).
    #[serde(rename = "shm", default)]
    pub schema: Option<String>,
    /// The caller's clock (unix seconds); informational.
    #[serde(rename = "now", default)]
    pub timestamp: u64,
}

/// A request from a remote twin, for the local service serving its command.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IncomingRequest {
    /// Document version.
    #[serde(rename = "ver")]
    pub version: u32,
    /// The envelope uid: give it back as `ref` in the reply.
    #[serde(rename = "ref")]
    pub reference: Option<String>,
    /// The sender, `"twin"` or `"twin:sid"`: give it back as `dst` in the reply.
    #[serde(rename = "src")]
    pub source: String,
    /// The command called.
    #[serde(rename = "cmd")]
    pub command: String,
    /// The envelope's time to live in seconds.
    #[serde(rename = "exp")]
    pub expiration: u64,
    /// Base64 payload.
    #[serde(rename = "dat")]
    pub data: String,
    /// The envelope's tags.
    #[serde(rename = "tag")]
    pub tags: Option<String>,
    /// Where to reply: always [`REPLY_QUEUE`].
    #[serde(rename = "ret")]
    pub reply_to: String,
    /// The payload schema.
    #[serde(rename = "shm")]
    pub schema: Option<String>,
    /// The envelope's timestamp (unix seconds).
    #[serde(rename = "now")]
    pub timestamp: u64,
}

/// An error carried in a response document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JsonError {
    /// The error code (see `rmb_proto::codes`).
    #[serde(default)]
    pub code: u32,
    /// Human-readable message.
    #[serde(default)]
    pub message: String,
}

/// A service's reply to an [`IncomingRequest`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutgoingResponse {
    /// Document version.
    #[serde(rename = "ver", default)]
    pub version: u32,
    /// The `ref` of the request answered (its envelope uid).
    #[serde(rename = "ref", default)]
    pub reference: Option<String>,
    /// Base64 payload.
    #[serde(rename = "dat", default)]
    pub data: String,
    /// The `src` of the request answered: `"twin"` or `"twin:sid"` (a bare number is accepted).
    #[serde(rename = "dst", deserialize_with = "string_or_number")]
    pub destination: String,
    /// The payload schema.
    #[serde(rename = "shm", default)]
    pub schema: Option<String>,
    /// The service's clock; informational.
    #[serde(rename = "now", default)]
    pub timestamp: u64,
    /// Set when the service answers with an error instead of data.
    #[serde(rename = "err", default)]
    pub error: Option<JsonError>,
}

/// A response (or error) for a local caller, pushed on its `ret` list.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IncomingResponse {
    /// Document version.
    #[serde(rename = "ver")]
    pub version: u32,
    /// The caller's `ref`, restored from its request.
    #[serde(rename = "ref")]
    pub reference: Option<String>,
    /// Base64 payload (empty for errors).
    #[serde(rename = "dat")]
    pub data: String,
    /// The twin that answered, `"twin"` or `"twin:sid"`.
    #[serde(rename = "src")]
    pub source: String,
    /// The payload schema.
    #[serde(rename = "shm")]
    pub schema: Option<String>,
    /// When the answer was made (unix seconds).
    #[serde(rename = "now")]
    pub timestamp: u64,
    /// The error, or `null` for a successful response.
    #[serde(rename = "err")]
    pub error: Option<JsonError>,
}

fn string_or_number<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Either {
        S(String),
        N(u64),
    }
    Ok(match Either::deserialize(d)? {
        Either::S(s) => s,
        Either::N(n) => n.to_string(),
    })
}

/// Base64 of `bytes`, as in `dat`.
pub fn encode_data(bytes: &[u8]) -> String {
    STANDARD.encode(bytes)
}

/// The bytes of a `dat` field. Whitespace around it is ignored.
pub fn decode_data(dat: &str) -> Result<Vec<u8>, base64::DecodeError> {
    STANDARD.decode(dat.trim())
}

/// An address as written in `src`/`dst`: `"twin"` or `"twin:sid"`.
pub struct AddressText<'a>(pub &'a Address);

impl fmt::Display for AddressText<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0.connection.as_deref() {
            Some(sid) if !sid.is_empty() => write!(f, "{}:{sid}", self.0.twin),
            _ => write!(f, "{}", self.0.twin),
        }
    }
}

/// Parses `"twin"` or `"twin:sid"`.
pub fn parse_address(text: &str) -> Option<Address> {
    let text = text.trim();
    let (twin, sid) = match text.split_once(':') {
        Some((twin, sid)) => (twin, Some(sid)),
        None => (text, None),
    };
    let twin: u32 = twin.parse().ok()?;
    let sid = sid.filter(|s| !s.is_empty()).map(str::to_string);
    Some(Address::new(twin, sid))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_go_sdk_request_parses() {
        let text = r#"{"ver":1,"ref":"r-1","cmd":"calc.add","exp":10,"dat":"WzEsMl0=",
            "tag":null,"dst":[7,8],"ret":"ret-1","shm":"application/json","now":1700000000}"#;
        let req: OutgoingRequest = serde_json::from_str(text).unwrap();
        assert_eq!(req.command, "calc.add");
        assert_eq!(req.destinations, [7, 8]);
        assert_eq!(req.reference.as_deref(), Some("r-1"));
        assert_eq!(decode_data(&req.data).unwrap(), b"[1,2]");
    }

    #[test]
    fn replies_accept_string_or_number_destinations() {
        let a: OutgoingResponse =
            serde_json::from_str(r#"{"ref":"u","dat":"","dst":"7:phone","err":null}"#).unwrap();
        assert_eq!(a.destination, "7:phone");
        let b: OutgoingResponse = serde_json::from_str(r#"{"ref":"u","dst":7}"#).unwrap();
        assert_eq!(b.destination, "7");
        assert_eq!(b.error, None);
    }

    #[test]
    fn responses_write_a_null_error_and_all_fields() {
        let doc = IncomingResponse {
            version: 1,
            reference: Some("r".into()),
            data: encode_data(b"3"),
            source: "7".into(),
            schema: None,
            timestamp: 5,
            error: None,
        };
        let v: serde_json::Value = serde_json::to_value(&doc).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"ver":1,"ref":"r","dat":"Mw==","src":"7","shm":null,"now":5,"err":null})
        );
    }

    #[test]
    fn addresses_round_trip() {
        for text in ["7", "7:phone"] {
            let a = parse_address(text).unwrap();
            assert_eq!(AddressText(&a).to_string(), text);
        }
        assert_eq!(parse_address("7:"), Some(Address::new(7, None)));
        assert_eq!(parse_address("x"), None);
        assert_eq!(parse_address(""), None);
    }
}
