-- Birth registration (§5), refusing a name a live worker holds, atomically so two workers
-- started with the same name cannot both pass the check.
--
-- KEYS[1]: the worker key. ARGV: TTL, `1` to re-register over our own record (after Redis
-- lost it), number of hash fields N, N field/value pairs, then the queue names. Returns 1
-- when registered, 0 when the name is taken.
local key = KEYS[1]
if ARGV[2] ~= '1' and redis.call('EXISTS', key) == 1 and redis.call('HEXISTS', key, 'death') == 0 then
  return 0
end
local n = tonumber(ARGV[3])
local fields = {}
for i = 4, 3 + 2 * n do table.insert(fields, ARGV[i]) end
redis.call('DEL', key)
redis.call('HSET', key, unpack(fields))
redis.call('SADD', KEY_WORKERS, key)
for i = 4 + 2 * n, #ARGV do
  redis.call('SADD', KEY_WORKERS_OF .. ARGV[i], key)
end
redis.call('EXPIRE', key, tonumber(ARGV[1]))
return 1
