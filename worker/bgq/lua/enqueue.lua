-- bgq enqueue: create one job atomically (protocol v1, see docs/protocol.md).
--
-- KEYS[1]  P:job:<id>          job HASH
-- KEYS[2]  P:ready:<band>      ready STREAM of the job's priority band
-- KEYS[3]  P:delayed           delayed ZSET
-- KEYS[4]  P:uniq:<key>        unique-key STRING (pass KEYS[1] again when there is no unique key)
-- KEYS[5]  P:wake              wake rate-limit STRING
-- ARGV[1]  job id
-- ARGV[2]  envelope JSON
-- ARGV[3]  band: 0 high, 1 normal, 2 low
-- ARGV[4]  due time, ms since epoch; 0 or <= now means ready now
-- ARGV[5]  now, ms since epoch
-- ARGV[6]  unique key ("" = none)
-- ARGV[7]  unique key TTL in ms; 0 = held until the job completes (succeeded, dead or cancelled)
-- ARGV[8]  full queue name "<namespace>/<name>" (published on channel bgq:wake)
-- ARGV[9]  optional: the job's W3C traceparent; when this call publishes the wake-up it is
--          stored in P:wake:trace (60 s TTL) so the operator's scale decision can link to the
--          enqueue that woke it. Absent or "" (older producers): P:wake:trace is deleted.
-- Returns {status, job_id}:
--   {"enqueued", id}   created
--   {"exists", id}     a job with this id already exists: nothing changed (idempotent retry)
--   {"duplicate", id}  the unique key is held by job <id>: nothing created
local job, id, now = KEYS[1], ARGV[1], tonumber(ARGV[5])
if redis.call('EXISTS', job) == 1 then
  return {'exists', id}
end
local ukey = ARGV[6]
if ukey ~= '' then
  local holder = redis.call('GET', KEYS[4])
  if holder then
    -- a holder whose job record is gone (expired or deleted) no longer protects the key
    local prefix = string.sub(job, 1, #job - #id - 4)
    if redis.call('EXISTS', prefix .. 'job:' .. holder) == 1 then
      return {'duplicate', holder}
    end
  end
  local ttl = tonumber(ARGV[7])
  if ttl > 0 then
    redis.call('SET', KEYS[4], id, 'PX', ttl)
  else
    redis.call('SET', KEYS[4], id)
  end
end
local due = tonumber(ARGV[4])
local state, entry = 'queued', ''
if due > now then
  state = 'scheduled'
  redis.call('ZADD', KEYS[3], due, id)
else
  entry = redis.call('XADD', KEYS[2], '*', 'id', id)
end
redis.call('HSET', job, 'env', ARGV[2], 'state', state, 'attempt', 1, 'band', ARGV[3],
  'enqueued_ms', now, 'uniq', ukey, 'uniq_ttl', ARGV[7], 'entry', entry, 'token', 0)
-- delayed jobs wake the operator too: it polls a queue at rest rarely, and must learn of
-- a job due soon
if redis.call('SET', KEYS[5], '1', 'NX', 'PX', 200) then
  local trace = ARGV[9]
  if trace and trace ~= '' then
    redis.call('SET', KEYS[5] .. ':trace', trace, 'PX', 60000)
  else
    redis.call('DEL', KEYS[5] .. ':trace')
  end
  redis.call('PUBLISH', 'bgq:wake', ARGV[8])
end
return {'enqueued', id}
