-- What rq-supervisor reads every tick, read-only, in one round trip: each queue's length and
-- the enqueue time of the job at its head (the next to run, the one that has waited
-- longest), and each worker's state, current job and job counters. KEYS: the queue keys,
-- then the worker keys; ARGV[1]: how many queue keys come first.
local nq = tonumber(ARGV[1])
local out = {}
for i = 1, #KEYS do
  if i <= nq then
    local len = redis.call('LLEN', KEYS[i])
    local at = false
    if len > 0 then
      -- LRANGE rather than LINDEX: the workers' minimum ACL rules already grant it.
      local head = redis.call('LRANGE', KEYS[i], 0, 0)[1]
      if head then
        at = redis.call('HGET', KEY_JOB .. head, 'enqueued_at')
      end
    end
    out[i] = {len, at}
  else
    out[i] = redis.call('HMGET', KEYS[i], 'state', 'current_job', 'successful_job_count',
      'failed_job_count')
  end
end
return out
