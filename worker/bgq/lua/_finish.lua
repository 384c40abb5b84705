-- bgq shared prelude: bookkeeping when a job reaches a final state. bgq.scripts prepends this
-- file to fetch.lua, settle.lua and cancel.lua (a Redis script cannot include another), so the
-- rule lives in one place. Load those scripts with it prepended.

-- An until-complete unique key (uniq_ttl '0') is freed when its own job finishes.
local function release_unique(P, id, uniq, uniq_ttl)
  if uniq and uniq ~= '' and uniq_ttl == '0' then
    local ukey = P .. ':uniq:' .. uniq
    if redis.call('GET', ukey) == id then redis.call('DEL', ukey) end
  end
end

-- A client waiting on the job (its hash has w = '1') is woken through P:done:<id>.
local function notify_done(P, id, w, state)
  if w == '1' then
    local k = P .. ':done:' .. id
    redis.call('RPUSH', k, state)
    redis.call('PEXPIRE', k, 60000)
  end
end

