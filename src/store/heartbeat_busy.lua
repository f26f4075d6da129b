-- The heartbeat while a horse runs (§7.4): worker hash, execution hash, `rq:wip:Q` score,
-- `rq:executions:J` and the job's `last_heartbeat`.
--
-- KEYS: worker, execution hash, wip registry, executions zset, job. ARGV: working seconds,
-- now (ISO), now (Unix float), TTL, wip member, execution id, wip score, executions score.
-- An execution or job hash that is gone (settled or deleted meanwhile) is not recreated.
local ttl = tonumber(ARGV[4])
redis.call('HSET', KEYS[1], 'current_job_working_time', ARGV[1], 'last_heartbeat', ARGV[2])
redis.call('EXPIRE', KEYS[1], ttl)
if redis.call('EXISTS', KEYS[2]) == 1 then
  redis.call('HSET', KEYS[2], 'last_heartbeat', ARGV[3])
  redis.call('EXPIRE', KEYS[2], ttl)
end
redis.call('ZADD', KEYS[3], 'XX', ARGV[7], ARGV[5])
redis.call('ZADD', KEYS[4], 'XX', ARGV[8], ARGV[6])
redis.call('EXPIRE', KEYS[4], ttl + 60)
if redis.call('EXISTS', KEYS[5]) == 1 then
  redis.call('HSET', KEYS[5], 'last_heartbeat', ARGV[2])
end
return 1
