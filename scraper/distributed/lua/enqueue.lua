-- Queue the requests not seen before, each in its site's queue. ARGV: prefix, then
-- quadruples of dedup key, priority, request JSON, site. A queue entry is
-- "<seq> <request JSON>" scored -priority * 1e12 + seq (FIFO within a priority); a site
-- with queued requests is in `sites`, scored by when it may be leased from next (its
-- `ready` time: 0 unless paced or told to wait). Returns the positions (from 0) of the
-- quadruples already seen; the same again for a batch sent again (answer.lua).
local sites, dupefilter, seq_key = KEYS[1], KEYS[2], KEYS[3]
local bloom, bloom_count, queued, version, ready = KEYS[4], KEYS[5], KEYS[6], KEYS[7], KEYS[8]
local batch = KEYS[9]
local prefix = ARGV[1]

local answered = kept_answer(batch)
if answered then return answered end

local seen, added, queued_sites = {}, 0, {}
for i = 2, #ARGV, 4 do
  local dedup_key, priority, request, site = ARGV[i], tonumber(ARGV[i + 1]), ARGV[i + 2],
    ARGV[i + 3]
  if is_new(dedup_key, dupefilter, bloom, bloom_count) then
    local seq = redis.call('INCR', seq_key)
    redis.call('ZADD', prefix .. 'q:' .. site, -priority * 1e12 + seq, seq .. ' ' .. request)
    if not queued_sites[site] then queue_site(sites, ready, site); queued_sites[site] = true end
    added = added + 1
  else
    seen[#seen + 1] = (i - 2) / 4
  end
end
if added > 0 then
  redis.call('INCRBY', queued, added)
  redis.call('INCR', version)
end
return keep_answer(batch, seen)
