//! Stream commands issued as plain commands, with replies parsed here: entry fields stay raw
//! bytes (envelopes are binary) and the layout is the same under RESP2 and RESP3.

use std::collections::HashMap;

use fred::prelude::*;
use fred::types::{ClusterHash, CustomCommand};

/// One stream entry: its id and fields.
pub type Entry = (String, HashMap<String, Value>);

/// `XRANGE key start end COUNT n`.
pub async fn xrange(client: &Client, key: &str, start: &str, count: u64) -> FredResult<Vec<Entry>> {
    let cmd = CustomCommand::new_static("XRANGE", ClusterHash::FirstKey, false);
    let args: Vec<Value> = vec![
        key.into(),
        start.into(),
        "+".into(),
        "COUNT".into(),
        (count as i64).into(),
    ];
    let reply: Value = client.custom(cmd, args).await?;
    Ok(entries(reply))
}

/// `XREADGROUP GROUP g c COUNT n BLOCK ms STREAMS key >`: new entries for this consumer.
/// Sent to the node owning `key`'s slot: a custom command is otherwise routed by its first
/// text argument, `GROUP`, which lands on an arbitrary node of a cluster.
pub async fn xreadgroup(
    client: &Client,
    group: &str,
    consumer: &str,
    key: &str,
    count: u64,
    block_ms: u64,
) -> FredResult<Vec<Entry>> {
    let slot = fred::util::redis_keyslot(key.as_bytes());
    let cmd = CustomCommand::new_static("XREADGROUP", ClusterHash::Custom(slot), true);
    let args: Vec<Value> = vec![
        "GROUP".into(),
        group.into(),
        consumer.into(),
        "COUNT".into(),
        (count as i64).into(),
        "BLOCK".into(),
        (block_ms as i64).into(),
        "STREAMS".into(),
        key.into(),
        ">".into(),
    ];
    let reply: Value = client.custom(cmd, args).await?;
    // [[stream, entries]] (RESP2) or {stream: entries} (RESP3); null on timeout.
    Ok(match reply {
        Value::Array(streams) => streams
            .into_iter()
            .filter_map(|s| match s {
                Value::Array(mut pair) if pair.len() == 2 => pair.pop(),
                _ => None,
            })
            .flat_map(entries)
            .collect(),
        Value::Map(map) => map.inner().into_values().flat_map(entries).collect(),
        _ => Vec::new(),
    })
}

/// `XAUTOCLAIM key g c min_idle start COUNT n`: our own entries idle longer than
/// `min_idle_ms` (delivered, never acknowledged).
pub async fn xautoclaim(
    client: &Client,
    key: &str,
    group: &str,
    consumer: &str,
    min_idle_ms: u64,
    count: u64,
) -> FredResult<Vec<Entry>> {
    let cmd = CustomCommand::new_static("XAUTOCLAIM", ClusterHash::FirstKey, false);
    let args: Vec<Value> = vec![
        key.into(),
        group.into(),
        consumer.into(),
        (min_idle_ms as i64).into(),
        "0-0".into(),
        "COUNT".into(),
        (count as i64).into(),
    ];
    let reply: Value = client.custom(cmd, args).await?;
    Ok(match reply {
        Value::Array(mut parts) if parts.len() >= 2 => entries(parts.swap_remove(1)),
        _ => Vec::new(),
    })
}

/// How many entries are pending for `consumer` (`XPENDING key group`, summary form).
pub async fn pending_count(
    client: &Client,
    key: &str,
    group: &str,
    consumer: &str,
) -> FredResult<u64> {
    let cmd = CustomCommand::new_static("XPENDING", ClusterHash::FirstKey, false);
    let args: Vec<Value> = vec![key.into(), group.into()];
    let reply: Value = client.custom(cmd, args).await?;
    // [count, min id, max id, [[consumer, count], …]]; the list is null when none pend.
    let Value::Array(mut parts) = reply else {
        return Ok(0);
    };
    let Some(Value::Array(consumers)) = parts.pop().filter(|_| parts.len() == 3) else {
        return Ok(0);
    };
    Ok(consumers
        .into_iter()
        .find_map(|c| match c {
            Value::Array(pair)
                if pair.len() == 2 && pair[0].as_str().as_deref() == Some(consumer) =>
            {
                pair[1]
                    .as_u64()
                    .or_else(|| pair[1].as_string()?.parse().ok())
            }
            _ => None,
        })
        .unwrap_or(0))
}

/// `XPENDING key group (start + count consumer`: up to `count` of `consumer`'s pending
/// entries after `start` (`-` for the first page), as id and idle milliseconds.
pub async fn pending_page(
    client: &Client,
    key: &str,
    group: &str,
    consumer: &str,
    start: &str,
    count: u64,
) -> FredResult<Vec<(String, u64)>> {
    let cmd = CustomCommand::new_static("XPENDING", ClusterHash::FirstKey, false);
    let args: Vec<Value> = vec![
        key.into(),
        group.into(),
        start.into(),
        "+".into(),
        (count as i64).into(),
        consumer.into(),
    ];
    let reply: Value = client.custom(cmd, args).await?;
    let Value::Array(items) = reply else {
        return Ok(Vec::new());
    };
    // [[id, consumer, idle ms, deliveries], …]
    Ok(items
        .into_iter()
        .filter_map(|item| match item {
            Value::Array(row) if row.len() == 4 => {
                Some((row[0].as_string()?, row[2].as_u64().unwrap_or(0)))
            }
            _ => None,
        })
        .collect())
}

/// `XCLAIM key group consumer 0 id…`: the entries with these ids, (re)claimed by
/// `consumer`; deleted entries are left out.
pub async fn xclaim(
    client: &Client,
    key: &str,
    group: &str,
    consumer: &str,
    ids: &[String],
) -> FredResult<Vec<Entry>> {
    let cmd = CustomCommand::new_static("XCLAIM", ClusterHash::FirstKey, false);
    let mut args: Vec<Value> = Vec::with_capacity(4 + ids.len());
    args.extend([key.into(), group.into(), consumer.into(), 0i64.into()]);
    args.extend(ids.iter().map(|id| Value::from(id.as_str())));
    let reply: Value = client.custom(cmd, args).await?;
    Ok(entries(reply))
}

/// Parses `[[id, [field, value, …]], …]`; deleted entries (null fields) are skipped.
pub fn entries(reply: Value) -> Vec<Entry> {
    let Value::Array(items) = reply else {
        return Vec::new();
    };
    items
        .into_iter()
        .filter_map(|item| {
            let Value::Array(mut pair) = item else {
                return None;
            };
            if pair.len() != 2 {
                return None;
            }
            let fields = pair.pop()?;
            let id = pair.pop()?.as_string()?;
            let Value::Array(flat) = fields else {
                return None;
            };
            let mut map = HashMap::with_capacity(flat.len() / 2);
            let mut it = flat.into_iter();
            while let (Some(k), Some(v)) = (it.next(), it.next()) {
                if let Some(k) = k.as_string() {
                    map.insert(k, v);
                }
            }
            Some((id, map))
        })
        .collect()
}

/// A text field of an entry.
pub fn text(fields: &HashMap<String, Value>, name: &str) -> Option<String> {
    fields.get(name).and_then(|v| v.as_string())
}

/// A numeric field of an entry (stored as decimal text).
pub fn number(fields: &HashMap<String, Value>, name: &str) -> Option<u64> {
    fields
        .get(name)
        .and_then(|v| v.as_u64().or_else(|| v.as_string()?.parse().ok()))
}

/// A binary field of an entry.
pub fn bytes(fields: &HashMap<String, Value>, name: &str) -> Option<bytes::Bytes> {
    match fields.get(name)? {
        Value::Bytes(b) => Some(b.clone()),
        Value::String(s) => Some(bytes::Bytes::copy_from_slice(s.as_bytes())),
        _ => None,
    }
}
