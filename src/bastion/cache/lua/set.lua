-- Write a cache entry with its tags' current versions, unless a snapshot says a tag was purged.
--
-- KEYS[1]       the entry
-- KEYS[2..n+1]  the version keys of its n tags
-- ARGV[1]       the value
-- ARGV[2]       the TTL in milliseconds
-- ARGV[3]       "1" when ARGV[6+n..5+2n] hold the versions of a snapshot to check, else "0"
-- ARGV[4]       the invalidation channel ("" to publish nothing)
-- ARGV[5]       the message that tells other processes' local caches the entry changed
-- ARGV[6..5+n]  the tag names
--
-- Returns 1 when stored, 0 when a tag's version moved since the snapshot (nothing is written).
local n = #KEYS - 1
local checked = ARGV[3] == '1'
local fields = {'d', ARGV[1]}
for i = 1, n do
  local current = redis.call('GET', KEYS[i + 1]) or '0'
  if checked and current ~= ARGV[5 + n + i] then
    return 0
  end
  fields[#fields + 1] = 't' .. ARGV[5 + i]
  fields[#fields + 1] = current
end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], unpack(fields))
redis.call('PEXPIRE', KEYS[1], ARGV[2])
if ARGV[4] ~= '' then
  redis.call('PUBLISH', ARGV[4], ARGV[5])
end
return 1
