-- bgq parked: what the per-key limits let run, for the autoscaler. Read-only.
--
-- KEYS[1]  P:ready:1 (routing only; every key read shares its hash tag)
-- ARGV[1]  P (key prefix "bgq:{ns/name}")
-- ARGV[2]  most park lists to look at (the rest are reported as not looked at)
-- ARGV[3]  most members of one concurrency run set to check
-- ARGV[4]  optional: stop once free + unbounded reaches this many (the caller cannot be capped
--          below it anyway, e.g. maxReplicas x jobs per pod); the reply is then truncated
-- Returns {lists, jobs, free, unbounded, truncated}:
--   lists      park lists with waiting jobs that were looked at (P:parked members, '~paused' too)
--   jobs       jobs waiting in them
--   free       how many of those jobs the concurrency limits let start now: per list
--              min(waiting, min over its concurrency-limited keys of concurrency - running),
--              summed over the lists with at least one concurrency-limited key
--   unbounded  jobs waiting in lists without a concurrency bound (queue-wide or per-key rate
--              only, '~paused', or a list written under other limits): any number may start
--   truncated  1 when P:parked held more lists than ARGV[2], or the scan stopped at ARGV[4]
--              (then the caller must not cap)
-- A list's key is "name=value|..." with one part per entry of P:limits "keys", in order
-- (fetch.lua's park_list); the value of part i runs up to "|<name i+1>=". running = members of
-- P:lim:<name>:<value>:run whose job is in state running (what fetch counts).
local P = ARGV[1]
local max_lists, max_members = tonumber(ARGV[2]), tonumber(ARGV[3])
local enough = tonumber(ARGV[4] or '') or math.huge
local keys = {}
do
  local raw = redis.call('GET', P .. ':limits')
  if raw then
    local ok, v = pcall(cjson.decode, raw)
    if ok and type(v) == 'table' and type(v.keys) == 'table' then keys = v.keys end
  end
end

local running_cache = {}
local function running(name, value)
  local key = P .. ':lim:' .. name .. ':' .. value .. ':run'
  local c = running_cache[key]
  if c then return c end
  c = 0
  local members = redis.call('SRANDMEMBER', key, max_members)
  for _, jid in ipairs(members) do
    if redis.call('HGET', P .. ':job:' .. jid, 'state') == 'running' then c = c + 1 end
  end
  running_cache[key] = c
  return c
end

-- the free concurrency slots of a list's keys (the fewest of its concurrency-limited keys), or
-- nil when none of its keys has a concurrency limit or the list does not match P:limits
local function free_slots(sfx)
  if #keys == 0 or string.sub(sfx, 1, 1) == '~' then return nil end
  local pos, best = 1, nil
  for i, k in ipairs(keys) do
    local head = k.name .. '='
    if string.sub(sfx, pos, pos + #head - 1) ~= head then return nil end
    local from = pos + #head
    local value, nxt
    if i < #keys then
      local sep = '|' .. keys[i + 1].name .. '='
      local at = string.find(sfx, sep, from, true)
      if not at then return nil end
      value, nxt = string.sub(sfx, from, at - 1), at + 1
    else
      value, nxt = string.sub(sfx, from), #sfx + 1
    end
    if k.concurrency then
      local f = math.max(0, k.concurrency - running(k.name, value))
      if not best or f < best then best = f end
    end
    pos = nxt
  end
  return best
end

local total = redis.call('ZCARD', P .. ':parked')
local lists = redis.call('ZRANGE', P .. ':parked', 0, max_lists - 1)
local n, jobs, free, unbounded = 0, 0, 0, 0
local stopped = false
for _, sfx in ipairs(lists) do
  if free + unbounded >= enough then
    stopped = true
    break
  end
  local waiting = redis.call('LLEN', P .. ':park:' .. sfx)
  if waiting > 0 then
    n = n + 1
    jobs = jobs + waiting
    local f = free_slots(sfx)
    if f == nil then
      unbounded = unbounded + waiting
    else
      free = free + math.min(waiting, f)
    end
  end
end
local truncated = 0
if stopped or total > #lists then truncated = 1 end
return {n, jobs, free, unbounded, truncated}
