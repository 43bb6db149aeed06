-- chorus.breaker — circuit breakers for workflows (Resilience4j semantics,
-- engine in runtime/breaker.c), shared per name by every run of the process.
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

local breaker = {}

local Breaker = {}
Breaker.__index = Breaker

local OPTIONS = {
  name = "string", window = "number", window_seconds = "number", min_calls = "number",
  failure_rate = "number", slow_call_rate = "number", slow_call_duration = "number",
  open_for = "number", half_open_calls = "number", failure = "function",
}

local ERROR_MT = {
  __name = "chorus.error",
  __tostring = function(e) return ("%s: %s"):format(e.kind, e.message) end,
}

local function http_failure(result)
  if type(result) ~= "table" or math.type(result.status) ~= "integer" then
    return false
  end
  local s = result.status
  return s >= 500 or s == 408 or s == 429
end

--- The breaker named opts.name, created with opts on first use.
function breaker.new(opts)
  if type(opts) ~= "table" or type(opts.name) ~= "string" or opts.name == "" then
    error("breaker.new expects a table with a name", 2)
  end
  for k, v in pairs(opts) do
    if OPTIONS[k] == nil then
      error(("breaker.new: unknown option '%s'"):format(tostring(k)), 2)
    end
    if type(v) ~= OPTIONS[k] then
      error(("breaker.new: option '%s' must be a %s"):format(k, OPTIONS[k]), 2)
    end
  end
  local ok, impl = pcall(core.breaker, opts.name, opts)
  if not ok then
    error(impl, 2)
  end
  return setmetatable({ name = opts.name, impl = impl, failure = opts.failure }, Breaker)
end

local function finish(self, t0, ok, ...)
  local duration = core.monotime() - t0
  local failed
  if self.failure then
    failed = self.failure(ok and (...) or nil, (not ok) and (...) or nil) and true or false
  else
    failed = not ok or http_failure((...))
  end
  self.impl:record(failed, duration)
  if not ok then
    error((...), 0)
  end
  return ...
end

--- Calls fn(...) through the breaker.
function Breaker:call(fn, ...)
  if not self.impl:acquire() then
    error(setmetatable({ kind = "breaker_open", breaker = self.name, attempts = 0,
      message = ("circuit breaker '%s' is open"):format(self.name) }, ERROR_MT), 2)
  end
  -- a task cancelled inside fn never reports a result: give the permit back
  local settled = false
  local _ <close> = setmetatable({}, { __close = function()
    if not settled then
      self.impl:release()
    end
  end })
  local t0 = core.monotime()
  return (function(...)
    settled = true
    return finish(self, t0, ...)
  end)(pcall(fn, ...))
end

function Breaker:state()
  return self.impl:state()
end

--- Every breaker of the process and its state (GET /admin/breakers).
function breaker.states()
  return core.breakers()
end

return breaker
