-- Routes to the owner or the mailbox, atomically with respect to attach.
--
-- KEYS: session key, mailbox, mailbox-scanned marker. ARGV: sid, envelope, expires_at (unix s), mailbox bound,
-- fail_fast ("1"/"0"), dead owner prefix (an owner value starting with it is ignored and
-- removed; "" for none), now (unix s). At the bound, expired entries at the head of the
-- mailbox are dropped first, so dead mail never blocks live mail; that scan (up to 256
-- entries) runs at most once per second per twin (the marker key), so a flood of tiny
-- envelopes to a full mailbox costs one XLEN each, not an XRANGE each.
-- Returns `{1, owner}` (send to that owner's inbox), `{0}` (stored in the mailbox), `{2}`
-- (offline, fail-fast), `{3}` (mailbox full).
local owner = redis.call('GET', KEYS[1])
if owner and ARGV[6] ~= '' and string.sub(owner, 1, string.len(ARGV[6])) == ARGV[6] then
  redis.call('DEL', KEYS[1])
  owner = false
end
if owner then return {1, owner} end
if ARGV[5] == '1' then return {2} end
local bound = tonumber(ARGV[4])
if redis.call('XLEN', KEYS[2]) >= bound then
  if not redis.call('SET', KEYS[3], '1', 'NX', 'EX', 1) then return {3} end
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
