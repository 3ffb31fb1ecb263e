-- Atomic counter with expiry set only when the counter is created.
--
-- KEYS[1]  the counter
-- ARGV[1]  the amount to add (integer)
-- ARGV[2]  time to live in milliseconds, applied only if KEYS[1] did not exist
--
-- Returns the new value. Errors (a non-integer value, an overflow) abort before anything is
-- written, because EXISTS is the only call that runs before INCRBY.
--
-- Existence is checked explicitly rather than inferred from "new value == amount": a counter
-- that already held 0 would otherwise have its expiry reset.
local created = redis.call("EXISTS", KEYS[1]) == 0
local value = redis.call("INCRBY", KEYS[1], ARGV[1])
if created then
    redis.call("PEXPIRE", KEYS[1], ARGV[2])
end
return value
