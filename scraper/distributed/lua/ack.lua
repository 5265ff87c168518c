-- Acknowledge leases: their requests are done. A token no longer leased (it expired and
-- was reclaimed) is refused: the request is someone else's now. ARGV: tokens.
-- Returns {acked, refused}.
local leases, leased, attempts, version = KEYS[1], KEYS[2], KEYS[3], KEYS[4]

local acked, refused = 0, 0
for _, token in ipairs(ARGV) do
  local data = redis.call('HGET', leased, token)
  if data then
    redis.call('HDEL', leased, token)
    redis.call('ZREM', leases, token)
    local seq = string.match(data, '^%S+ %S+ (%d+) ')
    if seq then redis.call('HDEL', attempts, seq) end
    acked = acked + 1
  else
    refused = refused + 1
  end
end
if acked > 0 then redis.call('INCR', version) end
return {acked, refused}
