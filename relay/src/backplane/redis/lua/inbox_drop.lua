-- Deletes a dead pod's inbox once its taker found it empty, only if it still is: an entry
-- appended after the taker's last read (a sender that still knew the pod, or a pod that was
-- alive after all) stays for the next round instead of vanishing with the stream.
--
-- KEYS: the inbox. Returns 1 (deleted, or already gone) or 0 (not empty: kept).
if redis.call('XLEN', KEYS[1]) > 0 then return 0 end
redis.call('DEL', KEYS[1])
return 1
