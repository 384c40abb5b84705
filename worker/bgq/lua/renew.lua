-- bgq renew: extend the leases of this consumer's jobs (XCLAIM ... JUSTID resets the idle time
-- without bumping the delivery count), fenced on the delivery token; optionally store the
-- progress and checkpoints of running jobs in the same round trip.
--
-- KEYS[1]  P:ready:1 (routing only)
-- ARGV[1]  P (key prefix)
-- ARGV[2]  consumer id
-- ARGV[3..] records of 4 fields: job id, band, entry id, token
--           then, optionally, the marker record '', 'progress', '', '' followed by progress
--           records of 4 fields: job id, token, progress JSON, checkpoint JSON ('' = leave as
--           is). They are written to the job hash (fields progress, checkpoint) only while the
--           token matches and the job is running (fenced like the renewal itself).
-- Returns one integer per renewal record: 1 renewed, 2 renewed but cancel requested, 0 lost
-- (the job was reclaimed by another worker, settled, or no longer exists: stop working on
-- it). Progress records add nothing to the reply, so callers without them see no change.
local P, consumer = ARGV[1], ARGV[2]
local res = {}
local i = 3
while i <= #ARGV and ARGV[i] ~= '' do
  local id, band, entry, token = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  local h = redis.call('HMGET', P .. ':job:' .. id, 'token', 'state', 'cancel', 'entry')
  if h[1] == token and h[2] == 'running' and h[4] == entry then
    redis.call('XCLAIM', P .. ':ready:' .. band, 'workers', consumer, 0, entry, 'JUSTID')
    if h[3] == '1' then res[#res + 1] = 2 else res[#res + 1] = 1 end
  else
    res[#res + 1] = 0
  end
  i = i + 4
end
if i <= #ARGV and ARGV[i + 1] == 'progress' then
  for j = i + 4, #ARGV, 4 do
    local job = P .. ':job:' .. ARGV[j]
    local h = redis.call('HMGET', job, 'token', 'state')
    if h[1] == ARGV[j + 1] and h[2] == 'running' then
      if ARGV[j + 2] ~= '' then redis.call('HSET', job, 'progress', ARGV[j + 2]) end
      if ARGV[j + 3] ~= '' then redis.call('HSET', job, 'checkpoint', ARGV[j + 3]) end
    end
  end
end
return res
