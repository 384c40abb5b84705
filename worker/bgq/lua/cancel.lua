-- bgq cancel: cancel a job that has not finished.
--
-- KEYS[1]  P:job:<id>
-- ARGV[1]  P (key prefix)
-- ARGV[2]  job id
-- ARGV[3]  now ms
-- ARGV[4]  result TTL ms
-- Returns the outcome: "cancelled" (queued/scheduled/retrying job, now final), "cancelling"
-- (running: the worker is told at its next lease renewal and cancels it), "missing", or the
-- job's final state when it had already finished ("succeeded", "dead", "cancelled").
local P, id, now, ttl = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local job = KEYS[1]
local h = redis.call('HMGET', job, 'state', 'uniq', 'uniq_ttl', 'w')
local state = h[1]
if not state then return 'missing' end
if state == 'succeeded' or state == 'dead' or state == 'cancelled' then return state end
if state == 'running' then
  redis.call('HSET', job, 'cancel', '1')
  return 'cancelling'
end
-- queued: its stream entry stays and is dropped by the fetch script (state is no longer queued)
redis.call('ZREM', P .. ':delayed', id)
redis.call('HSET', job, 'state', 'cancelled', 'finished_ms', now)
redis.call('PEXPIRE', job, ttl)
release_unique(P, id, h[2], h[3])
notify_done(P, id, h[4], 'cancelled')
redis.call('HINCRBY', P .. ':stats', 'cancelled', 1)
return 'cancelled'
