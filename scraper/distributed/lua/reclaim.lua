-- Put leases back. ARGV: prefix, max_attempts, limit, then (to release) tokens.
-- Without tokens: every lease past its deadline goes back, counting an attempt; an entry
-- past max_attempts goes to dead instead. With tokens: those leases go back now (a node
-- handing back what it will not start), without counting an attempt. Lease data that is
-- not "<score> <site> <entry>" or "start <url>" was not written by these scripts: it goes
-- to dead as it is, and its token is returned. Returns {returned, dead, tokens of
-- unreadable data}.
local leases, leased, attempts, dead_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local start_urls, sites, queued, version, ready = KEYS[5], KEYS[6], KEYS[7], KEYS[8], KEYS[9]
local prefix, max_attempts, limit = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local releasing = #ARGV > 3

local tokens = {}
if releasing then
  for i = 4, #ARGV do tokens[#tokens + 1] = ARGV[i] end
else
  tokens = redis.call('ZRANGEBYSCORE', leases, '-inf', now, 'LIMIT', 0, limit)
end
local returned, dead, bad, requeued = 0, 0, {}, 0
for _, token in ipairs(tokens) do
  local data = redis.call('HGET', leased, token)
  local removed = redis.call('ZREM', leases, token)
  if data then
    redis.call('HDEL', leased, token)
    local score, site, entry = string.match(data, '^(%S+) (%S+) (%d+ .*)$')
    local number = tonumber(score)
    if string.sub(data, 1, 6) == 'start ' then
      redis.call('RPUSH', start_urls, string.sub(data, 7))
      returned = returned + 1
    elseif not number or number ~= number then
      redis.call('RPUSH', dead_key, data)
      bad[#bad + 1] = token
    else
      local seq = string.match(entry, '^(%d+) ')
      local n = 0
      if not releasing then
        if not tonumber(redis.call('HGET', attempts, seq) or '0') then
          redis.call('HDEL', attempts, seq)
        end
        n = redis.call('HINCRBY', attempts, seq, 1)
      end
      if n > max_attempts then
        redis.call('RPUSH', dead_key, entry)
        redis.call('HDEL', attempts, seq)
        dead = dead + 1
      else
        redis.call('ZADD', prefix .. 'q:' .. site, number, entry)
        queue_site(sites, ready, site)
        requeued = requeued + 1
        returned = returned + 1
      end
    end
  end
end
if requeued > 0 then redis.call('INCRBY', queued, requeued) end
if #tokens > 0 then redis.call('INCR', version) end
return {returned, dead, bad}
