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
-- Returns {next_due_ms, n, jobs, reclaimed, poison, checkpoints}: jobs is a JSON array (a
-- string; "[]" when n is 0) of n*6 values, per job: job id, band, entry id, token, attempt, envelope JSON (one string reply
-- instead of 6n keeps client-side parsing cheap). next_due_ms is the earliest delayed score
-- (-1 when the delayed set is empty), or the earliest time a parked job may become eligible
-- when that is sooner; reclaimed counts jobs taken over from expired leases;
-- poison counts jobs this call dead-lettered as poison pills; checkpoints is a JSON object
-- {job id: checkpoint JSON text} for the delivered jobs that have a saved checkpoint ("{}"
-- when none). Both were added last: readers of the first four elements are unaffected.
--
-- Pause and limits (docs/protocol.md section 7): while P:paused exists nothing is handed out
-- (no reclaim, no new reads; entries a blocking read delivered are parked). With P:limits set
-- (JSON), a job over its limit is parked: its entry stays pending under the consumer
-- '~parked', its reference waits in the FIFO list P:park:<key> and P:parked (ZSET) holds the
-- time the list's head may become eligible. Parked jobs keep state 'queued' and field
-- parked=1; fetch unparks them in order when their limits allow (XCLAIM to the worker).
local P, consumer = ARGV[1], ARGV[2]
local want, now = tonumber(ARGV[3]), tonumber(ARGV[4])
local lease, max_deliveries = tonumber(ARGV[5]), tonumber(ARGV[6])
local result_ttl, dead_retention = tonumber(ARGV[7]), tonumber(ARGV[8])
local G = 'workers'
local out = {}
local n = 0
local dead_count, reclaimed_count, poison_count = 0, 0, 0
local checkpoints, n_checkpoints = {}, 0

local function stream(band) return P .. ':ready:' .. band end

local PARK_CONSUMER = '~parked'
local RECHECK_MS = 200 -- a concurrency-limited key is looked at again this often
local SCAN_CAP = math.max(100, want * 4) -- entries looked at per call (bounds script time)
-- the common call (nothing paused, limited, parked or due) costs four commands before its
-- read: the pause hash, the limits, and the heads of the delayed and parked sets (each head
-- is read once and is the reply's next_due unless this call changed that set)
local paused = redis.call('EXISTS', P .. ':paused') == 1
local L = nil
do
  local raw = redis.call('GET', P .. ':limits')
  if raw then
    local ok, v = pcall(cjson.decode, raw)
    if ok and type(v) == 'table' then L = v end
  end
  if L and not L.rate and (not L.keys or #L.keys == 0) then L = nil end
end
local parked_now = {} -- park lists that hold jobs (this call), so later jobs queue behind
local parked_touched = false -- this call parked or unparked: P:parked's head must be re-read
local buckets = {}    -- token bucket cache: key -> {tokens, ts, jobs, per_ms}
local running = {}    -- concurrency cache: key -> count

-- the value of one limit key for a job: kwargs.<f> or headers.<f>; missing -> '_default'
local function key_value(envt, k)
  local src = nil
  if envt then
    if k.from == 'kwargs' then src = envt.kwargs else src = envt.headers end
  end
  local v = nil
  if type(src) == 'table' then v = src[k.field] end
  local tv = type(v)
  if tv == 'number' then
    v = tostring(v)
  elseif tv == 'boolean' then
    v = tostring(v)
  elseif tv ~= 'string' or v == '' then
    v = '_default'
  end
  if #v > 100 then v = 'h:' .. redis.sha1hex(v) end
  return v
end

local function bucket(key, jobs, per_ms)
  local b = buckets[key]
  if not b then
    local h = redis.call('HMGET', key, 't', 'ts')
    local t, ts = tonumber(h[1]), tonumber(h[2])
    if not t then t, ts = jobs, now end
    b = {t, ts, jobs, per_ms}
    buckets[key] = b
  end
  if now > b[2] then
    b[1] = math.min(jobs, b[1] + (now - b[2]) * jobs / per_ms)
    b[2] = now
  end
  return b
end

-- ms until bucket `key` has a token (0 = now)
local function bucket_wait(key, rate)
  local b = bucket(key, rate.jobs, rate.per_ms)
  if b[1] >= 1 then return 0 end
  return math.max(1, math.ceil((1 - b[1]) * rate.per_ms / rate.jobs))
end

local function run_key(name, v) return P .. ':lim:' .. name .. ':' .. v .. ':run' end

local function running_count(key)
  local c = running[key]
  if c then return c end
  c = 0
  for _, jid in ipairs(redis.call('SMEMBERS', key)) do
    if redis.call('HGET', P .. ':job:' .. jid, 'state') == 'running' then
      c = c + 1
    else
      redis.call('SREM', key, jid)
    end
  end
  running[key] = c
  return c
end

-- {wait ms, park list suffix, per-key values} for one job under the limits
local function limit_check(env)
  local wait, parts, vals = 0, {}, {}
  if L.keys and #L.keys > 0 then
    local ok, envt = pcall(cjson.decode, env or '')
    if not ok then envt = nil end
    for i, k in ipairs(L.keys) do
      local v = key_value(envt, k)
      vals[i] = v
      parts[#parts + 1] = k.name .. '=' .. v
      if k.concurrency and running_count(run_key(k.name, v)) >= k.concurrency then
        wait = math.max(wait, RECHECK_MS)
      end
      if k.rate then
        wait = math.max(wait, bucket_wait(P .. ':lim:' .. k.name .. ':' .. v .. ':bucket', k.rate))
      end
    end
  end
  if L.rate then wait = math.max(wait, bucket_wait(P .. ':lim:~rate', L.rate)) end
  local sfx = '~'
  if #parts > 0 then sfx = table.concat(parts, '|') end
  return wait, sfx, vals
end

-- the job starts now: take its tokens and its concurrency slots
local function limit_commit(id, vals)
  if L.rate then local b = bucket(P .. ':lim:~rate', L.rate.jobs, L.rate.per_ms); b[1] = b[1] - 1 end
  for i, k in ipairs(L.keys or {}) do
    if k.rate then
      local b = bucket(P .. ':lim:' .. k.name .. ':' .. vals[i] .. ':bucket', k.rate.jobs,
        k.rate.per_ms)
      b[1] = b[1] - 1
    end
    if k.concurrency then
      local rk = run_key(k.name, vals[i])
      redis.call('SADD', rk, id)
      running[rk] = running_count(rk) + 1
    end
  end
end

local function park_list(sfx) return P .. ':park:' .. sfx end

-- park one delivered entry (pending to this consumer, or to ~parked already)
local function park(band, entry, id, sfx, wait)
  redis.call('XCLAIM', stream(band), G, PARK_CONSUMER, 0, entry, 'JUSTID')
  local list = park_list(sfx)
  redis.call('RPUSH', list, band .. '|' .. entry .. '|' .. id)
  redis.call('HSET', P .. ':job:' .. id, 'parked', '1')
  parked_now[sfx] = true
  parked_touched = true
  if wait then
    redis.call('ZADD', P .. ':parked', 'NX', now + wait, sfx)
  end
end

local function is_parked_key(sfx)
  if parked_now[sfx] then return true end
  if redis.call('EXISTS', park_list(sfx)) == 1 then
    parked_now[sfx] = true
    return true
  end
  return false
end

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

-- deliver one stream entry to this consumer (or dead-letter / drop / park it); `checked`: an
-- unparked job whose limits were already checked and taken
local function deliver(band, entry, fields, reclaimed, checked)
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
  local h = redis.call('HMGET', job, 'state', 'env', 'attempt', 'entry', 'token', 'checkpoint')
  local state, env, attempt = h[1], h[2], h[3]
  if not env then
    drop(band, entry)
    dead_letter(id, 'missing-job-record',
      'stream entry ' .. entry .. ' names job ' .. id .. ' but its hash ' .. job ..
      ' does not exist (expired or deleted)', '')
    return
  end
  if reclaimed and state == 'queued' and h[4] == entry then
    if redis.call('HGET', job, 'parked') == '1' then
      -- a parked entry idle for a lease: keep it parked (reset its idle time)
      redis.call('XCLAIM', stream(band), G, PARK_CONSUMER, 0, entry, 'JUSTID')
      return
    end
    -- delivered by a blocking read to a worker that died before adopting it: never ran
    reclaimed = false
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
      poison_count = poison_count + 1
      finish_dead(job, id, 'poison-pill', msg)
      return
    end
  elseif state ~= 'queued' or (h[4] and h[4] ~= '' and h[4] ~= entry) then
    drop(band, entry) -- cancelled, already final, or a superseded duplicate entry
    return
  end
  if not reclaimed and not checked then
    if paused then
      park(band, entry, id, '~paused', nil)
      redis.call('ZADD', P .. ':parked', 0, '~paused')
      return
    end
    if L then
      local wait, sfx, vals = limit_check(env)
      if wait > 0 or is_parked_key(sfx) then
        park(band, entry, id, sfx, math.max(wait, 1)) -- over the limit, or behind parked ones
        return
      end
      limit_commit(id, vals)
    end
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
  if h[6] then
    checkpoints[id] = h[6]
    n_checkpoints = n_checkpoints + 1
  end
end

-- 1. promote due delayed jobs (only when the earliest one is due: its score is read once,
-- and is the reply's next_due when nothing is promoted)
local delayed_head = redis.call('ZRANGE', P .. ':delayed', 0, 0, 'WITHSCORES')
local due = {}
if #delayed_head == 2 and tonumber(delayed_head[2]) <= now then
  due = redis.call('ZRANGE', P .. ':delayed', '-inf', now, 'BYSCORE', 'LIMIT', 0, 1000)
end
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

-- 2b. unpark: hand out parked jobs whose list head is eligible, oldest first within a list
local parked_head = redis.call('ZRANGE', P .. ':parked', 0, 0, 'WITHSCORES')
if not paused and #parked_head == 2 and tonumber(parked_head[2]) <= now then
  parked_touched = true
  local lists = redis.call('ZRANGE', P .. ':parked', '-inf', now, 'BYSCORE', 'LIMIT', 0, 50)
  for _, sfx in ipairs(lists) do
    if n >= want then break end
    local list = park_list(sfx)
    local next_at = now + RECHECK_MS
    local looked = 0
    while n < want and looked < SCAN_CAP do
      looked = looked + 1
      local head = redis.call('LINDEX', list, 0)
      if not head then break end
      local band, entry, id = string.match(head, '^(%d)|([^|]+)|(.+)$')
      local job = P .. ':job:' .. (id or '')
      local hh = redis.call('HMGET', job, 'state', 'entry', 'env')
      if not id or hh[1] ~= 'queued' or hh[2] ~= entry then
        redis.call('LPOP', list) -- cancelled or gone while parked
        if band and entry then drop(band, entry) end
      else
        local wait, ksfx, vals = 0, sfx, {}
        if L then wait, ksfx, vals = limit_check(hh[3]) end
        if sfx == '~paused' and not L then ksfx = sfx end
        if ksfx == sfx and wait > 0 then
          next_at = now + wait
          break
        end
        redis.call('LPOP', list)
        redis.call('HDEL', job, 'parked')
        if ksfx ~= sfx and (wait > 0 or is_parked_key(ksfx)) then
          park(band, entry, id, ksfx, math.max(wait, 1)) -- from the pause list to its key
        else
          if L then limit_commit(id, vals) end
          redis.call('XCLAIM', stream(band), G, consumer, 0, entry, 'JUSTID')
          deliver(band, entry, {'id', id}, false, true)
        end
      end
    end
    if redis.call('EXISTS', list) == 0 then
      redis.call('ZREM', P .. ':parked', sfx)
      parked_now[sfx] = nil
    else
      redis.call('ZADD', P .. ':parked', next_at, sfx)
    end
  end
end

-- 3. reclaim expired leases (at most once per lease/4 per queue, cursor kept per band)
if not paused and n < want and redis.call('SET', P .. ':reclaiming', '1', 'NX', 'PX',
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

-- 4. read new entries, high band first (parked ones do not count: read on, bounded)
local scanned = 0
for band = 0, 2 do
  if paused or n >= want or scanned >= SCAN_CAP then break end
  local key = stream(band)
  while n < want and scanned < SCAN_CAP do
    local ask = want - n
    local ok, r = pcall(redis.call, 'XREADGROUP', 'GROUP', G, consumer, 'COUNT', ask,
      'STREAMS', key, '>')
    if not ok then
      if redis.call('EXISTS', key) == 1 then
        ensure_group(key)
        ok, r = pcall(redis.call, 'XREADGROUP', 'GROUP', G, consumer, 'COUNT', ask,
          'STREAMS', key, '>')
      end
    end
    if not ok or not r then break end
    local entries = r[1][2]
    for _, e in ipairs(entries) do
      deliver(band, e[1], e[2], false)
    end
    scanned = scanned + #entries
    if #entries < ask or not L then break end
  end
end

if dead_count > 0 then redis.call('HINCRBY', P .. ':stats', 'dead', dead_count) end
if reclaimed_count > 0 then
  redis.call('HINCRBY', P .. ':stats', 'reclaimed', reclaimed_count)
end
for key, b in pairs(buckets) do
  redis.call('HSET', key, 't', tostring(b[1]), 'ts', b[2])
  redis.call('PEXPIRE', key, math.ceil(b[4] * 2) + 60000)
end
local nd = delayed_head
if #due > 0 then nd = redis.call('ZRANGE', P .. ':delayed', 0, 0, 'WITHSCORES') end
local next_due = -1
if #nd == 2 then next_due = tonumber(nd[2]) end
if not paused then
  local np = parked_head
  if parked_touched then np = redis.call('ZRANGE', P .. ':parked', 0, 0, 'WITHSCORES') end
  if #np == 2 then
    local at = math.max(tonumber(np[2]), now + 1)
    if next_due < 0 or at < next_due then next_due = at end
  end
end
if n == 0 then return {next_due, 0, '[]', reclaimed_count, poison_count, '{}'} end
local cp = '{}'
if n_checkpoints > 0 then cp = cjson.encode(checkpoints) end
return {next_due, n, cjson.encode(out), reclaimed_count, poison_count, cp}
