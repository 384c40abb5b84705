-- bgq delayed_page: one page of the delayed set strictly after a (score, member) cursor.
-- Read-only (job listing, bgq.listing). A cursor made of the last listed entry, not an offset,
-- so entries added or removed before it while paging neither shift the page (no job skipped
-- or listed twice).
--
-- KEYS[1]  P:delayed
-- ARGV[1]  score of the last listed entry as Redis printed it ("" = from the start)
-- ARGV[2]  member of the last listed entry
-- ARGV[3]  page size
-- Returns ZRANGE ... WITHSCORES of the next page: {member, score, member, score, ...}.
--
-- Members with equal scores are ordered by their bytes (memcmp, as Redis sorts them); the
-- first member after the cursor among those is found by binary search over their ranks.
-- Member comparison is bytewise here too (Lua's '<' on strings follows the server's locale).
local key, score, member, count = KEYS[1], ARGV[1], ARGV[2], tonumber(ARGV[3])

local function le(x, y) -- x <= y, bytewise
  local n = math.min(#x, #y)
  for i = 1, n do
    local a, b = string.byte(x, i), string.byte(y, i)
    if a ~= b then return a < b end
  end
  return #x <= #y
end

local start = 0
if score ~= '' then
  local lo = redis.call('ZCOUNT', key, '-inf', '(' .. score) -- first rank with this score
  local hi = redis.call('ZCOUNT', key, '-inf', score)         -- first rank after it
  while lo < hi do
    local mid = math.floor((lo + hi) / 2)
    local at = redis.call('ZRANGE', key, mid, mid)[1]
    if le(at, member) then lo = mid + 1 else hi = mid end
  end
  start = lo
end
return redis.call('ZRANGE', key, start, start + count - 1, 'WITHSCORES')
