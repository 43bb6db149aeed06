-- chorus.journal — every effect of a durable run, recorded, and fed back on
-- replay.
--
-- An effect is anything a run does to or learns from the outside world:
-- an HTTP call with its response, now(), random(), uuid(), the wake time of
-- a sleep, an outbox enqueue, a lock. journal.effect(kind, target, fn) runs
-- fn once and records { step, kind, target, ok, value | error } under the
-- run id and a sequence number; when the run is replayed after a crash, the
-- same step gets the recorded outcome back without running fn, and a step
-- whose kind or target differs from the record fails the run with a
-- non-determinism error naming the step.
--
-- Steps are named by task path, not by global order: the run's first task
-- is "r", the children it spawns "r.1", "r.2", ..., and a task's effects
-- are numbered in the order it makes them ("r.2#3"). A task's own code is
-- sequential, so these names stay the same on replay even though concurrent
-- tasks interleave differently once recorded results return at once.
--
-- Runs without a journal (no data folder, chorus.testing) call fn directly.
local core = require "chorus.core"
local errors = require "chorus.errors"
local runstate = require "chorus.runstate"
local secrets = require "chorus.secrets"

local journal = {}

-- task coroutine → { path, n (effects made), kids (tasks spawned), run }
local tasks = setmetatable({}, { __mode = "k" })

local ERROR_MT = errors.MT

--- Gives the current run (state) a journal. recorded: the run's entries
--- from the store when it resumes, else nil.
function journal.attach(state, st, recorded, crash_after)
  local by_step = {}
  for _, entry in ipairs(recorded or {}) do
    by_step[entry.step] = entry
  end
  -- A fresh run's first records (run, timer, idempotency key) must be on
  -- disk before its first effect reaches the outside world: otherwise a
  -- crash could leave an effect made by a run that never existed, and the
  -- client's retry would start another run and do it again.
  state.journal = { store = st, seq = #(recorded or {}), recorded = by_step,
    replayed = 0, loose = 0, unsynced = recorded == nil, crash_after = crash_after }
  tasks[coroutine.running()] = { path = "r", n = 0, kids = 0, run = state }
end

-- The journal entry of the running task. The scheduler reuses finished
-- coroutines for new tasks, so an entry left by an earlier run is not ours.
local function task_entry(run)
  local t = tasks[coroutine.running()]
  return t and t.run == run and t or nil
end

--- core.spawn, naming the child task after its parent when the run has a
--- journal.
function journal.spawn(fn)
  local run = runstate.current()
  local parent = run and run.journal and task_entry(run)
  if not parent then
    return core.spawn(fn)
  end
  parent.kids = parent.kids + 1
  local path = parent.path .. "." .. parent.kids
  return core.spawn(function()
    tasks[coroutine.running()] = { path = path, n = 0, kids = 0, run = run }
    return fn()
  end)
end

local function describe(kind, target)
  return target and (kind .. " " .. target) or kind
end

local function nondeterminism(step, rec, kind, target)
  return setmetatable({ kind = "nondeterminism", step = step,
    message = ("the replay diverged from the run's journal at step %s: the journal has %s, "
      .. "the code now does %s (was the script changed under a running run?)")
      :format(step, describe(rec.kind, rec.target), describe(kind, target)) }, ERROR_MT)
end

--- Runs fn once per step of a durable run: recorded outcome on replay,
--- else fn() recorded. restore(value, ok) rebuilds a recorded value (e.g.
--- puts a metatable back). Returns fn's value or raises its error.
function journal.effect(kind, target, fn, restore)
  local run = runstate.current()
  local j = run and run.journal
  if not j then
    return fn()
  end
  if run.stopped then -- a control error ended the run: nothing more happens or is recorded
    error(run.stopped, 0)
  end
  local t = task_entry(run)
  local step
  if t then
    t.n = t.n + 1
    step = t.path .. "#" .. t.n
  else -- a coroutine the script made itself
    j.loose = j.loose + 1
    step = "?#" .. j.loose
  end
  target = secrets.redact(target) -- journal targets are kept without secrets
  local rec = j.recorded[step]
  if rec then
    j.recorded[step] = nil
    if rec.kind ~= kind or rec.target ~= target then
      error(runstate.stop(nondeterminism(step, rec, kind, target), run), 0)
    end
    j.replayed = j.replayed + 1
    if rec.ok then
      if restore then
        return restore(rec.value, true)
      end
      return rec.value
    end
    local err = rec.error
    if type(err) == "table" then
      err = restore and restore(err, false) or setmetatable(err, ERROR_MT)
    end
    error(err, 0)
  end
  if j.unsynced then
    j.unsynced = false
    j.store:commit()
  end
  local ok, value = pcall(fn)
  if core.killed() then -- a limit stopped the run: nothing to record
    error(value, 0)
  end
  if run.stopped then -- so did a control error (e.g. the deadline, inside fn)
    error(run.stopped, 0)
  end
  j.seq = j.seq + 1
  local entry = { step = step, kind = kind, target = target, ok = ok }
  if ok then
    entry.value = value
  else
    entry.error = type(value) == "table" and errors.normalize(value) or value
  end
  j.store:put_effect(run.run_id, j.seq, entry)
  if j.crash_after and j.seq >= j.crash_after then -- chorus.testing: die here
    -- once the effect is journaled (on disk); then a control error: as
    -- after a real crash, nothing of the run goes on (no catch, no
    -- compensation, no further record)
    j.store:commit()
    error(runstate.stop(setmetatable({ kind = "crash",
      message = ("simulated crash after effect %d"):format(j.seq) }, ERROR_MT), run), 0)
  end
  if not ok then
    error(value, 0)
  end
  return value
end

--- True when the current run has a journal (it is durable).
function journal.active()
  local run = runstate.current()
  return run ~= nil and run.journal ~= nil
end

return journal
