-- chorus.scheduler — the schedules of `chorus serve`: a background run that
-- looks at the loaded workflows' schedules (chorus.schedule) and starts a
-- run for each slot as it comes due.
--
-- Each slot starts at most one run, across reloads, restarts and crashes:
-- the run's id is made of the workflow's name and the slot, and the run's
-- first records (the run, its timer) land in the same commit as the
-- schedule's record in the data folder (the slots handled so far, the last
-- run). A slot whose run record exists is never started again; a run a
-- crash interrupted is resumed by recovery like any other.
--
-- The loop reads state.workflows each turn, so a reload takes effect within
-- a turn: a schedule that changes (another cron expression or every) starts
-- afresh from now, one that is gone stops and its record goes.
local core = require "chorus.core"
local log = require("chorus.log").event
local schedule = require "chorus.schedule"
local state = require "chorus.server_state"

local scheduler = {}

-- The longest sleep of the loop: how soon a reload or the end of a run in
-- flight (overlap, catch_up = "all") is seen.
local TURN = 0.5

local known = {} -- workflow name → { key, through, backlog_until, last_run, last_skipped } while loaded

-- A run of the schedule in flight: the last one started, still running here
-- or not yet finished in the data folder (a restart's recovery resumes it).
local function busy(s)
  local id = s.last_run and s.last_run.id
  if not id then
    return false
  end
  local st = state.store
  return state.runs.running[id] ~= nil or (st ~= nil and st.st:get("timers", id) ~= nil)
end

-- The record the data folder keeps of a schedule (and `chorus schedules
-- list` reads): its declaration, what was handled, the last run and skip.
local function record_of(spec, s)
  return { key = s.key, cron = spec.cron, every = spec.every, catch_up = spec.catch_up, overlap = spec.overlap,
    through = s.through, last_run = s.last_run, last_skipped = s.last_skipped }
end

local function save(name, spec, s)
  if state.store then
    state.store:put_schedule(name, record_of(spec, s))
  end
end

local function commit()
  local st = state.store
  if not st then
    return true
  end
  return pcall(st.commit, st)
end

-- Starts the run of slot: its records and the schedule's in one commit,
-- then the run in a task of its own. Returns false when the commit failed
-- or the server has max_inflight_runs runs in flight or the workflow its
-- share of them, inflight_runs_per_workflow (the slot is then not handled:
-- the next turn tries again).
local function start_slot(name, entry, s, slot, before)
  local svc = state.runs
  local id = schedule.run_id(core.sha256, name, slot)
  -- started before (a reload back to this schedule); a record that cannot
  -- be read counts as one: a slot is never started twice
  local lok, existing = pcall(svc.lookup, svc, id)
  if not lok or existing then
    save(name, entry.workflow.schedule, s)
    return commit()
  end
  local full = svc:at_capacity(name)
  if full then
    -- the slot waits, not handled, and is tried again at each turn (a
    -- request would get 503 and retry); slots that pass meanwhile follow
    -- the schedule's rules, as after a stall
    if s.deferred ~= slot then
      s.deferred = slot
      log("warn", full == "server" and "scheduled run deferred: max_inflight_runs runs are in flight"
        or "scheduled run deferred: the workflow has inflight_runs_per_workflow runs in flight",
        { workflow = name, slot = slot })
    end
    s.through = before
    return false
  end
  s.deferred = nil
  local wf = entry.workflow
  local now = core.now()
  local input = { slot = slot, slot_time = schedule.iso(slot) }
  local rec = svc:new_record(id, name, nil, { deadline_at = wf.timeout and now + wf.timeout })
  rec.schedule = { slot = slot, slot_time = input.slot_time }
  local bok, berr = pcall(svc.begin, svc, rec, entry, input)
  local previous = s.last_run
  s.last_run = { id = id, slot = slot, started = now }
  save(name, wf.schedule, s)
  -- the run counts from now, not from when its task starts: the next slots
  -- due in this turn (a backlog, other schedules) see it at the caps
  local counted = svc:count_in(name)
  local cok, cerr = bok, berr
  if bok then
    cok, cerr = commit()
  end
  if not cok then
    core.release(counted)
    log("error", "could not store a scheduled run; the slot is tried again", { workflow = name, slot = slot,
      run_id = id, error = tostring(cerr) })
    s.through, s.last_run = before, previous
    svc:abandon(rec, nil, nil, cerr)
    return false
  end
  log("info", "scheduled run started", { workflow = name, slot = slot, run_id = id })
  core.start(nil, function() svc:execute(entry, rec, input, nil, counted) end)
  return true
end

-- The schedule's state when the loop first sees it in this process: the
-- stored one (slots missed since then follow catch_up), or a fresh one
-- whose first slot is the next after now.
local function first_sight(name, spec, now)
  local key = schedule.key(spec)
  local rec = state.store and state.store:get_schedule(name)
  if rec and rec.key == key and type(rec.through) == "number" then
    return { key = key, through = rec.through, backlog_until = now, last_run = rec.last_run,
      last_skipped = rec.last_skipped }
  end
  return { key = key, through = now, fresh = true }
end

-- One schedule at time now: the step's actions, taken.
local function turn(name, entry, now)
  local spec = entry.workflow.schedule
  local s = known[name]
  if not s then
    s = first_sight(name, spec, now)
    known[name] = s
  elseif s.key ~= schedule.key(spec) then -- a reload changed it: afresh from now
    log("info", "schedule changed; its slots start from now", { workflow = name, schedule = schedule.key(spec) })
    s = { key = schedule.key(spec), through = now, fresh = true, last_run = s.last_run,
      last_skipped = s.last_skipped }
    known[name] = s
  end
  if s.fresh then
    s.fresh = nil
    save(name, spec, s)
    commit()
  end
  local before, backlog = s.through, s.backlog_until
  local actions = schedule.step(spec, s, now, busy(s))
  for i, a in ipairs(actions) do
    if a.start then
      if not start_slot(name, entry, s, a.start, before) then
        if i == 1 then -- nothing was handled: the missed slots still follow catch_up
          s.backlog_until = backlog
        end
        return
      end
      before = a.start
    else
      s.last_skipped = { slot = a.skip, count = a.count, reason = a.reason, at = now }
      log("info", "scheduled slots skipped", { workflow = name, through = a.skip, slots = a.count,
        reason = a.reason })
      save(name, spec, s)
      commit()
      before = a.skip
    end
  end
end

-- Forgets the schedules no longer loaded (a reload removed the workflow or
-- its schedule), and their records.
local function forget_gone()
  local gone = false
  for name in pairs(known) do
    local entry = state.workflows[name]
    if not (entry and entry.workflow.schedule) then
      known[name] = nil
      if state.store then
        state.store:del_schedule(name)
      end
      gone = true
      log("info", "schedule stopped", { workflow = name })
    end
  end
  if gone then
    commit()
  end
end

-- The stored records of schedules the loaded scripts no longer have (the
-- scripts changed while the server was down) go at the start.
local function drop_stale_records()
  local st = state.store
  if not st then
    return
  end
  local stale = false
  for name in pairs(st:schedules()) do
    local entry = state.workflows[name]
    if not (entry and entry.workflow.schedule) then
      st:del_schedule(name)
      stale = true
    end
  end
  if stale then
    commit()
  end
end

--- The loop, as a background run of `chorus serve`.
function scheduler.loop()
  local ok, err = pcall(drop_stale_records)
  if not ok then
    log("error", "cannot read the stored schedules", { error = tostring(err) })
  end
  while not state.draining do
    local now = core.now()
    local wake = now + TURN
    forget_gone()
    for name, entry in pairs(state.workflows) do
      if entry.workflow.schedule then
        local tok, terr = pcall(turn, name, entry, now)
        if not tok then
          log("error", "a schedule's turn failed", { workflow = name, error = tostring(terr) })
        end
        local s = known[name]
        local next_slot = s and schedule.next_after(entry.workflow.schedule, math.max(s.through, now))
        if next_slot and next_slot < wake then
          wake = next_slot
        end
      end
    end
    core.sleep(math.max(0.01, wake - core.now()))
  end
end

--- What a schedule shows (GET /admin/schedules, `chorus schedules list`)
--- from its stored record: its declaration, the next slot, the last run
--- (with status_of(id), its status now) and the last skip.
function scheduler.view(name, rec, now, status_of)
  local spec = { cron = rec.cron, every = rec.every }
  local next_slot = (rec.cron or rec.every) and schedule.next_after(spec, math.max(rec.through or now, now))
  local last = rec.last_run
  if type(last) == "table" then
    last = { id = last.id, slot = last.slot, slot_time = last.slot and schedule.iso(last.slot), started = last.started,
      status = status_of(last.id) }
  end
  return { workflow = name, cron = rec.cron, every = rec.every, catch_up = rec.catch_up, overlap = rec.overlap,
    next_slot = next_slot, next_slot_time = next_slot and schedule.iso(next_slot), last_run = last,
    last_skipped = rec.last_skipped }
end

-- The status of a run from its record's JSON text (or live table).
function scheduler.status_of_record(rec)
  if type(rec) == "table" then
    return rec.status
  elseif type(rec) == "string" then
    local ok, decoded = pcall(core.json.decode, rec)
    return ok and type(decoded) == "table" and decoded.status or nil
  end
  return nil
end

--- The loaded workflows' schedules, as GET /admin/schedules shows them.
function scheduler.list()
  local out, now = {}, core.now()
  for name, entry in pairs(state.workflows) do
    local spec = entry.workflow.schedule
    if spec then
      local s = known[name] or { key = schedule.key(spec), through = now }
      out[#out + 1] = scheduler.view(name, record_of(spec, s), now, function(id)
        local ok, rec = pcall(state.runs.lookup, state.runs, id)
        return ok and scheduler.status_of_record(rec) or nil
      end)
    end
  end
  table.sort(out, function(a, b) return a.workflow < b.workflow end)
  return out
end

return scheduler
