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
--
-- The run's timeline survives a restart the same way: the entries an
-- effect adds while it is made (journal.note: one per HTTP attempt) are
-- kept in its journal entry, and the replay adds them again, with their
-- first times, as it passes the effect. Each restart writes a "resumed"
-- entry (not a step: nothing replays it as an effect), which the timeline
-- shows as { kind = "resumed", at, replayed } where live execution
-- restarted: after the effects recorded before it have replayed, or at the
-- first effect made live, whichever comes first.
local core = require "chorus.core"
local errors = require "chorus.errors"
local runstate = require "chorus.runstate"
local secrets = require "chorus.secrets"

local journal = {}

-- task coroutine → { path, n (effects made), kids (tasks spawned), run }
local tasks = setmetatable({}, { __mode = "k" })

local ERROR_MT = errors.MT

local EMPTY = {}

-- Adds the resumed marks due once `replayed` effects have replayed (all of
-- them with `all`: live execution has restarted) to the run's timeline.
local function add_marks(run, j, all)
  local marks = j.marks
  while marks[j.next_mark] and (all or marks[j.next_mark].after <= j.replayed) do
    runstate.add_entry(run, marks[j.next_mark].mark)
    j.next_mark = j.next_mark + 1
  end
end

-- The mark of a restart: when, and how many recorded effects replay.
local function resumed_mark(at, replayed)
  return { kind = "resumed", at = runstate.micro(at), replayed = replayed }
end

-- ---- the record cap ---------------------------------------------------------
--
-- What a run writes to disk is bounded by limits.run_record_bytes (the
-- record_cap given to attach; 0: none): its journal entries and timeline
-- here, its finished record at its end (chorus.runs). Without it one
-- script could fill storage.max_size_mb, and every other workflow's run
-- would then fail to store (507). A run resumed after a restart, or
-- redriven, starts from its journal's stored size: counted from zero, a
-- run that crash-looped wrote up to the cap in each of its lives.

--- The error that stops a run past its record cap (a control error, as the
--- memory cap's: the script's pcall does not catch it).
function journal.too_large(cap, what)
  return errors.new("record_too_large", ("the run's durable record would pass limits.run_record_bytes "
    .. "(%d bytes) with %s: it was stopped; write less (smaller step results, fewer or shorter steps) or "
    .. "raise the limit"):format(cap, what))
end

--- The error that stops a run of workflow wf holding its share of the data
--- folder (storage.workflow_share_mb; st: the chorus.store), a control
--- error as too_large's. what: the write refused.
function journal.over_share(st, wf, what)
  return errors.new("storage_share", ("workflow '%s' holds %d bytes of the data folder, its share "
    .. "(storage.workflow_share_mb = %d): %s was refused and the run stopped; its records must be swept "
    .. "or its outbox entries delivered first, or the share raised"):format(wf, st:held(wf),
    st.share // (1024 * 1024), what))
end

--- Counts n more bytes of the run's record (state; its journal's cap) and
--- stops the run when they pass the cap; what says where they came from.
function journal.charge(run, n, what)
  local j = run.journal
  if not j or not j.cap then
    return
  end
  if j.bytes + j.noted + n > j.cap then
    error(runstate.stop(journal.too_large(j.cap, what), run), 0)
  end
  j.noted = j.noted + n
end

-- ---- entries held back ------------------------------------------------------
--
-- The entry of a quiet effect (a safe call, a read of the clock) is held in
-- memory, not written at once: losing it in a crash costs a read again, as
-- the replay makes the effect again and nothing outside changed. It is
-- written (queued for the next group commit) before anything that may
-- depend on it: before the run's next effect that may change something
-- goes out (whose replay must see the same values), before a sync or a
-- simulated crash, and at the end of a run that keeps its journal (a
-- failed run, for its redrive); and, so a crash costs little, once HOLD_MAX
-- entries or HOLD_BYTES of response bodies are held (a run that reads page
-- after page writes as before, and keeps few responses alive), or HOLD_SECONDS
-- after the oldest was held (a background run writes them: a read that
-- waits long on a slow call is on disk when the crash comes), or when they
-- near the run's record cap. A run that
-- only reads and ends well within HOLD_SECONDS writes no journal at all:
-- before, two JSON encodes, two puts and a prefix delete per served fan-out
-- of two calls (a tenth of a durable request's instructions).
--
-- A request's run may hold back its first records too (its record, its
-- timer: chorus.runs, Service:begin): they are written with the first of
-- its entries, before its first effect that may change something, or
-- HOLD_SECONDS after it began, whichever comes first (and its end writes
-- its record if none came): a run that only reads and ends at once writes
-- its finished record alone, and a crash before it loses a run nobody had
-- an answer from, which changed nothing outside.
local HOLD_MAX, HOLD_BYTES, HOLD_SECONDS = 8, 64 * 1024, 0.1

-- runs holding entries → true; the background run that writes those held
-- too long is running while there are any
local holding = setmetatable({}, { __mode = "k" })
local writer_running = false

-- Writes run's journal entry number seq; returns false (nothing written)
-- when the folder refuses it, and why: the error that stops the run.
local function write_entry(run, j, seq, entry)
  if j.store.share and j.store:over_share(run.workflow) then -- not written: the folder is shared
    return false, journal.over_share(j.store, run.workflow, ("step %s's journal entry"):format(entry.step))
  end
  local room = j.cap and math.max(j.cap - j.bytes - j.noted, 0)
  local bytes, size = j.store:put_effect(run.run_id, seq, entry, room)
  if not bytes then -- not written: the journal keeps what came before it
    return false, journal.too_large(j.cap, ("step %s's journal entry (%d bytes)"):format(entry.step, size))
  end
  j.bytes = j.bytes + bytes
  j.written = true
  return true
end

-- Writes the run's first records when they wait (j.first); returns false
-- when the folder refuses them, and the error that stops the run.
local function write_first(j)
  local ok, err = pcall(j.first)
  if not ok then
    return false, errors.new("storage", ("the run's first records could not be written: %s"):format(
      tostring(err)))
  end
  j.first = nil
  return true
end

local function let_go(run, j)
  j.held, j.held_bytes, j.held_at = {}, 0, nil
  holding[run] = nil
end

-- Writes the run's first records if they wait, then its held entries, in
-- order. When the folder refuses one: how = "raise" stops the run (a
-- control error; the run's own code calls), "end" drops the rest (the run
-- has ended: a redrive makes them again), "background" keeps the rest held
-- for the run's next flush to raise.
local function flush(run, j, how)
  local held = j.held
  if not held[1] and not j.first then
    return
  end
  let_go(run, j)
  local ok, err, i = true, nil, 1
  if j.first then
    ok, err = write_first(j)
  end
  while ok and held[i] do
    ok, err = write_entry(run, j, held[i].seq, held[i].entry)
    i = ok and i + 1 or i
  end
  if ok then
    return
  elseif how == "raise" then
    error(runstate.stop(err, run), 0)
  elseif how == "background" then
    j.held = table.move(held, i, #held, 1, {})
    j.held_bytes, j.held_at = HOLD_BYTES, math.huge -- the run's next effect flushes (and raises)
    holding[run] = true
  end
end

-- The background run: every HOLD_SECONDS / 2, writes what runs still going
-- have held longer than HOLD_SECONDS; ends when none holds any.
local function write_old_entries()
  while next(holding) do
    core.sleep(HOLD_SECONDS / 2)
    local now = core.now()
    local due = {}
    for run in pairs(holding) do
      local j = run.journal
      if j and j.held_at and now - j.held_at >= HOLD_SECONDS and not run.stopped then
        due[#due + 1] = run
      end
    end
    for _, run in ipairs(due) do
      if holding[run] then -- (still: an earlier write did not end it)
        flush(run, run.journal, "background")
      end
    end
  end
  writer_running = false
end

-- From now, run's held records are written HOLD_SECONDS later at the latest.
local function watch(run, j)
  j.held_at = core.now()
  holding[run] = true
  if not writer_running then
    writer_running = true
    core.start({ instructions = 0, cpu_ms = 0, memory = 0 }, write_old_entries)
  end
end

-- Holds run's journal entry number seq (its cost: bytes of response body).
local function hold(run, j, seq, entry, bytes)
  local held = j.held
  held[#held + 1] = { seq = seq, entry = entry }
  j.held_bytes = j.held_bytes + bytes
  -- (near the record cap, written now: a run past it stops at the call
  -- that passed it, as when every entry was written at once)
  if #held >= HOLD_MAX or j.held_bytes >= HOLD_BYTES
    or (j.cap and j.held_bytes * 2 >= j.cap - j.bytes - j.noted) then
    return flush(run, j, "raise")
  end
  if not j.held_at then
    watch(run, j)
  end
end

--- At the end of run (a runstate entry): writes the entries it holds when
--- its journal is kept (keep: a failed run's, for a redrive), else lets
--- them go. Returns whether the run wrote any journal entry, which its end
--- must then delete.
function journal.settle(run, keep)
  local j = run.journal
  if not j then
    return false
  end
  if keep then
    flush(run, j, "end")
  end
  let_go(run, j)
  return j.written
end

--- Gives the current run (state) a journal. o: { store, recorded (the
--- run's entries from the store when it resumes: a restart, a redrive;
--- else nil), crash_after (chorus.testing), record_cap
--- (limits.run_record_bytes; nil or 0: none), first (a function that
--- writes the run's first records, when they wait for it: chorus.runs) }.
function journal.attach(state, o)
  local st, recorded, record_cap = o.store, o.recorded, o.record_cap
  local by_step, marks, effects = {}, {}, 0
  for _, entry in ipairs(recorded or EMPTY) do
    if entry.kind == "resumed" then -- an earlier restart, after `effects` effects
      local v = type(entry.value) == "table" and entry.value or EMPTY
      marks[#marks + 1] = { after = effects, mark = resumed_mark(tonumber(v.at) or 0, effects) }
    else
      by_step[entry.step] = entry
      effects = effects + 1
    end
  end
  -- A fresh run's first records (run, timer, idempotency key) must be on
  -- disk before its first effect that may change something reaches the
  -- outside world: otherwise a crash could leave an effect made by a run
  -- that never existed, and the client's retry would start another run and
  -- do it again (a read needs no such wait: see journal.effect).
  local j = { store = st, seq = #(recorded or EMPTY), recorded = by_step,
    replayed = 0, loose = 0, unsynced = recorded == nil, crash_after = o.crash_after,
    -- entries held back (their response bodies' bytes, since when); whether any is in the folder
    held = {}, held_bytes = 0, held_at = nil, written = recorded ~= nil, first = o.first,
    marks = marks, next_mark = 1, n_marks = #marks,
    -- bytes: of the journal entries written; noted: of the timeline's
    -- steps (the finished record holds them, chorus.runs counts it whole)
    bytes = recorded and st:journal_bytes(state.run_id) or 0, noted = 0,
    cap = record_cap and record_cap > 0 and record_cap or nil }
  state.journal = j
  tasks[coroutine.running()] = { path = "r", n = 0, kids = 0, run = state }
  if recorded then -- this restart's mark, kept for the next one's timeline
    local now = core.now()
    j.seq = j.seq + 1
    j.n_marks = j.n_marks + 1
    st:put_effect(state.run_id, j.seq, { step = "resumed#" .. j.n_marks, kind = "resumed", ok = true,
      value = { at = runstate.micro(now) } })
    marks[#marks + 1] = { after = effects, mark = resumed_mark(now, effects) }
  end
  add_marks(state, j, false)
  if j.first then -- written with the held entries: HOLD_SECONDS from now at the latest
    watch(state, j)
  end
end

--- Adds entry to the run's timeline; made inside an effect, it is kept
--- with the effect's journal entry, so the replay adds it again.
function journal.note(run, entry)
  runstate.add_entry(run, entry)
  local t = run.journal and tasks[coroutine.running()]
  while t and t.run == run and not t.notes do -- a task an effect spawned counts as the effect
    t = t.parent
  end
  if t and t.run == run then
    local kept = entry -- (timeline entries are not changed once made)
    if secrets.any() then -- journal entries are kept without secrets
      kept = {}
      for k, v in pairs(entry) do
        kept[k] = type(v) == "string" and secrets.redact(v) or v
      end
    end
    t.notes[#t.notes + 1] = kept
  end
end

--- At the run's end: the marks not placed yet (the run made no effect
--- live after its restart) go at the end of its timeline.
function journal.finish(run)
  if run.journal then
    add_marks(run, run.journal, true)
  end
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
  -- inside an effect (a hedged call's two attempts): the effect is replayed
  -- whole, never re-run, so its tasks must not take names from the parent,
  -- or the tasks spawned after it would be named differently on replay
  if not parent or parent.notes then
    return core.spawn(fn)
  end
  parent.kids = parent.kids + 1
  local path = parent.path .. "." .. parent.kids
  return core.spawn(function()
    tasks[coroutine.running()] = { path = path, n = 0, kids = 0, run = run, parent = parent }
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

-- Kinds of effect that only learn something (the clock, a random number)
-- and change nothing outside the process: made before the run's first
-- records are on disk, a crash leaves nothing behind that a replay should
-- know of (the run is gone with them, unanswered).
local LEARNS_ONLY = { now = true, uuid = true, random = true, clock = true }

--- Runs fn once per step of a durable run: recorded outcome on replay,
--- else fn() recorded. restore(value, ok) rebuilds a recorded value (e.g.
--- puts a metatable back). safe: fn changes nothing outside (an HTTP GET,
--- HEAD, OPTIONS or TRACE), so it need not wait for the run's first records
--- to be on disk. Returns fn's value or raises its error.
function journal.effect(kind, target, fn, restore, safe)
  local run = runstate.current()
  local j = run and run.journal
  if not j then
    if run then -- not durable, but a stopped run makes no effect either
      runstate.check_stop(run)
    end
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
    for _, entry in ipairs(rec.timeline or EMPTY) do
      runstate.add_entry(run, entry)
    end
    add_marks(run, j, false)
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
  runstate.check_stop(run) -- live from here: a cancel asked before a restart stops the run here
  local quiet = safe or LEARNS_ONLY[kind]
  if not quiet then
    flush(run, j, "raise") -- its replay must find what the run learned before it
    if j.unsynced then
      -- every task of the run waits, not only the first to get here: a
      -- sibling task (chorus.all) must not send its effect while the first
      -- records are still on their way to the disk. A safe call or a read of
      -- the clock does not wait: a crash before the records are on disk
      -- leaves no trace of it outside, the same as of the unanswered run
      -- (the wait is a group commit, about half the latency durability adds
      -- to a run that only reads).
      j.store:commit()
      j.unsynced = false
    end
  end
  add_marks(run, j, true)
  local notes, outer = {}, t and t.notes
  if t then
    t.notes = notes
  end
  j.step = step -- journal.current_step, for fn
  local ok, value = pcall(fn)
  if t then
    t.notes = outer
  end
  if core.killed() then -- a limit stopped the run: nothing to record
    error(value, 0)
  end
  if run.stopped then -- so did a control error (e.g. the deadline, inside fn)
    error(run.stopped, 0)
  end
  j.seq = j.seq + 1
  local entry = { step = step, kind = kind, target = target, ok = ok,
    timeline = notes[1] and notes or nil }
  if ok then
    entry.value = value
  else
    entry.error = type(value) == "table" and errors.normalize(value) or errors.strip_internal(value)
  end
  if quiet then
    hold(run, j, j.seq, entry, ok and type(value) == "table" and type(value.body) == "string" and #value.body or 0)
  else
    local wok, werr = write_entry(run, j, j.seq, entry)
    if not wok then
      error(runstate.stop(werr, run), 0)
    end
  end
  if j.crash_after and j.seq - j.n_marks >= j.crash_after then -- chorus.testing: die here
    -- once the effect is journaled (on disk); then a control error: as
    -- after a real crash, nothing of the run goes on (no catch, no
    -- compensation, no further record)
    flush(run, j, "raise")
    j.store:commit()
    error(runstate.stop(setmetatable({ kind = "crash",
      message = ("simulated crash after effect %d"):format(j.seq) }, ERROR_MT), run), 0)
  end
  if not ok then
    error(value, 0)
  end
  return value
end

--- Waits until every write made so far is on disk, those of run (a
--- runstate entry) among them; nothing without a journal. A cancelled run
--- calls it before its compensation and on_cancel run: their effects must
--- not reach the outside world before the cancel's mark (its record,
--- Service:cancel) is durable, or a crash between the two leaves a run
--- with no mark that the replay cancels again, running them twice.
function journal.sync(run)
  local j = run.journal
  if j then
    flush(run, j, "end")
    j.store:commit()
    j.unsynced = false
  end
end

--- The step of the effect whose fn runs now, in a durable run (nil
--- elsewhere): ctx.call names its child after it, so a replay finds it.
function journal.current_step()
  local run = runstate.current()
  return run and run.journal and run.journal.step
end

--- The name the current task's next effect will have ("r.2#4"), the same
--- on every replay; nil outside a journaled task.
function journal.next_step()
  local run = runstate.current()
  local t = run and run.journal and task_entry(run)
  return t and (t.path .. "#" .. (t.n + 1)) or nil
end

--- True when the current run has a journal (it is durable).
function journal.active()
  local run = runstate.current()
  return run ~= nil and run.journal ~= nil
end

return journal
