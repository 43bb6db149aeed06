-- chorus.bulkhead — at most `max` concurrent calls per name, with a FIFO
-- wait queue of `queue` callers who wait up to `wait` seconds for a slot
-- (engine in runtime/bulkhead.c). Used by upstreams (`bulkhead = { max =,
-- queue =, wait = }`) so one slow API cannot take every run's capacity.
-- A call that finds it full raises { kind = "bulkhead_full" }.
local core = require "chorus.core"
local runstate = require "chorus.runstate"

local bulkhead = {}

local Bulkhead = {}
Bulkhead.__index = Bulkhead

local ERROR_MT = require("chorus.errors").MT

local function full(self, why)
  return setmetatable({ kind = "bulkhead_full", bulkhead = self.name, attempts = 0,
    message = ("bulkhead '%s' is full (%s)"):format(self.name, why) }, ERROR_MT)
end

--- The bulkhead named name, created with opts { max =, queue =, wait = } on first use.
function bulkhead.get(name, opts)
  opts = opts or {}
  local max, queue, wait = opts.max or 10, opts.queue or 0, opts.wait or 0
  if type(max) ~= "number" or type(queue) ~= "number" or type(wait) ~= "number" or wait < 0 then
    error("bulkhead: max, queue and wait must be numbers (wait >= 0)", 2)
  end
  local ok, impl = pcall(core.bulkhead, name, max, queue)
  if not ok then
    error(impl, 2)
  end
  return setmetatable({ name = name, impl = impl, wait = wait }, Bulkhead)
end

-- Waits in the queue for a slot, at most `wait` seconds and never past the
-- run's deadline (then the deadline error); true when one was handed over.
local function wait_for_slot(self, token)
  local left = runstate.remaining()
  local limit = math.min(self.wait, math.max(left, 0))
  if runstate.wait(token, limit) then
    return true
  end
  -- timed out: leave the queue, unless a slot was handed over just now
  if not self.impl:cancel(token) then
    return true
  end
  if limit < self.wait then
    error(runstate.deadline_error(("waiting for bulkhead '%s'"):format(self.name)), 0)
  end
  return false
end

--- Calls fn(...) holding a slot.
function Bulkhead:call(fn, ...)
  local token = core.wait_token()
  local st = self.impl:acquire(token)
  if st == "rejected" then
    error(full(self, "no slot and no room to wait"), 2)
  end
  if st == "queued" and not wait_for_slot(self, token) then
    error(full(self, ("waited %g s"):format(self.wait)), 2)
  end
  local _ <close> = setmetatable({}, { __close = function()
    local next_token = self.impl:release()
    if next_token ~= 0 then
      core.notify(next_token, true)
    end
  end })
  return fn(...)
end

return bulkhead
