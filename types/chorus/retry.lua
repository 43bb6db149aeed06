---@meta chorus.retry
-- LuaLS annotations of `require "chorus.retry"` (README "Lua API").

---@class chorus.retry.PolicyOptions
---@field attempts? integer
---@field backoff? "exponential"|"full_jitter"|"decorrelated_jitter"|"equal_jitter"
---@field base? number         seconds
---@field cap? number          seconds; also the longest Retry-After honoured
---@field max_elapsed? number  seconds
---@field budget? number       on an upstream: retries at most this fraction of its calls

---@class chorus.retry.Policy

local retry = {}

---A retry policy (checked: an unknown option raises).
---@param opts chorus.retry.PolicyOptions
---@return chorus.retry.Policy
function retry.policy(opts) end

---Calls fn(...) and again on timeout/connect/reset (or an error with retryable = true) and on
---408/425/429/5xx responses; when attempts run out, returns the last response or raises the last error.
---@generic R
---@param policy chorus.retry.Policy
---@param fn fun(...): R
---@param ... any
---@return R
function retry.run(policy, fn, ...) end

return retry
