-- bgq demand: everything the operator and `bgq stats` need about one queue, read-only.
--
-- KEYS[1]  P:ready:1 (routing only)
-- ARGV[1]  P (key prefix)
-- ARGV[2]  now ms
-- ARGV[3]  due window ms (delayed jobs due within now + window count as due)
-- Returns {backlog, in_flight, delayed, due, dead, oldest_ready_age_ms, n_workers,
--          then per worker: consumer id, flat HGETALL of its heartbeat hash}.
local P, now, window = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local backlog, in_flight, oldest = 0, 0, 0
for band = 0, 2 do
  local key = P .. ':ready:' .. band
  local len = redis.call('XLEN', key)
  if len > 0 then
    local pending, lag, last = 0, nil, nil
    local ok, groups = pcall(redis.call, 'XINFO', 'GROUPS', key)
    if ok then
      for _, g in ipairs(groups) do
        local f = {}
        for i = 1, #g, 2 do f[g[i]] = g[i + 1] end
        if f['name'] == 'workers' then
          pending = tonumber(f['pending']) or 0
          if f['lag'] then lag = tonumber(f['lag']) end
          last = f['last-delivered-id']
        end
      end
    end
    -- acked entries are deleted, so the stream holds exactly the undelivered + pending ones
    local b = lag or math.max(0, len - pending)
    backlog = backlog + b
    in_flight = in_flight + pending
    if b > 0 then
      local r
      if last then
        r = redis.call('XRANGE', key, '(' .. last, '+', 'COUNT', 1)
      else
        r = redis.call('XRANGE', key, '-', '+', 'COUNT', 1)
      end
      if #r == 1 then
        local ms = tonumber(string.match(r[1][1], '^(%d+)'))
        if ms and now - ms > oldest then oldest = now - ms end
      end
    end
  end
end
local delayed = redis.call('ZCARD', P .. ':delayed')
local due = 0
if delayed > 0 then due = redis.call('ZCOUNT', P .. ':delayed', '-inf', now + window) end
local dead = redis.call('XLEN', P .. ':dead')
local res = {backlog, in_flight, delayed, due, dead, oldest, 0}
local members = redis.call('ZRANGE', P .. ':workers', 0, -1)
local nw = 0
for _, c in ipairs(members) do
  local h = redis.call('HGETALL', P .. ':worker:' .. c)
  if #h > 0 then
    nw = nw + 1
    res[#res + 1] = c
    res[#res + 1] = h
  end
end
res[7] = nw
return res
