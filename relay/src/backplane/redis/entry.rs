//! The envelopes of one inbox entry.
//!
//! An entry names one session (`k`) and holds either one envelope (`e`, expiring at `x`: the
//! format every pod reads) or a run of envelopes for that session packed into `b` (written
//! only to pods that announced they read it, see [`super::keys::PACKED_READERS`]). One entry
//! per run makes the append, the read and the acknowledgement one stream operation for many
//! envelopes instead of one each.
//!
//! `b` is a sequence of `[expires_at: u64 BE][length: u32 BE][envelope]`.

use std::collections::HashMap;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use fred::prelude::Value;

use super::streams;

/// Most envelope bytes packed into one entry; a longer run is split over several entries.
pub const MAX_PACKED_BYTES: usize = 1 << 20;

/// Bytes of a packed envelope's header.
const HEADER: usize = 8 + 4;

/// One envelope of an entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packed {
    /// Unix second at which it must be dropped.
    pub expires_at: u64,
    /// The envelope as received.
    pub frame: Bytes,
}

/// An entry whose envelopes cannot be read (cut short, or neither `e` nor `b`).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("malformed inbox entry: {0}")]
pub struct Malformed(&'static str);

/// Packs envelopes (`(expires_at, frame)`) into the `b` field, in one allocation.
pub fn pack<'a, I>(envelopes: I) -> Bytes
where
    I: IntoIterator<Item = (u64, &'a Bytes)>,
    I::IntoIter: Clone,
{
    let envelopes = envelopes.into_iter();
    let size = envelopes.clone().map(|(_, f)| HEADER + f.len()).sum();
    let mut out = BytesMut::with_capacity(size);
    for (expires_at, frame) in envelopes {
        out.put_u64(expires_at);
        out.put_u32(frame.len() as u32);
        out.put_slice(frame);
    }
    out.freeze()
}

/// Unpacks the `b` field; the envelopes share `packed`'s memory.
pub fn unpack(mut packed: Bytes) -> Result<Vec<Packed>, Malformed> {
    let mut out = Vec::new();
    while packed.has_remaining() {
        if packed.remaining() < HEADER {
            return Err(Malformed("header cut short"));
        }
        let expires_at = packed.get_u64();
        let len = packed.get_u32() as usize;
        if packed.remaining() < len {
            return Err(Malformed("envelope cut short"));
        }
        out.push(Packed {
            expires_at,
            frame: packed.split_to(len),
        });
    }
    Ok(out)
}

/// The envelopes of an entry's fields, in the order they were sent.
pub fn envelopes(fields: &HashMap<String, Value>) -> Result<Vec<Packed>, Malformed> {
    if let Some(packed) = streams::bytes(fields, "b") {
        return unpack(packed);
    }
    let Some(frame) = streams::bytes(fields, "e") else {
        return Err(Malformed("no envelope"));
    };
    let expires_at = streams::number(fields, "x").unwrap_or(0);
    Ok(vec![Packed { expires_at, frame }])
}

/// The envelopes of an entry's fields that expire after `now` (unix s), in the order sent.
pub fn live(fields: &HashMap<String, Value>, now: u64) -> Result<Vec<Packed>, Malformed> {
    let mut envelopes = envelopes(fields)?;
    envelopes.retain(|e| e.expires_at > now);
    Ok(envelopes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames() -> Vec<(u64, Bytes)> {
        vec![
            (1_900_000_000, Bytes::from_static(b"first")),
            (1_900_000_001, Bytes::new()),
            (7, Bytes::from(vec![0xAB; 3000])),
        ]
    }

    #[test]
    fn packed_envelopes_come_back_in_order_and_unchanged() {
        let frames = frames();
        let packed = pack(frames.iter().map(|(x, f)| (*x, f)));
        let back = unpack(packed).unwrap();
        let back: Vec<(u64, Bytes)> = back.into_iter().map(|p| (p.expires_at, p.frame)).collect();
        assert_eq!(back, frames);
        assert_eq!(unpack(Bytes::new()).unwrap(), Vec::new());
    }

    #[test]
    fn a_packed_field_cut_anywhere_is_refused_not_misread() {
        let frames = frames();
        let packed = pack(frames.iter().map(|(x, f)| (*x, f)));
        // Cutting exactly after a whole envelope is a valid shorter run; anywhere else errs.
        let boundaries = [0, HEADER + 5, 2 * HEADER + 5, packed.len()];
        for cut in 0..packed.len() {
            let result = unpack(packed.slice(..cut));
            assert_eq!(result.is_ok(), boundaries.contains(&cut), "cut at {cut}");
        }
    }

    #[test]
    fn single_and_packed_entries_read_alike() {
        let mut single = HashMap::new();
        single.insert("k".to_string(), Value::from("1:"));
        single.insert("e".to_string(), Value::Bytes(Bytes::from_static(b"env")));
        single.insert("x".to_string(), Value::from("42"));
        let read = envelopes(&single).unwrap();
        assert_eq!(read.len(), 1);
        assert_eq!((read[0].expires_at, &read[0].frame[..]), (42, &b"env"[..]));

        let mut batch = HashMap::new();
        let frames = frames();
        batch.insert(
            "b".to_string(),
            Value::Bytes(pack(frames.iter().map(|(x, f)| (*x, f)))),
        );
        assert_eq!(envelopes(&batch).unwrap().len(), 3);

        assert!(envelopes(&HashMap::new()).is_err());
        let live_ones: Vec<u64> = live(&batch, 100)
            .unwrap()
            .iter()
            .map(|e| e.expires_at)
            .collect();
        assert_eq!(
            live_ones,
            vec![1_900_000_000, 1_900_000_001],
            "expired at 7"
        );
    }
}
