-- Like enqueue, but each new request is leased at once to the node that found it, under
-- the token that node chose, instead of queued: that node crawls it now.
-- ARGV: lease_ms, then quintuples of dedup key, priority, request JSON, token, site.
-- Returns the tokens of the requests already seen (not leased); the same again for a
-- batch sent again (answer.lua).
local dupefilter, seq_key, leases, leased = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local bloom, bloom_count, version, batch = KEYS[5], KEYS[6], KEYS[7], KEYS[8]
local lease_ms = tonumber(ARGV[1])

local answered = kept_answer(batch)
if answered then return answered end

local seen, added = {}, 0
for i = 2, #ARGV, 5 do
  local dedup_key, priority, request = ARGV[i], tonumber(ARGV[i + 1]), ARGV[i + 2]
  local token, site = ARGV[i + 3], ARGV[i + 4]
  if is_new(dedup_key, dupefilter, bloom, bloom_count) then
    local seq = redis.call('INCR', seq_key)
    redis.call('ZADD', leases, now + lease_ms, token)
    -- Lease data: "<score> <site> <queue entry>", what reclaim needs to queue it again.
    redis.call('HSET', leased, token,
      (-priority * 1e12 + seq) .. ' ' .. site .. ' ' .. seq .. ' ' .. request)
    added = added + 1
  else
    seen[#seen + 1] = token
  end
end
if added > 0 then redis.call('INCR', version) end
return keep_answer(batch, seen)
