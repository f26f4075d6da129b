//! Lua scripts for the two state changes that must be atomic: taking a job (pop + mark
//! started) and settling one (terminal state, result entry, registries, retry). Doing each in
//! one script means a job is never only in a client's memory, and each costs one round trip.

use std::sync::LazyLock;

use redis::Script;

/// Prepends a permission check to a script: every command the script calls is checked with
/// `redis.acl_check_cmd` (Redis 7+) before anything is written, and a missing one fails the
/// script with `NOPERM ... the 'xadd' command ...`. Without it, a Redis ACL user lacking one
/// permission would see the script stop halfway (scripts are not rolled back on error),
/// leaving a job half-settled, and Redis's own message would not say which command was
/// refused. Each command is checked with seven `rq:acl-check` arguments: enough for every
/// command's arity, because Redis (before the fix of redis/redis#14843) reads past the
/// arguments it is given when they are fewer than the command needs and the user has key
/// patterns (a crash, seen with 7.0.15); every argument is a key under `rq:`, so commands
/// that take many keys pass the documented `~rq:*` too.
pub fn guarded(name: &str, src: &str) -> String {
    let mut commands: Vec<String> = Vec::new();
    for marker in ["redis.call('", "redis.pcall('"] {
        let mut rest = src;
        while let Some(i) = rest.find(marker) {
            rest = &rest[i + marker.len()..];
            let cmd: String = rest.chars().take_while(|c| *c != '\'').collect();
            commands.push(cmd.to_ascii_uppercase());
        }
    }
    commands.sort();
    commands.dedup();
    let list: Vec<String> = commands.iter().map(|c| format!("'{c}'")).collect();
    format!(
        "if redis.acl_check_cmd then\n  local k = 'rq:acl-check'\n  for _, c in ipairs({{{}}}) do\n    if not redis.acl_check_cmd(c, k, k, k, k, k, k, k) then\n      return redis.error_reply(\"NOPERM this user has no permissions to run the '\" .. string.lower(c) .. \"' command (checked by rqworker's {name} script before writing anything)\")\n    end\n  end\nend\n{src}",
        list.join(", ")
    )
}

/// Pops the first job id from the queues in priority order and records it as started by this
/// worker in the same step, as RQ's §7.2 and §7.3 would in two transactions. When there is
/// nothing to take it records the worker `idle` (or `suspended`), so the worker never spends a
/// round trip of its own on state changes.
///
/// Safe to repeat with the same execution id: when the reply to a claim is lost, the worker
/// sends it again with that id, and if the first call did take a job (it is this worker's
/// `current_job` and `J:E` is in one of the queues' `rq:wip`), the same job is returned.
///
/// ARGV: worker name, execution id, now (ISO), now (Unix float), now (Unix int),
/// job monitoring interval, the worker's idle TTL, `1` when this execution id was sent before
/// and its reply lost, then the queue names in priority order.
/// Returns `{queue, job id, HGETALL of the job, dropped ids, broken queues}`,
/// `{false, false, {}, dropped, broken}` when every queue is empty, or
/// `{false, 'suspended', {}, {}, {}}` while `rq suspend` is in force (checked here so it
/// costs no extra round trip). Ids whose job hash is gone (or is not a hash) are dropped, as
/// RQ drops them, and reported so the worker can log them; queues whose key cannot be popped
/// (e.g. WRONGTYPE) are skipped and reported.
pub static CLAIM: LazyLock<Script> = LazyLock::new(|| Script::new(&guarded("claim", CLAIM_LUA)));

const CLAIM_LUA: &str = r#"
local worker, eid, iso, fnow = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local inow, interval, idle_ttl = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local wkey = 'rq:worker:' .. worker
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
    for i = 9, #ARGV do
      local member = current .. ':' .. eid
      local wip = 'rq:wip:' .. ARGV[i]
      if redis.call('ZSCORE', wip, member) then
        local jkey = 'rq:job:' .. current
        if redis.call('EXISTS', jkey) == 1 then
          redis.call('HSET', wkey, 'state', 'busy', 'last_heartbeat', iso)
          return {ARGV[i], current, redis.call('HGETALL', jkey), {}, {}}
        end
        -- Deleted meanwhile: nothing to run.
        redis.call('ZREM', wip, member)
        redis.call('DEL', 'rq:execution:' .. current .. ':' .. eid)
        redis.call('HDEL', wkey, 'current_job')
      end
    end
  end
end
if redis.call('EXISTS', 'rq:suspended') == 1 then
  rest('suspended')
  return {false, 'suspended', {}, {}, {}}
end
-- Out of memory (maxmemory with noeviction), Redis refuses a script's first write that may
-- grow memory, but lets every later one through (it cannot stop a script halfway). LPOP
-- frees memory, so it would pass and make the rest pass too: the job would start while
-- Redis refuses to record how it ends. This no-op (SET ... XX on a key that never exists)
-- is such a write: out of memory, it refuses the whole claim and the job stays queued;
-- on a read-only replica it fails the same way before anything is popped.
redis.call('SET', 'rq:claim-write-check', '', 'XX')
local dropped, broken = {}, {}
for i = 9, #ARGV do
  local q = ARGV[i]
  while true do
    -- A queue key of the wrong type must not stop the other queues from being served.
    local id = redis.pcall('LPOP', 'rq:queue:' .. q)
    if type(id) == 'table' and id.err then
      -- Only a key of the wrong type is this queue's problem. Anything else (NOPERM,
      -- READONLY...) is the server refusing us: fail the claim with its words so the
      -- worker reports it with the right fix (nothing was taken yet).
      if not string.find(id.err, 'WRONGTYPE', 1, true) then
        return redis.error_reply(id.err .. ' (LPOP rq:queue:' .. q .. ')')
      end
      table.insert(broken, q .. ': ' .. id.err)
      break
    end
    if not id then break end
    local jkey = 'rq:job:' .. id
    local job = redis.pcall('HGETALL', jkey)
    if type(job) == 'table' and not job.err and #job > 0 then
      -- RQ's heartbeat TTL: min(timeout, interval) + 60, where a missing timeout is 180
      -- and -1 means no limit.
      local timeout, job_ttl = nil, nil
      for k = 1, #job, 2 do
        if job[k] == 'timeout' then timeout = tonumber(job[k + 1])
        elseif job[k] == 'ttl' then job_ttl = job[k + 1] end
      end
      if not timeout or timeout == 0 then timeout = 180 end
      local ttl = interval + 60
      if timeout > 0 and timeout < interval then ttl = math.floor(timeout) + 60 end
      local ekey = 'rq:execution:' .. id .. ':' .. eid
      redis.call('HSET', ekey, 'id', eid, 'created_at', fnow, 'last_heartbeat', fnow,
        'worker_name', worker)
      redis.call('EXPIRE', ekey, ttl)
      redis.call('ZADD', 'rq:executions:' .. id, inow + ttl + 60, eid)
      redis.call('EXPIRE', 'rq:executions:' .. id, ttl + 60)
      redis.call('ZADD', 'rq:wip:' .. q, inow + ttl, id .. ':' .. eid)
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
"#;

/// Records how an execution ended (§7.5, §7.6, §7.7, §7.11, §8.3): result entry, registries,
/// TTLs, retries, dependents, and the worker's counters, in one step.
///
/// ARGV: job id, queue, execution id (empty: find the one this worker ran in `rq:wip:Q`),
/// worker name (empty for
/// registry cleanup, which RQ attributes to no worker),
/// outcome (`finished`, `failed` or `stopped`), now (ISO), now (Unix float), now (Unix int),
/// execution start (Unix float), working seconds, the worker's default result TTL,
/// payload (base64 return value, empty for None; or base64 zlib exc_string),
/// `1` when the worker is alive and its counters are to be updated (empty: the worker is dead
/// and its record must not be touched), `1` if a failure may be retried.
///
/// Returns what happened: `finished`, `repeated`, `failed`, `stopped`, `requeued`, `scheduled`,
/// `gone` when the job hash no longer exists, or `unknown` when the execution is not (or no
/// longer) in `rq:wip:Q`, which makes the script safe to repeat.
pub static SETTLE: LazyLock<Script> = LazyLock::new(|| Script::new(&guarded("settle", SETTLE_LUA)));

const SETTLE_LUA: &str = r#"
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
local jkey = 'rq:job:' .. id
local wkey = 'rq:worker:' .. worker
local wip = 'rq:wip:' .. q

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
      local owner = redis.call('HGET', 'rq:execution:' .. id .. ':' .. e, 'worker_name')
      if owner == worker or (not owner and last_worker == worker) then eid = e end
    end
  end
end
-- Settling twice (a retry after a lost reply) or after someone else settled the execution
-- (abandoned-job cleanup) must change nothing: leaving rq:wip is the claim on the ending.
if eid == '' or redis.call('ZREM', wip, id .. ':' .. eid) == 0 then return 'unknown' end
redis.call('DEL', 'rq:execution:' .. id .. ':' .. eid)
redis.call('ZREM', 'rq:executions:' .. id, eid)

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
  'dependency_ids')
-- Every RQ job has a status; without one the hash is gone (deleted or expired meanwhile).
if not job[1] then return 'gone' end
local dependents_key = 'rq:job:' .. id .. ':dependents'
local has_dependents = false
local has_dependencies = job[9] and job[9] ~= '' and job[9] ~= '[]'

local function apply_ttl(ttl)
  if ttl == 0 then
    redis.call('DEL', jkey, dependents_key, 'rq:job::' .. id .. ':dependencies',
      'rq:executions:' .. id)
  elseif ttl > 0 then
    redis.call('EXPIRE', jkey, ttl)
    if has_dependents then redis.call('EXPIRE', dependents_key, ttl) end
    if has_dependencies then redis.call('EXPIRE', 'rq:job::' .. id .. ':dependencies', ttl) end
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
  redis.call('XADD', 'rq:results:' .. id, 'MAXLEN', '~', '10', '*', unpack(entry))
end

-- RQ's enqueue_dependents (§7.11): children whose dependencies are all met leave
-- rq:deferred and join their queue. `parent` is this job's terminal status.
local function enqueue_dependents(parent)
  local children = redis.call('SMEMBERS', dependents_key)
  if #children == 0 then return end
  local enqueued = {}
  for _, child in ipairs(children) do
    local ckey = 'rq:job:' .. child
    local c = redis.call('HMGET', ckey, 'status', 'origin', 'allow_dependency_failures',
      'enqueue_at_front', 'ttl')
    local allow = c[3] == '1'
    local ready = c[1] and c[1] ~= 'canceled' and (parent == 'finished' or allow)
    if ready then
      for _, dep in ipairs(redis.call('SMEMBERS', 'rq:job::' .. child .. ':dependencies')) do
        if dep ~= id then
          local s = redis.call('HGET', 'rq:job:' .. dep, 'status')
          if s and not (s == 'finished' or (allow and s == 'failed')) then
            ready = false
            break
          end
        end
      end
    end
    if ready then
      local origin = c[2]
      redis.call('ZREM', 'rq:deferred:' .. origin, child)
      redis.call('HSET', ckey, 'status', 'queued', 'enqueued_at', iso)
      local ttl = tonumber(c[5])
      if ttl and ttl > 0 then
        redis.call('EXPIRE', ckey, ttl)
        redis.call('EXPIRE', ckey .. ':dependents', ttl)
        redis.call('EXPIRE', 'rq:job::' .. child .. ':dependencies', ttl)
      end
      if c[4] == '1' then
        redis.call('LPUSH', 'rq:queue:' .. origin, child)
      else
        redis.call('RPUSH', 'rq:queue:' .. origin, child)
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
    local rkey = 'rq:results:' .. id
    if ttl < 0 then
      redis.call('PERSIST', rkey)
      redis.call('ZADD', 'rq:finished:' .. q, '+inf', id)
    else
      redis.call('EXPIRE', rkey, ttl)
      redis.call('ZADD', 'rq:finished:' .. q, inow + ttl, id)
    end
  end
  -- Repeat (RQ 2.x): run the job again now or after its interval, instead of expiring it.
  if repeats and repeats > 0 then
    local list = intervals(job[8])
    local interval = 0
    if #list > 0 then interval = tonumber(list[math.min(repeats, #list)]) or 0 end
    if interval > 0 then
      set_ended('scheduled', 'repeats_left', repeats - 1)
      redis.call('ZADD', 'rq:scheduled:' .. q, inow + interval, id)
    else
      set_ended('queued', 'repeats_left', repeats - 1, 'enqueued_at', iso)
      redis.call('RPUSH', 'rq:queue:' .. q, id)
    end
    return 'repeated'
  end
  set_ended('finished')
  apply_ttl(ttl)
  return 'finished'
end

local retries_left = tonumber(job[4]) or 0
if outcome == 'failed' and allow_retry and retries_left > 0 then
  local list = intervals(job[5])
  local interval = 0
  if #list > 0 then
    local index = math.max(#list - retries_left, 0)
    interval = tonumber(list[math.min(index, #list - 1) + 1]) or 0
  end
  redis.call('SADD', 'rq:queues', 'rq:queue:' .. q)
  if interval > 0 then
    set_ended('scheduled', 'retries_left', retries_left - 1)
    redis.call('ZADD', 'rq:scheduled:' .. q, inow + interval, id)
    return 'scheduled'
  end
  set_ended('queued', 'retries_left', retries_left - 1, 'enqueued_at', iso)
  if job[6] == '1' then
    redis.call('LPUSH', 'rq:queue:' .. q, id)
  else
    redis.call('RPUSH', 'rq:queue:' .. q, id)
  end
  return 'requeued'
end

-- A terminal failure: FailedJobRegistry.add and Result.create_failure.
local failure_ttl = sane_ttl(job[3])
local ttl = failure_ttl or 31536000
set_ended(outcome)
if outcome == 'failed' then enqueue_dependents('failed') end
if ttl < 0 then
  redis.call('ZADD', 'rq:failed:' .. q, ttl, id)
else
  redis.call('ZADD', 'rq:failed:' .. q, inow + ttl, id)
end
add_result('2', 'exc_string')
if failure_ttl then
  if failure_ttl == -1 then
    redis.call('PERSIST', 'rq:results:' .. id)
  else
    redis.call('EXPIRE', 'rq:results:' .. id, failure_ttl)
  end
end
apply_ttl(ttl)
return outcome
"#;

/// Birth registration (§5), refusing a name a live worker holds, atomically so two workers
/// started with the same name cannot both pass the check.
///
/// KEYS[1]: the worker key. ARGV: TTL, `1` to re-register over our own record (after Redis
/// lost it), number of hash fields N, N field/value pairs, then the queue names. Returns 1
/// when registered, 0 when the name is taken.
pub static BIRTH: LazyLock<Script> = LazyLock::new(|| Script::new(&guarded("birth", BIRTH_LUA)));

const BIRTH_LUA: &str = r#"
local key = KEYS[1]
if ARGV[2] ~= '1' and redis.call('EXISTS', key) == 1 and redis.call('HEXISTS', key, 'death') == 0 then
  return 0
end
local n = tonumber(ARGV[3])
local fields = {}
for i = 4, 3 + 2 * n do table.insert(fields, ARGV[i]) end
redis.call('DEL', key)
redis.call('HSET', key, unpack(fields))
redis.call('SADD', 'rq:workers', key)
for i = 4 + 2 * n, #ARGV do
  redis.call('SADD', 'rq:workers:' .. ARGV[i], key)
end
redis.call('EXPIRE', key, tonumber(ARGV[1]))
return 1
"#;

/// One scheduler tick (§9): for each queue, acquire or refresh the scheduler lock with RQ
/// 2.12's value (the scheduler name) and TTL, and move the due jobs of the queues it owns
/// from `rq:scheduled:Q` to their queue; then heartbeat the scheduler hash.
///
/// ARGV: scheduler name, now (Unix int), now (ISO), hostname, pid, then queue names.
/// Returns `{number of jobs moved, owned queue names...}`.
pub static SCHEDULER_TICK: LazyLock<Script> =
    LazyLock::new(|| Script::new(&guarded("scheduler_tick", SCHEDULER_TICK_LUA)));

const SCHEDULER_TICK_LUA: &str = r#"
local name, now, iso, host, pid = ARGV[1], tonumber(ARGV[2]), ARGV[3], ARGV[4], ARGV[5]
local moved, owned = 0, {}
for i = 6, #ARGV do
  local q = ARGV[i]
  local lock = 'rq:scheduler-lock:' .. q
  local holder = redis.call('GET', lock)
  if holder == name then
    redis.call('EXPIRE', lock, 61)
  elseif not holder then
    redis.call('SET', lock, name, 'EX', 61)
    holder = name
  end
  if holder == name then
    table.insert(owned, q)
    local reg = 'rq:scheduled:' .. q
    for _, id in ipairs(redis.call('ZRANGEBYSCORE', reg, 0, now, 'LIMIT', 0, 1000)) do
      local jkey = 'rq:job:' .. id
      if redis.call('EXISTS', jkey) == 1 then
        local j = redis.call('HMGET', jkey, 'enqueue_at_front', 'enqueue_at_front_on_retry', 'ended_at')
        redis.call('HSET', jkey, 'status', 'queued', 'enqueued_at', iso, 'origin', q)
        local ended = j[3] and j[3] ~= ''
        if j[1] == '1' or (j[2] == '1' and ended) then
          redis.call('LPUSH', 'rq:queue:' .. q, id)
        else
          redis.call('RPUSH', 'rq:queue:' .. q, id)
        end
        moved = moved + 1
      end
      redis.call('ZREM', reg, id)
    end
  end
end
if #owned > 0 then
  local key = 'rq:scheduler:' .. name
  if redis.call('EXISTS', key) == 0 then
    redis.call('HSET', key, 'name', name, 'hostname', host, 'pid', pid, 'created_at', iso)
  end
  redis.call('HSET', key, 'queues', table.concat(owned, ','), 'last_heartbeat', iso)
  redis.call('EXPIRE', key, 61)
end
table.insert(owned, 1, moved)
return owned
"#;

/// Releases this scheduler's locks (compare-and-delete) and its hash, so another scheduler
/// takes over at once instead of after the lock TTL. ARGV: scheduler name, queue names.
pub static SCHEDULER_RELEASE: LazyLock<Script> =
    LazyLock::new(|| Script::new(&guarded("scheduler_release", SCHEDULER_RELEASE_LUA)));

const SCHEDULER_RELEASE_LUA: &str = r#"
for i = 2, #ARGV do
  local lock = 'rq:scheduler-lock:' .. ARGV[i]
  if redis.call('GET', lock) == ARGV[1] then redis.call('DEL', lock) end
end
redis.call('DEL', 'rq:scheduler:' .. ARGV[1])
return 1
"#;

/// Puts ids that have sat in RQ's intermediate list for over a minute without being
/// started back at the front of their queue (§7.15), atomically per id.
/// KEYS: intermediate list, queue. ARGV: job id.
pub static REQUEUE_STUCK: LazyLock<Script> =
    LazyLock::new(|| Script::new(&guarded("requeue_stuck", REQUEUE_STUCK_LUA)));

const REQUEUE_STUCK_LUA: &str = r#"
if redis.call('LREM', KEYS[1], 1, ARGV[1]) == 1 then
  redis.call('LPUSH', KEYS[2], ARGV[1])
  return 1
end
return 0
"#;

// The scripts below replace pipelines. redis-rs waits its read timeout once per reply, so a
// pipeline of N commands (a MULTI/EXEC of N has N + 2 replies) blocks N times 5 s while Redis
// is stalled; one script is one reply, and a stall costs one timeout.

/// The idle heartbeat (§5). KEYS: the worker key. ARGV: now (ISO), TTL. Returns 1 while the
/// worker's registration exists (its `birth` field), 0 when it was lost.
pub static HEARTBEAT_IDLE: LazyLock<Script> = LazyLock::new(|| Script::new(HEARTBEAT_IDLE_LUA));

const HEARTBEAT_IDLE_LUA: &str = r#"
local registered = redis.call('HEXISTS', KEYS[1], 'birth')
redis.call('HSET', KEYS[1], 'last_heartbeat', ARGV[1])
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[2]))
return registered
"#;

/// The heartbeat while a horse runs (§7.4): worker hash, execution hash, `rq:wip:Q` score,
/// `rq:executions:J` and the job's `last_heartbeat`.
///
/// KEYS: worker, execution hash, wip registry, executions zset, job. ARGV: working seconds,
/// now (ISO), now (Unix float), TTL, wip member, execution id, wip score, executions score.
/// An execution or job hash that is gone (settled or deleted meanwhile) is not recreated.
pub static HEARTBEAT_BUSY: LazyLock<Script> = LazyLock::new(|| Script::new(HEARTBEAT_BUSY_LUA));

const HEARTBEAT_BUSY_LUA: &str = r#"
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
"#;

/// Death registration (§5): out of `rq:workers` and each queue's worker set, `death` written,
/// the hash kept for its TTL.
///
/// KEYS: the worker key, `rq:workers`, then `rq:workers:Q` for each queue. ARGV: now (ISO),
/// TTL, and `dead` when rq-supervisor records a worker that died without doing it itself:
/// then `current_job` is dropped (its job was settled) and a record that no longer exists is
/// not recreated. Returns 1 when the hash was marked.
pub static DEATH: LazyLock<Script> = LazyLock::new(|| Script::new(DEATH_LUA));

const DEATH_LUA: &str = r#"
for i = 2, #KEYS do redis.call('SREM', KEYS[i], KEYS[1]) end
if ARGV[3] == 'dead' then
  if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
  redis.call('HDEL', KEYS[1], 'current_job')
end
redis.call('HSET', KEYS[1], 'death', ARGV[1])
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[2]))
return 1
"#;

/// What rq-supervisor's health check reads about its workers, read-only. KEYS: the worker
/// keys. Returns, per worker, `{last_heartbeat, state, current_job, and that job's status,
/// started_at, timeout}` (nil where missing).
pub static REGISTRATIONS: LazyLock<Script> = LazyLock::new(|| Script::new(REGISTRATIONS_LUA));

const REGISTRATIONS_LUA: &str = r#"
local out = {}
for i = 1, #KEYS do
  local w = redis.call('HMGET', KEYS[i], 'last_heartbeat', 'state', 'current_job')
  local j = {false, false, false}
  if w[3] and w[3] ~= '' then
    j = redis.call('HMGET', 'rq:job:' .. w[3], 'status', 'started_at', 'timeout')
  end
  out[i] = {w[1], w[2], w[3], j[1], j[2], j[3]}
end
return out
"#;

/// Drops members of a queue's worker set (and of `rq:workers`) whose hash has expired.
/// KEYS: `rq:workers:Q`, `rq:workers`. Returns how many were dropped.
pub static PRUNE_WORKERS: LazyLock<Script> = LazyLock::new(|| Script::new(PRUNE_WORKERS_LUA));

const PRUNE_WORKERS_LUA: &str = r#"
local n = 0
for _, member in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  if redis.call('EXISTS', member) == 0 then
    redis.call('SREM', KEYS[1], member)
    redis.call('SREM', KEYS[2], member)
    n = n + 1
  end
end
return n
"#;
