-- Record that an API key was used, never moving its last-used time backwards.
--
-- KEYS[1]  the key's record (a hash)
-- ARGV[1]  the time of use (seconds since the epoch)
--
-- Returns 1 if the time was written, 0 otherwise. A deleted key is not re-created: HSET alone
-- would make a record with only a last-used field.
if redis.call("EXISTS", KEYS[1]) == 0 then
    return 0
end
local last = redis.call("HGET", KEYS[1], "last_used")
if last and last ~= "" and tonumber(last) >= tonumber(ARGV[1]) then
    return 0
end
redis.call("HSET", KEYS[1], "last_used", ARGV[1])
return 1
