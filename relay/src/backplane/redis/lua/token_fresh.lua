-- Admits a session token's issue time for one session key, across every pod: a token issued
-- before the newest one admitted for that key is refused, so a captured older token cannot
-- take a session over by being replayed to another pod. Equal issue times pass (a client
-- reconnecting within the same second).
--
-- KEYS: the key's newest-issue-time marker. ARGV: iat (unix s), how long the marker matters
-- (s: the longest token lifetime plus twice the clock skew; older tokens are invalid by then).
-- Returns `{1}` (admitted, marker raised and its time renewed) or `{0, newest}` (refused).
local newest = tonumber(redis.call('GET', KEYS[1]) or '0')
if tonumber(ARGV[1]) < newest then return {0, newest} end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
return {1}
