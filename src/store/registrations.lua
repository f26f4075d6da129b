-- What rq-supervisor's health check reads about its workers, read-only. KEYS: the worker
-- keys. Returns, per worker, `{last_heartbeat, state, current_job, and that job's status,
-- started_at, timeout}` (nil where missing).
local out = {}
for i = 1, #KEYS do
  local w = redis.call('HMGET', KEYS[i], 'last_heartbeat', 'state', 'current_job')
  local j = {false, false, false}
  if w[3] and w[3] ~= '' then
    j = redis.call('HMGET', KEY_JOB .. w[3], 'status', 'started_at', 'timeout')
  end
  out[i] = {w[1], w[2], w[3], j[1], j[2], j[3]}
end
return out
