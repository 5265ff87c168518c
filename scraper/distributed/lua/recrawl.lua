-- Start a new generation of the crawl in one partition: the same listings crawled again,
-- children deduplicated within the generation only. Refused (returns 0) while the
-- partition has anything queued, leased or waiting to be seeded: a running crawl keeps
-- its guarantees. The queue's sequence, dead entries and heartbeats stay.
-- ARGV: the new crawl id (partition 0), or '' (the others). Returns 1 once done.
local sites, leases, start_urls = KEYS[1], KEYS[2], KEYS[3]
local crawl, listings = KEYS[4], KEYS[5]
local dupefilter, bloom, bloom_count, canonical = KEYS[6], KEYS[7], KEYS[8], KEYS[9]
local crawl_id = ARGV[1]

if redis.call('ZCARD', sites) + redis.call('ZCARD', leases)
    + redis.call('LLEN', start_urls) > 0 then
  return 0
end
redis.call('DEL', dupefilter, bloom, bloom_count)
if crawl_id ~= '' then
  redis.call('DEL', canonical, listings)
  redis.call('HSET', crawl, 'id', crawl_id, 'list_failed', 0)
end
return 1
