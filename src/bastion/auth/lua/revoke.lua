-- Revoke an API key, keeping the time of the first revocation.
--
-- KEYS[1]  the key's record (a hash)
-- ARGV[1]  the time of revocation, now on the caller's clock (seconds since the epoch)
-- ARGV[2]  RETENTION: seconds a record outlives its expiry or revocation (see create.lua)
--
-- Returns 1 if the key exists (revoked now or before), 0 if it does not.

-- A record that can no longer authenticate (past its expiry, or revoked) is kept for
-- RETENTION seconds, for `bastion keys list` and audits, then Redis drops it: without
-- this, every key ever made would stay in the store. HSET keeps an expiry, so later updates
-- (last-used) do not undo it.
local function retire(key, retention, now)
    local times = redis.call("HMGET", key, "expires", "revoked")
    local first = nil
    for _, value in ipairs(times) do
        if value and value ~= "" then
            local at = tonumber(value)
            if first == nil or at < first then
                first = at
            end
        end
    end
    if first ~= nil then
        -- A duration, measured on the clock the record's times come from (the caller's), so a
        -- server clock that disagrees with it cannot drop a record early.
        local ttl = math.ceil((first + retention - now) * 1000)
        redis.call("PEXPIRE", key, math.max(1, ttl))
    end
end
if redis.call("EXISTS", KEYS[1]) == 0 then
    return 0
end
local revoked = redis.call("HGET", KEYS[1], "revoked")
if not revoked or revoked == "" then
    redis.call("HSET", KEYS[1], "revoked", ARGV[1])
end
retire(KEYS[1], tonumber(ARGV[2]), tonumber(ARGV[1]))
return 1
