-- Appends entries to a pod's inbox, all or none: none if that would take it past `bound`
-- entries (a trim would drop undelivered mail). KEYS: inbox. ARGV: bound, then four values per
-- entry: session key `k`, field name (`e`: one envelope; `b`: envelopes packed for a pod that
-- reads them), the field's value, expiry `x` (unix s; of a packed run, its latest).
-- Returns how many entries were appended (0: full).
local n = (#ARGV - 1) / 4
if redis.call('XLEN', KEYS[1]) + n > tonumber(ARGV[1]) then return 0 end
for i = 0, n - 1 do
  local b = 2 + i * 4
  redis.call('XADD', KEYS[1], '*', 'k', ARGV[b], ARGV[b + 1], ARGV[b + 2], 'x', ARGV[b + 3])
end
return n
