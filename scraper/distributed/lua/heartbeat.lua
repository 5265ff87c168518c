-- Record this node ("<ms> <heartbeat JSON>") and forget nodes not heard of for stale_ms.
-- ARGV: node, heartbeat JSON, stale_ms. Returns Redis's clock (ms).
local nodes = KEYS[1]
local node, heartbeat, stale_ms = ARGV[1], ARGV[2], tonumber(ARGV[3])

redis.call('HSET', nodes, node, now .. ' ' .. heartbeat)
local all = redis.call('HGETALL', nodes)
for i = 1, #all, 2 do
  local seen = tonumber(string.match(all[i + 1], '^(%d+)'))
  if seen and now - seen > stale_ms then redis.call('HDEL', nodes, all[i]) end
end
return now
