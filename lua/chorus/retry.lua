-- chorus.retry — retries with backoff (engine in runtime/retry.c).
--
--   local p = retry.policy { attempts = 5, backoff = "full_jitter", base = 0.2, cap = 5,
--                            max_elapsed = 30 }
--   local res = retry.run(p, http.get, url)
--
-- retry.run calls fn again when it raises a retryable error (kind timeout,
-- connect or reset, or any error table with retryable = true) or returns an
-- HTTP response with status 408, 425, 429 or 5xx, waiting as the policy says
-- and at least the response's Retry-After (itself capped at the policy's
-- cap). When attempts run out it returns the last response, or raises the
-- last error with `attempts` set. Waits are ctx sleeps: virtual under
-- chorus.testing, and bounded by the run's deadline (a wait that would pass
-- it ends the run with {kind="deadline"} at the deadline).
local core = require "chorus.core"
local runstate = require "chorus.runstate"

local retry = {}

local KNOWN = { attempts = true, backoff = true, base = true, cap = true, max_elapsed = true,
  budget = true }
local RETRYABLE_KINDS = { timeout = true, connect = true, reset = true }
local POLICY = { __name = "chorus.retry.policy" }

--- Validates and completes a policy (defaults: 3 attempts, exponential,
--- base 0.1 s, cap 10 s, no max_elapsed).
function retry.policy(opts)
  if getmetatable(opts) == POLICY then
    return opts
  end
  if type(opts) ~= "table" then
    error("retry.policy expects a table", 2)
  end
  for k in pairs(opts) do
    if not KNOWN[k] then
      error(("retry.policy: unknown option '%s'"):format(tostring(k)), 2)
    end
  end
  if opts.budget ~= nil and (type(opts.budget) ~= "number" or opts.budget < 0) then
    error("retry.policy: budget must be a fraction of calls, e.g. 0.2", 2)
  end
  local ok, p = pcall(core.retry_policy, opts)
  if not ok then
    error(p, 2)
  end
  p.budget = opts.budget
  return setmetatable(p, POLICY)
end

local function retryable_status(status) -- the runtime's one rule (runtime/retry.c)
  return core.retryable_status(status)
end

-- Returns retry?, retry_after for fn's outcome.
local function judge(ok, value)
  if ok then
    if type(value) == "table" and math.type(value.status) == "integer" and retryable_status(value.status) then
      local ra = type(value.headers) == "table" and value.headers["retry-after"]
      return true, ra and core.retry_after(ra, core.now()) or -1
    end
    return false
  end
  if type(value) == "table" and (RETRYABLE_KINDS[value.kind] or value.retryable == true) then
    return true, -1
  end
  return false
end

--- Calls fn(...) under the policy; see the top of this file.
function retry.run(policy, fn, ...)
  return retry.run_budgeted(policy, nil, fn, ...)
end

--- retry.run, drawing retries from a shared budget (core.retry_budget):
--- each first attempt deposits, each retry withdraws, and no retry happens
--- when the budget is empty, so a failing upstream never sees a storm.
function retry.run_budgeted(policy, budget, fn, ...)
  policy = retry.policy(policy)
  if type(fn) ~= "function" then
    error("retry.run: fn must be a function", 2)
  end
  if budget then
    budget:on_call()
  end
  local started = core.monotime()
  local prev, seed = 0, math.random(1, 0x7fffffff)
  local attempt = 0
  while true do
    attempt = attempt + 1
    local res = table.pack(pcall(fn, ...))
    local stop = not res[1] and runstate.stopped()
    if stop then -- a control error (the deadline, a crash) is never retried
      error(stop, 0)
    end
    local again, retry_after = judge(res[1], res[2])
    local wait = -1
    if again then
      wait, prev, seed = core.retry_next(policy, attempt, core.monotime() - started, retry_after, prev, seed)
      if wait >= 0 and budget and not budget:try_withdraw() then
        wait = -1
      end
    end
    if wait < 0 then
      if not res[1] then
        local err = res[2]
        if type(err) == "table" then
          err.attempts = attempt
        end
        error(err, 0)
      end
      return table.unpack(res, 2, res.n)
    end
    runstate.sleep(wait, ("in retry.run's backoff before attempt %d"):format(attempt + 1))
  end
end

return retry
