-- Delete a cache entry and tell other processes' local caches to drop their copy.
--
-- KEYS[1]  the entry
-- ARGV[1]  the invalidation channel ("" to publish nothing)
-- ARGV[2]  the message
--
-- Returns 1 when the entry existed. The message goes out either way: a local copy can outlive
-- the shared entry.
local removed = redis.call('DEL', KEYS[1])
if ARGV[1] ~= '' then
  redis.call('PUBLISH', ARGV[1], ARGV[2])
end
return removed
