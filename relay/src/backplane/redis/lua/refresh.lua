-- Extends a session key's lease. KEYS: session key. ARGV: owner, ttl ms.
-- Returns 1 (extended), 2 (it had expired: recreated; mail may have gone to the mailbox),
-- 0 (another session owns it now).
local cur = redis.call('GET', KEYS[1])
if cur == ARGV[1] then redis.call('PEXPIRE', KEYS[1], ARGV[2]) return 1 end
if not cur then redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) return 2 end
return 0
