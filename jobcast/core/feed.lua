-- Append one item to the job feed and announce it, atomically (jobcast.core.feed).
--
-- KEYS: the feed's hash (its seq), the feed's stream.
-- ARGV: channel, JSON body without seq (starts after "{"), maxlen, "1" on a Redis Cluster
--       (announce with SPUBLISH).
-- Returns the item's seq.
local seq = redis.call('HINCRBY', KEYS[1], 'seq', 1)
local item = '{"seq":' .. seq .. ',' .. ARGV[2]
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], '0-' .. seq, 'e', item)
if ARGV[4] == '1' then
  redis.call('SPUBLISH', ARGV[1], item)
else
  redis.call('PUBLISH', ARGV[1], item)
end
return seq
