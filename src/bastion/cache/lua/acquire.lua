-- Take a short lock, unless someone holds it or its last holder left an "unshared" mark.
--
-- KEYS[1]  the lock
-- ARGV[1]  our token (never empty)
-- ARGV[2]  the lock's TTL in milliseconds
--
-- Returns 0 (acquired), 1 (held by someone else) or 2 (unshared mark: produce without the lock).
local holder = redis.call('GET', KEYS[1])
if holder then
  if holder == '' then
    return 2
  end
  return 1
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 0
