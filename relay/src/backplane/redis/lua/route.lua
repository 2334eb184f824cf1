-- Routes to the owner or the mailbox, atomically with respect to attach.
--
-- KEYS: session key, mailbox, mailbox-scanned marker, mailbox budget (hash), recently used
-- session ids (sorted set). ARGV: sid, envelope, expires_at (unix s), mailbox bound,
-- fail_fast ("1"/"0"), dead owner prefix (an owner value starting with it is ignored and
-- removed; "" for none), now (unix s), byte budget, unused-sid entry quota, unused-sid byte
-- quota, recent-sid window (s).
--
-- The budget hash counts what the mailbox holds without reading it: `b` bytes, `un`/`ub`
-- entries/bytes for session ids the twin has not used recently (entries flagged `u`). It is
-- raised here at XADD and lowered by every delete (lua/mailbox_delete.lua, the scan below);
-- it is reset whenever the mailbox is empty and expires with it, so drift cannot block a
-- twin past its next empty mailbox. A sid counts as used when its score in the sorted set
-- (set on attach and detach) is within the window; the no-sid key always counts as used.
--
-- When the envelope would be refused, expired entries at the head of the mailbox are
-- dropped first, so dead mail never blocks live mail; that scan (up to 256 entries) runs at
-- most once per second per twin (the marker key), so a flood of tiny envelopes to a full
-- mailbox costs a few counter reads each, not an XRANGE each.
-- Returns `{1, owner}` (send to that owner's inbox), `{0}` (stored in the mailbox), `{2}`
-- (offline, fail-fast), `{3}` (mailbox full), `{4}` (byte budget used up), `{5}`
-- (unused-sid sub-quota used up).
local owner = redis.call('GET', KEYS[1])
if owner and ARGV[6] ~= '' and string.sub(owner, 1, string.len(ARGV[6])) == ARGV[6] then
  redis.call('DEL', KEYS[1])
  owner = false
end
if owner then return {1, owner} end
if ARGV[5] == '1' then return {2} end
local len = string.len(ARGV[2])
local now = tonumber(ARGV[7])
local unused = false
if ARGV[1] ~= '' then
  local used = redis.call('ZSCORE', KEYS[5], ARGV[1])
  unused = (not used) or tonumber(used) < now - tonumber(ARGV[11])
end
-- A budget left over from a mailbox that is empty now (drift) is dropped.
local function reset_if_empty()
  if redis.call('XLEN', KEYS[2]) == 0 then redis.call('DEL', KEYS[4]) end
end
reset_if_empty()
local function refusal()
  if redis.call('XLEN', KEYS[2]) >= tonumber(ARGV[4]) then return 3 end
  local c = redis.call('HMGET', KEYS[4], 'b', 'un', 'ub')
  if tonumber(c[1] or 0) + len > tonumber(ARGV[8]) then return 4 end
  if unused and (tonumber(c[2] or 0) >= tonumber(ARGV[9])
      or tonumber(c[3] or 0) + len > tonumber(ARGV[10])) then return 5 end
  return false
end
local refused = refusal()
if refused then
  if not redis.call('SET', KEYS[3], '1', 'NX', 'EX', 1) then return {refused} end
  for _, e in ipairs(redis.call('XRANGE', KEYS[2], '-', '+', 'COUNT', 256)) do
    local f, x, bytes, u = e[2], nil, 0, false
    for i = 1, #f, 2 do
      if f[i] == 'x' then x = tonumber(f[i + 1])
      elseif f[i] == 'e' then bytes = string.len(f[i + 1])
      elseif f[i] == 'u' then u = true end
    end
    if x and x <= now and redis.call('XDEL', KEYS[2], e[1]) == 1 then
      redis.call('HINCRBY', KEYS[4], 'b', -bytes)
      if u then
        redis.call('HINCRBY', KEYS[4], 'un', -1)
        redis.call('HINCRBY', KEYS[4], 'ub', -bytes)
      end
    end
  end
  reset_if_empty()
  refused = refusal()
  if refused then return {refused} end
end
if unused then
  redis.call('XADD', KEYS[2], '*', 's', ARGV[1], 'e', ARGV[2], 'x', ARGV[3], 'u', '1')
  redis.call('HINCRBY', KEYS[4], 'un', 1)
  redis.call('HINCRBY', KEYS[4], 'ub', len)
else
  redis.call('XADD', KEYS[2], '*', 's', ARGV[1], 'e', ARGV[2], 'x', ARGV[3])
end
redis.call('HINCRBY', KEYS[4], 'b', len)
local exp = tonumber(ARGV[3])
for k = 2, 4, 2 do
  if redis.call('EXPIRETIME', KEYS[k]) < exp then redis.call('EXPIREAT', KEYS[k], exp) end
end
return {0}
