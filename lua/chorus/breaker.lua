-- chorus.breaker — circuit breakers for workflows (Resilience4j semantics,
-- engine in runtime/breaker.c), shared per name by every run of the process.
-- A breaker a workflow script makes is its workflow's own: named
-- "WORKFLOW/NAME" (breaker.scoped), so no script can open the breaker of an
-- upstream the operator configured, nor another workflow's.
--
--   local b = breaker.new { name = "cards", window = 20, min_calls = 10,
--                           failure_rate = 50, open_for = 30 }
--   local res = b:call(http.post, url, opts)   -- raises kind = "breaker_open" when open
--   b:state()                                  -- "closed" | "open" | "half_open"
--
-- A call counts as failed when fn raises, or when it returns an HTTP
-- response with status 5xx, 408 or 429; `failure = function(result, err)`
-- overrides that.
local core = require "chorus.core"
local runstate = require "chorus.runstate"

local breaker = {}

local Breaker = {}
Breaker.__index = Breaker

local OPTIONS = {
  name = "string", window = "number", window_seconds = "number", min_calls = "number",
  failure_rate = "number", slow_call_rate = "number", slow_call_duration = "number",
  open_for = "number", half_open_calls = "number", failure = "function",
}

local ERROR_MT = require("chorus.errors").MT
local MAX_NAME_BYTES = 200

local function http_failure(result)
  if type(result) ~= "table" or math.type(result.status) ~= "integer" then
    return false
  end
  local s = result.status
  return s >= 500 or s == 408 or s == 429
end

local function check(opts)
  if type(opts) ~= "table" or type(opts.name) ~= "string" or opts.name == "" then
    error("breaker.new expects a table with a name", 3)
  end
  for k, v in pairs(opts) do
    if OPTIONS[k] == nil then
      error(("breaker.new: unknown option '%s'"):format(tostring(k)), 3)
    end
    if type(v) ~= OPTIONS[k] then
      error(("breaker.new: option '%s' must be a %s"):format(k, OPTIONS[k]), 3)
    end
  end
end

local function engine(name, opts)
  local ok, impl = pcall(core.breaker, name, opts)
  if not ok then
    error(impl, 3)
  end
  return impl
end

--- The breaker named opts.name, created with opts on first use (the
--- runtime's: upstreams' breakers from the config).
function breaker.new(opts)
  check(opts)
  return setmetatable({ name = opts.name, impl = engine(opts.name, opts), failure = opts.failure }, Breaker)
end

--- breaker.new as workflow scripts see it: the breaker is named
--- "WORKFLOW/NAME" after the workflow of the run that uses it (scripts make
--- breakers at their top level, before their workflow has a name), so every
--- run of that workflow shares it and nothing else does. The options are
--- checked at once.
function breaker.scoped(opts)
  check(opts)
  -- a breaker lives as long as the process, outside any run's cap, its name
  -- in it and in /metrics: 10,000 names of megabytes were gigabytes kept
  if #opts.name > MAX_NAME_BYTES then
    error(("breaker.new: the name must be at most %d bytes"):format(MAX_NAME_BYTES), 2)
  end
  local copy = {}
  for k, v in pairs(opts) do
    copy[k] = v
  end
  local ok, err = pcall(core.breaker_check, opts.name, copy) -- bad values are refused now, as by new
  if not ok then
    error(err, 2)
  end
  return setmetatable({ name = opts.name, opts = copy, failure = opts.failure, by_workflow = {} }, Breaker)
end

-- The breakers' names a workflow's scripts made: workflow → { n =, names = set }.
-- The process has room for CHORUS_NAMED_MAX (10,000) breakers in all, the
-- upstreams' too: one workflow making 10,000 names left every other
-- workflow without breakers, and its upstream calls failing with them.
local made = {}

--- The most breaker names one workflow's scripts may make.
breaker.PER_WORKFLOW = 1000

--- Forgets the names made (chorus.testing.reset, with core.breakers_reset).
function breaker.reset()
  made = {}
end

-- The engine of this breaker for the current run.
local function impl_of(self)
  if self.impl then
    return self.impl, self.name
  end
  local run = runstate.current()
  local wf = run and run.workflow or "?"
  local name = wf .. "/" .. self.name
  local impl = self.by_workflow[wf]
  if not impl then
    local mine = made[wf] or { n = 0, names = {} }
    made[wf] = mine
    if not mine.names[self.name] then
      if mine.n >= breaker.PER_WORKFLOW then
        error(("breaker.new: workflow '%s' has made %d breakers, the most one workflow may (names made "
          .. "per run?); '%s' was not made"):format(wf, breaker.PER_WORKFLOW, self.name), 3)
      end
      mine.n, mine.names[self.name] = mine.n + 1, true
    end
    impl = engine(name, self.opts)
    self.by_workflow[wf] = impl
  end
  return impl, name
end

-- self.unjudged(err) (the runtime's, for an upstream's breaker): true when
-- err is no verdict on the upstream; the call gives its permit back
-- instead of counting.
local function finish(self, impl, t0, ok, ...)
  if not ok and self.unjudged and self.unjudged((...)) then
    impl:release()
    error((...), 0)
  end
  local duration = core.monotime() - t0
  local failed
  if self.failure then
    failed = self.failure(ok and (...) or nil, (not ok) and (...) or nil) and true or false
  else
    failed = not ok or http_failure((...))
  end
  impl:record(failed, duration)
  if not ok then
    error((...), 0)
  end
  return ...
end

--- Calls fn(...) through the breaker.
function Breaker:call(fn, ...)
  local impl, name = impl_of(self)
  if not impl:acquire() then
    error(setmetatable({ kind = "breaker_open", breaker = name, attempts = 0,
      message = ("circuit breaker '%s' is open"):format(name) }, ERROR_MT), 2)
  end
  -- a task cancelled inside fn never reports a result: give the permit back
  local settled = false
  local _ <close> = setmetatable({}, { __close = function()
    if not settled then
      impl:release()
    end
  end })
  local t0 = core.monotime()
  return (function(...)
    settled = true
    return finish(self, impl, t0, ...)
  end)(pcall(fn, ...))
end

function Breaker:state()
  return (impl_of(self)):state()
end

--- Every breaker of the process and its state (GET /admin/breakers).
function breaker.states()
  return core.breakers()
end

return breaker
