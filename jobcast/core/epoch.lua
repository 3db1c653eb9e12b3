-- Shared by every script that writes a log's hash (jobcast.core.epoch): mint a new epoch.
--
-- The hash keeps `epoch`, the log's current incarnation, and `epochs`, its last 16 eras as
-- "<epoch>@<first seq>@<values before>" separated by spaces: where each incarnation began, and
-- how many values the log held then (a job's log; the feed has none). An era begins when the
-- log is created, and whenever a writer or a reader proves entries were lost (the log's seq is
-- behind one it wrote or served): no seq is then ever reused within one epoch.
local function mint(meta, epoch, first)
  local era = epoch .. '@' .. first .. '@' .. (redis.call('HGET', meta, 'values') or '0')
  local history = redis.call('HGET', meta, 'epochs')
  if history then
    local kept = {}
    for item in string.gmatch(history, '%S+') do kept[#kept + 1] = item end
    kept[#kept + 1] = era
    while #kept > 16 do table.remove(kept, 1) end
    era = table.concat(kept, ' ')
  end
  redis.call('HSET', meta, 'epoch', epoch, 'epochs', era)
end
