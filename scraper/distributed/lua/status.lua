-- One partition's counts, read in one step. Returns {queued, sites with requests, leases,
-- dedup set size, dead, Bloom count, version, start URLs, now, sites waiting (Retry-After
-- or pace) and up to 10 of them as site, ms until ready, listings seeded}. The version changes with every
-- change of the first three: a completion check across partitions reads them all twice.
local sites, leases, dupefilter, dead_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local bloom_count, queued, version, start_urls = KEYS[5], KEYS[6], KEYS[7], KEYS[8]
local listings = KEYS[9]

local waiting = redis.call('ZRANGEBYSCORE', sites, '(' .. (now + 1000), '+inf', 'WITHSCORES',
  'LIMIT', 0, 10)
for i = 2, #waiting, 2 do waiting[i] = tostring(tonumber(waiting[i]) - now) end
return {
  redis.call('GET', queued) or '0',
  redis.call('ZCARD', sites),
  redis.call('ZCARD', leases),
  redis.call('SCARD', dupefilter),
  redis.call('LLEN', dead_key),
  redis.call('GET', bloom_count) or '0',
  redis.call('GET', version) or '0',
  redis.call('LLEN', start_urls),
  now,
  redis.call('ZCOUNT', sites, '(' .. (now + 1000), '+inf'),
  waiting,
  redis.call('SCARD', listings),
}
