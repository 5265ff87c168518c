-- Lease up to n queued requests, best first, then (if the queue gave none) up to start_n
-- start URLs. ARGV: n, node, lease_ms, start_n.
-- Returns a flat list of token, kind ('r': a queue entry, 's': a start URL), payload.
local requests, leases, leased = KEYS[1], KEYS[2], KEYS[3]
local seq_key, start_urls = KEYS[4], KEYS[5]
local n, node = tonumber(ARGV[1]), ARGV[2]
local lease_ms, start_n = tonumber(ARGV[3]), tonumber(ARGV[4])

local out = {}
local items = redis.call('ZRANGE', requests, 0, n - 1, 'WITHSCORES')
for i = 1, #items, 2 do
  local entry, score = items[i], items[i + 1]
  redis.call('ZREM', requests, entry)
  local token = node .. ':' .. redis.call('INCR', seq_key)
  redis.call('ZADD', leases, now + lease_ms, token)
  redis.call('HSET', leased, token, score .. ' ' .. entry)
  out[#out + 1] = token; out[#out + 1] = 'r'; out[#out + 1] = entry
end
if #items == 0 and start_n > 0 then
  local urls = redis.call('LRANGE', start_urls, 0, start_n - 1)
  if #urls > 0 then redis.call('LTRIM', start_urls, #urls, -1) end
  for _, url in ipairs(urls) do
    local token = node .. ':' .. redis.call('INCR', seq_key)
    redis.call('ZADD', leases, now + lease_ms, token)
    redis.call('HSET', leased, token, 'start ' .. url)
    out[#out + 1] = token; out[#out + 1] = 's'; out[#out + 1] = url
  end
end
return out
