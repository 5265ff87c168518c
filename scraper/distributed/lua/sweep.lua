-- Every script writes a lease's deadline and its data together, so a deadline without
-- data, or data without a deadline, was put there by someone else: the first would hold
-- the crawl open forever, the second is never read. Deadlines without data are dropped,
-- data without a deadline goes to dead. One sweep per every_ms per partition (it reads
-- every lease): the first node to ask takes the turn. ARGV: node, every_ms.
-- Returns {dropped tokens, tokens sent to dead}.
local leases, leased, dead_key, sweeper, version = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local node, every_ms = ARGV[1], ARGV[2]

if not redis.call('SET', sweeper, node, 'NX', 'PX', every_ms) then return {{}, {}} end
local dropped, kept = {}, {}
for _, token in ipairs(redis.call('ZRANGE', leases, 0, -1)) do
  if redis.call('HEXISTS', leased, token) == 0 then
    redis.call('ZREM', leases, token)
    dropped[#dropped + 1] = token
  end
end
for _, token in ipairs(redis.call('HKEYS', leased)) do
  if not redis.call('ZSCORE', leases, token) then
    redis.call('RPUSH', dead_key, redis.call('HGET', leased, token))
    redis.call('HDEL', leased, token)
    kept[#kept + 1] = token
  end
end
if #dropped + #kept > 0 then redis.call('INCR', version) end
return {dropped, kept}
