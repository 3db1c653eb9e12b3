-- A reader found a log behind what it had served from it, the writer silent (jobcast.core.epoch):
-- begin a new epoch, so the writer's next append is refused and no seq of the lost entries is
-- ever reused. A compare-and-set: only if the log is still at the epoch and seq the reader saw,
-- so readers that find it at once mint one epoch between them.
--
-- KEYS: the log's hash. ARGV: the epoch ('' for none) and seq the reader saw, a new epoch.
-- Returns the hash's status, seq, values, epoch and epochs as they are now.
local meta = KEYS[1]
local epoch = redis.call('HGET', meta, 'epoch') or ''
local seq = redis.call('HGET', meta, 'seq') or '0'
if redis.call('EXISTS', meta) == 1 and epoch == ARGV[1] and seq == ARGV[2] then
  mint(meta, ARGV[3], tonumber(seq) + 1)
end
return redis.call('HMGET', meta, 'status', 'seq', 'values', 'epoch', 'epochs')
