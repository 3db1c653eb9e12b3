-- Append one item to the job feed and announce it, atomically (jobcast.core.feed).
--
-- KEYS: the feed's hash (its seq and epoch), the feed's stream.
-- ARGV: channel, JSON body without seq (starts after "{"), maxlen, "1" on a Redis Cluster
--       (announce with SPUBLISH), the highest seq this writer got (0: none), a new epoch.
-- Returns the item's seq. The feed is a view: an item is never refused, but a feed behind what
-- its writer wrote (items lost in a failover) begins a new epoch, as does a feed without one;
-- each item carries its epoch, {"seq":N,"ep":"<epoch>",...}, so pages notice and re-snapshot.
--
-- A feed has many writers, and one that wrote none of the lost items cannot see the loss by
-- its own seqs: it would number its items with seqs that pages already had. So the feed also
-- keeps the replication id of the Redis that wrote it (`rid`, INFO's master_replid). A
-- promoted replica has another one: the first item it takes begins a new epoch, whoever
-- writes it. So does a restarted primary (a new id, whether its data survived or not), and a
-- primary whose first replica attaches, or reattaches after repl-backlog-ttl: those epochs
-- are spurious, and each costs pages one fresh snapshot.
local info = redis.pcall('INFO', 'replication')
local rid = type(info) == 'string' and string.match(info, 'master_replid:(%w+)') or nil
local was = redis.call('HGET', KEYS[1], 'rid')
local last = tonumber(redis.call('HGET', KEYS[1], 'seq') or '0')
local epoch = redis.call('HGET', KEYS[1], 'epoch')
if not epoch or last < tonumber(ARGV[5]) or (rid and was and was ~= rid) then
  epoch = ARGV[6]
  mint(KEYS[1], epoch, last + 1)
end
if rid and was ~= rid then
  redis.call('HSET', KEYS[1], 'rid', rid)
end
local seq = redis.call('HINCRBY', KEYS[1], 'seq', 1)
local item = '{"seq":' .. seq .. ',"ep":"' .. epoch .. '",' .. ARGV[2]
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], '0-' .. seq, 'e', item)
if ARGV[4] == '1' then
  redis.call('SPUBLISH', ARGV[1], item)
else
  redis.call('PUBLISH', ARGV[1], item)
end
return seq
