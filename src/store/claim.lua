-- Pops the first job id from the queues in priority order and records it as started by this
-- worker in the same step, as RQ's §7.2 and §7.3 would in two transactions. When there is
-- nothing to take it records the worker `idle` (or `suspended`), so the worker never spends a
-- round trip of its own on state changes.
--
-- Safe to repeat with the same execution id: when the reply to a claim is lost, the worker
-- sends it again with that id, and if the first call did take a job (it is this worker's
-- `current_job` and `J:E` is in one of the queues' `rq:wip`), the same job is returned.
--
-- ARGV (built by `ClaimRequest::command` in claim.rs, in this order):
--   1 worker name   2 execution id
--   3 now (ISO)   4 now (Unix float)   5 now (Unix int)
--   6 job monitoring interval   7 the worker's idle TTL
--   8 `1` when this execution id was sent before and its reply lost
--   9 `1` when the job runs in the worker process (no fork: RQ's SimpleWorker rule for the
--     heartbeat TTL, since no heartbeat can be sent while it runs)
--   10 the heartbeat grace: seconds every TTL adds (RQ's 60; less for a short worker_ttl)
--   11... the queue names in priority order
-- Returns `{queue, job id, HGETALL of the job, dropped ids, broken queues}`,
-- `{false, false, {}, dropped, broken}` when every queue is empty, or
-- `{false, 'suspended', {}, {}, {}}` while `rq suspend` is in force (checked here so it
-- costs no extra round trip). Ids whose job hash is gone (or is not a hash) are dropped, as
-- RQ drops them, and reported so the worker can log them; queues whose key cannot be popped
-- (e.g. WRONGTYPE) are skipped and reported.
local worker, eid, iso, fnow = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local inow, interval, idle_ttl = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local in_process = ARGV[9] == '1'
local grace = tonumber(ARGV[10])
local FIRST_QUEUE = 11
local wkey = KEY_WORKER .. worker
-- Between back-to-back jobs the worker stays `busy`; it turns idle only when a claim finds
-- nothing, and only then is its record written.
local function rest(state)
  if redis.call('HGET', wkey, 'state') ~= state then
    redis.call('HSET', wkey, 'state', state, 'current_job_working_time', '0')
    redis.call('HDEL', wkey, 'current_job')
    redis.call('EXPIRE', wkey, idle_ttl)
  end
end
-- A retry after a lost reply (the connection broke or timed out after Redis ran the script):
-- this execution id already took a job, so hand the same job back instead of taking another
-- and leaving the first one started with nobody running it. Only asked for on a retry, so a
-- normal claim costs nothing more.
if ARGV[8] == '1' then
  local current = redis.call('HGET', wkey, 'current_job')
  if current then
    for i = FIRST_QUEUE, #ARGV do
      local member = current .. ':' .. eid
      local wip = KEY_WIP .. ARGV[i]
      if redis.call('ZSCORE', wip, member) then
        local jkey = KEY_JOB .. current
        if redis.call('EXISTS', jkey) == 1 then
          redis.call('HSET', wkey, 'state', 'busy', 'last_heartbeat', iso)
          return {ARGV[i], current, redis.call('HGETALL', jkey), {}, {}}
        end
        -- Deleted meanwhile: nothing to run.
        redis.call('ZREM', wip, member)
        redis.call('DEL', key_execution(current, eid))
        redis.call('HDEL', wkey, 'current_job')
      end
    end
  end
end
if redis.call('EXISTS', KEY_SUSPENDED) == 1 then
  rest('suspended')
  return {false, 'suspended', {}, {}, {}}
end
-- Out of memory (maxmemory with noeviction), Redis refuses a script's first write that may
-- grow memory, but lets every later one through (it cannot stop a script halfway). LPOP
-- frees memory, so it would pass and make the rest pass too: the job would start while
-- Redis refuses to record how it ends. This no-op (SET ... XX on a key that never exists)
-- is such a write: out of memory, it refuses the whole claim and the job stays queued;
-- on a read-only replica it fails the same way before anything is popped.
redis.call('SET', KEY_CLAIM_WRITE_CHECK, '', 'XX')
local dropped, broken = {}, {}
for i = FIRST_QUEUE, #ARGV do
  local q = ARGV[i]
  while true do
    -- A queue key of the wrong type must not stop the other queues from being served.
    local id = redis.pcall('LPOP', KEY_QUEUE .. q)
    if type(id) == 'table' and id.err then
      -- Only a key of the wrong type is this queue's problem. Anything else (NOPERM,
      -- READONLY...) is the server refusing us: fail the claim with its words so the
      -- worker reports it with the right fix (nothing was taken yet).
      if not string.find(id.err, 'WRONGTYPE', 1, true) then
        return redis.error_reply(id.err .. ' (LPOP ' .. KEY_QUEUE .. q .. ')')
      end
      table.insert(broken, q .. ': ' .. id.err)
      break
    end
    if not id then break end
    local jkey = KEY_JOB .. id
    local job = redis.pcall('HGETALL', jkey)
    if type(job) == 'table' and not job.err and #job > 0 then
      -- RQ's heartbeat TTL: min(timeout, interval) + 60 (the grace), where a missing
      -- timeout is 180 and -1 means no limit. In the worker process (SimpleWorker) the
      -- whole timeout is covered at once, and a job without a limit gets the worker's TTL.
      local timeout, job_ttl = nil, nil
      for k = 1, #job, 2 do
        if job[k] == 'timeout' then timeout = tonumber(job[k + 1])
        elseif job[k] == 'ttl' then job_ttl = job[k + 1] end
      end
      if not timeout or timeout == 0 then timeout = 180 end
      local ttl = interval + grace
      if in_process then
        ttl = idle_ttl
        if timeout > 0 then ttl = math.floor(timeout) + grace end
      elseif timeout > 0 and timeout < interval then
        ttl = math.floor(timeout) + grace
      end
      local ekey = key_execution(id, eid)
      redis.call('HSET', ekey, 'id', eid, 'created_at', fnow, 'last_heartbeat', fnow,
        'worker_name', worker)
      redis.call('EXPIRE', ekey, ttl)
      redis.call('ZADD', KEY_EXECUTIONS .. id, inow + ttl + 60, eid)
      redis.call('EXPIRE', KEY_EXECUTIONS .. id, ttl + 60)
      redis.call('ZADD', KEY_WIP .. q, inow + ttl, id .. ':' .. eid)
      redis.call('HSET', wkey, 'state', 'busy', 'current_job', id,
        'current_job_working_time', '0', 'last_heartbeat', iso)
      redis.call('EXPIRE', wkey, ttl)
      redis.call('HSET', jkey, 'status', 'started', 'started_at', iso, 'last_heartbeat', iso,
        'worker_name', worker)
      -- The queued-job TTL no longer applies once the job runs (RQ persists the key).
      if job_ttl and job_ttl ~= '' then redis.call('PERSIST', jkey) end
      return {q, id, job, dropped, broken}
    end
    table.insert(dropped, q .. ':' .. id)
  end
end
rest('idle')
return {false, false, {}, dropped, broken}
