-- Marks a session id as used by its twin now (on attach and detach), for the unused-sid
-- sub-quota of lua/route.lua. KEYS: the twin's recently used session ids (sorted set, score:
-- unix s). ARGV: sid, now (unix s), window (s), most ids kept. Ids older than the window and
-- the oldest past the cap are dropped; the set expires a window after its last use.
local now, window, cap = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. (now - window))
local n = redis.call('ZCARD', KEYS[1])
if n > cap then redis.call('ZREMRANGEBYRANK', KEYS[1], 0, n - cap - 1) end
redis.call('EXPIRE', KEYS[1], window)
return n
