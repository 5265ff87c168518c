-- A site said to wait (Retry-After): no node leases its requests before the wait ends.
-- ARGV: site, wait_ms. Returns the time (ms, Redis's clock) the site is ready again.
local sites, ready = KEYS[1], KEYS[2]
local site, wait_ms = ARGV[1], tonumber(ARGV[2])

local until_ms = math.max(now + wait_ms, tonumber(redis.call('HGET', ready, site) or '0'))
redis.call('HSET', ready, site, until_ms)
if redis.call('ZSCORE', sites, site) then redis.call('ZADD', sites, 'GT', until_ms, site) end
return until_ms
