-- bgq replay: re-enqueue dead letters as fresh jobs (attempt 1, same job id), removing them
-- from the dead-letter stream. Entries without an envelope (malformed stream entries) and jobs
-- whose id is live again (queued, scheduled, retrying or running) are skipped and kept.
--
-- KEYS[1]  P:dead
-- ARGV[1]  P (key prefix)
-- ARGV[2]  now ms
-- ARGV[3]  max entries to look at in this call
-- ARGV[4]  exclusive start entry id for a scan ("0-0" from the beginning), or "" with ids
-- ARGV[5..] dead-letter entry ids to replay (when ARGV[4] is "")
-- Returns {replayed, skipped, last entry id looked at ("" when none)}.
local P, now, limit, start = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4]
local entries = {}
if start ~= '' then
  entries = redis.call('XRANGE', KEYS[1], '(' .. start, '+', 'COUNT', limit)
else
  for i = 5, #ARGV do
    local r = redis.call('XRANGE', KEYS[1], ARGV[i], ARGV[i])
    if #r == 1 then entries[#entries + 1] = r[1] end
  end
end
local replayed, skipped, last = 0, 0, ''
for _, e in ipairs(entries) do
  last = e[1]
  local f = {}
  for i = 1, #e[2], 2 do f[e[2][i]] = e[2][i + 1] end
  local id, env = f['id'], f['env']
  local ok, decoded = false, nil
  if env and env ~= '' then ok, decoded = pcall(cjson.decode, env) end
  local job = P .. ':job:' .. (id or '')
  local state = nil
  if id and id ~= '' then state = redis.call('HGET', job, 'state') end
  local live = state == 'queued' or state == 'scheduled' or state == 'retrying' or
    state == 'running'
  if not ok or type(decoded) ~= 'table' or not id or id == '' or live then
    skipped = skipped + 1
  else
    local band = tonumber(decoded['priority']) or 1
    if band < 0 or band > 2 then band = 1 end
    redis.call('DEL', job)
    local stream = P .. ':ready:' .. band
    local x = redis.call('XADD', stream, '*', 'id', id)
    redis.call('HSET', job, 'env', env, 'state', 'queued', 'attempt', 1, 'band', band,
      'enqueued_ms', now, 'uniq', '', 'uniq_ttl', '0', 'entry', x, 'token', 0,
      'replayed_ms', now)
    redis.call('XDEL', KEYS[1], e[1])
    replayed = replayed + 1
  end
end
if replayed > 0 then redis.call('HINCRBY', P .. ':stats', 'replayed', replayed) end
return {replayed, skipped, last}
