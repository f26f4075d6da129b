-- One scheduler tick (§9): for each queue, acquire or refresh the scheduler lock with RQ
-- 2.12's value (the scheduler name) and TTL, and move the due jobs of the queues it owns
-- from `rq:scheduled:Q` to their queue; then heartbeat the scheduler hash.
--
-- ARGV: scheduler name, now (Unix int), now (ISO), hostname, pid, then queue names.
-- Returns `{number of jobs moved, owned queue names...}`.
local name, now, iso, host, pid = ARGV[1], tonumber(ARGV[2]), ARGV[3], ARGV[4], ARGV[5]
local moved, owned = 0, {}
for i = 6, #ARGV do
  local q = ARGV[i]
  local lock = KEY_SCHEDULER_LOCK .. q
  local holder = redis.call('GET', lock)
  if holder == name then
    redis.call('EXPIRE', lock, 61)
  elseif not holder then
    redis.call('SET', lock, name, 'EX', 61)
    holder = name
  end
  if holder == name then
    table.insert(owned, q)
    local reg = KEY_SCHEDULED .. q
    for _, id in ipairs(redis.call('ZRANGEBYSCORE', reg, 0, now, 'LIMIT', 0, 1000)) do
      local jkey = KEY_JOB .. id
      if redis.call('EXISTS', jkey) == 1 then
        local j = redis.call('HMGET', jkey, 'enqueue_at_front', 'enqueue_at_front_on_retry', 'ended_at')
        redis.call('HSET', jkey, 'status', 'queued', 'enqueued_at', iso, 'origin', q)
        local ended = j[3] and j[3] ~= ''
        if j[1] == '1' or (j[2] == '1' and ended) then
          redis.call('LPUSH', KEY_QUEUE .. q, id)
        else
          redis.call('RPUSH', KEY_QUEUE .. q, id)
        end
        moved = moved + 1
      end
      redis.call('ZREM', reg, id)
    end
  end
end
if #owned > 0 then
  local key = KEY_SCHEDULER .. name
  if redis.call('EXISTS', key) == 0 then
    redis.call('HSET', key, 'name', name, 'hostname', host, 'pid', pid, 'created_at', iso)
  end
  redis.call('HSET', key, 'queues', table.concat(owned, ','), 'last_heartbeat', iso)
  redis.call('EXPIRE', key, 61)
end
table.insert(owned, 1, moved)
return owned
