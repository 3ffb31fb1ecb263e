-- Create an API key record, and optionally mark the key it replaces (rotation), atomically.
--
-- KEYS[1]  the new record (a hash)
-- KEYS[2]  the index of key ids (a set)
-- KEYS[3]  optional: the record of the key being replaced
-- ARGV[1]  the new key's id
-- ARGV[2]  with KEYS[3]: when the replaced key expires at the latest (seconds since the epoch)
-- ARGV[3]  RETENTION: seconds a record outlives its expiry or revocation
-- ARGV[4]  now, on the caller's clock (seconds since the epoch)
-- ARGV[5…] the new record's field/value pairs
--
-- Returns 1 when created, 0 when the id is taken, -1 when the replaced key does not exist, -2
-- when it is revoked. Nothing is written unless it returns 1.

-- retire(key, retention, now) comes from _retire.lua.

local retention, now = tonumber(ARGV[3]), tonumber(ARGV[4])
if redis.call("EXISTS", KEYS[1]) == 1 then
    return 0
end
if #KEYS == 3 then
    if redis.call("EXISTS", KEYS[3]) == 0 then
        return -1
    end
    local revoked = redis.call("HGET", KEYS[3], "revoked")
    if revoked and revoked ~= "" then
        return -2
    end
    local expires = redis.call("HGET", KEYS[3], "expires")
    -- A rotation only ever brings the old key's end closer.
    if not expires or expires == "" or tonumber(expires) > tonumber(ARGV[2]) then
        redis.call("HSET", KEYS[3], "expires", ARGV[2])
    end
    redis.call("HSET", KEYS[3], "replaced_by", ARGV[1])
    retire(KEYS[3], retention, now)
end
redis.call("HSET", KEYS[1], unpack(ARGV, 5))
retire(KEYS[1], retention, now)
redis.call("SADD", KEYS[2], ARGV[1])
return 1
