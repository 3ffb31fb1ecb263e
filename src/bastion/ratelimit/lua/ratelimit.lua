-- One atomic rate-limit decision over several quotas: either every quota admits the request and
-- every quota is charged, or the request is refused and nothing is written.
--
-- KEYS[i]  the state of quota i, a hash: fixed window {w, c}, sliding window {w, p, c}, GCRA {t}
-- ARGV[1]  now in microseconds, or "" to read the server's TIME (one clock for every host)
-- ARGV[2i]  for quota i: "algorithm limit period burst" (algorithm 1 fixed window, 2 sliding
--          window, 3 GCRA; period in microseconds; burst for GCRA)
-- ARGV[2i + 1]  the cost of the request for quota i
--
-- Returns "allowed r1 t1 retry1 r2 t2 retry2 ...", one string: allowed is 1 or 0; r is the quota
-- left after this request; t the microseconds until r next grows; retry the microseconds until
-- this quota would admit the request (0 when it admits it now). One string instead of an array:
-- the client reads one reply line instead of one per number, and parsing is what costs a Python
-- client most per decision.
--
-- The arithmetic is mirrored line by line in ratelimit/_memory.py: both backends must decide
-- alike. Times are integers (doubles hold them exactly below 2^53); only the sliding window's
-- weighted estimate is fractional, and it is compared with a tolerance of 1e-9.

local EPSILON = 1e-9

local function int(x)
    -- tostring() keeps 14 significant digits; a timestamp in microseconds has 16.
    return string.format("%.0f", x)
end

local function floor_div(a, b)
    local q = math.floor(a / b)
    if q * b > a then
        q = q - 1
    elseif (q + 1) * b <= a then
        q = q + 1
    end
    return q
end

local now = tonumber(ARGV[1])
if now == nil then
    local time = redis.call("TIME")
    now = tonumber(time[1]) * 1000000 + tonumber(time[2])
end

local allowed = 1
local quotas = {}

-- First pass: read every state and decide. Nothing is written yet.
for i = 1, #KEYS do
    local algorithm, limit, period, burst = string.match(ARGV[2 * i], "^(%d+) (%d+) (%d+) (%d+)$")
    local q = {
        algorithm = tonumber(algorithm),
        limit = tonumber(limit),
        period = tonumber(period),
        burst = tonumber(burst),
    }
    local cost = tonumber(ARGV[2 * i + 1])
    local limit, period = q.limit, q.period
    local key = KEYS[i]

    if q.algorithm == 1 then
        local window = floor_div(now, period)
        local state = redis.call("HMGET", key, "w", "c")
        local count = 0
        if tonumber(state[1]) == window then
            count = tonumber(state[2])
        end
        q.window, q.window_end = window, (window + 1) * period - now
        q.before, q.after = count, count + cost
        if count + cost <= limit then
            q.retry = 0
        else
            q.retry = q.window_end
        end

    elseif q.algorithm == 2 then
        local window = floor_div(now, period)
        local state = redis.call("HMGET", key, "w", "p", "c")
        local stored = tonumber(state[1])
        local previous, current = 0, 0
        if stored == window then
            previous = tonumber(state[2])
            current = tonumber(state[3])
        elseif stored == window - 1 then
            previous = tonumber(state[3])
        end
        local elapsed = now - window * period
        local window_end = period - elapsed
        q.window, q.window_end, q.elapsed, q.previous = window, window_end, elapsed, previous
        q.before, q.after = current, current + cost
        local estimate = previous * window_end / period + current
        if estimate + cost <= limit + EPSILON then
            q.retry = 0
        elseif previous > 0 and current + cost <= limit then
            -- Admissible later in this window, once the previous window's weight has decayed.
            q.retry = math.ceil(period * (1 - (limit - current - cost) / previous) - elapsed)
        elseif cost <= limit then
            -- Only in the next window, where this window's count becomes the decaying one.
            q.retry = window_end + math.ceil(period * (1 - (limit - cost) / current))
        else
            q.retry = window_end + period
        end

    else
        local interval = math.ceil(period / limit)
        local tat = tonumber(redis.call("HGET", key, "t")) or now
        if tat < now then
            tat = now
        end
        q.interval = interval
        q.before, q.after = tat, tat + cost * interval
        local allow_at = q.after - q.burst * interval
        if allow_at <= now then
            q.retry = 0
        else
            q.retry = allow_at - now
        end
    end

    if q.retry > 0 then
        allowed = 0
    end
    quotas[i] = q
end

-- Second pass: charge every quota if all admit, and report each one's state as it now stands
-- (a refused request reports the state it left untouched).
local result = {allowed}
for i = 1, #KEYS do
    local q = quotas[i]
    local limit, period = q.limit, q.period
    local value = q.before
    if allowed == 1 then
        value = q.after
    end
    local remaining, reset

    if q.algorithm == 1 then
        if allowed == 1 then
            redis.call("HSET", KEYS[i], "w", int(q.window), "c", int(value))
            redis.call("PEXPIRE", KEYS[i], math.max(1, math.ceil(q.window_end / 1000)))
        end
        remaining = math.max(0, limit - value)
        reset = q.window_end

    elseif q.algorithm == 2 then
        if allowed == 1 then
            redis.call("HSET", KEYS[i], "w", int(q.window), "p", int(q.previous), "c", int(value))
            redis.call("PEXPIRE", KEYS[i], math.ceil((q.window_end + period) / 1000))
        end
        local previous, elapsed = q.previous, q.elapsed
        local estimate = previous * q.window_end / period + value
        remaining = math.max(0, math.floor(limit - estimate + EPSILON))
        local target = limit - remaining - 1 - value
        if remaining >= limit then
            reset = 0
        elseif previous > 0 and target >= 0 then
            -- When the previous window's weight has decayed enough to free one more unit.
            reset = math.min(q.window_end, math.ceil(period * (1 - target / previous) - elapsed))
        else
            reset = q.window_end
        end

    else
        if allowed == 1 then
            redis.call("HSET", KEYS[i], "t", int(value))
            redis.call("PEXPIRE", KEYS[i], math.max(1, math.ceil((value - now) / 1000)))
        end
        local interval = q.interval
        local debt = value - now
        local used = floor_div(debt + interval - 1, interval)
        remaining = math.max(0, q.burst - used)
        if debt <= 0 then
            reset = 0
        else
            -- When the oldest unit in use drains out of the bucket.
            reset = debt - (used - 1) * interval
        end
    end

    result[#result + 1] = int(remaining)
    result[#result + 1] = int(reset)
    result[#result + 1] = int(q.retry)
end
return table.concat(result, " ")
