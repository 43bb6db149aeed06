-- chorus.saga — steps with compensations, undone or committed through the
-- outbox.
--
--   local s = saga.new(ctx)
--   local entry = s:step("log item 1", function() return ledger:post(...) end,
--                                      function(entry) ledger:delete(...) end)
--   ...  -- on any error:  s:abort(err)  (enqueues the compensations, re-raises err)
--   s:commit("commit", function() ledger:post("/commit", ...) end)
--
-- abort calls the compensations of the completed steps in reverse order,
-- but the HTTP calls they make are not sent there and then: they are
-- captured (each returns { status = 202, queued = true }) and written as one
-- outbox entry, a chain the relay delivers in that order after the run,
-- durably, retried with `policy` (default: 5 attempts, exponential from
-- 0.5 s, capped at 10 s), to the DLQ at the end. So a rollback survives a
-- crash of the process and an API that is down for a while. commit does the
-- same with its function's calls. A compensation that raises while being
-- captured is logged and listed in s.failed; the others still go. A run
-- ended by a control error (chorus.runstate) is not compensated by abort,
-- which re-raises that error at once: after a crash the replay decides,
-- after a nondeterministic replay nobody knows what the code would do. At
-- the deadline, the runner compensates the sagas the run left open
-- (saga.on_deadline), then on_timeout runs.
local core = require "chorus.core"
local outbox = require "chorus.outbox"
local runstate = require "chorus.runstate"

local saga = {}

local Saga = {}
Saga.__index = Saga

local DEFAULT_POLICY = { attempts = 5, base = 0.5, cap = 10 }

--- A new saga for the run of ctx. opts.policy = { attempts =, base =, cap =
--- }: how the outbox retries compensations and commits.
function saga.new(ctx, opts)
  if type(ctx) ~= "table" or type(ctx.run_id) ~= "string" then
    error("saga.new expects the run's ctx", 2)
  end
  opts = opts or {}
  local p = opts.policy or DEFAULT_POLICY
  if type(p) ~= "table" then
    error("saga.new: policy must be a table { attempts =, base =, cap = }", 2)
  end
  -- checked as ctx.later's options are: the outbox relay reads them after
  -- the run, outside it (a table's __lt ran there; a string failed every
  -- delivery of the entry, for good)
  for _, k in ipairs({ "attempts", "base", "cap" }) do
    local v = rawget(p, k)
    if v ~= nil and (type(v) ~= "number" or v < 0 or v ~= v
        or (k == "attempts" and (math.type(v) ~= "integer" or v < 1))
        or (k ~= "attempts" and v > outbox.MAX_SECONDS)) then
      error(("saga.new: policy.%s must be a %s"):format(k,
        k == "attempts" and "positive integer" or "number of seconds from 0 to 100 years"), 2)
    end
  end
  local s = setmetatable({ ctx = ctx, done = {}, compensated = {}, failed = {}, committed = {},
    later = { attempts = rawget(p, "attempts") or DEFAULT_POLICY.attempts,
      base = rawget(p, "base") or DEFAULT_POLICY.base, cap = rawget(p, "cap") or DEFAULT_POLICY.cap } }, Saga)
  local run = runstate.current()
  if run then -- the run's open sagas: its deadline rolls them back (saga.on_deadline)
    run.sagas = run.sagas or {}
    run.sagas[#run.sagas + 1] = s
  end
  return s
end

--- Runs action() and remembers compensate(result) for abort. Raises the
--- action's error (the caller decides to abort).
function Saga:step(name, action, compensate)
  if type(name) ~= "string" or type(action) ~= "function" then
    error("saga:step(name, action, compensate): name must be a string and action a function", 2)
  end
  if compensate ~= nil and type(compensate) ~= "function" then
    error("saga:step: compensate must be a function", 2)
  end
  local result = action()
  self.done[#self.done + 1] = { name = name, compensate = compensate, result = result }
  return result
end

-- Calls fn(arg) with the HTTP calls it makes captured, not sent; returns
-- ok, value or error, and the captured requests.
local function captured(fn, arg)
  local run = runstate.current()
  if not run then
    error("chorus.saga works inside a run", 3)
  end
  local saved = run.capture
  run.capture = {}
  local ok, res = pcall(fn, arg)
  local requests = run.capture
  run.capture = saved
  if not ok and run.stopped then -- a control error is the run's end, not a failed step
    error(run.stopped, 0)
  end
  return ok, res, requests
end

-- Enqueues the compensations of the completed steps, newest first, as one
-- outbox chain, and marks the run compensated.
local function compensate(self)
  local requests = {}
  for i = #self.done, 1, -1 do
    local step = self.done[i]
    if step.compensate then
      local ok, cerr, reqs = captured(step.compensate, step.result)
      if ok then
        table.move(reqs, 1, #reqs, #requests + 1, requests)
        self.compensated[#self.compensated + 1] = step.name
      else
        self.failed[#self.failed + 1] = { step = step.name, error = tostring(cerr) }
        self.ctx.log.error("compensation failed", { step = step.name, error = tostring(cerr) })
      end
    end
  end
  self.done = {}
  if #requests > 0 then
    self.compensation = outbox.chain("compensate", requests, self.later)
  end
  runstate.current().compensated = true -- the run's status says so
end

--- Enqueues the compensations of the completed steps, newest first, then
--- raises err. s.compensation is the outbox entry id (nil when none).
function Saga:abort(err)
  -- A control error (crash, nondeterminism, deadline, a limit) is not
  -- compensated here: after a crash the replay decides, after a divergence
  -- nobody knows what the code would do, and at the deadline the runner
  -- compensates the open sagas (saga.on_deadline).
  local stop = runstate.stopped()
  if stop then
    error(stop, 0)
  end
  if core.killed() then
    error(err, 0)
  end
  compensate(self)
  error(err, 0)
end

--- Enqueues commit work: the HTTP calls fn() makes, delivered in order
--- after the run. Returns the outbox entry id (nil when fn made no call);
--- raises fn's error.
function Saga:commit(name, fn)
  if type(name) ~= "string" or type(fn) ~= "function" then
    error("saga:commit(name, fn): name must be a string and fn a function", 2)
  end
  local ok, res, requests = captured(fn)
  if not ok then
    error(res, 0)
  end
  self.committed[#self.committed + 1] = name
  self.closed = true -- committed: a later deadline does not undo it
  return #requests > 0 and outbox.chain(name, requests, self.later) or nil
end

--- The run's deadline passed (chorus.runner, before on_timeout): the
--- completed steps of every saga the run neither aborted nor committed are
--- compensated, as abort would have (the deadline re-raises through the
--- script's pcall, so its own abort never runs).
function saga.on_deadline(run)
  for _, s in ipairs(run.sagas or {}) do
    if not s.closed and #s.done > 0 then
      local ok, err = pcall(compensate, s)
      if not ok then
        s.ctx.log.error("compensation after the deadline failed", { error = tostring(err) })
      end
    end
  end
end

return saga
