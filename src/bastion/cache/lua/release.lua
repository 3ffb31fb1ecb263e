-- Release a lock we still hold; optionally leave an "unshared" mark in its place.
--
-- KEYS[1]  the lock
-- ARGV[1]  our token
-- ARGV[2]  "" to delete the lock, or how long the unshared mark lasts, in milliseconds
--
-- Returns 1 when we held the lock, 0 when it had expired or passed to someone else.
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
if ARGV[2] == '' then
  redis.call('DEL', KEYS[1])
else
  redis.call('SET', KEYS[1], '', 'PX', ARGV[2])
end
return 1
