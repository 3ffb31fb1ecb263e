-- The abuse guard's state in Redis: offence counters, bans, and the broadcast of new bans.
--
-- ARGV[1] is the operation, ARGV[2] the time in microseconds ("" for the server's own TIME).
--
-- record  KEYS: client hash, bans sorted set.
--         ARGV[3..]: window_us, auth_threshold, error_threshold, is_auth (0/1), base_ban_us,
--         max_ban_us, memory_us, channel, member.
--         Returns {banned (0/1), remaining_us, offences, trigger}; trigger 0: not banned,
--         1: auth failures, 2: client errors, 3: the client was banned already.
-- unban   KEYS: client hash, bans sorted set. ARGV[3..]: channel, member. Returns 1 if banned.
-- bans    KEYS: bans sorted set. Returns {now_us, member1, until1_us, member2, ...}.
--
-- The client hash holds: w (window index), a0/a1 (auth failures in the previous and current
-- window), e0/e1 (client errors likewise), n (bans within the memory period), lb (start of the
-- last ban) and u (end of the current ban), all integers in microseconds or counts.
local op = ARGV[1]
local now
if ARGV[2] ~= "" then
  now = tonumber(ARGV[2])
else
  local time = redis.call("TIME")
  now = tonumber(time[1]) * 1000000 + tonumber(time[2])
end

if op == "bans" then
  redis.call("ZREMRANGEBYSCORE", KEYS[1], "-inf", now)
  local entries = redis.call("ZRANGE", KEYS[1], 0, -1, "WITHSCORES")
  local reply = {now}
  for i = 1, #entries, 2 do
    reply[#reply + 1] = entries[i]
    reply[#reply + 1] = tonumber(entries[i + 1])
  end
  return reply
end

if op == "unban" then
  redis.call("DEL", KEYS[1])
  local removed = redis.call("ZREM", KEYS[2], ARGV[4])
  redis.call("PUBLISH", ARGV[3], "U 0 " .. ARGV[4])
  return removed
end

local window = tonumber(ARGV[3])
local auth_threshold = tonumber(ARGV[4])
local error_threshold = tonumber(ARGV[5])
local is_auth = tonumber(ARGV[6])
local base_ban = tonumber(ARGV[7])
local max_ban = tonumber(ARGV[8])
local memory = tonumber(ARGV[9])

local s = redis.call("HMGET", KEYS[1], "w", "a0", "a1", "e0", "e1", "n", "lb", "u")
local w = tonumber(s[1]) or -1
local a0, a1 = tonumber(s[2]) or 0, tonumber(s[3]) or 0
local e0, e1 = tonumber(s[4]) or 0, tonumber(s[5]) or 0
local n, lb, u = tonumber(s[6]) or 0, tonumber(s[7]) or 0, tonumber(s[8]) or 0

if u > now then
  return {1, u - now, n, 3}
end

-- Sliding window counter: the previous window's count, weighted by how much of it still
-- overlaps the window ending now, plus the current window's count.
local index = math.floor(now / window)
if w == index - 1 then
  a0, a1, e0, e1 = a1, 0, e1, 0
elseif w ~= index then
  a0, a1, e0, e1 = 0, 0, 0, 0
end
e1 = e1 + 1
a1 = a1 + is_auth
local weight = (window - (now - index * window)) / window
local trigger = 0
if auth_threshold > 0 and a0 * weight + a1 >= auth_threshold then
  trigger = 1
elseif error_threshold > 0 and e0 * weight + e1 >= error_threshold then
  trigger = 2
end

local ban = 0
if trigger > 0 then
  if lb > 0 and now - lb > memory then
    n = 0
  end
  n = n + 1
  ban = base_ban * 2 ^ (n - 1)
  if ban > max_ban then
    ban = max_ban
  end
  ban = math.floor(ban)
  lb, u = now, now + ban
  -- The slate is wiped: once the ban ends, it takes a new burst to earn the next one.
  a0, a1, e0, e1 = 0, 0, 0, 0
  redis.call("ZADD", KEYS[2], u, ARGV[11])
  redis.call("ZREMRANGEBYSCORE", KEYS[2], "-inf", now)
  redis.call("PEXPIRE", KEYS[2], math.ceil(max_ban / 1000))
  redis.call("PUBLISH", ARGV[10], "B " .. ban .. " " .. ARGV[11])
end

redis.call("HSET", KEYS[1], "w", index, "a0", a0, "a1", a1, "e0", e0, "e1", e1,
  "n", n, "lb", lb, "u", u)
local keep = 2 * window
if lb > 0 and lb + memory - now > keep then
  keep = lb + memory - now
end
redis.call("PEXPIRE", KEYS[1], math.ceil(keep / 1000))
if trigger > 0 then
  return {1, ban, n, trigger}
end
return {0, 0, n, 0}
