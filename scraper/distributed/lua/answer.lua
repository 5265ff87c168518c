-- Prelude: a batch's answer, kept a day under the batch's own key. A node whose call
-- reached Redis but whose answer was lost (an outage, a restart) sends the same batch
-- under the same key again and gets the same answer, instead of being told that the
-- requests its first call added were seen before.
local function kept_answer(key)
  local kept = redis.call('GET', key)
  if kept then return cjson.decode(kept) end
  return nil
end
local function keep_answer(key, answer)
  redis.call('SET', key, cjson.encode(answer), 'EX', 86400)
  return answer
end
