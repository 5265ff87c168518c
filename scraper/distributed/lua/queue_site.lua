-- Prelude: queue_site(sites, ready, site): the site has queued requests; it joins the
-- sites to lease from (if not there), scored by its ready time.
local function queue_site(sites, ready, site)
  redis.call('ZADD', sites, 'NX', tonumber(redis.call('HGET', ready, site) or '0'), site)
end
