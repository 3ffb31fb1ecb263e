-- Read a cache entry and check its tags' versions, in one atomic step.
--
-- KEYS[1]  the entry: a hash with field "d" (the value) and one field "t<tag>" per tag, holding
--          the tag's version when the entry was written.
-- ARGV[1]  the prefix of tag version keys (the same cluster slot as the entry: see _redis.py).
--
-- Returns the value, or false when the entry is missing or one of its tags was purged since it
-- was written (the stale entry is deleted on the way).
local fields = redis.call('HGETALL', KEYS[1])
local count = #fields
if count == 0 then
  return false
end
local value = false
for i = 1, count, 2 do
  local field = fields[i]
  if field == 'd' then
    value = fields[i + 1]
  else
    local current = redis.call('GET', ARGV[1] .. string.sub(field, 2)) or '0'
    if current ~= fields[i + 1] then
      redis.call('DEL', KEYS[1])
      return false
    end
  end
end
return value
