#!lua name=gloomd_1
--[[
The rules of gloomd, run inside Redis: one Redis function per step.

Every step that must be atomic across daemons is one function call (FCALL):
Redis runs it alone, so no other daemon sees a half-made change, and a step
either happened whole or not at all.  Functions rather than EVAL scripts:
the library is loaded once per server (FUNCTION LOAD), persists in the AOF
and the RDB file, reaches replicas, and its helpers are compiled once instead
of on every call.

Calling convention: KEYS[1] is the cluster's sequence key (so that a Redis
Cluster routes the call to the slot of the hash tag every key of a cluster
shares); ARGV[1] is the key prefix P (`{NAME}:`), ARGV[2] the calling
daemon's id D; the rest is the step's own.  Each function returns an array
whose first element says what happened; framed replies for the requester
follow (4-byte big-endian length, then JSON: the daemon writes them as they
are).  Frames for peers other than the requester go to their daemon's inbox
(the list P in:D), in the order of the steps that made them.

Keys (P = `{NAME}:`; ik = a job id's key: `s` + string or `i` + digits;
tk = a type's key: `s` + string or `j` + canonical JSON):
  seq              counter: acceptance numbers, ready order, idle order
  j:ik             hash: one job (fields below)
  l:ik             set: masters attached to the job besides its submitter
  dp:ik            set: jobs waiting (`after`) on this one
  q:tk             zset, score 0: queued jobs in dispatch order (member
                   pe .. hex16(q) .. ik: priority first, then ready order)
  dl:tk wt:tk rn:tk  zsets, score 0: delayed, waiting, running jobs
                   (member hex16(n) .. ik: listing order)
  dead:tk          zset, score 0: dead jobs, oldest first (hex16(dq) .. ik)
  idle:tk          zset: idle slaves D:s, score = when they became idle
  ty:tk            hash: tj (type JSON), slaves, submitted, completed, failed
  types            zset: every type seen (score: first seen), for stats
  paused           set: paused types
  delayed          zset: delayed jobs by the time they become ready (ms)
  timeouts         zset: running jobs with a timeout, by deadline (ms)
  deadall          zset: dead jobs of every type, oldest first (max-dead)
  res / resx       hash ik -> #tk:tk .. framed final frame; zset expiry
  outok / outno    zsets: jobs done / failed (for `after`), scored by expiry
  nq               counter: jobs queued, delayed or waiting (queue cap)
  tot              hash: cluster totals
  cfg              hash: cluster-wide settings (set by each daemon at start)
  leases           zset: daemon id -> lease expiry (ms)
  dm:D             hash: a live daemon (started, masters, slaves)
  sl:D             hash: slave s -> epoch:tk (the type it joined)
  held:D           hash: slave s -> ik (the job it holds, maybe an orphan)
  mj:D:m           set: jobs master m of daemon D hears about
  ms:D             set: masters of D with an mj set
  gm:D             set: masters of D that left, while master_gone works in chunks
  in:D             list: D's inbox

Job fields: id (id JSON), t (tk), tj (type JSON), b (body JSON), pe
(priority, order-preserving text), pj (priority JSON), s (state: W waiting,
D delayed, Q queued, R running, X dead), n (acceptance number), q (ready
seq), at (deliveries so far), ls (slave losses), rt/rl/rk (retries asked,
left, used), bo (back-off ms), to (timeout JSON), dl (deadline ms), dt
(detached: 1), ho (holder D:s while running), w (jobs in `after` not yet
done), ra (ready at, ms), ac (accepted, ms), dq (dead order), ff (final
frame of a dead job), lm (the submitter, D:m; '' once it left), lx (1 when
l:ik may hold more masters), hd (1 when dp:ik may hold dependents), tok (the submit's
token, for withdraw).

Clock: Redis' own (TIME), in milliseconds: one clock for every daemon.
--]]

local P, D, NOW = '', '', 0
local OUT = {}
local CFG = nil
local ARMED = {}
local ARM_OFF = false
local OK_FRAME = nil  -- `{"ok":true}`, framed by `begin`: no `struct` while the library loads

local function int(x) return string.format('%d', x) end
local function framed(s) return struct.pack('>I4', #s) .. s end

local function begin(args)
  P = args[1]
  D = args[2]
  OUT = {}
  CFG = nil
  ARMED = {}
  ARM_OFF = false
  if not OK_FRAME then OK_FRAME = framed('{"ok":true}') end
  local t = redis.call('TIME')
  NOW = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- Inbox messages are gathered per daemon and pushed once at the end.
local function push(d, msg)
  local list = OUT[d]
  if not list then
    list = {}
    OUT[d] = list
  end
  list[#list + 1] = msg
end

local function flush()
  for d, msgs in pairs(OUT) do
    local key = P .. 'in:' .. d
    for i = 1, #msgs, 1000 do
      redis.call('RPUSH', key, unpack(msgs, i, math.min(i + 999, #msgs)))
    end
  end
  OUT = {}
end

local function fenced()
  return redis.call('EXISTS', P .. 'dm:' .. D) == 0
end

local function cfg(name)
  if not CFG then
    local v = redis.call('HMGET', P .. 'cfg', 'max_retries', 'result_ttl', 'max_results',
      'max_dead', 'max_queued')
    CFG = {
      max_retries = tonumber(v[1]) or 3,
      result_ttl = tonumber(v[2]) or 3600000,
      max_results = tonumber(v[3]) or 100000,
      max_dead = tonumber(v[4]) or 100000,
      max_queued = tonumber(v[5]) or 1000000,
    }
  end
  return CFG[name]
end

-- A new deadline earlier than every other of its kind: the calling daemon
-- is told to tick by then (a `t` message in its own inbox).
local function arm(zkey, when)
  if ARM_OFF then return end
  local head = redis.call('ZRANGE', zkey, 0, 0, 'WITHSCORES')
  if (head[2] == nil or tonumber(head[2]) > when) and not ARMED[zkey] then
    ARMED[zkey] = true
    push(D, 't' .. int(math.max(0, when - NOW)))
  end
end

local function split(peer)
  local i = string.find(peer, ':', 1, true)
  return string.sub(peer, 1, i - 1), string.sub(peer, i + 1)
end

local function hex(n) return string.format('%016x', n) end

-- ---------------------------------------------------------------- frames


local function f_ack(idj) return framed('{"ok":true,"id":' .. idj .. '}') end

local function f_attached(idj)
  return framed('{"ok":true,"id":' .. idj .. ',"attached":true}')
end

local function f_error(name, reasonj)
  return framed('{"error":"' .. name .. '","reason":' .. reasonj .. '}')
end

-- `at`: the job's attempt, or nil when its submit had no `retries` (and it
-- was never kicked): its failure frames then carry no `attempt`, as Gloom's.
local function f_failed(idj, cat, at, depj)
  local s = '{"error":"job_failed","reason":' .. idj .. ',"id":' .. idj .. ',"category":"'
    .. cat .. '"'
  if depj then s = s .. ',"dependency":' .. depj end
  if at then s = s .. ',"attempt":' .. at end
  return framed(s .. '}')
end

local function f_jerror(idj, cat, reasonj, at)
  local s = '{"error":"job_error","reason":' .. reasonj .. ',"id":' .. idj
    .. ',"category":"' .. cat .. '"'
  if at then s = s .. ',"attempt":' .. at end
  return framed(s .. '}')
end

-- The `attempt` of a job's failure frames (see f_failed): rt is '' when its
-- submit had no `retries`.
local function att(j)
  if j.rt == '' then return nil end
  return j.at
end

local function f_result(idj, bodyj) return framed('{"id":' .. idj .. ',"body":' .. bodyj .. '}') end

local function f_progress(idj, bodyj)
  return framed('{"id":' .. idj .. ',"progress":' .. bodyj .. '}')
end

local STATE_NAMES = {W = 'waiting', D = 'delayed', Q = 'queued', R = 'running', X = 'dead'}

-- ---------------------------------------------------------------- jobs

local function JK(ik) return P .. 'j:' .. ik end

local JF = {'id', 't', 'tj', 'pe', 's', 'n', 'q', 'at', 'ls', 'rt', 'rl', 'rk', 'bo', 'to',
  'dt', 'ho', 'w', 'ra', 'ac', 'dq', 'lm', 'lx', 'pj', 'hd'}

local function getjob(ik)
  local v = redis.call('HMGET', JK(ik), unpack(JF))
  if not v[5] then return nil end
  local j = {}
  for i, f in ipairs(JF) do
    if v[i] then j[f] = v[i] end
  end
  return j
end

local function qmem(j, ik) return j.pe .. hex(tonumber(j.q)) .. ik end
local function nmem(j, ik) return hex(tonumber(j.n)) .. ik end

local function ik_of_q(member)
  -- See gloomd.cluster.keys.priority_key: sign, 8-digit length, digits.
  local len = tonumber(string.sub(member, 2, 9))
  if string.sub(member, 1, 1) == '0' then len = 99999999 - len end
  return string.sub(member, 26 + len)
end

-- Take a job out of the indexes of its state (its hash stays).
local function leave(ik, j)
  local s, tk = j.s, j.t
  if s == 'Q' then
    redis.call('ZREM', P .. 'q:' .. tk, qmem(j, ik))
    redis.call('DECR', P .. 'nq')
  elseif s == 'W' then
    redis.call('ZREM', P .. 'wt:' .. tk, nmem(j, ik))
    redis.call('DECR', P .. 'nq')
  elseif s == 'D' then
    redis.call('ZREM', P .. 'dl:' .. tk, nmem(j, ik))
    redis.call('ZREM', P .. 'delayed', ik)
    redis.call('DECR', P .. 'nq')
  elseif s == 'R' then
    redis.call('ZREM', P .. 'rn:' .. tk, nmem(j, ik))
    if j.to then redis.call('ZREM', P .. 'timeouts', ik) end
    -- The holder keeps `held` (it is still working): its late answer is
    -- acked and dropped, since the job is no longer R (or gone, or R
    -- again under another holder: a busy slave is never handed a job).
  elseif s == 'X' then
    redis.call('ZREM', P .. 'dead:' .. tk, hex(tonumber(j.dq)) .. ik)
    redis.call('ZREM', P .. 'deadall', ik)
  end
  j.s = nil
end

local function register_type(tk, tj)
  if redis.call('ZSCORE', P .. 'types', tk) == false then
    redis.call('ZADD', P .. 'types', redis.call('INCR', P .. 'seq'), tk)
    redis.call('HSET', P .. 'ty:' .. tk, 'tj', tj)
  end
end

local function is_paused(tk)
  return redis.call('SISMEMBER', P .. 'paused', tk) == 1
end

-- Hand job ik (out of every state index) to `slave` (D:s).  Returns the
-- job frame when the slave is `requester` (it goes in the reply), else
-- pushes it to the slave's daemon with the slave's join epoch.
local function assign(ik, j, slave, requester)
  local body = redis.call('HGET', JK(ik), 'b')
  local at = tonumber(j.at) + 1
  if j.to then
    local dl = NOW + tonumber(j.to) * 1000
    arm(P .. 'timeouts', dl)
    redis.call('ZADD', P .. 'timeouts', dl, ik)
    redis.call('HSET', JK(ik), 's', 'R', 'at', at, 'ho', slave, 'dl', dl)
  else
    redis.call('HSET', JK(ik), 's', 'R', 'at', at, 'ho', slave)
  end
  j.s, j.at, j.ho = 'R', int(at), slave
  redis.call('ZADD', P .. 'rn:' .. j.t, 0, nmem(j, ik))
  local d, s = split(slave)
  redis.call('HSET', P .. 'held:' .. d, s, ik)
  local frame = '{"action":"job","id":' .. j.id .. ',"type":' .. j.tj .. ',"body":' .. body
  if at > 1 then frame = frame .. ',"attempt":' .. int(at) end
  if j.to then frame = frame .. ',"timeout":' .. j.to end
  frame = framed(frame .. '}')
  if slave == requester then return frame end
  local joined = redis.call('HGET', P .. 'sl:' .. d, s) or '0:'
  local epoch = string.sub(joined, 1, string.find(joined, ':', 1, true) - 1)
  push(d, 'j' .. s .. ' ' .. epoch .. ' ' .. frame)
  return nil
end

-- The job (out of every state index) is ready: to the longest-idle slave of
-- its type, or into its queue.  `fresh`: it queues by this moment (a new
-- seq); else it keeps its place (a requeue after a loss or a re-join).
local function make_ready(ik, j, fresh, requester)
  if fresh then j.q = int(redis.call('INCR', P .. 'seq')) end
  if not is_paused(j.t) then
    local idle = redis.call('ZPOPMIN', P .. 'idle:' .. j.t)
    if idle[1] then return assign(ik, j, idle[1], requester) end
  end
  j.s = 'Q'
  redis.call('HSET', JK(ik), 's', 'Q', 'q', j.q)
  redis.call('ZADD', P .. 'q:' .. j.t, 0, qmem(j, ik))
  redis.call('INCR', P .. 'nq')
  return nil
end

-- Slave s of daemon d holds nothing now: the best queued job of its type,
-- or it waits, idle, behind every slave idle before it.
local function slave_ready(d, s, tk, requester)
  if not is_paused(tk) then
    local top = redis.call('ZPOPMIN', P .. 'q:' .. tk)
    if top[1] then
      redis.call('DECR', P .. 'nq')
      local ik = ik_of_q(top[1])
      local j = getjob(ik)
      return assign(ik, j, d .. ':' .. s, requester)
    end
  end
  redis.call('ZADD', P .. 'idle:' .. tk, redis.call('INCR', P .. 'seq'), d .. ':' .. s)
  return nil
end

local function set_delayed(ik, j, ready_at)
  j.s, j.ra = 'D', int(ready_at)
  redis.call('HSET', JK(ik), 's', 'D', 'ra', j.ra)
  redis.call('ZADD', P .. 'dl:' .. j.t, 0, nmem(j, ik))
  arm(P .. 'delayed', ready_at)
  redis.call('ZADD', P .. 'delayed', ready_at, ik)
  redis.call('INCR', P .. 'nq')
end

-- ---------------------------------------------------------------- stores

local function trim(zkey, hkey, cap)
  local over = redis.call('ZCARD', zkey) - cap
  if over > 0 then
    local gone = redis.call('ZPOPMIN', zkey, over)
    for i = 1, #gone, 2 do redis.call('HDEL', hkey, gone[i]) end
  end
end

-- Every job's outcome, for `after`: one ZADD per job (the zset of its kind,
-- scored by expiry); expiry and the cap are the tick's work, not the job's.
local function record_outcome(ik, ok)
  redis.call('ZADD', P .. (ok and 'outok' or 'outno'), NOW + cfg('result_ttl'), ik)
end

-- '1' (done), '0' (failed) or nil (unknown, or forgotten).
local function outcome(ik)
  if redis.call('ZSCORE', P .. 'outno', ik) then return '0' end
  if redis.call('ZSCORE', P .. 'outok', ik) then return '1' end
  return nil
end

-- Forget the oldest outcomes past --max-results (both kinds together).
local function trim_outcomes(cap, limit)
  local over = redis.call('ZCARD', P .. 'outok') + redis.call('ZCARD', P .. 'outno') - cap
  local n = 0
  while over > 0 and n < limit do
    local a = redis.call('ZRANGE', P .. 'outok', 0, 0, 'WITHSCORES')
    local b = redis.call('ZRANGE', P .. 'outno', 0, 0, 'WITHSCORES')
    if b[2] == nil or (a[2] ~= nil and tonumber(a[2]) <= tonumber(b[2])) then
      redis.call('ZREM', P .. 'outok', a[1])
    else
      redis.call('ZREM', P .. 'outno', b[1])
    end
    over, n = over - 1, n + 1
  end
  return over > 0
end

local function store_result(ik, tk, frame)
  local expires = NOW + cfg('result_ttl')
  redis.call('HSET', P .. 'res', ik, int(#tk) .. ':' .. tk .. frame)
  arm(P .. 'resx', expires)
  redis.call('ZADD', P .. 'resx', expires, ik)
  trim(P .. 'resx', P .. 'res', cfg('max_results'))
end

-- A stored result: its type key and its frame.
local function stored(ik)
  local v = redis.call('HGET', P .. 'res', ik)
  if not v then return nil end
  local colon = string.find(v, ':', 1, true)
  local len = tonumber(string.sub(v, 1, colon - 1))
  return string.sub(v, colon + 1, colon + len), string.sub(v, colon + len + 1)
end

-- ---------------------------------------------------------------- listeners

local function listeners(ik, j)
  local ls = {}
  if j.lm and j.lm ~= '' then ls[1] = j.lm end
  if j.lx then
    for _, l in ipairs(redis.call('SMEMBERS', P .. 'l:' .. ik)) do ls[#ls + 1] = l end
  end
  return ls
end

-- Master m of daemon d has left, and master_gone is still working through
-- its jobs (in chunks): it hears nothing more (its daemon would drop it).
local function gone(d, m)
  return redis.call('SISMEMBER', P .. 'gm:' .. d, m) == 1
end

local function notify(ik, j, frame)
  for _, l in ipairs(listeners(ik, j)) do
    local d, m = split(l)
    if not gone(d, m) then push(d, 'm' .. m .. ' ' .. frame) end
  end
end

-- Tell every master of the job `frame` (all but `except`), and forget them.
local function tell_and_release(ik, j, frame, except)
  for _, l in ipairs(listeners(ik, j)) do
    redis.call('SREM', P .. 'mj:' .. l, ik)
    if frame and l ~= except then
      local d, m = split(l)
      if not gone(d, m) then push(d, 'm' .. m .. ' ' .. frame) end
    end
  end
  if j.lx then redis.call('DEL', P .. 'l:' .. ik) end
  j.lm, j.lx = '', nil
end

-- ---------------------------------------------------------------- endings

-- Drop a job's record for good (dead letters past --max-dead, delete).
local function purge(ik)
  redis.call('DEL', JK(ik), P .. 'l:' .. ik)
end

local function die(ik, j, frame, dropped)
  local dq = redis.call('INCR', P .. 'seq')
  j.s, j.dq = 'X', int(dq)
  redis.call('HSET', JK(ik), 's', 'X', 'ff', frame, 'dq', j.dq, 'lm', '')
  redis.call('HDEL', JK(ik), 'lx')
  redis.call('ZADD', P .. 'dead:' .. j.t, 0, hex(dq) .. ik)
  redis.call('ZADD', P .. 'deadall', dq, ik)
  redis.call('HINCRBY', P .. 'tot', 'dead', 1)
  local over = redis.call('ZCARD', P .. 'deadall') - cfg('max_dead')
  if over > 0 then
    for _, old in ipairs(redis.call('ZRANGE', P .. 'deadall', 0, over - 1)) do
      local oj = getjob(old)
      if oj then
        leave(old, oj)
        purge(old)
        dropped[#dropped + 1] = old
      end
    end
  end
end

--[[ End job ik (j, in the indexes of its state) and everything that follows:
`frame` is what its masters hear (nil: nobody, its masters left), `kind` one
of ok, fail (a final failure: a detached job becomes dead), cancel, halt,
gone (no master left), delete.  Jobs waiting on it are released (ok) or
failed with DEPENDENCY, and so on down the chain (a work list, no recursion).
Returns the ids of dead letters dropped past --max-dead. ]]
local function end_job(ik, j, frame, kind, except)
  local dropped = {}
  local work = {{ik, j, frame, kind, except}}
  local i = 1
  while i <= #work do
    local w = work[i]
    i = i + 1
    local wik, wj, wframe, wkind = w[1], w[2], w[3], w[4]
    local ok = wkind == 'ok'
    leave(wik, wj)
    tell_and_release(wik, wj, wframe, w[5])
    if wj.dt == '1' and wkind == 'fail' then
      die(wik, wj, wframe, dropped)
    else
      if wj.dt == '1' and wframe and wkind ~= 'delete' then store_result(wik, wj.t, wframe) end
      purge(wik)
    end
    record_outcome(wik, ok)
    local dkey = P .. 'dp:' .. wik
    local deps = {}
    if wj.hd then deps = redis.call('SMEMBERS', dkey) end
    if #deps > 0 then
      redis.call('DEL', dkey)
      local released = {}
      for _, dik in ipairs(deps) do
        local dj = getjob(dik)
        if dj and dj.s == 'W' then
          if ok then
            local left = redis.call('HINCRBY', JK(dik), 'w', -1)
            if left <= 0 then released[#released + 1] = {dik, dj} end
          else
            work[#work + 1] = {dik, dj, f_failed(dj.id, 'DEPENDENCY', att(dj), wj.id), 'fail', nil}
            redis.call('HINCRBY', P .. 'tot', 'failed', 1)
            redis.call('HINCRBY', P .. 'ty:' .. dj.t, 'failed', 1)
          end
        end
      end
      -- Released together, they reach slaves in queue order.
      table.sort(released, function(a, b)
        if a[2].pe ~= b[2].pe then return a[2].pe < b[2].pe end
        return tonumber(a[2].n) < tonumber(b[2].n)
      end)
      for _, r in ipairs(released) do
        local rik, rj = r[1], r[2]
        leave(rik, rj)
        if rj.ra and tonumber(rj.ra) > NOW then
          set_delayed(rik, rj, tonumber(rj.ra))
        else
          make_ready(rik, rj, true, nil)
        end
      end
    end
  end
  return dropped
end

-- The job goes back to its queue keeping its place: a re-join, a loss.
local function requeue(ik, j)
  leave(ik, j)
  make_ready(ik, j, false, nil)
end

-- A retry after a failure: delayed by the back-off, attempt + 1 next time.
local function retry(ik, j)
  leave(ik, j)
  local k = tonumber(j.rk) + 1
  redis.call('HSET', JK(ik), 'rk', k, 'rl', tonumber(j.rl) - 1)
  j.rk, j.rl = int(k), int(tonumber(j.rl) - 1)
  local wait = math.min(tonumber(j.bo) * math.pow(2, k - 1), 3600000)
  set_delayed(ik, j, NOW + wait)
  redis.call('HINCRBY', P .. 'tot', 'retried', 1)
end

local function retries_left(j) return tonumber(j.rl or '0') > 0 end

-- The slave holding the job was lost: requeue it, or fail it (CRASH) past
-- --max-retries losses.  Returns dropped dead letters.
local function lose(ik, j)
  local losses = redis.call('HINCRBY', JK(ik), 'ls', 1)
  if losses > cfg('max_retries') then
    redis.call('HINCRBY', P .. 'tot', 'failed', 1)
    redis.call('HINCRBY', P .. 'ty:' .. j.t, 'failed', 1)
    return end_job(ik, j, f_failed(j.id, 'CRASH', att(j)), 'fail', nil)
  end
  redis.call('HINCRBY', P .. 'tot', 'requeued', 1)
  requeue(ik, j)
  return {}
end

-- Master `who` (D:m) no longer hears about job ik; a job nobody hears about
-- any more is withdrawn (Gloom's rule), unless it is detached.
local function drop_listener(ik, who, kind)
  local j = getjob(ik)
  if not j then return end
  if j.lm == who then
    redis.call('HSET', JK(ik), 'lm', '')
    j.lm = ''
  elseif j.lx then
    redis.call('SREM', P .. 'l:' .. ik, who)
  end
  if j.dt == '1' or j.s == 'X' then return end
  if j.lm ~= '' or (j.lx and redis.call('SCARD', P .. 'l:' .. ik) > 0) then return end
  if kind == 'halt' then
    -- Its daemon stopped: HALTED, a failure, as the embedded broker counts it.
    redis.call('HINCRBY', P .. 'tot', 'failed', 1)
    redis.call('HINCRBY', P .. 'ty:' .. j.t, 'failed', 1)
  else
    redis.call('HINCRBY', P .. 'tot', 'withdrawn', 1)
  end
  end_job(ik, j, nil, kind, nil)
end

-- Master m of daemon d is gone: at most `limit` of its jobs per call.
-- Returns true when some are left for another call.
local function master_gone(d, m, limit)
  local who = d .. ':' .. m
  local key = P .. 'mj:' .. who
  local iks = redis.call('SPOP', key, limit)
  for _, ik in ipairs(iks) do drop_listener(ik, who, 'gone') end
  if redis.call('EXISTS', key) == 1 then
    -- Other steps run before the next call: frames for this master's jobs
    -- meanwhile would only flood its daemon's inbox (see `gone`).
    redis.call('SADD', P .. 'gm:' .. d, m)
    return true
  end
  redis.call('SREM', P .. 'ms:' .. d, m)
  redis.call('SREM', P .. 'gm:' .. d, m)
  return false
end

local function is_master_of(ik, j, who)
  if j.lm == who then return true end
  return j.lx ~= nil and redis.call('SISMEMBER', P .. 'l:' .. ik, who) == 1
end

local function attach(ik, j, who, m)
  if is_master_of(ik, j, who) then return end
  redis.call('SADD', P .. 'l:' .. ik, who)
  redis.call('HSET', JK(ik), 'lx', '1')
  redis.call('SADD', P .. 'mj:' .. who, ik)
  redis.call('SADD', P .. 'ms:' .. D, m)
end

-- Daemon x's slaves leave their types (before any job of x goes back, so
-- that none goes to them).
local function slaves_leave(x)
  local joined = redis.call('HGETALL', P .. 'sl:' .. x)
  for i = 1, #joined, 2 do
    local v = joined[i + 1]
    local tk = string.sub(v, string.find(v, ':', 1, true) + 1)
    redis.call('ZREM', P .. 'idle:' .. tk, x .. ':' .. joined[i])
    redis.call('HINCRBY', P .. 'ty:' .. tk, 'slaves', -1)
  end
  redis.call('DEL', P .. 'sl:' .. x)
end

local function reply(list)
  flush()
  return list
end

local function dropped_reply(code, frames, dropped)
  local r = {code}
  for _, f in ipairs(frames) do r[#r + 1] = f end
  if #dropped > 0 then
    r[#r + 1] = 'dropped'
    for _, ik in ipairs(dropped) do r[#r + 1] = ik end
  end
  return reply(r)
end

-- ---------------------------------------------------------------- daemons

-- ARGV: lease ms, then settings as name/value pairs.
redis.register_function('gloomd_1_register', function(keys, args)
  begin(args)
  local lease = tonumber(args[3])
  redis.call('HSET', P .. 'dm:' .. D, 'started', NOW, 'masters', 0, 'slaves', 0)
  redis.call('ZADD', P .. 'leases', NOW + lease, D)
  if #args > 3 then redis.call('HSET', P .. 'cfg', unpack(args, 4)) end
  return reply({'ok', int(NOW)})
end)

-- ARGV: lease ms, masters, slaves.  Returns lapsed daemons (to reap).
redis.register_function('gloomd_1_renew', function(keys, args)
  begin(args)
  if fenced() then return {'fenced'} end
  redis.call('ZADD', P .. 'leases', NOW + tonumber(args[3]), D)
  redis.call('HSET', P .. 'dm:' .. D, 'masters', args[4], 'slaves', args[5])
  local r = {'ok'}
  for _, d in ipairs(redis.call('ZRANGEBYSCORE', P .. 'leases', '-inf', NOW, 'LIMIT', 0, 16)) do
    if d ~= D then r[#r + 1] = d end
  end
  return r
end)

--[[ ARGV: the daemon X whose lease lapsed.  Exactly once: the lease entry is
checked and removed in the same call, so of all the daemons that saw it
lapse, one reaps it and the others find nothing.  Its slaves' jobs are
requeued (one loss each, attempt + 1 at the next delivery), its masters'
attached jobs withdrawn. ]]
redis.register_function('gloomd_1_reap', function(keys, args)
  begin(args)
  local x = args[3]
  local lease = redis.call('ZSCORE', P .. 'leases', x)
  if not lease or tonumber(lease) > NOW then return {'none'} end
  redis.call('ZREM', P .. 'leases', x)
  local requeued, masters = 0, 0
  slaves_leave(x)
  local held = redis.call('HGETALL', P .. 'held:' .. x)
  for i = 1, #held, 2 do
    local ik = held[i + 1]
    local j = getjob(ik)
    if j and j.s == 'R' and j.ho == x .. ':' .. held[i] then
      lose(ik, j)
      requeued = requeued + 1
    end
  end
  for _, m in ipairs(redis.call('SMEMBERS', P .. 'ms:' .. x)) do
    while master_gone(x, m, 100000) do end
    masters = masters + 1
  end
  redis.call('DEL', P .. 'held:' .. x, P .. 'sl:' .. x, P .. 'ms:' .. x, P .. 'in:' .. x,
    P .. 'dm:' .. x, P .. 'gm:' .. x)
  return reply({'reaped', int(requeued), int(masters)})
end)

--[[ This daemon stops: its slaves' jobs go back (no loss: the daemon, not
the slave, stopped), its masters' attached jobs end with HALTED (the frames
come back in the reply: its inbox goes), detached ones stay. ]]
redis.register_function('gloomd_1_halt', function(keys, args)
  begin(args)
  if fenced() then return {'fenced'} end
  local r = {'halted'}
  slaves_leave(D)
  local held = redis.call('HGETALL', P .. 'held:' .. D)
  for i = 1, #held, 2 do
    local ik = held[i + 1]
    local j = getjob(ik)
    if j and j.s == 'R' and j.ho == D .. ':' .. held[i] then requeue(ik, j) end
  end
  for _, m in ipairs(redis.call('SMEMBERS', P .. 'ms:' .. D)) do
    local who = D .. ':' .. m
    for _, ik in ipairs(redis.call('SMEMBERS', P .. 'mj:' .. who)) do
      local j = getjob(ik)
      if j and j.dt ~= '1' and j.s ~= 'X' then
        r[#r + 1] = m
        r[#r + 1] = f_failed(j.id, 'HALTED', att(j))
      end
      drop_listener(ik, who, 'halt')
    end
    redis.call('DEL', P .. 'mj:' .. who)
  end
  redis.call('ZREM', P .. 'leases', D)
  redis.call('DEL', P .. 'held:' .. D, P .. 'sl:' .. D, P .. 'ms:' .. D, P .. 'in:' .. D,
    P .. 'dm:' .. D, P .. 'gm:' .. D)
  OUT[D] = nil
  return reply(r)
end)

-- ---------------------------------------------------------------- masters

--[[ ARGV: m, token, ik, id JSON, tk, type JSON, body JSON, pe, priority
JSON, timeout JSON ('' none), detach (0|1), delay ms, retries, back-off ms,
unique (0|1), then (ik, id JSON) of each job in `after`. ]]
redis.register_function('gloomd_1_submit', function(keys, args)
  begin(args)
  if fenced() then return {'fenced'} end
  local m, tok, ik, idj, tk, tj = args[3], args[4], args[5], args[6], args[7], args[8]
  local unique = args[17] == '1'
  local who = D .. ':' .. m
  local live = nil
  if redis.call('EXISTS', JK(ik)) == 1 then live = getjob(ik) end
  if live then
    if unique and live.t == tk then
      if live.s == 'X' then
        return reply({'attached', f_attached(idj), redis.call('HGET', JK(ik), 'ff')})
      end
      attach(ik, live, who, m)
      return reply({'attached', f_attached(idj)})
    end
    return reply({'error', f_error('id_exists', idj)})
  end
  if unique then
    local rtk, frame = stored(ik)
    if rtk then
      if rtk ~= tk then return reply({'error', f_error('id_exists', idj)}) end
      return reply({'attached', f_attached(idj), frame})
    end
  end
  local waiting, seen, failed_dep = {}, {}, nil
  for i = 18, #args, 2 do
    local dik, didj = args[i], args[i + 1]
    if dik == ik then return reply({'error', f_error('dependency_cycle', didj)}) end
    local state = redis.call('HGET', JK(dik), 's')
    if state and state ~= 'X' then
      if not seen[dik] then
        seen[dik] = true
        waiting[#waiting + 1] = dik
      end
    else
      local known = outcome(dik)
      if state == 'X' then known = '0' end
      if not known then return reply({'error', f_error('unknown_dependency', didj)}) end
      if known == '0' and not failed_dep then failed_dep = didj end
    end
  end
  if tonumber(redis.call('GET', P .. 'nq') or '0') >= cfg('max_queued') then
    return reply({'error', f_error('queue_full', idj)})
  end
  local n = int(redis.call('INCR', P .. 'seq'))
  local j = {id = idj, t = tk, tj = tj, pe = args[10], pj = args[11], n = n, q = n, at = '0',
    ls = '0', rt = args[15], rl = args[15] == '' and '0' or args[15], rk = '0', bo = args[16], dt = args[13], ac = int(NOW),
    lm = who}
  local fields = {'id', idj, 't', tk, 'tj', tj, 'b', args[9], 'pe', j.pe, 'pj', j.pj, 'n', n,
    'q', n, 'at', 0, 'ls', 0, 'rt', j.rt, 'rl', j.rl, 'rk', 0, 'bo', j.bo, 'dt', j.dt,
    'ac', j.ac, 'lm', who, 'tok', tok, 's', 'N'}
  if args[12] ~= '' then
    j.to = args[12]
    fields[#fields + 1] = 'to'
    fields[#fields + 1] = args[12]
  end
  redis.call('HSET', JK(ik), unpack(fields))
  redis.call('SADD', P .. 'mj:' .. who, ik)
  redis.call('SADD', P .. 'ms:' .. D, m)
  redis.call('HINCRBY', P .. 'tot', 'submitted', 1)
  register_type(tk, tj)
  redis.call('HINCRBY', P .. 'ty:' .. tk, 'submitted', 1)
  local delay = tonumber(args[14])
  if failed_dep then
    redis.call('HINCRBY', P .. 'tot', 'failed', 1)
    redis.call('HINCRBY', P .. 'ty:' .. tk, 'failed', 1)
    local dropped = end_job(ik, j, f_failed(idj, 'DEPENDENCY', att(j), failed_dep), 'fail', nil)
    return dropped_reply('ok', {f_ack(idj)}, dropped)
  end
  if #waiting > 0 then
    j.s = 'W'
    redis.call('HSET', JK(ik), 's', 'W', 'w', #waiting, 'ra', NOW + delay)
    redis.call('ZADD', P .. 'wt:' .. tk, 0, nmem(j, ik))
    redis.call('INCR', P .. 'nq')
    for _, dik in ipairs(waiting) do
      redis.call('SADD', P .. 'dp:' .. dik, ik)
      redis.call('HSET', JK(dik), 'hd', '1')  -- it has dependents
    end
  elseif delay > 0 then
    set_delayed(ik, j, NOW + delay)
  else
    make_ready(ik, j, false, nil)
  end
  return reply({'ok', f_ack(idj)})
end)

-- ARGV: m, ik, id JSON.
redis.register_function('gloomd_1_cancel', function(keys, args)
  begin(args)
  if fenced() then return {'fenced'} end
  local who, ik, idj = D .. ':' .. args[3], args[4], args[5]
  local j = getjob(ik)
  if not j or not (j.dt == '1' or is_master_of(ik, j, who)) then
    return reply({'error', f_error('unknown_id', idj)})
  end
  if j.s == 'R' or j.s == 'X' then
    return reply({'error', f_error('invalid_state', '"' .. STATE_NAMES[j.s] .. '"')})
  end
  redis.call('HINCRBY', P .. 'tot', 'cancelled', 1)
  local dropped = end_job(ik, j, f_failed(j.id, 'CANCELLED', att(j)), 'cancel', who)
  return dropped_reply('ok', {f_ack(idj)}, dropped)
end)

-- ARGV: m, ik, id JSON.
redis.register_function('gloomd_1_result', function(keys, args)
  begin(args)
  if fenced() then return {'fenced'} end
  local who, ik, idj = D .. ':' .. args[3], args[4], args[5]
  local _, frame = stored(ik)
  if frame then return {'ok', frame} end
  local j = getjob(ik)
  if j then
    if j.s == 'X' then return {'ok', redis.call('HGET', JK(ik), 'ff')} end
    if j.dt == '1' or is_master_of(ik, j, who) then
      return {'error', f_error('not_ready', idj)}
    end
  end
  return {'error', f_error('unknown_id', idj)}
end)

-- ARGV: m.  At most 1,000 jobs per call: 'more' asks for another call.
redis.register_function('gloomd_1_master_gone', function(keys, args)
  begin(args)
  if fenced() then return {'fenced'} end
  local more = master_gone(D, args[3], 1000)
  return reply({more and 'more' or 'ok'})
end)

-- ARGV: m, ik, token.  A submit whose answer was lost with the connection
-- to Redis was answered backend_unavailable: if it did happen, undo it as
-- if its master had left (a running job keeps running, unheard).
redis.register_function('gloomd_1_withdraw', function(keys, args)
  begin(args)
  if fenced() then return {'fenced'} end
  local who, ik = D .. ':' .. args[3], args[4]
  if redis.call('HGET', JK(ik), 'tok') ~= args[5] then return {'none'} end
  redis.call('SREM', P .. 'mj:' .. who, ik)
  local j = getjob(ik)
  if j.dt == '1' and j.s ~= 'R' then
    redis.call('HINCRBY', P .. 'tot', 'withdrawn', 1)
    end_job(ik, j, nil, 'delete', nil)
  else
    drop_listener(ik, who, 'gone')
  end
  return reply({'withdrawn'})
end)

-- ---------------------------------------------------------------- slaves

-- ARGV: s, tk, type JSON, epoch.  A re-join puts the held job back first.
redis.register_function('gloomd_1_join', function(keys, args)
  begin(args)
  if fenced() then return {'fenced'} end
  local s, tk = args[3], args[4]
  local me = D .. ':' .. s
  local hkey = P .. 'held:' .. D
  local ik = redis.call('HGET', hkey, s)
  if ik then
    redis.call('HDEL', hkey, s)
    local j = getjob(ik)
    if j and j.s == 'R' and j.ho == me then requeue(ik, j) end
  end
  local skey = P .. 'sl:' .. D
  local old = redis.call('HGET', skey, s)
  if old then
    local otk = string.sub(old, string.find(old, ':', 1, true) + 1)
    redis.call('ZREM', P .. 'idle:' .. otk, me)
    redis.call('HINCRBY', P .. 'ty:' .. otk, 'slaves', -1)
  end
  register_type(tk, args[5])
  redis.call('HSET', skey, s, args[6] .. ':' .. tk)
  redis.call('HINCRBY', P .. 'ty:' .. tk, 'slaves', 1)
  local frame = slave_ready(D, s, tk, me)
  if frame then return reply({'job', OK_FRAME, frame}) end
  return reply({'ok', OK_FRAME})
end)

-- The job slave s holds, if it still answers for it (else nil: an orphan).
local function held_job(s)
  local hkey = P .. 'held:' .. D
  local ik = redis.call('HGET', hkey, s)
  if not ik then return nil end
  redis.call('HDEL', hkey, s)
  local j = getjob(ik)
  if j and j.s == 'R' and j.ho == D .. ':' .. s then return ik, j end
  return nil
end

local function next_for(s)
  local joined = redis.call('HGET', P .. 'sl:' .. D, s)
  if not joined then return nil end
  local tk = string.sub(joined, string.find(joined, ':', 1, true) + 1)
  return slave_ready(D, s, tk, D .. ':' .. s)
end

-- ARGV: s, body JSON.
redis.register_function('gloomd_1_respond', function(keys, args)
  begin(args)
  if fenced() then return {'fenced'} end
  local s = args[3]
  local ik, j = held_job(s)
  local dropped = {}
  if ik then
    redis.call('HINCRBY', P .. 'tot', 'completed', 1)
    redis.call('HINCRBY', P .. 'ty:' .. j.t, 'completed', 1)
    dropped = end_job(ik, j, f_result(j.id, args[4]), 'ok', nil)
  end
  local frame = next_for(s)
  if frame then return dropped_reply('job', {OK_FRAME, frame}, dropped) end
  return dropped_reply('ok', {OK_FRAME}, dropped)
end)

-- ARGV: s, category, reason JSON.  ERROR and TIMEOUT with retries left go
-- back after the back-off, unheard; anything else is the final answer.
redis.register_function('gloomd_1_fail', function(keys, args)
  begin(args)
  if fenced() then return {'fenced'} end
  local s, cat = args[3], args[4]
  local ik, j = held_job(s)
  local dropped = {}
  if ik then
    if (cat == 'ERROR' or cat == 'TIMEOUT') and retries_left(j) then
      retry(ik, j)
    else
      redis.call('HINCRBY', P .. 'tot', 'failed', 1)
      redis.call('HINCRBY', P .. 'ty:' .. j.t, 'failed', 1)
      dropped = end_job(ik, j, f_jerror(j.id, cat, args[5], att(j)), 'fail', nil)
    end
  end
  local frame = next_for(s)
  if frame then return dropped_reply('job', {OK_FRAME, frame}, dropped) end
  return dropped_reply('ok', {OK_FRAME}, dropped)
end)

-- ARGV: s, body JSON.  No reply frame: the job's masters hear it.
redis.register_function('gloomd_1_progress', function(keys, args)
  begin(args)
  if fenced() then return {'fenced'} end
  local s = args[3]
  local ik = redis.call('HGET', P .. 'held:' .. D, s)
  if ik then
    local j = getjob(ik)
    if j and j.s == 'R' and j.ho == D .. ':' .. s then
      notify(ik, j, f_progress(j.id, args[4]))
    end
  end
  return reply({'ok'})
end)

-- ARGV: s.  The slave's connection is gone: its job counts one loss.
redis.register_function('gloomd_1_slave_gone', function(keys, args)
  begin(args)
  if fenced() then return {'fenced'} end
  local s = args[3]
  local ik, j = held_job(s)
  local dropped = {}
  if ik then dropped = lose(ik, j) end
  local skey = P .. 'sl:' .. D
  local joined = redis.call('HGET', skey, s)
  if joined then
    local tk = string.sub(joined, string.find(joined, ':', 1, true) + 1)
    redis.call('ZREM', P .. 'idle:' .. tk, D .. ':' .. s)
    redis.call('HINCRBY', P .. 'ty:' .. tk, 'slaves', -1)
    redis.call('HDEL', skey, s)
  end
  return dropped_reply('ok', {}, dropped)
end)

-- ---------------------------------------------------------------- time

--[[ ARGV: limit.  Delayed jobs that are due become ready (in the order they
became due), running jobs past their timeout fail (TIMEOUT) or retry,
results and outcomes past their TTL go.  Returns 'tick', the ms to the next
deadline (-1: none), 1 when the limit cut the work short, then dropped. ]]
redis.register_function('gloomd_1_tick', function(keys, args)
  begin(args)
  ARM_OFF = true  -- the answer says when to tick next
  local limit = tonumber(args[3])
  local more = 0
  local dropped = {}
  local due = redis.call('ZRANGEBYSCORE', P .. 'delayed', '-inf', NOW, 'LIMIT', 0, limit)
  if #due == limit then more = 1 end
  for _, ik in ipairs(due) do
    local j = getjob(ik)
    if j and j.s == 'D' then
      leave(ik, j)
      make_ready(ik, j, true, nil)
    else
      redis.call('ZREM', P .. 'delayed', ik)
    end
  end
  local late = redis.call('ZRANGEBYSCORE', P .. 'timeouts', '-inf', NOW, 'LIMIT', 0, limit)
  if #late == limit then more = 1 end
  for _, ik in ipairs(late) do
    local j = getjob(ik)
    if j and j.s == 'R' then
      if retries_left(j) then
        retry(ik, j)
      else
        redis.call('HINCRBY', P .. 'tot', 'failed', 1)
        redis.call('HINCRBY', P .. 'ty:' .. j.t, 'failed', 1)
        for _, x in ipairs(end_job(ik, j, f_failed(j.id, 'TIMEOUT', att(j)), 'fail', nil)) do
          dropped[#dropped + 1] = x
        end
      end
    else
      redis.call('ZREM', P .. 'timeouts', ik)
    end
  end
  local old = redis.call('ZRANGEBYSCORE', P .. 'resx', '-inf', NOW, 'LIMIT', 0, limit)
  if #old == limit then more = 1 end
  for _, ik in ipairs(old) do
    redis.call('ZREM', P .. 'resx', ik)
    redis.call('HDEL', P .. 'res', ik)
  end
  redis.call('ZREMRANGEBYSCORE', P .. 'outok', '-inf', NOW)
  redis.call('ZREMRANGEBYSCORE', P .. 'outno', '-inf', NOW)
  if trim_outcomes(cfg('max_results'), limit) then more = 1 end
  local next = -1
  for _, z in ipairs({'delayed', 'timeouts', 'resx', 'outok', 'outno'}) do
    local head = redis.call('ZRANGE', P .. z, 0, 0, 'WITHSCORES')
    if head[2] then
      local wait = math.max(0, tonumber(head[2]) - NOW)
      if next < 0 or wait < next then next = wait end
    end
  end
  local r = {'tick', int(next), int(more)}
  for _, x in ipairs(dropped) do r[#r + 1] = x end
  return reply(r)
end)

-- ---------------------------------------------------------------- admin

local function kick_one(ik, j)
  leave(ik, j)
  -- Kicked once, its failure frames say which attempt (rt '' becomes 0).
  if j.rt == '' then j.rt = '0' end
  redis.call('HSET', JK(ik), 'rt', j.rt, 'rl', j.rt, 'rk', 0)
  redis.call('HDEL', JK(ik), 'ff')
  j.rl, j.rk = j.rt, '0'
  make_ready(ik, j, true, nil)
end

-- ARGV: ik, id JSON.
redis.register_function('gloomd_1_kick', function(keys, args)
  begin(args)
  if fenced() then return {'fenced'} end
  local ik, idj = args[3], args[4]
  local j = getjob(ik)
  if not j then return reply({'error', f_error('unknown_id', idj)}) end
  if j.s ~= 'X' then
    return reply({'error', f_error('invalid_state', '"' .. STATE_NAMES[j.s] .. '"')})
  end
  kick_one(ik, j)
  return reply({'ok', f_ack(idj)})
end)

-- ARGV: tk, limit (at most 1,000 per call).  Returns 'kicked', k, more.
redis.register_function('gloomd_1_kick_type', function(keys, args)
  begin(args)
  if fenced() then return {'fenced'} end
  local key = P .. 'dead:' .. args[3]
  local limit = tonumber(args[4])
  local members = redis.call('ZRANGE', key, 0, limit - 1)
  for _, member in ipairs(members) do
    local ik = string.sub(member, 17)
    kick_one(ik, getjob(ik))
  end
  local more = redis.call('EXISTS', key)
  return reply({'kicked', int(#members), int(more)})
end)

-- ARGV: m, ik, id JSON.  A detached job in any state but running goes (its
-- waiting dependents fail); an attached one is cancelled by its masters.
redis.register_function('gloomd_1_delete', function(keys, args)
  begin(args)
  if fenced() then return {'fenced'} end
  local who, ik, idj = D .. ':' .. args[3], args[4], args[5]
  local j = getjob(ik)
  if not j or not (j.dt == '1' or is_master_of(ik, j, who)) then
    return reply({'error', f_error('unknown_id', idj)})
  end
  if j.s == 'R' then return reply({'error', f_error('invalid_state', '"running"')}) end
  local kind = 'delete'
  if j.dt ~= '1' then kind = 'cancel' end
  if j.s ~= 'X' then redis.call('HINCRBY', P .. 'tot', 'cancelled', 1) end
  local dropped = end_job(ik, j, f_failed(j.id, 'CANCELLED', att(j)), kind, who)
  return dropped_reply('ok', {f_ack(idj)}, dropped)
end)

-- ARGV: tk, type JSON.
redis.register_function('gloomd_1_pause', function(keys, args)
  begin(args)
  if fenced() then return {'fenced'} end
  register_type(args[3], args[4])
  redis.call('SADD', P .. 'paused', args[3])
  return reply({'ok', OK_FRAME})
end)

-- ARGV: tk, limit.  The best jobs go to the longest-idle slaves; 'more'
-- when the limit cut that short (the daemon calls again).
redis.register_function('gloomd_1_resume', function(keys, args)
  begin(args)
  if fenced() then return {'fenced'} end
  local tk, limit = args[3], tonumber(args[4])
  redis.call('SREM', P .. 'paused', tk)
  local handed = 0
  while handed < limit do
    if redis.call('ZCARD', P .. 'idle:' .. tk) == 0 then break end
    local top = redis.call('ZPOPMIN', P .. 'q:' .. tk)
    if not top[1] then break end
    redis.call('DECR', P .. 'nq')
    local slave = redis.call('ZPOPMIN', P .. 'idle:' .. tk)[1]
    local ik = ik_of_q(top[1])
    assign(ik, getjob(ik), slave, nil)
    handed = handed + 1
  end
  local more = handed == limit and redis.call('ZCARD', P .. 'idle:' .. tk) > 0
    and redis.call('ZCARD', P .. 'q:' .. tk) > 0
  return reply({more and 'more' or 'ok', OK_FRAME})
end)

local function row(tk)
  local t = redis.call('HMGET', P .. 'ty:' .. tk, 'tj', 'slaves', 'completed', 'failed')
  return {
    t[1],
    redis.call('ZCARD', P .. 'q:' .. tk),
    redis.call('ZCARD', P .. 'rn:' .. tk),
    tonumber(t[2] or '0'),
    redis.call('ZCARD', P .. 'idle:' .. tk),
    redis.call('ZCARD', P .. 'dl:' .. tk),
    redis.call('ZCARD', P .. 'wt:' .. tk),
    redis.call('ZCARD', P .. 'dead:' .. tk),
    redis.call('SISMEMBER', P .. 'paused', tk),
    tonumber(t[3] or '0'),
    tonumber(t[4] or '0'),
  }
end

local ROW = 11

--[[ ARGV: tk ('' for every type, with a 0|1 flag after it saying whether a
type was asked for), max rows, this daemon's masters, slaves.  Returns
'stats', then #totals pairs, the totals (name, value), the connections
(masters, slaves, summed over live daemons), rows shown, rows omitted, then
ROW values per row shown, then ROW values summing the omitted rows.
Types with nothing left (no job, no slave, not paused) are forgotten here. ]]
redis.register_function('gloomd_1_stats', function(keys, args)
  begin(args)
  if fenced() then return {'fenced'} end
  redis.call('HSET', P .. 'dm:' .. D, 'masters', args[6], 'slaves', args[7])
  local asked, one, cap = args[3], args[4] == '1', tonumber(args[5])
  local rows, omitted = {}, {}
  local shown, skipped = 0, 0
  local tks
  if one then tks = {asked} else tks = redis.call('ZRANGE', P .. 'types', 0, -1) end
  for _, tk in ipairs(tks) do
    if redis.call('ZSCORE', P .. 'types', tk) then
      local r = row(tk)
      if r[2] + r[3] + r[4] + r[6] + r[7] + r[8] + r[9] == 0 then
        redis.call('ZREM', P .. 'types', tk)
      else
        if shown < cap then
          shown = shown + 1
          for _, v in ipairs(r) do rows[#rows + 1] = v end
        else
          skipped = skipped + 1
          for i = 2, ROW do omitted[i] = (omitted[i] or 0) + r[i] end
        end
      end
    end
  end
  local tot = redis.call('HGETALL', P .. 'tot')
  local masters, slaves = 0, 0
  for _, d in ipairs(redis.call('ZRANGE', P .. 'leases', 0, -1)) do
    local c = redis.call('HMGET', P .. 'dm:' .. d, 'masters', 'slaves')
    masters = masters + tonumber(c[1] or '0')
    slaves = slaves + tonumber(c[2] or '0')
  end
  local r = {'stats', #tot / 2}
  for _, v in ipairs(tot) do r[#r + 1] = v end
  r[#r + 1] = masters
  r[#r + 1] = slaves
  r[#r + 1] = shown
  r[#r + 1] = skipped
  for _, v in ipairs(rows) do r[#r + 1] = v end
  if skipped > 0 then
    r[#r + 1] = ''
    for i = 2, ROW do r[#r + 1] = omitted[i] or 0 end
  end
  return r
end)

local STATE_ORDER = {'Q', 'D', 'W', 'R', 'X'}
local STATE_KEYS = {Q = 'q:', D = 'dl:', W = 'wt:', R = 'rn:', X = 'dead:'}

--[[ ARGV: tk ('' for every type), state ('' for every state: Q, D, W, R,
X), limit, then the cursor: the type's score in `types`, the state, the
last member listed ('' when the listing starts).  Returns 'jobs', the next
cursor (three values; '' first when the listing is over), then per job:
id JSON, type JSON, priority JSON, state, attempt, age in ms, detached. ]]
redis.register_function('gloomd_1_jobs', function(keys, args)
  begin(args)
  local tk, state, limit = args[3], args[4], tonumber(args[5])
  local cscore, cstate, cmember = args[6], args[7], args[8]
  local tks
  if tk ~= '' then
    tks = {{tk, '0'}}
  else
    local from = '-inf'
    if cscore ~= '' then from = cscore end
    local flat = redis.call('ZRANGEBYSCORE', P .. 'types', from, '+inf', 'WITHSCORES')
    tks = {}
    for i = 1, #flat, 2 do tks[#tks + 1] = {flat[i], flat[i + 1]} end
  end
  local states = STATE_ORDER
  if state ~= '' then states = {state} end
  local r = {'jobs', '', '', ''}
  local found = 0
  for _, pair in ipairs(tks) do
    local ttk, tscore = pair[1], pair[2]
    -- Resuming inside this type: skip its states before the cursor's.
    local listing = not (cscore ~= '' and tscore == cscore)
    for _, st in ipairs(states) do
      local from = '-'
      if not listing and st == cstate then
        listing = true
        from = '(' .. cmember
      end
      if listing then
        local key = P .. STATE_KEYS[st] .. ttk
        local members = redis.call('ZRANGE', key, from, '+', 'BYLEX', 'LIMIT', 0, limit - found)
        for _, member in ipairs(members) do
          local ik
          if st == 'Q' then ik = ik_of_q(member) else ik = string.sub(member, 17) end
          local v = redis.call('HMGET', JK(ik), 'id', 'tj', 'pj', 'at', 'ac', 'dt')
          r[#r + 1] = v[1]
          r[#r + 1] = v[2]
          r[#r + 1] = v[3]
          r[#r + 1] = st
          r[#r + 1] = v[4]
          r[#r + 1] = int(NOW - tonumber(v[5]))
          r[#r + 1] = v[6]
          found = found + 1
          if found == limit then
            r[2], r[3], r[4] = tscore, st, member
            return r
          end
        end
      end
    end
  end
  return r
end)
