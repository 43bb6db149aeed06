-- chorus.context — the ctx a workflow's run function receives.
--
-- ctx carries the run's identity and the run-scoped services: deterministic
-- idempotency keys, clock, randomness, durable sleep, polling, the outbox
-- (later), locks, named steps in the timeline and a structured logger that
-- stamps run and trace ids. now, random, uuid, sleep, later, lock and
-- poll's waits are effects: journaled in a durable run, so a replay sees the
-- values the first execution saw (chorus.journal).
local core = require "chorus.core"
local errors = require "chorus.errors"
local events = require "chorus.events"
local journal = require "chorus.journal"
local outbox = require "chorus.outbox"
local runstate = require "chorus.runstate"
local logging = require "chorus.log"
local redact = require "chorus.redact"
local retry = require "chorus.retry"

-- ctx → its run's state: the workflow's redact paths and the run's span id
-- for the log lines (chorus.redact), the timeline for ctx.step
local ctx_state = setmetatable({}, { __mode = "k" })

-- the run's span (chorus.tracing): the parent of its effects' spans
local function span_of(state)
  return state.span_id
end

local context = {}

-- chorus.testing sets this to collect log lines instead of printing them.
context.log_sink = nil

-- Lines a run may log (config limits.run_log_lines; 0: no cap). Past it the
-- run's lines are dropped, after one line that says so: a run that logged
-- in a loop wrote 200,000 lines in 2.5 s to the log every workflow shares.
context.run_log_lines = 10000

-- Bytes a run may log, its lines as JSON together (config
-- limits.run_log_bytes; 0: no cap): under the line cap alone one run wrote
-- 800 MB of megabyte lines to that log, and held the server's thread on
-- the writes for 9 s.
context.run_log_bytes = 4 * 1024 * 1024

-- Bytes the runs of one workflow may log per second, together (config
-- limits.workflow_log_bytes_per_second; 0: no cap). The per-run caps bound
-- one run; a workflow whose runs start one another (a ctx.later chain, a
-- flood of requests to a script that logs megabytes) wrote 4 MiB per run
-- without end to the log every workflow shares. 4 MiB: one run may still
-- write its whole run_log_bytes in a second.
context.workflow_log_rate = 4 * 1024 * 1024

-- The log's current second of each workflow (by the workflow its runs are
-- charged to): { second =, bytes = }, and `noted` once the second's lines
-- past the rate have said so. Keyed by workflow name: bounded by the
-- workflows loaded.
local workflow_second = {}

local LEVELS = { debug = true, info = true, warn = true, error = true }

-- Past a cap: the notice (once), and no more of the run's lines.
-- (state: the run's; its run_id, workflow and trace_id name it in the notice)
local function close_log(state, sink, why)
  if state.log_closed then
    return
  end
  state.log_closed = true
  logging.write({ level = "warn", run_id = state.run_id, workflow = state.workflow, trace_id = state.trace_id,
    ts = core.now(), msg = why .. ": its further lines are dropped" }, sink)
end

-- Whether the run (state) may log one more line; the first line past the
-- cap is replaced by the notice.
local function log_allowed(state, sink)
  if state.log_closed then
    return false
  end
  local n = (state.log_lines or 0) + 1
  state.log_lines = n
  local cap = context.run_log_lines
  if cap == 0 or n <= cap then
    return true
  end
  close_log(state, sink, ("the run logged %d lines (limits.run_log_lines)"):format(cap))
  return false
end

-- Whether the workflow of run (state) may log `bytes` more this second;
-- the first line past the rate in a second is replaced by a notice. The
-- run's log stays open: the next second takes its lines again.
local function workflow_rate_allows(state, sink, bytes)
  local rate = context.workflow_log_rate
  if rate == 0 then
    return true
  end
  local name = state.charged_to or state.workflow or ""
  local second = math.floor(core.now())
  local w = workflow_second[name]
  if not w or w.second ~= second then
    w = { second = second, bytes = 0, noted = false }
    workflow_second[name] = w
  end
  if w.bytes + bytes <= rate then
    w.bytes = w.bytes + bytes
    return true
  end
  if not w.noted then
    w.noted = true
    logging.write({ level = "warn", run_id = state.run_id, workflow = name, ts = core.now(),
      msg = ("the runs of workflow '%s' logged %d bytes this second (limits.workflow_log_bytes_per_second;"
        .. " the next line had %d): their lines are dropped until the second ends"):format(name, w.bytes, bytes) },
      sink)
  end
  return false
end

-- Whether the run (state) may write a line of `bytes` more; the line that
-- would pass the cap is replaced by the notice.
local function log_bytes_allowed(state, sink, bytes)
  if state.log_closed then
    return false
  end
  local total = (state.log_bytes or 0) + bytes
  local cap = context.run_log_bytes
  if cap == 0 or total <= cap then
    if not workflow_rate_allows(state, sink, bytes) then
      return false
    end
    state.log_bytes = total
    return true
  end
  close_log(state, sink, ("the run's log lines reached %d bytes (limits.run_log_bytes; the next had %d)")
    :format(cap, bytes))
  return false
end

--- Whether the current run may write one more line to the log (print in a
--- workflow script: it went around the cap); true outside a run.
function context.line_allowed()
  local run = runstate.current()
  if not run then
    return true
  end
  return log_allowed(run, run.env and run.env.log_sink or context.log_sink)
end

--- Whether the current run may write a line of `bytes` more (print: its
--- line as JSON); true outside a run.
function context.bytes_allowed(bytes)
  local run = runstate.current()
  if not run then
    return true
  end
  return log_bytes_allowed(run, run.env and run.env.log_sink or context.log_sink, bytes)
end

local function logger(ctx)
  local function write(level, msg, fields)
    -- the run service's sink (chorus.runs env.log_sink), else the module's
    local run = runstate.current()
    local sink = run and run.env and run.env.log_sink or context.log_sink
    if not log_allowed(ctx_state[ctx], sink) then
      return
    end
    local line = { level = level, msg = tostring(msg), run_id = ctx.run_id,
      workflow = ctx.workflow, trace_id = ctx.trace_id, span_id = span_of(ctx_state[ctx]), ts = core.now() }
    for k, v in pairs(fields or {}) do
      if line[k] == nil then
        line[k] = v
      end
    end
    line = redact.value(line, ctx_state[ctx].redact)
    if type(line) ~= "table" then -- too costly to mask: masked whole (chorus.redact)
      line = { level = level, msg = line, run_id = ctx.run_id, workflow = ctx.workflow, ts = core.now() }
    end
    local text = logging.text(line) -- (nil: not printed at the process's level)
    if text and not log_bytes_allowed(ctx_state[ctx], sink, #text) then
      return
    end
    logging.write(line, sink, text)
  end
  local log = {}
  for level in pairs(LEVELS) do
    log[level] = function(msg, fields) write(level, msg, fields) end
  end
  return setmetatable(log, { __call = function(_, msg, fields) write("info", msg, fields) end })
end

-- In-process locks by name: the holder runs, the others wait FIFO (parked
-- with core.wait) and get the lock handed over when it is released. A
-- waiter cancelled meanwhile is skipped (notify finds nobody).
--
-- Acquiring and releasing are journaled ("lock" and "unlock" effects), so
-- after a crash the recovery knows which resumed run held which lock and
-- reserves it for that run (context.reserve_lock): the holder gets it back
-- first, and no other run slips into its critical section.
local locks = {}

local function release_lock(name)
  local l = locks[name]
  while l.first <= l.last do
    local token = l.queue[l.first]
    l.queue[l.first] = nil
    l.first = l.first + 1
    if core.notify(token, true) then
      return -- handed over: still held
    end
  end
  locks[name] = nil
end

-- The lock's timeline entry: when the run asked for it, how long it waited
-- and (once released) how long it held it. The lock and unlock effects
-- return these times, so a replay shows those of the first execution.
local function lock_entry(name, times)
  local entry = { kind = "lock", lock = name, start = nil, waited = nil, held = nil }
  if type(times) == "table" then -- a journal written before locks had times says true
    entry.start, entry.waited = times.start, times.waited
  end
  local run = runstate.current()
  if run then
    runstate.add_entry(run, entry)
  end
  return entry
end

local function with_lock(name, fn)
  local l = locks[name]
  local me = core.run_id()
  local run = runstate.current()
  local asked = core.now()
  if not l then
    locks[name] = { queue = {}, first = 1, last = 0 }
  elseif l.reserved_for == me then -- resumed after a crash while holding it
    l.reserved_for = nil
  else
    -- the wait is bounded by the run's deadline; a waiter that gave up is
    -- skipped when the lock is handed on (notify finds nobody)
    local left = runstate.remaining()
    if left <= 0 then
      error(runstate.deadline_error(("waiting for lock %s"):format(name)), 0)
    end
    local token = core.wait_token()
    l.last = l.last + 1
    l.queue[l.last] = token
    if not runstate.wait(token, left) then
      error(runstate.deadline_error(("waiting for lock %s"):format(name)), 0)
    end
  end
  -- held by this run until released here, or at the run's end at the
  -- latest (context.release_held, at the run's end): fn may yield from a coroutine of the
  -- script that is never resumed again, and this __close then never runs
  local held = run and run.locks_held
  if run and not held then
    held = {}
    run.locks_held = held
  end
  if held then
    held[name] = true
  end
  local entry
  local _ <close> = setmetatable({}, { __close = function()
    if held then
      if not held[name] then -- released at the run's end already
        return
      end
      held[name] = nil
    end
    local acquired = entry and entry.start and entry.start + (entry.waited or 0)
    local ok, held_for = pcall(journal.effect, "unlock", name, function()
      return acquired and runstate.micro(core.now() - acquired) or true
    end)
    if entry and ok and type(held_for) == "number" then
      entry.held = held_for
    end
    release_lock(name)
  end })
  entry = lock_entry(name, journal.effect("lock", name, function()
    return { start = runstate.micro(asked), waited = runstate.micro(core.now() - asked) }
  end))
  return fn()
end

--- Releases the locks the run (its state) still holds when it ends (called
--- by runstate's guard of the run): taken in a coroutine of the script's
--- that yielded inside ctx.lock's fn and was never resumed, a lock was held
--- for good (every other run asking for it waited until its own deadline,
--- server-wide).
function context.release_held(state)
  local held = state.locks_held
  state.locks_held = nil
  for name in pairs(held or {}) do
    held[name] = nil
    if locks[name] then
      release_lock(name)
    end
  end
end
runstate.release_locks = context.release_held

--- Recovery: keeps lock name for run_id until that run takes it again.
--- A lock another run holds now is not taken from it: a run resumed once
--- others run (a `chorus run --data` gone while the server ran, a child its
--- parent's replay resumes) waits its turn when its replay reaches the lock
--- (reserved, it went in beside the holder: two runs inside).
function context.reserve_lock(name, run_id)
  if not locks[name] then -- (else held, or reserved already: for run_id at a start)
    locks[name] = { queue = {}, first = 1, last = 0, reserved_for = run_id }
  end
end

--- Releases the reservations of a run that ended without taking them back.
function context.drop_reservations(run_id)
  for name, l in pairs(locks) do
    if l.reserved_for == run_id then
      l.reserved_for = nil
      release_lock(name)
    end
  end
end

--- The locks a journal shows held (taken more often than released).
function context.held_locks(entries)
  local count = {}
  for _, e in ipairs(entries) do
    if e.kind == "lock" then
      count[e.target] = (count[e.target] or 0) + 1
    elseif e.kind == "unlock" then
      count[e.target] = (count[e.target] or 0) - 1
    end
  end
  local held = {}
  for name, n in pairs(count) do
    if n > 0 then
      held[#held + 1] = name
    end
  end
  return held
end

-- The services that do not depend on the run are shared by every ctx;
-- only key, step and the logger close over it (the logger is made on first
-- use: most runs never log). A ctx was a dozen closures per run.
local shared = {}

function shared.now()
  return journal.effect("now", nil, core.now)
end

function shared.uuid()
  return journal.effect("uuid", nil, core.uuid)
end

function shared.random(m, n)
  if m ~= nil and (math.type(m) ~= "integer" or (n ~= nil and math.type(n) ~= "integer")) then
    error("ctx.random([m [, n]]): bounds must be integers", 2)
  end
  return journal.effect("random", nil, function()
    if m == nil then
      return math.random()
    elseif n == nil then
      return math.random(m)
    end
    return math.random(m, n)
  end)
end

-- A sleep's timeline entry, made inside the effect that journals its wake
-- time, so a replay shows the sleep where it was first made.
local function note_wait(now, seconds, poll)
  local run = runstate.current()
  if run then
    journal.note(run, { kind = "sleep", start = runstate.micro(now), duration = runstate.micro(seconds),
      poll = poll })
  end
end

-- The wake time is journaled when the sleep starts, so a run resumed
-- after a restart sleeps only what is left of it.
function shared.sleep(seconds)
  if type(seconds) ~= "number" or seconds < 0 or seconds ~= seconds then -- (NaN: a wake time of NaN journaled)
    error("ctx.sleep: seconds must be a non-negative number", 2)
  end
  local wake = journal.effect("sleep", nil, function()
    local now = core.now()
    note_wait(now, seconds)
    return now + seconds
  end)
  runstate.check_stop()
  local left = runstate.remaining()
  local wait = wake - core.now()
  if wait > left then -- never wait past the run's deadline
    core.sleep(math.max(left, 0))
    error(runstate.deadline_error("in ctx.sleep"), 2)
  end
  if wait > 0 then
    core.sleep(wait)
  end
end

-- ---- ctx.poll ---------------------------------------------------------
--
-- ctx.poll(fn, { every = S | backoff = policy, timeout = S }) calls fn until
-- it returns a non-nil value. fn is the caller's code: its effects (HTTP
-- calls, ...) are journaled as anywhere else. ctx.poll journals its own
-- decisions, so a replay after a crash makes the same ones without waiting
-- again: when polling started ("poll start": the timeout counts from there,
-- not from the restart), and after each nil the time of the next poll and
-- the wait before it ("poll wait N"), or false when the backoff policy has
-- no poll left. Every decision reads only those journaled values, never the
-- clock of the replay.

local POLL_OPTIONS = { every = true, backoff = true, timeout = true }

local function positive(v)
  return type(v) == "number" and v > 0 and v == v
end

-- The checked options: every, policy (one of the two), timeout (or nil).
-- Errors are raised at level 3: the script's call of ctx.poll.
local function poll_options(opts)
  if type(opts) ~= "table" then
    error("ctx.poll(fn, opts): opts must be a table { every = S | backoff = retry.policy{...}, timeout = S }", 3)
  end
  for k in pairs(opts) do
    if not POLL_OPTIONS[k] then
      error(("ctx.poll: unknown option '%s' (every, backoff, timeout)"):format(tostring(k)), 3)
    end
  end
  local every, backoff, timeout = opts.every, opts.backoff, opts.timeout
  if (every == nil) == (backoff == nil) then
    error("ctx.poll: give one of every = seconds or backoff = retry.policy{...}", 3)
  end
  if every ~= nil and not (positive(every) and every < math.huge) then
    error("ctx.poll: every must be a positive, finite number of seconds", 3)
  end
  if timeout ~= nil and not positive(timeout) then
    error("ctx.poll: timeout must be a positive number of seconds", 3)
  end
  local policy
  if backoff ~= nil then
    if type(backoff) ~= "table" then
      error("ctx.poll: backoff must be a retry.policy{...} (or a table of its options)", 3)
    end
    local ok, p = pcall(retry.policy, backoff)
    if not ok then
      error("ctx.poll: backoff: " .. tostring(p), 3)
    end
    policy = p
  end
  return every, policy, timeout
end

-- The error when no value came: kind timeout, with the polls made.
local function poll_gave_up(why, polls)
  return errors.new("timeout", ("ctx.poll: no value after %d poll%s (%s)"):format(polls,
    polls == 1 and "" or "s", why), { polls = polls })
end

function shared.poll(fn, opts)
  if type(fn) ~= "function" then
    error("ctx.poll(fn, opts): fn must be a function", 2)
  end
  local every, policy, timeout = poll_options(opts)
  local start = journal.effect("poll", "start", core.now)
  -- the backoff's state: prev (the last wait) is kept from the journal so
  -- that decorrelated jitter grows on from where it was after a restart
  local prev, seed = 0, math.random(1, 0x7fffffff)
  local polls = 0
  while true do
    polls = polls + 1
    local value = fn(polls)
    if value ~= nil then
      return value, polls
    end
    local next_poll = journal.effect("poll", "wait " .. polls, function()
      local now, wait = core.now(), every
      if policy then
        wait, prev, seed = core.retry_next(policy, polls, now - start, -1, prev, seed)
        if wait < 0 then
          return false
        end
      end
      note_wait(now, wait, polls + 1)
      return { at = now + wait, wait = wait }
    end)
    if not next_poll then
      error(poll_gave_up(polls >= policy.attempts and ("the backoff policy's attempts = %d"):format(policy.attempts)
        or ("the backoff policy's max_elapsed = %g s"):format(policy.max_elapsed), polls), 0)
    end
    prev = next_poll.wait
    if timeout and next_poll.at > start + timeout then -- no poll fits any more: do not wait for nothing
      error(poll_gave_up(("timeout = %g s"):format(timeout), polls), 0)
    end
    runstate.sleep(next_poll.at - core.now(), ("in ctx.poll's wait before poll %d"):format(polls + 1))
  end
end

function shared.later(workflow, input, opts)
  return outbox.later(workflow, input, opts)
end

function shared.lock(name, fn)
  if type(name) ~= "string" or name == "" or type(fn) ~= "function" then
    error("ctx.lock(name, fn): name must be a non-empty string and fn a function", 2)
  end
  return with_lock(name, fn)
end

-- ctx.key(name): an idempotency key unique to the run and name.
local function make_key(ctx)
  return function(name)
    if type(name) ~= "string" or name == "" then
      error("ctx.key: name must be a non-empty string", 2)
    end
    return ctx.run_id .. ":" .. name
  end
end

-- ctx.step(name, fn, ...): fn's call as a named entry of the timeline.
local function make_step(_, state)
  return function(name, fn, ...)
    if type(name) ~= "string" or type(fn) ~= "function" then
      error("ctx.step(name, fn): name must be a string and fn a function", 2)
    end
    -- a step's timeline entry is part of the run's record: counted
    -- against its cap (its name and about a hundred bytes of fields)
    journal.charge(state, #name + 100, ("ctx.step '%s'"):format(name:sub(1, 60)))
    local entry = { step = name, start = core.now() }
    local timeline = state.timeline
    timeline[#timeline + 1] = entry
    local res = table.pack(pcall(fn, ...))
    entry.duration = core.now() - entry.start
    entry.status = res[1] and "ok" or "error"
    if not res[1] then
      error(res[2], 0)
    end
    return table.unpack(res, 2, res.n)
  end
end

-- A copy of the recorded request for the script: what it changes in its
-- ctx.request never reaches the run's record.
local function copy(v)
  if type(v) ~= "table" then
    return v
  end
  local c = {}
  for k, x in next, v do
    c[k] = copy(x)
  end
  return c
end

-- What every ctx has alike comes from its metatable: a run's ctx table is
-- built with its own fields only, and log, key, step and request are made
-- the first time the script reads them (most runs use few of them or none:
-- the copy of request alone was three tables per run).
local SHARED = { now = shared.now, uuid = shared.uuid, random = shared.random, sleep = shared.sleep,
  later = shared.later, lock = shared.lock, poll = shared.poll, event = events.wait }
local PER_RUN = { log = logger, key = make_key, step = make_step,
  request = function(_, state) return copy(state.request) end }

local CTX_MT = {
  __index = function(ctx, k)
    local f = SHARED[k]
    if f then
      return f
    end
    if k == "call" then
      return require("chorus.children").call
    end
    local make = PER_RUN[k]
    if make then
      f = make(ctx, ctx_state[ctx])
      rawset(ctx, k, f)
      return f
    end
    return nil
  end,
}

-- The run's timeline is not among ctx's fields: the server reads it after
-- the run has ended, outside its budget (the record's JSON, the spans), so
-- a script that could write it (a metatable whose __index loops, an entry
-- of its own, a table shared a billion times over) held the server's thread.
function context.new(state)
  local ctx = setmetatable({
    run_id = state.run_id, input = state.input, workflow = state.workflow, trace_id = state.trace_id,
  }, CTX_MT)
  ctx_state[ctx] = state
  return ctx
end

return context
