-- Prelude: `now`, Redis's clock in milliseconds (every deadline uses it, never a node's).
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
