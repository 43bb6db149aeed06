---@meta chorus.saga
-- LuaLS annotations of `require "chorus.saga"` (README "Lua API").

---@class chorus.saga.Options
---@field policy? { attempts?: integer, base?: number, cap?: number }  delivery of the compensations

---@class chorus.Saga
---@field compensated string[]            steps whose compensations were enqueued, newest first
---@field compensation? string            the compensation chain's outbox entry id
---@field failed { step: string, error: any }[]  compensations that raised while captured
local Saga = {}

---Runs action and remembers compensate(result); a step fails only when action raises.
---@generic R
---@param name string
---@param action fun(): R
---@param compensate? fun(result: R)
---@return R
function Saga:step(name, action, compensate) end

---Enqueues the compensations of completed steps (newest first) as one outbox chain, then re-raises err.
---@param err any
function Saga:abort(err) end

---Enqueues fn's calls as one outbox chain; returns the entry id.
---@param name string
---@param fn fun()
---@return string
function Saga:commit(name, fn) end

local saga = {}

---@param ctx chorus.Ctx
---@param opts? chorus.saga.Options
---@return chorus.Saga
function saga.new(ctx, opts) end

return saga
