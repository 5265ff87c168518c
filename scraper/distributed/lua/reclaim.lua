-- Put leases back. ARGV: max_attempts, limit, then (to release) tokens.
-- Without tokens: every lease past its deadline goes back, counting an attempt; an entry
-- past max_attempts goes to dead instead. With tokens: those leases go back now (a node
-- handing back what it will not start), without counting an attempt. Lease data that is
-- not "<score> <entry>" or "start <url>" was not written by these scripts: it goes to dead
-- as it is, and its token is returned. Returns {returned, dead, tokens of unreadable data}.
local leases, leased, requests, attempts = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local dead_key, start_urls = KEYS[5], KEYS[6]
local max_attempts, limit = tonumber(ARGV[1]), tonumber(ARGV[2])
local releasing = #ARGV > 2

local tokens = {}
if releasing then
  for i = 3, #ARGV do tokens[#tokens + 1] = ARGV[i] end
else
  tokens = redis.call('ZRANGEBYSCORE', leases, '-inf', now, 'LIMIT', 0, limit)
end
local returned, dead, bad = 0, 0, {}
for _, token in ipairs(tokens) do
  local data = redis.call('HGET', leased, token)
  redis.call('ZREM', leases, token)
  if data then
    redis.call('HDEL', leased, token)
    local score, entry = string.match(data, '^(%S+) (.*)$')
    local number = tonumber(score)
    if score == 'start' then
      redis.call('RPUSH', start_urls, entry)
      returned = returned + 1
    elseif not number or number ~= number then
      redis.call('RPUSH', dead_key, data)
      bad[#bad + 1] = token
    else
      local seq = string.match(entry, '^(%d+) ')
      local n = 0
      if not releasing and seq then
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
        redis.call('ZADD', requests, number, entry)
        returned = returned + 1
      end
    end
  end
end
return {returned, dead, bad}
