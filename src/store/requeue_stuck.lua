-- Puts ids that have sat in RQ's intermediate list for over a minute without being
-- started back at the front of their queue (§7.15), atomically per id.
-- KEYS: intermediate list, queue. ARGV: job id.
if redis.call('LREM', KEYS[1], 1, ARGV[1]) == 1 then
  redis.call('LPUSH', KEYS[2], ARGV[1])
  return 1
end
return 0
