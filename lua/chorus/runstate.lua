-- chorus.runstate — what the Lua side knows about each live run: its ctx,
-- trace context and timeline of calls, keyed by run id.
--
-- Entries are added when a run starts (chorus.runner) and removed by a
-- to-be-closed guard when it ends, also when it fails or is cancelled.
local core = require "chorus.core"

local runstate = { MAX_TIMELINE = 1000 }
local live = {}

local ENDING_MT = { __close = function(guard) live[guard.id] = nil end }

function runstate.begin(id, state)
  live[id] = state
  return setmetatable({ id = id }, ENDING_MT)
end

function runstate.current()
  local id = core.run_id()
  return id and live[id]
end

local DEADLINE_MT = {
  __name = "chorus.error",
  __tostring = function(e) return ("%s: %s"):format(e.kind, e.message) end,
}

--- The error a call or sleep raises at the run's deadline.
function runstate.deadline_error(what)
  return setmetatable({ kind = "deadline", message = ("the run's deadline passed (%s)"):format(what),
    attempts = 0 }, DEADLINE_MT)
end

--- Seconds left before the deadline of run (a runstate entry; the current
--- run when nil), math.huge when it has none. The deadline is a wall-clock
--- time (seconds since the epoch, virtual under chorus.testing), so it
--- survives a restart of the process.
function runstate.remaining(run)
  run = run or runstate.current()
  if not run or not run.deadline then
    return math.huge
  end
  return run.deadline - core.now()
end

-- Times in records are kept to the microsecond: finer digits carry no
-- information and make every float in a record 17 digits long.
local floor = math.floor

local function micro(t)
  return floor(t * 1e6 + 0.5) / 1e6
end
runstate.micro = micro

-- Appends an outbound call to the timeline of run (a runstate entry).
function runstate.record_call(run, req, started, duration, outcome)
  local timeline = run.timeline
  local n = #timeline
  if n >= runstate.MAX_TIMELINE then
    -- a run making thousands of calls keeps its first ones and a count
    run.timeline_dropped = (run.timeline_dropped or 0) + 1
    return
  end
  timeline[n + 1] = {
    target = req.upstream or req.url, method = req.method, url = req.url,
    attempts = 1, status = outcome, start = micro(started), duration = micro(duration),
  }
end

return runstate
