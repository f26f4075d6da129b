-- Records how an execution ended (§7.5, §7.6, §7.7, §7.11, §8.3): result entry, registries,
-- TTLs, retries, dependents, and the worker's counters, in one step.
--
-- ARGV (built by `Settlement::command` in settle.rs, in this order):
--   1 job id
--   2 queue
--   3 execution id (empty: find the one this worker ran in `rq:wip:Q`, for crash cleanup)
--   4 worker name (empty for registry cleanup, which RQ attributes to no worker)
--   5 outcome: `finished`, `failed` or `stopped`
--   6 now (ISO)   7 now (Unix float)   8 now (Unix int)
--   9 execution start (Unix float)   10 working seconds
--  11 the worker's default result TTL
--  12 payload: base64 return value (empty for None), or base64 zlib exc_string
--  13 `1` when the worker is alive and its counters are to be updated (empty: the worker is
--     dead and its record must not be touched)
--  14 `1` if a failure may be retried
--  15 for `retried` (the job returned RQ's `Retry`): its max and intervals, `max i1 i2 ...`
--
-- Outcomes besides those: `failed-unrecorded` is a failure under RQ's
-- --disable-default-exception-handler (status failed, retries honoured, but no
-- failed-registry entry and no result); `retried` records RQ 2.x's returned-`Retry` path
-- (result type 4 and a new run, or type 5 once `number_of_retries` reaches the max).
--
-- Returns what happened: `finished`, `repeated`, `failed`, `stopped`, `requeued`, `scheduled`,
-- `gone` when the job hash no longer exists, or `unknown` when the execution is not (or no
-- longer) in `rq:wip:Q`, which makes the script safe to repeat.
local id, q, eid, worker, outcome = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local iso, fnow, inow = ARGV[6], ARGV[7], tonumber(ARGV[8])
local started, working = ARGV[9], ARGV[10]
-- TTLs come from the job hash, i.e. from any producer: EXPIRE needs an integer Redis can
-- add to the clock, so anything else would make every attempt to record the outcome fail.
-- Whole seconds, at most 100 years.
local function sane_ttl(v)
  v = tonumber(v)
  if not v or v ~= v then return nil end
  v = math.floor(v)
  if v > 3153600000 then v = 3153600000 end
  return v
end
local default_result_ttl = sane_ttl(ARGV[11]) or 500
local payload, alive, allow_retry = ARGV[12], ARGV[13] ~= '', ARGV[14] == '1'
local record_failure = outcome ~= 'failed-unrecorded'
if not record_failure then outcome = 'failed' end
local jkey = KEY_JOB .. id
local wkey = KEY_WORKER .. worker
local wip = KEY_WIP .. q

if eid == '' then
  -- Crash cleanup: settle only the execution the dead worker ran. Another execution of the
  -- same job (it was requeued meanwhile, e.g. by RQ's abandoned-job cleanup during a long
  -- outage, and another worker took it) belongs to a live worker and must not be touched.
  -- The execution hash names its worker; once it has expired (the wip score has too), the
  -- job's own worker_name tells whose the last execution was.
  local prefix = id .. ':'
  local last_worker = redis.call('HGET', jkey, 'worker_name')
  for _, member in ipairs(redis.call('ZRANGE', wip, 0, -1)) do
    if string.sub(member, 1, #prefix) == prefix then
      local e = string.sub(member, #prefix + 1)
      local owner = redis.call('HGET', key_execution(id, e), 'worker_name')
      if owner == worker or (not owner and last_worker == worker) then eid = e end
    end
  end
end
-- Settling twice (a retry after a lost reply) or after someone else settled the execution
-- (abandoned-job cleanup) must change nothing: leaving rq:wip is the claim on the ending.
if eid == '' or redis.call('ZREM', wip, id .. ':' .. eid) == 0 then return 'unknown' end
redis.call('DEL', key_execution(id, eid))
redis.call('ZREM', KEY_EXECUTIONS .. id, eid)

if alive then
  if outcome == 'finished' then
    redis.call('HINCRBY', wkey, 'successful_job_count', 1)
  else
    redis.call('HINCRBY', wkey, 'failed_job_count', 1)
  end
  redis.call('HINCRBYFLOAT', wkey, 'total_working_time', working)
end

local job = redis.call('HMGET', jkey, 'status', 'result_ttl', 'failure_ttl', 'retries_left',
  'retry_intervals', 'enqueue_at_front_on_retry', 'repeats_left', 'repeat_intervals',
  'dependency_ids', 'number_of_retries')
-- Every RQ job has a status; without one the hash is gone (deleted or expired meanwhile).
if not job[1] then return 'gone' end
local dependents_key = key_dependents(id)
local has_dependents = false
local has_dependencies = job[9] and job[9] ~= '' and job[9] ~= '[]'

local function apply_ttl(ttl)
  if ttl == 0 then
    redis.call('DEL', jkey, dependents_key, key_dependencies(id),
      KEY_EXECUTIONS .. id)
  elseif ttl > 0 then
    redis.call('EXPIRE', jkey, ttl)
    if has_dependents then redis.call('EXPIRE', dependents_key, ttl) end
    if has_dependencies then redis.call('EXPIRE', key_dependencies(id), ttl) end
  end
end

local function add_result(kind, field)
  local entry = {'type', kind, 'worker_name', worker}
  if payload ~= '' then
    table.insert(entry, field)
    table.insert(entry, payload)
  end
  for _, v in ipairs({'execution_id', eid, 'execution_started_at', started,
                      'execution_ended_at', fnow}) do
    table.insert(entry, v)
  end
  redis.call('XADD', KEY_RESULTS .. id, 'MAXLEN', '~', '10', '*', unpack(entry))
end

-- A failure's result entry lives as long as the job's failure_ttl (none: the stream's own).
local function keep_result_for(failure_ttl)
  if failure_ttl == -1 then
    redis.call('PERSIST', KEY_RESULTS .. id)
  elseif failure_ttl then
    redis.call('EXPIRE', KEY_RESULTS .. id, failure_ttl)
  end
end

-- RQ's enqueue_dependents (§7.11): children whose dependencies are all met leave
-- rq:deferred and join their queue. `parent` is this job's terminal status.
local function enqueue_dependents(parent)
  local children = redis.call('SMEMBERS', dependents_key)
  if #children == 0 then return end
  local enqueued = {}
  for _, child in ipairs(children) do
    local ckey = KEY_JOB .. child
    local c = redis.call('HMGET', ckey, 'status', 'origin', 'allow_dependency_failures',
      'enqueue_at_front', 'ttl')
    local allow = c[3] == '1'
    local ready = c[1] and c[1] ~= 'canceled' and (parent == 'finished' or allow)
    if ready then
      for _, dep in ipairs(redis.call('SMEMBERS', key_dependencies(child))) do
        if dep ~= id then
          local s = redis.call('HGET', KEY_JOB .. dep, 'status')
          if s and not (s == 'finished' or (allow and s == 'failed')) then
            ready = false
            break
          end
        end
      end
    end
    if ready then
      local origin = c[2]
      redis.call('ZREM', KEY_DEFERRED .. origin, child)
      redis.call('HSET', ckey, 'status', 'queued', 'enqueued_at', iso)
      local ttl = tonumber(c[5])
      if ttl and ttl > 0 then
        redis.call('EXPIRE', ckey, ttl)
        redis.call('EXPIRE', ckey .. ':dependents', ttl)
        redis.call('EXPIRE', key_dependencies(child), ttl)
      end
      if c[4] == '1' then
        redis.call('LPUSH', KEY_QUEUE .. origin, child)
      else
        redis.call('RPUSH', KEY_QUEUE .. origin, child)
      end
      table.insert(enqueued, child)
    end
  end
  if #enqueued == #children then
    redis.call('DEL', dependents_key)
  else
    has_dependents = true
    if #enqueued > 0 then redis.call('SREM', dependents_key, unpack(enqueued)) end
  end
end

local function set_ended(status, ...)
  if worker ~= '' then
    redis.call('HSET', jkey, 'status', status, 'ended_at', iso, 'last_heartbeat', iso,
      'worker_name', worker, ...)
  else
    redis.call('HSET', jkey, 'status', status, 'ended_at', iso, 'last_heartbeat', iso, ...)
  end
end

local function intervals(json)
  local ok, list = pcall(cjson.decode, json or '[]')
  if ok and type(list) == 'table' then return list end
  return {}
end

if outcome == 'finished' then
  local ttl = sane_ttl(job[2]) or default_result_ttl
  enqueue_dependents('finished')
  local repeats = tonumber(job[7])
  if ttl ~= 0 then
    add_result('1', 'return_value')
    local rkey = KEY_RESULTS .. id
    if ttl < 0 then
      redis.call('PERSIST', rkey)
      redis.call('ZADD', KEY_FINISHED .. q, '+inf', id)
    else
      redis.call('EXPIRE', rkey, ttl)
      redis.call('ZADD', KEY_FINISHED .. q, inow + ttl, id)
    end
  end
  -- Repeat (RQ 2.x): run the job again now or after its interval, instead of expiring it.
  if repeats and repeats > 0 then
    local list = intervals(job[8])
    local interval = 0
    if #list > 0 then interval = tonumber(list[math.min(repeats, #list)]) or 0 end
    if interval > 0 then
      set_ended('scheduled', 'repeats_left', repeats - 1)
      redis.call('ZADD', KEY_SCHEDULED .. q, inow + interval, id)
    else
      set_ended('queued', 'repeats_left', repeats - 1, 'enqueued_at', iso)
      redis.call('RPUSH', KEY_QUEUE .. q, id)
    end
    return 'repeated'
  end
  set_ended('finished')
  apply_ttl(ttl)
  return 'finished'
end

-- The job returned a Retry (RQ 2.x Job._handle_retry_result): a RETRIED result (type 4), then
-- queued again or scheduled after its interval, counting number_of_retries; once that count
-- has reached the Retry's max, a terminal failure with a MAX_RETRIES_EXCEEDED result (type 5).
if outcome == 'retried' then
  local spec = {}
  for n in string.gmatch(ARGV[15] or '', '%S+') do table.insert(spec, tonumber(n) or 0) end
  local max = spec[1] or 1
  local done = tonumber(job[10]) or 0
  local failure_ttl = sane_ttl(job[3])
  local function result_ttl(kind)
    add_result(kind, 'return_value')
    keep_result_for(failure_ttl)
  end
  if done > 0 and done >= max then
    local ttl = failure_ttl or 31536000
    set_ended('failed')
    redis.call('ZADD', KEY_FAILED .. q, ttl < 0 and ttl or inow + ttl, id)
    result_ttl('5')
    enqueue_dependents('failed')
    apply_ttl(ttl)
    return 'failed'
  end
  result_ttl('4')
  local interval = 0
  if #spec > 1 then interval = spec[math.min(#spec - 1, done + 1) + 1] or 0 end
  if interval > 0 then
    set_ended('scheduled', 'number_of_retries', done + 1)
    redis.call('ZADD', KEY_SCHEDULED .. q, inow + interval, id)
    return 'scheduled'
  end
  set_ended('queued', 'number_of_retries', done + 1, 'enqueued_at', iso)
  redis.call('RPUSH', KEY_QUEUE .. q, id)
  return 'requeued'
end

local retries_left = tonumber(job[4]) or 0
if outcome == 'failed' and allow_retry and retries_left > 0 then
  local list = intervals(job[5])
  local interval = 0
  if #list > 0 then
    local index = math.max(#list - retries_left, 0)
    interval = tonumber(list[math.min(index, #list - 1) + 1]) or 0
  end
  redis.call('SADD', KEY_QUEUES, KEY_QUEUE .. q)
  if interval > 0 then
    set_ended('scheduled', 'retries_left', retries_left - 1)
    redis.call('ZADD', KEY_SCHEDULED .. q, inow + interval, id)
    return 'scheduled'
  end
  set_ended('queued', 'retries_left', retries_left - 1, 'enqueued_at', iso)
  if job[6] == '1' then
    redis.call('LPUSH', KEY_QUEUE .. q, id)
  else
    redis.call('RPUSH', KEY_QUEUE .. q, id)
  end
  return 'requeued'
end

-- A terminal failure: FailedJobRegistry.add and Result.create_failure.
local failure_ttl = sane_ttl(job[3])
local ttl = failure_ttl or 31536000
set_ended(outcome)
if outcome == 'failed' then enqueue_dependents('failed') end
-- RQ's --disable-default-exception-handler skips exactly this record of the failure.
if not record_failure then return 'failed' end
if ttl < 0 then
  redis.call('ZADD', KEY_FAILED .. q, ttl, id)
else
  redis.call('ZADD', KEY_FAILED .. q, inow + ttl, id)
end
add_result('2', 'exc_string')
keep_result_for(failure_ttl)
apply_ttl(ttl)
return outcome
