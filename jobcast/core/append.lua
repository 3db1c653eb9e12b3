-- Append one entry to a job's log and announce it, atomically (jobcast.core.joblog).
--
-- KEYS: meta hash, log stream, and on a single Redis the jobs index and the open jobs. On a
--       Redis Cluster (no index keys: they live in other slots) the entry is announced with
--       SPUBLISH on the job's shard channel, and JobLog.create indexes the job itself.
-- ARGV: channel, kind, value index (-1 if none), JSON body without seq (starts after "{"),
--       log maxlen, ttl after the end, now, jobs-index max, the writer's epoch ('' for no
--       check), the highest seq the writer wrote (0 for no check), a new epoch (the log's
--       first, or one minted here), '1' to begin a new epoch with this entry (a new attempt's
--       start: nothing proves the log is what the last attempt left; a start begins one too on
--       a Redis whose replication id is not the one that wrote the log), the writer's id and the
--       number of this write among its writes (1, 2, ...), '1' when the write is refused with
--       -5 if the log is behind the writer ('' to write it anyway, in a new epoch: a retrying or
--       failed entry ends the attempt whatever happened to its log), for a ``queued`` entry
--       the ended_at of an earlier run whose finished or failed log it replaces ('' for none:
--       the job id must be new), then field/value pairs for the hash.
-- Returns the new entry's seq, or a negative code: -1 already ended, -2 unknown job,
-- -3 value index not the next one (a retried job repeating a value), -4 job id exists,
-- -5 the log is not the incarnation the writer began: another epoch, or behind what the writer
-- wrote (entries lost in a failover: a new epoch begins here, whether the write is refused or
-- not, so no seq of the lost entries is reused in the epoch viewers saw them in), -6 a write
-- sent again that came before its writer's last (appended then, or refused: see below). An
-- ended log answers -1 first, whatever the epoch; the epoch checks come before -3, so a
-- truncated log never answers -3 and lets a value be skipped silently.
-- Each entry carries the epoch it was written in: {"seq":N,"ep":"<epoch>",...}, and one that is
-- not a value the count of values before it ("values"); an entry that
-- begins an epoch (minted by its write) also names the epoch before it, "pe": a viewer whose
-- position is the seq just before it, in that epoch, lost nothing and just goes on.
-- A write is appended once however often it is sent: a client that lost the reply (a timeout,
-- a dropped connection, a failover) sends it again. The hash keeps each writer's last write
-- (its number and seq): the same write again returns that seq, and an earlier one of a resent
-- pipeline returns -6 (it was appended: a writer numbers its writes in the order it sends them).
local meta, log, index = KEYS[1], KEYS[2], KEYS[3]
local kind = ARGV[2]
local writer, nth = 'w:' .. ARGV[13], tonumber(ARGV[14])
local last_write = redis.call('HGET', meta, writer)
if last_write then
  local done, done_seq = string.match(last_write, '^(%d+):(%d+)$')
  if nth == tonumber(done) then return tonumber(done_seq) end
  if nth < tonumber(done) then return -6 end
end
local status = redis.call('HGET', meta, 'status')
local epoch, previous
local new_era = ARGV[12] == '1'
local rid
if kind == 'queued' or kind == 'started' then
  -- The replication id of this Redis (INFO's master_replid, as feed.lua keeps it). A failover
  -- that lost an attempt's start and values lost the count of attempts with them, so the job
  -- run again starts as attempt 1 once more, which begins no epoch of its own: on a Redis
  -- other than the one that wrote the log (a promoted replica), a start begins one.
  local info = redis.pcall('INFO', 'replication')
  rid = type(info) == 'string' and string.match(info, 'master_replid:(%w+)') or nil
end
if kind == 'queued' then
  if status then
    -- The job id runs again (RQ's Repeat, a requeue, an id enqueued again): its earlier run's
    -- log gives way to this run's, if it is still the one the writer found ended.
    if ARGV[16] == '' or (status ~= 'finished' and status ~= 'failed')
        or redis.call('HGET', meta, 'ended_at') ~= ARGV[16] then return -4 end
    redis.call('DEL', meta, log)
  else
    -- A log left without its hash (evicted, or deleted by hand) would refuse the new entry's
    -- id, after the hash below was written: the job is new, and so is its log.
    redis.call('DEL', log)
  end
  epoch = ARGV[11]
  redis.call('HSET', meta, 'epoch', epoch, 'epochs', epoch .. '@1@0')
  if rid then redis.call('HSET', meta, 'rid', rid) end
else
  if not status then return -2 end
  -- An ended log takes nothing more, whatever the epoch: a writer told -5 rather than -1 would
  -- take the end (a cancel, which begins an epoch of its own) for a failover.
  if status == 'finished' or status == 'failed' or status == 'cancelled' then return -1 end
  epoch = redis.call('HGET', meta, 'epoch')
  if ARGV[9] ~= '' and epoch ~= ARGV[9] then return -5 end
  if rid then
    local was = redis.call('HGET', meta, 'rid')
    if was and was ~= rid then new_era = true end
    if was ~= rid then redis.call('HSET', meta, 'rid', rid) end
  end
  local last = tonumber(redis.call('HGET', meta, 'seq') or '0')
  local behind = last < tonumber(ARGV[10])
  if behind then
    mint(meta, ARGV[11], last + 1)
    if ARGV[15] == '1' then return -5 end
    previous, epoch = epoch, ARGV[11]
  end
  if not behind and (not epoch or new_era) then  -- (a log before epochs gets one too)
    previous, epoch = epoch, ARGV[11]
    mint(meta, epoch, last + 1)
  end
end
-- The count of values logged before this entry: a value's is its index; any other entry
-- carries it ("values"), so a log trimmed down to entries that are not values (a job that
-- printed a lot) still says, from its first entry, which values it no longer holds.
local nv = tonumber(redis.call('HGET', meta, 'values') or '0')
if kind == 'value' then
  if tonumber(ARGV[3]) ~= nv then return -3 end
  redis.call('HSET', meta, 'values', nv + 1)
end
local seq = redis.call('HINCRBY', meta, 'seq', 1)
local entry = '{"seq":' .. seq .. ',"ep":"' .. epoch .. '",' ..
  (previous and ('"pe":"' .. previous .. '",') or '') ..
  (kind ~= 'value' and ('"values":' .. nv .. ',') or '') .. ARGV[4]
redis.call('XADD', log, 'MAXLEN', '~', ARGV[5], '0-' .. seq, 'e', entry)
if index then
  redis.call('PUBLISH', ARGV[1], entry)
else
  redis.call('SPUBLISH', ARGV[1], entry)
end
redis.call('HSET', meta, writer, nth .. ':' .. seq)
if #ARGV > 16 then
  redis.call('HSET', meta, unpack(ARGV, 17))
end
if kind == 'queued' and index then
  local id = string.match(meta, ':job:(.*)$')
  redis.call('ZADD', index, ARGV[7], id)  -- the index keeps the newest jobs only
  local extra = redis.call('ZCARD', index) - tonumber(ARGV[8])
  if extra > 0 then redis.call('ZREMRANGEBYRANK', index, 0, extra - 1) end
  -- The open jobs are not capped: a backlog longer than the index must still be watched
  -- (the watchdog ends a job that RQ lost). Each leaves the set once it has ended.
  redis.call('ZADD', KEYS[4], ARGV[7], id)
end
if kind == 'finished' or kind == 'failed' or kind == 'cancelled' then
  redis.call('EXPIRE', meta, ARGV[6])
  redis.call('EXPIRE', log, ARGV[6])
  -- An ended job leaves the open jobs with its end, whether or not a web process's watchdog
  -- runs to drop it (a worker-only deployment would grow the set for good).
  if index then redis.call('ZREM', KEYS[4], string.match(meta, ':job:(.*)$')) end
end
return seq
