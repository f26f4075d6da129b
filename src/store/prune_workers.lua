-- Drops members of a queue's worker set (and of `rq:workers`) whose hash has expired.
-- KEYS: `rq:workers:Q`, `rq:workers`. Returns how many were dropped.
local n = 0
for _, member in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  if redis.call('EXISTS', member) == 0 then
    redis.call('SREM', KEYS[1], member)
    redis.call('SREM', KEYS[2], member)
    n = n + 1
  end
end
return n
