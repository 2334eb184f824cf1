//! The backlog: what the gateway remembers about each request it sent, kept in the local
//! Redis as the original `rmb-peer` keeps it, under `msgbus.backlog.<uid>` and expiring with
//! the request. An answer that arrives after a restart of the gateway still finds where it
//! goes (the caller's `ret` list and `ref`); memory is only a cache of it.
//!
//! Our entries are JSON ([`Tracked`]); entries the original wrote (a protobuf `Backlog` with
//! `uid`=1, `reference`=2, `reply_to`=3) are read too, so answers to requests an original
//! peer sent before it was replaced by this one still reach their callers.

use fred::bytes::Bytes;
use fred::prelude::{Client, KeysInterface};
use fred::types::Expiration;
use futures_util::StreamExt as _;
use serde::{Deserialize, Serialize};

use crate::protocol::Call;

/// The prefix of backlog keys: `msgbus.backlog.<uid>`.
pub const BACKLOG_PREFIX: &str = "msgbus.backlog.";

/// The key of the backlog entry for `uid`.
pub fn backlog_key(uid: &str) -> String {
    format!("{BACKLOG_PREFIX}{uid}")
}

/// A request sent and not fully answered yet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Tracked {
    /// The caller's `ref`, given back on every answer.
    #[serde(rename = "ref")]
    pub reference: Option<String>,
    /// The caller's `ret` list.
    #[serde(rename = "ret")]
    pub reply_to: String,
    /// Every destination; empty for an entry written by the original peer (which does not
    /// record them): then any twin's answer is taken.
    #[serde(rename = "dst")]
    pub destinations: Vec<u32>,
    /// The destinations that have not answered.
    #[serde(rename = "wait")]
    pub waiting: Vec<u32>,
    /// When the request expires (unix seconds); 0 when unknown (original entries).
    #[serde(rename = "exp")]
    pub expires_at: u64,
    /// The request's time to live in seconds.
    pub ttl: u64,
}

/// What the gateway remembers about the caller of a request: where its answers go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Caller {
    /// The caller's `ref`, given back on every answer.
    pub reference: Option<String>,
    /// The caller's `ret` list.
    pub reply_to: String,
}

impl Tracked {
    /// The entry of `call`.
    pub fn of(call: &Call<Caller>) -> Tracked {
        Tracked {
            reference: call.context.reference.clone(),
            reply_to: call.context.reply_to.clone(),
            destinations: call.destinations.clone(),
            waiting: call.waiting.clone(),
            expires_at: call.expires_at,
            ttl: call.ttl,
        }
    }

    /// The call this entry records. An entry of the original peer says nothing of its
    /// expiry: it is kept in memory as long as a request lives by default, from `now`
    /// (Redis expires the entry itself).
    pub fn into_call(self, now: u64) -> Call<Caller> {
        let caller = Caller {
            reference: self.reference,
            reply_to: self.reply_to,
        };
        let legacy = self.destinations.is_empty();
        let expires_at = if legacy {
            now.saturating_add(super::DEFAULT_TTL_SECS)
        } else {
            self.expires_at
        };
        let mut call = Call::new(self.destinations, expires_at, self.ttl, caller);
        call.waiting = self.waiting;
        call
    }
}

/// Reads an entry: ours (JSON) or the original's (protobuf).
pub(crate) fn decode(bytes: &[u8]) -> Option<Tracked> {
    if let Ok(tracked) = serde_json::from_slice::<Tracked>(bytes) {
        return Some(tracked);
    }
    let (reference, reply_to) = decode_original(bytes)?;
    Some(Tracked {
        reference,
        reply_to,
        destinations: Vec::new(),
        waiting: Vec::new(),
        expires_at: 0,
        ttl: 0,
    })
}

/// `reference` (field 2) and `reply_to` (field 3) of the original's protobuf `Backlog`;
/// other fields are skipped. `None` when the bytes are not such a message.
fn decode_original(mut bytes: &[u8]) -> Option<(Option<String>, String)> {
    let mut reference = None;
    let mut reply_to = None;
    while !bytes.is_empty() {
        let key = read_varint(&mut bytes)?;
        match key & 7 {
            0 => {
                read_varint(&mut bytes)?;
            }
            1 => bytes = bytes.get(8..)?,
            5 => bytes = bytes.get(4..)?,
            2 => {
                let len = usize::try_from(read_varint(&mut bytes)?).ok()?;
                let field = bytes.get(..len)?;
                bytes = &bytes[len..];
                let text = || std::str::from_utf8(field).ok().map(str::to_string);
                match key >> 3 {
                    2 => reference = Some(text()?),
                    3 => reply_to = Some(text()?),
                    _ => {}
                }
            }
            _ => return None,
        }
    }
    let reply_to = reply_to.filter(|r| !r.is_empty())?;
    Some((reference.filter(|r| !r.is_empty()), reply_to))
}

fn read_varint(bytes: &mut &[u8]) -> Option<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = bytes.split_first()?;
        *bytes = rest;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

/// Seconds from now until `tracked` expires (at least 1: Redis refuses 0).
fn seconds_left(tracked: &Tracked) -> i64 {
    let left = tracked
        .expires_at
        .saturating_sub(rmb_proto::unix_now())
        .max(1);
    i64::try_from(left).unwrap_or(i64::MAX)
}

/// Stores the entry for `uid`, expiring when the request does. `SET … EX` rather than `EXAT`
/// or `KEEPTTL`, which Redis before 6.2 (Debian 11, Ubuntu 22.04) does not know.
pub(crate) async fn store(
    client: &Client,
    uid: &str,
    tracked: &Tracked,
) -> Result<(), fred::error::Error> {
    let doc = serde_json::to_string(tracked)
        .map_err(|e| fred::error::Error::new(fred::error::ErrorKind::Parse, e.to_string()))?;
    let expire = Expiration::EX(seconds_left(tracked));
    client
        .set::<(), _, _>(backlog_key(uid), doc, Some(expire), None, false)
        .await
}

/// Records which destinations still wait; removes the entry once every destination
/// answered, or once the request expired.
pub(crate) async fn update(
    client: &Client,
    uid: &str,
    tracked: &Tracked,
) -> Result<(), fred::error::Error> {
    if tracked.destinations.is_empty() {
        // The original's entry: left to expire, as the original does.
        return Ok(());
    }
    if tracked.waiting.is_empty() || tracked.expires_at <= rmb_proto::unix_now() {
        return client.del::<(), _>(backlog_key(uid)).await;
    }
    store(client, uid, tracked).await
}

/// The entry for `uid`, if the request is still tracked.
pub(crate) async fn load(
    client: &Client,
    uid: &str,
) -> Result<Option<Tracked>, fred::error::Error> {
    let bytes: Option<Bytes> = client.get(backlog_key(uid)).await?;
    Ok(bytes.and_then(|b| {
        let tracked = decode(&b);
        if tracked.is_none() {
            tracing::warn!(uid, "unreadable backlog entry; ignoring it");
        }
        tracked
    }))
}

/// The uids of every tracked request (at most `limit`), for a gateway that starts while
/// requests from before are still waiting for answers.
pub(crate) async fn uids(client: &Client, limit: usize) -> Result<Vec<String>, fred::error::Error> {
    let pattern = format!("{BACKLOG_PREFIX}*");
    let mut keys = client.scan_buffered(pattern, Some(1000), None);
    let mut uids = Vec::new();
    while let Some(key) = keys.next().await {
        let key = key?;
        if let Some(uid) = key.as_str().and_then(|k| k.strip_prefix(BACKLOG_PREFIX)) {
            uids.push(uid.to_string());
        }
        if uids.len() >= limit {
            break;
        }
    }
    Ok(uids)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Protobuf bytes of the original's `Backlog { uid, reference, reply_to, ttl }`.
    fn original(uid: &str, reference: &str, reply_to: &str, ttl: u64) -> Vec<u8> {
        let mut out = Vec::new();
        for (field, text) in [(1u8, uid), (2, reference), (3, reply_to)] {
            if text.is_empty() {
                continue;
            }
            out.push(field << 3 | 2);
            out.push(text.len() as u8);
            out.extend_from_slice(text.as_bytes());
        }
        out.push(4 << 3);
        let mut v = ttl;
        loop {
            let byte = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                out.push(byte);
                break;
            }
            out.push(byte | 0x80);
        }
        out
    }

    #[test]
    fn our_entries_round_trip() {
        let t = Tracked {
            reference: Some("r".into()),
            reply_to: "ret".into(),
            destinations: vec![2, 3],
            waiting: vec![3],
            expires_at: 1_700_000_000,
            ttl: 30,
        };
        let text = serde_json::to_vec(&t).unwrap();
        assert_eq!(decode(&text), Some(t.clone()));
        let call = t.clone().into_call(1);
        assert!(call.waits_for(3) && !call.waits_for(2) && !call.waits_for(9));
        assert_eq!(call.expires_at, 1_700_000_000);
        assert_eq!(Tracked::of(&call), t);
    }

    #[test]
    fn entries_of_the_original_peer_are_read() {
        let bytes = original("5e0c-uid", "caller-ref", "caller.ret", 300);
        let t = decode(&bytes).unwrap();
        assert_eq!(t.reference.as_deref(), Some("caller-ref"));
        assert_eq!(t.reply_to, "caller.ret");
        let call = t.into_call(1_000);
        assert!(call.is_legacy() && call.waits_for(42));
        assert_eq!(call.expires_at, 1_000 + crate::gateway::DEFAULT_TTL_SECS);
        let t = decode(&original("u", "", "only.ret", 1000)).unwrap();
        assert_eq!(t.reference, None);
    }

    #[test]
    fn garbage_is_not_an_entry() {
        assert_eq!(decode(b""), None);
        assert_eq!(decode(b"{\"ret\":1}"), None);
        assert_eq!(decode(&[0x1a, 0x40, b'x']), None, "length past the end");
        assert_eq!(decode(&[0x0f]), None, "wire type 7");
        assert_eq!(decode(&original("u", "r", "", 1)), None, "no reply_to");
    }
}
