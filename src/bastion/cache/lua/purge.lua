-- Give tags a new version, so every entry that recorded an older one stops matching.
--
-- KEYS[1]   the version counter: versions never repeat, so no entry can match again later
-- KEYS[2..] the version keys of the tags to purge
-- ARGV[1]   how long a tag's version is remembered, in milliseconds: longer than any entry
--           written before the purge can live, after which "missing" is as good as the version
-- ARGV[2]   the invalidation channel ("" to publish nothing)
-- ARGV[3]   the message that tells other processes' local caches to purge the tags
--
-- Returns the new version.
local version = redis.call('INCR', KEYS[1])
for i = 2, #KEYS do
  redis.call('SET', KEYS[i], version, 'PX', ARGV[1])
end
if ARGV[2] ~= '' then
  redis.call('PUBLISH', ARGV[2], ARGV[3])
end
return version
