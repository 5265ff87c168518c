-- Queue the requests not seen before. ARGV: triples of dedup key, priority, request JSON.
-- A queue entry is "<seq> <request JSON>" scored -priority * 1e12 + seq (FIFO within a
-- priority). Returns the positions (from 0) of the triples already seen.
local requests, dupefilter, seq_key = KEYS[1], KEYS[2], KEYS[3]
local bloom, bloom_count = KEYS[4], KEYS[5]

local seen = {}
for i = 1, #ARGV, 3 do
  local dedup_key, priority, request = ARGV[i], tonumber(ARGV[i + 1]), ARGV[i + 2]
  if is_new(dedup_key, dupefilter, bloom, bloom_count) then
    local seq = redis.call('INCR', seq_key)
    redis.call('ZADD', requests, -priority * 1e12 + seq, seq .. ' ' .. request)
  else
    seen[#seen + 1] = (i - 1) / 3
  end
end
return seen
