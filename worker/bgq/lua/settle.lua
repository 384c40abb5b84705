-- bgq settle: finish many fetched jobs in one call, each fenced on its delivery token.
--
-- KEYS[1]  P:ready:1 (routing only)
-- ARGV[1]  P (key prefix)
-- ARGV[2]  now ms
-- ARGV[3]  result TTL ms
-- ARGV[4]  dead-letter retention ms
-- ARGV[5]  JSON array of records, each an array of 8: op, job id, band, entry id, token, a, b, c
--          (one argument instead of 8 per job keeps the client cheap)
--   op "ok"        a = result JSON                          -> succeeded
--   op "retry"     a = due ms, b = error, c = traceback     -> retrying (delayed set), attempt+1
--   op "dead"      a = reason, b = error, c = traceback     -> dead (dead-letter stream)
--   op "release"   hand back to the ready stream, attempt unchanged -> queued
--   op "cancelled" the job observed a cancel request        -> cancelled
-- A record is applied only if the job's hash still has this token and state "running": a
-- worker whose lease expired and whose job was reclaimed elsewhere cannot settle it.
-- Returns {applied count, then the 1-based indexes of rejected (stale) records}.
local P, now = ARGV[1], tonumber(ARGV[2])
local ttl, dead_retention = tonumber(ARGV[3]), tonumber(ARGV[4])
local G = 'workers'
local acks = {{}, {}, {}}
local stale = {}
local applied = 0
local counts = {succeeded = 0, retried = 0, dead = 0, released = 0, cancelled = 0, stale = 0}

local records = cjson.decode(ARGV[5])
for r = 1, #records do
  local rec = records[r]
  local op, id, band, entry = rec[1], rec[2], tostring(rec[3]), rec[4]
  local token = tostring(rec[5])
  local A, B, C = rec[6], rec[7], rec[8]
  local job = P .. ':job:' .. id
  local h = redis.call('HMGET', job, 'token', 'state', 'uniq', 'uniq_ttl', 'w', 'env', 'entry')
  if h[1] ~= token or h[2] ~= 'running' or h[7] ~= entry then
    stale[#stale + 1] = r
    counts.stale = counts.stale + 1
  else
    applied = applied + 1
    local a = acks[tonumber(band) + 1]
    a[#a + 1] = entry
    if op == 'ok' then
      redis.call('HSET', job, 'state', 'succeeded', 'result', A, 'finished_ms', now)
      redis.call('PEXPIRE', job, ttl)
      release_unique(P, id, h[3], h[4])
      notify_done(P, id, h[5], 'succeeded')
      counts.succeeded = counts.succeeded + 1
    elseif op == 'retry' then
      redis.call('HSET', job, 'state', 'retrying', 'error', B,
        'traceback', C, 'entry', '', 'owner', '')
      redis.call('HINCRBY', job, 'attempt', 1)
      redis.call('ZADD', P .. ':delayed', tonumber(A), id)
      counts.retried = counts.retried + 1
    elseif op == 'dead' then
      redis.call('XADD', P .. ':dead', 'MINID', '~', tostring(now - dead_retention), '*',
        'id', id, 'reason', A, 'error', B, 'traceback', C,
        'env', h[6] or '', 'dead_ms', now)
      redis.call('HSET', job, 'state', 'dead', 'reason', A, 'error', B,
        'traceback', C, 'finished_ms', now)
      redis.call('PEXPIRE', job, ttl)
      release_unique(P, id, h[3], h[4])
      notify_done(P, id, h[5], 'dead')
      counts.dead = counts.dead + 1
    elseif op == 'release' then
      local e = redis.call('XADD', P .. ':ready:' .. band, '*', 'id', id)
      redis.call('HSET', job, 'state', 'queued', 'entry', e, 'owner', '')
      counts.released = counts.released + 1
    else -- cancelled
      redis.call('HSET', job, 'state', 'cancelled', 'finished_ms', now)
      redis.call('PEXPIRE', job, ttl)
      release_unique(P, id, h[3], h[4])
      notify_done(P, id, h[5], 'cancelled')
      counts.cancelled = counts.cancelled + 1
    end
  end
end

for b = 1, 3 do
  local a = acks[b]
  local key = P .. ':ready:' .. (b - 1)
  for i = 1, #a, 500 do
    local j = math.min(i + 499, #a)
    redis.call('XACK', key, G, unpack(a, i, j))
    redis.call('XDEL', key, unpack(a, i, j))
  end
end
for k, v in pairs(counts) do
  if v > 0 then redis.call('HINCRBY', P .. ':stats', k, v) end
end
local res = {applied}
for i = 1, #stale do res[#res + 1] = stale[i] end
return res
