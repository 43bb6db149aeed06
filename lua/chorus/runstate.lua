-- chorus.runstate — what the Lua side knows about each live run: its ctx,
-- trace context and timeline of calls, keyed by run id.
--
-- Entries are added when a run starts (chorus.runner) and removed by a
-- to-be-closed guard when it ends, also when it fails or is cancelled.
local core = require "chorus.core"

local runstate = { MAX_TIMELINE = 1000 }
local live = {}

-- what a run still holds when it ends is let go here: the locks
-- (chorus.context sets runstate.release_locks)
local ENDING_MT = { __close = function(guard)
  local state = live[guard.id]
  if state and state.locks_held then
    runstate.release_locks(state)
  end
  live[guard.id] = nil
end }

function runstate.begin(id, state)
  live[id] = state
  return setmetatable({ id = id }, ENDING_MT)
end

function runstate.current()
  local id = core.run_id()
  return id and live[id]
end

local DEADLINE_MT = require("chorus.errors").MT

-- ---- control errors ------------------------------------------------------
--
-- A control error ends a run for a reason that is not the script's to
-- handle: a (simulated) crash, a replay that diverged from its journal
-- (nondeterminism), the run's deadline. The runtime's own limits (budget,
-- memory) are enforced in C (core.killed()). Once a run is stopped, the
-- sandbox's pcall, xpcall and coroutine wrappers and chorus.all & co.
-- re-raise the stop error whatever the script caught, saga:abort
-- compensates nothing, and the journal records nothing more: the run ends
-- with that error (chorus.runner), its __close handlers still releasing
-- what the process holds (locks, bulkhead slots).

--- Marks run (the current run when nil) stopped by the control error err
--- (the first one stays); returns err, for error(runstate.stop(err), 0).
function runstate.stop(err, run)
  run = run or runstate.current()
  if run and not run.stopped then
    run.stopped = err
  end
  return err
end

--- The control error that stopped run (the current run when nil), or nil.
function runstate.stopped(run)
  run = run or runstate.current()
  return run and run.stopped or nil
end

--- The error a call or sleep raises at the run's deadline; it stops the
--- current run (a control error).
function runstate.deadline_error(what)
  return runstate.stop(setmetatable({ kind = "deadline",
    message = ("the run's deadline passed (%s)"):format(what), attempts = 0 }, DEADLINE_MT))
end

--- The error a cancelled run (DELETE /runs/ID, chorus.runs) stops with.
function runstate.cancel_error()
  return setmetatable({ kind = "cancelled", message = "the run was cancelled" }, DEADLINE_MT)
end

--- Cancels run (a runstate entry) now: it is stopped with the cancel
--- error, which each of its waits raises (core.interrupt ends the ones in
--- progress). Returns the error.
function runstate.cancel(run, err)
  run.cancelled, run.cancel_pending = true, nil
  runstate.stop(err, run)
  core.interrupt(run.run_id, err)
  return err
end

--- Before a run waits or makes a live effect: a cancel asked while the run
--- was not live (before a restart: run.cancel_pending) stops it now, after
--- its replay; a run stopped already raises its stop error.
function runstate.check_stop(run)
  run = run or runstate.current()
  if not run then
    return
  end
  local pending = run.cancel_pending
  if pending then
    run.cancel_pending = nil
    run.cancelled = true
    runstate.stop(pending, run)
  end
  if run.stopped then
    error(run.stopped, 0)
  end
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

--- core.sleep(seconds), bounded by the run's deadline: a wait that would
--- pass it sleeps until the deadline, then raises the deadline error
--- (`what` says where).
function runstate.sleep(seconds, what)
  runstate.check_stop()
  local left = runstate.remaining()
  if seconds > left then
    core.sleep(math.max(left, 0))
    error(runstate.deadline_error(what), 0)
  end
  if seconds > 0 then
    core.sleep(seconds)
  end
end

local TIMED_OUT = {}

--- core.wait(token) for at most `seconds`: the value core.notify passed,
--- or nil when the time ran out. A timed-out waiter is gone from the token,
--- so a later core.notify(token) finds nobody and returns false (which is
--- how the lock and bulkhead queues skip it).
function runstate.wait(token, seconds)
  runstate.check_stop()
  if seconds == math.huge then
    return core.wait(token)
  end
  -- a plain task (not journal.spawn): no effect of its own, and the journal
  -- names of the caller's later tasks stay those of a wait that did not
  -- time out
  local timer = core.spawn(function()
    core.sleep(math.max(seconds, 0))
    core.notify(token, TIMED_OUT)
  end)
  local value = core.wait(token)
  core.cancel(timer)
  if value == TIMED_OUT then
    return nil
  end
  return value
end

-- Times in records are kept to the microsecond: finer digits carry no
-- information and make every float in a record 17 digits long.
local floor = math.floor

local function micro(t)
  return floor(t * 1e6 + 0.5) / 1e6
end
runstate.micro = micro

--- Appends entry to the timeline of run (a runstate entry). A run making
--- thousands of calls keeps its first ones and a count (timeline_dropped).
function runstate.add_entry(run, entry)
  local timeline = run.timeline
  local n = #timeline
  if n >= runstate.MAX_TIMELINE then
    run.timeline_dropped = (run.timeline_dropped or 0) + 1
    return
  end
  timeline[n + 1] = entry
end

--- The timeline entry of one outbound call (chorus.journal.note adds it);
--- span_id: the attempt's span, the parent id its traceparent carried.
function runstate.call_entry(req, started, duration, outcome, span_id)
  return { target = req.upstream or req.url, method = req.method, url = req.url,
    attempts = 1, status = outcome, start = micro(started), duration = micro(duration), span_id = span_id }
end

return runstate
