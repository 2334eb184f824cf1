//! Lua scripts for the steps that must be atomic. Each touches keys of one twin only.

use fred::types::scripts::Script;

/// Routes to the owner or the mailbox, atomically with respect to attach.
///
/// KEYS: session key, mailbox. ARGV: sid, envelope, expires_at (unix s), mailbox bound,
/// fail_fast ("1"/"0"), dead owner prefix (an owner value starting with it is ignored and
/// removed; "" for none), now (unix s). At the bound, expired entries at the head of the
/// mailbox are dropped first, so dead mail never blocks live mail.
/// Returns `{1, owner}` (send to that owner's inbox), `{0}` (stored in the mailbox), `{2}`
/// (offline, fail-fast), `{3}` (mailbox full).
const ROUTE: &str = r#"
local owner = redis.call('GET', KEYS[1])
if owner and ARGV[6] ~= '' and string.sub(owner, 1, string.len(ARGV[6])) == ARGV[6] then
  redis.call('DEL', KEYS[1])
  owner = false
end
if owner then return {1, owner} end
if ARGV[5] == '1' then return {2} end
local bound = tonumber(ARGV[4])
if redis.call('XLEN', KEYS[2]) >= bound then
  local now = tonumber(ARGV[7])
  for _, e in ipairs(redis.call('XRANGE', KEYS[2], '-', '+', 'COUNT', 256)) do
    local f = e[2]
    for i = 1, #f, 2 do
      if f[i] == 'x' and tonumber(f[i + 1]) <= now then redis.call('XDEL', KEYS[2], e[1]) end
    end
  end
  if redis.call('XLEN', KEYS[2]) >= bound then return {3} end
end
redis.call('XADD', KEYS[2], '*', 's', ARGV[1], 'e', ARGV[2], 'x', ARGV[3])
local exp = tonumber(ARGV[3])
local cur = redis.call('EXPIRETIME', KEYS[2])
if cur < exp then redis.call('EXPIREAT', KEYS[2], exp) end
return {0}
"#;

/// Releases a session key if it still names this session. KEYS: session key. ARGV: owner.
const RELEASE: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"#;

/// Extends a session key's lease. KEYS: session key. ARGV: owner, ttl ms.
/// Returns 1 (extended), 2 (it had expired: recreated; mail may have gone to the mailbox),
/// 0 (another session owns it now).
const REFRESH: &str = r#"
local cur = redis.call('GET', KEYS[1])
if cur == ARGV[1] then redis.call('PEXPIRE', KEYS[1], ARGV[2]) return 1 end
if not cur then redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) return 2 end
return 0
"#;

/// Appends a batch of envelopes to a pod's inbox, all or none: none if that would take it
/// past `bound` entries (a trim would drop undelivered mail). KEYS: inbox. ARGV: bound, then
/// `k`, `e`, `x` values of each envelope. Returns how many were appended (0: full).
const INBOX_APPEND: &str = r#"
local n = (#ARGV - 1) / 3
if redis.call('XLEN', KEYS[1]) + n > tonumber(ARGV[1]) then return 0 end
for i = 0, n - 1 do
  local b = 2 + i * 3
  redis.call('XADD', KEYS[1], '*', 'k', ARGV[b], 'e', ARGV[b + 1], 'x', ARGV[b + 2])
end
return n
"#;

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
}

impl Scripts {
    /// Prepares the scripts (they are loaded into Redis on first use).
    pub fn new() -> Scripts {
        Scripts {
            route: Script::from_lua(ROUTE),
            release: Script::from_lua(RELEASE),
            refresh: Script::from_lua(REFRESH),
            inbox_append: Script::from_lua(INBOX_APPEND),
        }
    }
}
