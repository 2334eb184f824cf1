-- Deletes entries from a twin's mailbox and gives their bytes back to its budget (see
-- lua/route.lua). KEYS: mailbox, mailbox budget (hash). ARGV: id, envelope length, "1" if
-- the entry counts against the unused-sid sub-quota (else "0"), repeated per entry. Only
-- entries that still existed are given back, so a repeated delete cannot lower the counters
-- twice; an empty mailbox resets them. Returns how many entries were deleted.
local deleted = 0
for i = 1, #ARGV, 3 do
  if redis.call('XDEL', KEYS[1], ARGV[i]) == 1 then
    deleted = deleted + 1
    local bytes = tonumber(ARGV[i + 1])
    redis.call('HINCRBY', KEYS[2], 'b', -bytes)
    if ARGV[i + 2] == '1' then
      redis.call('HINCRBY', KEYS[2], 'un', -1)
      redis.call('HINCRBY', KEYS[2], 'ub', -bytes)
    end
  end
end
if redis.call('XLEN', KEYS[1]) == 0 then
  redis.call('DEL', KEYS[2])
elseif deleted > 0 then
  local c = redis.call('HMGET', KEYS[2], 'b', 'un', 'ub')
  for i, name in ipairs({'b', 'un', 'ub'}) do
    if tonumber(c[i] or 0) < 0 then redis.call('HSET', KEYS[2], name, 0) end
  end
  local t = redis.call('EXPIRETIME', KEYS[1])
  if t > 0 then redis.call('EXPIREAT', KEYS[2], t) end
end
return deleted
