-- Revoke an API key, keeping the time of the first revocation.
--
-- KEYS[1]  the key's record (a hash)
-- ARGV[1]  the time of revocation, now on the caller's clock (seconds since the epoch)
-- ARGV[2]  RETENTION: seconds a record outlives its expiry or revocation (see create.lua)
--
-- Returns 1 if the key exists (revoked now or before), 0 if it does not.

-- retire(key, retention, now) comes from _retire.lua.
if redis.call("EXISTS", KEYS[1]) == 0 then
    return 0
end
local revoked = redis.call("HGET", KEYS[1], "revoked")
if not revoked or revoked == "" then
    redis.call("HSET", KEYS[1], "revoked", ARGV[1])
end
retire(KEYS[1], tonumber(ARGV[2]), tonumber(ARGV[1]))
return 1
