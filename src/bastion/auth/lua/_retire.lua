-- Prepended to create.lua and revoke.lua when they are loaded (auth/_redis.py): Redis scripts
-- cannot import, and one copy of this rule is what keeps both scripts agreeing on it.
--
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
