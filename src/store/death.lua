-- Death registration (§5): out of `rq:workers` and each queue's worker set, `death` written,
-- the hash kept for its TTL.
--
-- KEYS: the worker key, `rq:workers`, then `rq:workers:Q` for each queue. ARGV: now (ISO),
-- TTL, and `dead` when rq-supervisor records a worker that died without doing it itself:
-- then `current_job` is dropped (its job was settled) and a record that no longer exists is
-- not recreated. Returns 1 when the hash was marked.
for i = 2, #KEYS do redis.call('SREM', KEYS[i], KEYS[1]) end
if ARGV[3] == 'dead' then
  if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
  redis.call('HDEL', KEYS[1], 'current_job')
end
redis.call('HSET', KEYS[1], 'death', ARGV[1])
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[2]))
return 1
