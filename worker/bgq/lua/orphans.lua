-- bgq orphans: hand back every entry in this consumer's pending lists that the worker does not
-- hold (e.g. delivered by a blocking read that was interrupted by shutdown), without consuming
-- a retry. Optionally removes the consumer from the group once its pending lists are empty.
--
-- KEYS[1]  P:ready:1 (routing only)
-- ARGV[1]  P (key prefix)
-- ARGV[2]  consumer id
-- ARGV[3]  1 = delete the consumer afterwards if nothing of it is pending, 0 = keep it
-- ARGV[4..] "<band>:<entry id>" of entries the worker still holds (left alone)
-- Returns the number of entries handed back.
local P, consumer, delete = ARGV[1], ARGV[2], ARGV[3] == '1'
local G = 'workers'
local keep = {}
for i = 4, #ARGV do keep[ARGV[i]] = true end
local released = 0
local left = 0
for band = 0, 2 do
  local key = P .. ':ready:' .. band
  local ok, pel = pcall(redis.call, 'XPENDING', key, G, '-', '+', 10000, consumer)
  if ok then
    for _, p in ipairs(pel) do
      local entry = p[1]
      if keep[band .. ':' .. entry] then
        left = left + 1
      else
        local r = redis.call('XRANGE', key, entry, entry)
        redis.call('XACK', key, G, entry)
        redis.call('XDEL', key, entry)
        local id = nil
        if #r == 1 then
          local f = r[1][2]
          for i = 1, #f, 2 do if f[i] == 'id' then id = f[i + 1] end end
        end
        if id then
          local job = P .. ':job:' .. id
          local h = redis.call('HMGET', job, 'state', 'entry')
          if (h[1] == 'running' or h[1] == 'queued') and h[2] == entry then
            local e = redis.call('XADD', key, '*', 'id', id)
            redis.call('HSET', job, 'state', 'queued', 'entry', e, 'owner', '')
            released = released + 1
          end
        end
      end
    end
    if delete and left == 0 then
      redis.call('XGROUP', 'DELCONSUMER', key, G, consumer)
    end
  end
end
if released > 0 then redis.call('HINCRBY', P .. ':stats', 'released', released) end
return released
