-- Gives a claimed job back, unchanged, because the worker could not start it for a reason of
-- its own (a process or file limit, a missing program, an interpreter that cannot start):
-- out of `rq:wip:Q` and its execution records, its hash as it was before the claim (status
-- `queued`), back at the front of its queue, and the worker idle again, in one step. No
-- result entry, no retry counted, no failure counted: the job did not run.
--
-- ARGV (built by `Store::unclaim` in unclaim.rs, in this order):
--   1 job id   2 queue   3 execution id   4 worker name
--   5 the job's `started_at`, 6 `last_heartbeat`, 7 `worker_name` before the claim
--   8 the job's `ttl` (empty: none), which the claim had lifted
--
-- Returns `requeued`, or `unknown` when the execution is not (or no longer) in `rq:wip:Q`
-- (someone settled it meanwhile), which makes the script safe to repeat.
local id, q, eid, worker = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local jkey = KEY_JOB .. id
if redis.call('ZREM', KEY_WIP .. q, id .. ':' .. eid) == 0 then return 'unknown' end
redis.call('DEL', key_execution(id, eid))
redis.call('ZREM', KEY_EXECUTIONS .. id, eid)
if redis.call('EXISTS', jkey) == 1 then
  redis.call('HSET', jkey, 'status', 'queued', 'started_at', ARGV[5], 'last_heartbeat', ARGV[6],
    'worker_name', ARGV[7])
  local ttl = tonumber(ARGV[8])
  if ttl and ttl > 0 then redis.call('EXPIRE', jkey, ttl) end
  redis.call('LPUSH', KEY_QUEUE .. q, id)
end
local wkey = KEY_WORKER .. worker
if redis.call('HGET', wkey, 'current_job') == id then
  redis.call('HDEL', wkey, 'current_job')
  redis.call('HSET', wkey, 'state', 'idle', 'current_job_working_time', '0')
end
return 'requeued'
