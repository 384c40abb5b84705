-- bgq fetch: promote due delayed jobs, adopt entries read by a blocking XREADGROUP, reclaim
-- expired leases (poison-pill cap -> dead letter), then read new entries by band priority.
--
-- KEYS[1]  P:ready:1 (routing only; every key used shares its hash tag)
-- ARGV[1]  P (key prefix "bgq:{ns/name}")
-- ARGV[2]  consumer id
-- ARGV[3]  max jobs to return
-- ARGV[4]  now ms
-- ARGV[5]  lease ms (entries idle longer are reclaimed)
-- ARGV[6]  max deliveries (lease expiries before a job is dead-lettered)
-- ARGV[7]  result TTL ms (dead jobs keep their record this long)
-- ARGV[8]  dead-letter retention ms
-- ARGV[9..] adopt pairs: band, entry id (entries already delivered to this consumer)
-- Returns {next_due_ms, n, jobs, reclaimed}: jobs is a JSON array (a string; "[]" when n is 0) of n*6
-- values, per job: job id, band, entry id, token, attempt, envelope JSON (one string reply
-- instead of 6n keeps client-side parsing cheap). next_due_ms is the earliest delayed score
-- (-1 when the delayed set is empty); reclaimed counts jobs taken over from expired leases.
local P, consumer = ARGV[1], ARGV[2]
local want, now = tonumber(ARGV[3]), tonumber(ARGV[4])
local lease, max_deliveries = tonumber(ARGV[5]), tonumber(ARGV[6])
local result_ttl, dead_retention = tonumber(ARGV[7]), tonumber(ARGV[8])
local G = 'workers'
local out = {}
local n = 0
local dead_count, reclaimed_count = 0, 0

local function stream(band) return P .. ':ready:' .. band end

local function ensure_group(key)
  local ok = pcall(redis.call, 'XGROUP', 'CREATE', key, G, '0', 'MKSTREAM')
  return ok
end

local function drop(band, entry)
  redis.call('XACK', stream(band), G, entry)
  redis.call('XDEL', stream(band), entry)
end

local function dead_letter(id, reason, err, env)
  redis.call('XADD', P .. ':dead', 'MINID', '~', tostring(now - dead_retention), '*',
    'id', id, 'reason', reason, 'error', err, 'traceback', '', 'env', env or '',
    'dead_ms', now)
  dead_count = dead_count + 1
end

local function finish_dead(job, id, reason, err)
  redis.call('HSET', job, 'state', 'dead', 'reason', reason, 'error', err, 'finished_ms', now)
  redis.call('PEXPIRE', job, result_ttl)
  local u = redis.call('HMGET', job, 'uniq', 'uniq_ttl', 'w')
  release_unique(P, id, u[1], u[2])
  notify_done(P, id, u[3], 'dead')
end

-- deliver one stream entry to this consumer (or dead-letter / drop it)
local function deliver(band, entry, fields, reclaimed)
  local id = nil
  if fields then
    for i = 1, #fields, 2 do
      if fields[i] == 'id' then id = fields[i + 1] end
    end
  end
  if not id or id == '' then
    drop(band, entry)
    dead_letter('', 'malformed-entry',
      'stream entry ' .. entry .. ' in band ' .. band .. ' has no "id" field: ' ..
      cjson.encode(fields or {}), '')
    return
  end
  local job = P .. ':job:' .. id
  local h = redis.call('HMGET', job, 'state', 'env', 'attempt', 'entry', 'token')
  local state, env, attempt = h[1], h[2], h[3]
  if not env then
    drop(band, entry)
    dead_letter(id, 'missing-job-record',
      'stream entry ' .. entry .. ' names job ' .. id .. ' but its hash ' .. job ..
      ' does not exist (expired or deleted)', '')
    return
  end
  if reclaimed then
    if state ~= 'running' or h[4] ~= entry then
      drop(band, entry) -- job moved on (cancelled, settled, released): stale entry
      return
    end
    local expiries = redis.call('HINCRBY', job, 'expiries', 1)
    reclaimed_count = reclaimed_count + 1
    if expiries >= max_deliveries then
      drop(band, entry)
      local msg = 'lease expired ' .. expiries .. ' times (the worker running it died or ' ..
        'stalled each time); dead-lettered as a poison pill (max deliveries ' ..
        max_deliveries .. ')'
      dead_letter(id, 'poison-pill', msg, env)
      finish_dead(job, id, 'poison-pill', msg)
      return
    end
  elseif state ~= 'queued' or (h[4] and h[4] ~= '' and h[4] ~= entry) then
    drop(band, entry) -- cancelled, already final, or a superseded duplicate entry
    return
  end
  local token = (tonumber(h[5]) or 0) + 1
  redis.call('HSET', job, 'state', 'running', 'owner', consumer, 'started_ms', now,
    'entry', entry, 'token', token)
  n = n + 1
  out[#out + 1] = id
  out[#out + 1] = tonumber(band)
  out[#out + 1] = entry
  out[#out + 1] = token
  out[#out + 1] = tonumber(attempt) or 1
  out[#out + 1] = env
end

-- 1. promote due delayed jobs
local due = redis.call('ZRANGE', P .. ':delayed', '-inf', now, 'BYSCORE', 'LIMIT', 0, 1000)
if #due > 0 then
  for _, id in ipairs(due) do
    local job = P .. ':job:' .. id
    local h = redis.call('HMGET', job, 'state', 'band')
    if h[1] == 'scheduled' or h[1] == 'retrying' then
      local e = redis.call('XADD', stream(h[2]), '*', 'id', id)
      redis.call('HSET', job, 'state', 'queued', 'entry', e)
    end
  end
  for i = 1, #due, 500 do
    redis.call('ZREM', P .. ':delayed', unpack(due, i, math.min(i + 499, #due)))
  end
end

-- 2. adopt entries already delivered by a blocking XREADGROUP
for i = 9, #ARGV, 2 do
  local band, entry = ARGV[i], ARGV[i + 1]
  local r = redis.call('XRANGE', stream(band), entry, entry)
  if #r == 1 then
    deliver(band, entry, r[1][2], false)
  else
    redis.call('XACK', stream(band), G, entry)
  end
end

-- 3. reclaim expired leases (at most once per lease/4 per queue, cursor kept per band)
if n < want and redis.call('SET', P .. ':reclaiming', '1', 'NX', 'PX',
    math.max(200, math.floor(lease / 4))) then
  for band = 0, 2 do
    if n >= want then break end
    local cursor = redis.call('HGET', P .. ':reclaim', band) or '0-0'
    local ok, r = pcall(redis.call, 'XAUTOCLAIM', stream(band), G, consumer, lease, cursor,
      'COUNT', want - n)
    if ok then
      redis.call('HSET', P .. ':reclaim', band, r[1])
      for _, e in ipairs(r[2]) do
        if n >= want then
          -- should not happen (COUNT bounds it); hand back by leaving it idle
          break
        end
        deliver(band, e[1], e[2], true)
      end
    end
  end
end

-- 4. read new entries, high band first
for band = 0, 2 do
  if n >= want then break end
  local key = stream(band)
  local ok, r = pcall(redis.call, 'XREADGROUP', 'GROUP', G, consumer, 'COUNT', want - n,
    'STREAMS', key, '>')
  if not ok then
    if redis.call('EXISTS', key) == 1 then
      ensure_group(key)
      ok, r = pcall(redis.call, 'XREADGROUP', 'GROUP', G, consumer, 'COUNT', want - n,
        'STREAMS', key, '>')
    end
  end
  if ok and r then
    for _, e in ipairs(r[1][2]) do
      deliver(band, e[1], e[2], false)
    end
  end
end

if dead_count > 0 then redis.call('HINCRBY', P .. ':stats', 'dead', dead_count) end
if reclaimed_count > 0 then
  redis.call('HINCRBY', P .. ':stats', 'reclaimed', reclaimed_count)
end
local nd = redis.call('ZRANGE', P .. ':delayed', 0, 0, 'WITHSCORES')
local next_due = -1
if #nd == 2 then next_due = tonumber(nd[2]) end
if n == 0 then return {next_due, 0, '[]', reclaimed_count} end
return {next_due, n, cjson.encode(out), reclaimed_count}
