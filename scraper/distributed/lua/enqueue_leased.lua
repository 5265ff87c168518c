-- Like enqueue, but each new request is leased at once to the node that found it, under
-- the token that node chose, instead of queued: that node crawls it now.
-- ARGV: lease_ms, then quadruples of dedup key, priority, request JSON, token.
-- Returns the tokens of the requests already seen (not leased).
local dupefilter, seq_key, leases, leased = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local bloom, bloom_count = KEYS[5], KEYS[6]
local lease_ms = tonumber(ARGV[1])

local seen = {}
for i = 2, #ARGV, 4 do
  local dedup_key, priority, request, token = ARGV[i], tonumber(ARGV[i + 1]), ARGV[i + 2],
    ARGV[i + 3]
  if is_new(dedup_key, dupefilter, bloom, bloom_count) then
    local seq = redis.call('INCR', seq_key)
    redis.call('ZADD', leases, now + lease_ms, token)
    -- Lease data: "<score> <queue entry>", what reclaim needs to queue it again.
    redis.call('HSET', leased, token, (-priority * 1e12 + seq) .. ' ' .. seq .. ' ' .. request)
  else
    seen[#seen + 1] = token
  end
end
return seen
