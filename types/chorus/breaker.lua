---@meta chorus.breaker
-- LuaLS annotations of `require "chorus.breaker"` (README "Lua API").

---@class chorus.breaker.Options
---@field name string                 shared by name across the workflow's runs
---@field window? integer             calls in the sliding window
---@field window_seconds? integer     or a time window
---@field min_calls? integer
---@field failure_rate? number        percent
---@field slow_call_rate? number      percent
---@field slow_call_duration? number  seconds
---@field open_for? number            seconds
---@field half_open_calls? integer
---@field failure? fun(ok: boolean, value: any): boolean  what counts as a failure

---@class chorus.Breaker
local Breaker = {}

---Calls fn(...) through the breaker; raises {kind="breaker_open"} without calling it while open.
---@generic R
---@param fn fun(...): R
---@param ... any
---@return R
function Breaker:call(fn, ...) end

---@return "closed"|"open"|"half_open"
function Breaker:state() end

local breaker = {}

---A circuit breaker with Resilience4j semantics.
---@param opts chorus.breaker.Options
---@return chorus.Breaker
function breaker.new(opts) end

return breaker
