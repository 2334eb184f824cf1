//! Lua scripts for the steps that must be atomic. Each touches keys of one twin only. The
//! scripts live in `lua/*.lua` (readable and runnable with redis-cli), each headed by its
//! contract: KEYS, ARGV and replies.

use fred::types::scripts::Script;

/// Routes an envelope to its owner or the mailbox, atomically with respect to attach
/// (`lua/route.lua`).
const ROUTE: &str = include_str!("lua/route.lua");

/// Releases a session key if it still names this session (`lua/release.lua`).
const RELEASE: &str = include_str!("lua/release.lua");

/// Extends a session key's lease (`lua/refresh.lua`).
const REFRESH: &str = include_str!("lua/refresh.lua");

/// Appends a batch of envelopes to a pod's inbox, all or none (`lua/inbox_append.lua`).
const INBOX_APPEND: &str = include_str!("lua/inbox_append.lua");

/// Deletes mailbox entries and gives their bytes back to the twin's budget
/// (`lua/mailbox_delete.lua`).
const MAILBOX_DELETE: &str = include_str!("lua/mailbox_delete.lua");

/// Marks a session id as used by its twin (`lua/sid_used.lua`).
const SID_USED: &str = include_str!("lua/sid_used.lua");

/// Admits a session token's issue time cluster-wide (`lua/token_fresh.lua`).
const TOKEN_FRESH: &str = include_str!("lua/token_fresh.lua");

/// Deletes a dead pod's inbox only if it is empty (`lua/inbox_drop.lua`).
const INBOX_DROP: &str = include_str!("lua/inbox_drop.lua");

/// The scripts, with their hashes computed once.
pub struct Scripts {
    /// See [`ROUTE`].
    pub route: Script,
    /// See [`RELEASE`].
    pub release: Script,
    /// See [`REFRESH`].
    pub refresh: Script,
    /// See [`INBOX_APPEND`].
    pub inbox_append: Script,
    /// See [`MAILBOX_DELETE`].
    pub mailbox_delete: Script,
    /// See [`SID_USED`].
    pub sid_used: Script,
    /// See [`TOKEN_FRESH`].
    pub token_fresh: Script,
    /// See [`INBOX_DROP`].
    pub inbox_drop: Script,
}

impl Scripts {
    /// Prepares the scripts (they are loaded into Redis on first use).
    pub fn new() -> Scripts {
        Scripts {
            route: Script::from_lua(ROUTE),
            release: Script::from_lua(RELEASE),
            refresh: Script::from_lua(REFRESH),
            inbox_append: Script::from_lua(INBOX_APPEND),
            mailbox_delete: Script::from_lua(MAILBOX_DELETE),
            sid_used: Script::from_lua(SID_USED),
            token_fresh: Script::from_lua(TOKEN_FRESH),
            inbox_drop: Script::from_lua(INBOX_DROP),
        }
    }
}
