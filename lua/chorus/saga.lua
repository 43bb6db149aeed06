-- chorus.saga — steps with compensations.
--
--   local s = saga.new(ctx)
--   local entry = s:step("log item 1", function() return ledger:post(...) end,
--                                      function(entry) ledger:delete(...) end)
--   ...  -- on any error:  s:abort(err)  (compensates, then re-raises err)
--   s:commit("commit", function() ledger:post("/commit", ...) end)
--
-- abort runs the compensations of the completed steps in reverse order,
-- each retried (transport errors and 5xx) with `policy` (default: 5
-- attempts, exponential from 0.5 s); a compensation that still fails is
-- logged and recorded in s.failed, and the others still run. commit runs its
-- function the same way. Both run inline for now; when the durable outbox
-- lands they will be enqueued there instead, with the same API.
local retry = require "chorus.retry"

local saga = {}

local Saga = {}
Saga.__index = Saga

local DEFAULT_POLICY = { attempts = 5, base = 0.5, cap = 10 }

--- A new saga for the run of ctx. opts.policy: the retry policy of
--- compensations and commits.
function saga.new(ctx, opts)
  if type(ctx) ~= "table" or type(ctx.run_id) ~= "string" then
    error("saga.new expects the run's ctx", 2)
  end
  opts = opts or {}
  return setmetatable({ ctx = ctx, done = {}, compensated = {}, failed = {}, committed = {},
    policy = retry.policy(opts.policy or DEFAULT_POLICY) }, Saga)
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

-- Runs fn(arg) under the saga's retry policy; a 5xx/408/429 response that
-- outlives the retries counts as a failure.
local function reliably(self, fn, arg)
  local ok, res = pcall(retry.run, self.policy, fn, arg)
  if ok and type(res) == "table" and math.type(res.status) == "integer"
      and (res.status >= 500 or res.status == 408 or res.status == 429) then
    return false, ("HTTP %d"):format(res.status)
  end
  return ok, res
end

--- Compensates the completed steps, newest first, then raises err.
function Saga:abort(err)
  for i = #self.done, 1, -1 do
    local step = self.done[i]
    if step.compensate then
      local ok, cerr = reliably(self, step.compensate, step.result)
      if ok then
        self.compensated[#self.compensated + 1] = step.name
      else
        self.failed[#self.failed + 1] = { step = step.name, error = tostring(cerr) }
        self.ctx.log.error("compensation failed", { step = step.name, error = tostring(cerr) })
      end
    end
  end
  self.done = {}
  error(err, 0)
end

--- Runs commit work fn() (retried); raises when it still fails.
function Saga:commit(name, fn)
  if type(name) ~= "string" or type(fn) ~= "function" then
    error("saga:commit(name, fn): name must be a string and fn a function", 2)
  end
  local ok, res = reliably(self, fn)
  if not ok then
    error(res, 0)
  end
  self.committed[#self.committed + 1] = name
  return res
end

return saga
