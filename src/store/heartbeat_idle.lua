-- The idle heartbeat (§5). KEYS: the worker key. ARGV: now (ISO), TTL. Returns 1 while the
-- worker's registration exists (its `birth` field), 0 when it was lost.
local registered = redis.call('HEXISTS', KEYS[1], 'birth')
redis.call('HSET', KEYS[1], 'last_heartbeat', ARGV[1])
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[2]))
return registered
