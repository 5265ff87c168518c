-- Push the deadlines of leases still held. ARGV: lease_ms, then tokens.
-- Returns the tokens no longer leased (they expired and another node reclaimed them).
local leases = KEYS[1]
local lease_ms = tonumber(ARGV[1])

local lost = {}
for i = 2, #ARGV do
  local token = ARGV[i]
  if redis.call('ZSCORE', leases, token) then
    redis.call('ZADD', leases, 'XX', now + lease_ms, token)
  else
    lost[#lost + 1] = token
  end
end
return lost
