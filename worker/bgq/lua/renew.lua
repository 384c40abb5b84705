-- bgq renew: extend the leases of this consumer's jobs (XCLAIM ... JUSTID resets the idle time
-- without bumping the delivery count), fenced on the delivery token.
--
-- KEYS[1]  P:ready:1 (routing only)
-- ARGV[1]  P (key prefix)
-- ARGV[2]  consumer id
-- ARGV[3..] records of 4 fields: job id, band, entry id, token
-- Returns one integer per record: 1 renewed, 2 renewed but cancel requested, 0 lost (the job
-- was reclaimed by another worker, settled, or no longer exists: stop working on it).
local P, consumer = ARGV[1], ARGV[2]
local res = {}
for i = 3, #ARGV, 4 do
  local id, band, entry, token = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  local h = redis.call('HMGET', P .. ':job:' .. id, 'token', 'state', 'cancel', 'entry')
  if h[1] == token and h[2] == 'running' and h[4] == entry then
    redis.call('XCLAIM', P .. ':ready:' .. band, 'workers', consumer, 0, entry, 'JUSTID')
    if h[3] == '1' then res[#res + 1] = 2 else res[#res + 1] = 1 end
  else
    res[#res + 1] = 0
  end
end
return res
