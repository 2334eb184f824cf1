-- Appends a batch of envelopes to a pod's inbox, all or none: none if that would take it
-- past `bound` entries (a trim would drop undelivered mail). KEYS: inbox. ARGV: bound, then
-- `k`, `e`, `x` values of each envelope. Returns how many were appended (0: full).
local n = (#ARGV - 1) / 3
if redis.call('XLEN', KEYS[1]) + n > tonumber(ARGV[1]) then return 0 end
for i = 0, n - 1 do
  local b = 2 + i * 3
  redis.call('XADD', KEYS[1], '*', 'k', ARGV[b], 'e', ARGV[b + 1], 'x', ARGV[b + 2])
end
return n
