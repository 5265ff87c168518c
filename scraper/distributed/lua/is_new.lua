-- Prelude: is_new(key, ...), the dedup check and record in one step. A key is a
-- fingerprint (SADD to the set), '' for dont_filter, or '#p1,p2,...' Bloom filter bit
-- positions: new if any bit was 0 (and the Bloom count goes up).
local function is_new(key, set_key, bloom_key, bloom_count)
  if key == '' then return true end
  if string.byte(key, 1) == 35 then  -- '#'
    local new = false
    for pos in string.gmatch(key, '%d+') do
      if redis.call('SETBIT', bloom_key, pos, 1) == 0 then new = true end
    end
    if new then redis.call('INCR', bloom_count) end
    return new
  end
  return redis.call('SADD', set_key, key) == 1
end
