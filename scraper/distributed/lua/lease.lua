-- Lease up to n queued requests across the sites ready now, round-robin: the site leased
-- from longest ago first, at most `per_site` (or the site's own room) from each; then, if
-- the queues gave none, up to start_n start URLs.
-- A paced site (an interval between requests, shared by every node) gives only the
-- requests it may start within horizon_ms, each with its start time; a site told to wait
-- (Retry-After) gives nothing before its wait is within horizon_ms.
-- ARGV: prefix, n, node, lease_ms, start_n, per_site, horizon_ms, interval_ms (default),
-- partition, count of (site, room) pairs, the pairs, count of (site, interval_ms) pairs,
-- the pairs.
-- Returns a flat list of token, kind ('r': a queue entry, 's': a start URL), payload,
-- wait (ms until its start time, Redis's clock).
local sites, leases, leased, seq_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local start_urls, queued, version, ready = KEYS[5], KEYS[6], KEYS[7], KEYS[8]
local prefix, n, node = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local lease_ms, start_n, per_site = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local horizon, default_interval = tonumber(ARGV[7]), tonumber(ARGV[8])
local partition = ARGV[9]

local room, intervals = {}, {}
local i = 10
for _ = 1, tonumber(ARGV[i]) do room[ARGV[i + 1]] = tonumber(ARGV[i + 2]); i = i + 2 end
i = i + 1
for _ = 1, tonumber(ARGV[i]) do intervals[ARGV[i + 1]] = tonumber(ARGV[i + 2]); i = i + 2 end

local out, taken = {}, 0
local function lease(kind, data, payload, wait)
  local token = partition .. '/' .. node .. ':' .. redis.call('INCR', seq_key)
  redis.call('ZADD', leases, now + lease_ms, token)
  redis.call('HSET', leased, token, data)
  out[#out + 1] = token; out[#out + 1] = kind; out[#out + 1] = payload
  out[#out + 1] = wait
end

local full = 0
for _ in pairs(room) do full = full + 1 end
local candidates = redis.call('ZRANGEBYSCORE', sites, '-inf', now, 'LIMIT', 0,
  math.min(n + full + 16, 2000))
for _, site in ipairs(candidates) do
  if taken >= n then break end
  local want = math.min(room[site] or per_site, n - taken)
  if want > 0 then
    local interval = intervals[site] or default_interval
    local start = math.max(now, tonumber(redis.call('HGET', ready, site) or '0'))
    if interval > 0 then  -- paced: only the starts within the horizon
      want = math.min(want, math.floor((now + horizon - start) / interval) + 1)
    end
    local q = prefix .. 'q:' .. site
    local items = want > 0 and redis.call('ZRANGE', q, 0, want - 1, 'WITHSCORES') or {}
    if #items > 0 then
      redis.call('ZREMRANGEBYRANK', q, 0, #items / 2 - 1)
      for j = 1, #items, 2 do
        lease('r', items[j + 1] .. ' ' .. site .. ' ' .. items[j], items[j], start - now)
        if interval > 0 then start = start + interval end
      end
      taken = taken + #items / 2
      if interval > 0 then redis.call('HSET', ready, site, start) end
      if redis.call('EXISTS', q) == 0 then
        redis.call('ZREM', sites, site)
      elseif interval > 0 then  -- leased again once its next start is within the horizon
        redis.call('ZADD', sites, math.max(now, start - horizon), site)
      else  -- behind every site that waits longer
        redis.call('ZADD', sites, now, site)
      end
    end
  end
end
if taken > 0 then
  redis.call('DECRBY', queued, taken)
elseif start_n > 0 then
  local urls = redis.call('LRANGE', start_urls, 0, start_n - 1)
  if #urls > 0 then redis.call('LTRIM', start_urls, #urls, -1) end
  for _, url in ipairs(urls) do lease('s', 'start ' .. url, url, 0) end
end
if #out > 0 then redis.call('INCR', version) end
return out
