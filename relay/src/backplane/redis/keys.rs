//! Key names. Every key of one twin shares the hash tag `{t:<id>}` and every key of one pod
//! `{p:<pod>}`, so the multi-key scripts stay in one Redis Cluster slot.

use crate::key::SessionKey;

/// The sorted set of live pods, scored by lease expiry (unix ms).
pub const PODS: &str = "rmb:pods";

/// Pods' heartbeats: the sorted set of pods scored by their last beat (unix ms). Much more
/// frequent than the lease, so a killed pod is noticed in seconds by a pod its twins moved to.
pub const BEATS: &str = "rmb:beats";

/// Pods that read packed inbox entries, scored by when they last said so (unix ms, every
/// second). A pod not listed recently (one from before packed entries, or rolled back to such
/// a version) gets one envelope per entry, so a rolling upgrade loses nothing.
pub const PACKED_READERS: &str = "rmb:inbox-packed";

/// The total of all mailboxes, published by whichever pod counted last.
pub const STATS_MAILBOX: &str = "rmb:stats:mailbox";

/// Held (briefly) by the pod counting the mailboxes.
pub const STATS_LOCK: &str = "rmb:stats:lock";

/// Matches every twin's mailbox.
pub const MAILBOX_PATTERN: &str = "rmb:{t:*}:mb";

/// The consumer group every inbox is read through.
pub const GROUP: &str = "relay";

/// Who owns a session: `<pod>/<session number>`, expiring with the owner's lease.
pub fn session(key: &SessionKey) -> String {
    format!(
        "rmb:{{t:{}}}:s:{}",
        key.twin,
        key.sid.as_deref().unwrap_or("")
    )
}

/// The issue time (`iat`) of the newest session token admitted for `key` on any pod.
pub fn token_iat(key: &SessionKey) -> String {
    format!(
        "rmb:{{t:{}}}:iat:{}",
        key.twin,
        key.sid.as_deref().unwrap_or("")
    )
}

/// The twin's mailbox stream (entries for every session id of the twin).
pub fn mailbox(twin: u32) -> String {
    format!("rmb:{{t:{twin}}}:mb")
}

/// The twin a mailbox key belongs to.
pub fn mailbox_twin(mailbox: &str) -> Option<u32> {
    mailbox
        .strip_prefix("rmb:{t:")?
        .strip_suffix("}:mb")?
        .parse()
        .ok()
}

/// Set for a second after the routing script scanned the twin's full mailbox for expired
/// entries: a full mailbox is scanned at most once per second, however much mail it refuses.
pub fn mailbox_scanned(twin: u32) -> String {
    format!("rmb:{{t:{twin}}}:mbscan")
}

/// What the twin's mailbox holds, counted without reading it (hash: `b` bytes, `un`/`ub`
/// entries/bytes for session ids the twin has not used recently); see `lua/route.lua`.
pub fn mailbox_budget(twin: u32) -> String {
    format!("rmb:{{t:{twin}}}:mbb")
}

/// The session ids the twin used recently (sorted set scored by the unix second of the last
/// attach or detach).
pub fn recent_sids(twin: u32) -> String {
    format!("rmb:{{t:{twin}}}:sids")
}

/// A pod's inbox stream.
pub fn inbox(pod: &str) -> String {
    format!("rmb:{{p:{pod}}}:inbox")
}

/// The lock a pod takes to re-route a dead pod's inbox.
pub fn takeover_lock(pod: &str) -> String {
    format!("rmb:{{p:{pod}}}:takeover")
}

/// The owner value a session key holds.
pub fn owner(pod: &str, session: u64) -> String {
    format!("{pod}/{session}")
}

/// The pod part of an owner value.
pub fn owner_pod(owner: &str) -> &str {
    owner.rsplit_once('/').map_or(owner, |(pod, _)| pod)
}

/// The session number part of an owner value.
pub fn owner_session(owner: &str) -> Option<u64> {
    owner.rsplit_once('/').and_then(|(_, n)| n.parse().ok())
}

/// A session key as stored in stream entries: `twin` or `twin:sid`.
pub fn encode_key(key: &SessionKey) -> String {
    key.to_string()
}

/// Parses [`encode_key`]'s form.
pub fn decode_key(text: &str) -> Option<SessionKey> {
    match text.split_once(':') {
        Some((twin, sid)) => Some(SessionKey::new(twin.parse().ok()?, Some(sid))),
        None => Some(SessionKey::new(text.parse().ok()?, None)),
    }
}
