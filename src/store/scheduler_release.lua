-- Releases this scheduler's locks (compare-and-delete) and its hash, so another scheduler
-- takes over at once instead of after the lock TTL. ARGV: scheduler name, queue names.
for i = 2, #ARGV do
  local lock = KEY_SCHEDULER_LOCK .. ARGV[i]
  if redis.call('GET', lock) == ARGV[1] then redis.call('DEL', lock) end
end
redis.call('DEL', KEY_SCHEDULER .. ARGV[1])
return 1
