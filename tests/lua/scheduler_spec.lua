-- The schedules' loop of `chorus serve` (chorus.scheduler) over a run
-- service with caps on its runs in flight, on the virtual clock: slots due
-- at the same time never start past a cap.
local core = require "chorus.core"
local chorus = require "chorus"
local runs = require "chorus.runs"
local outbox = require "chorus.outbox"
local schedule = require "chorus.schedule"
local scheduler = require "chorus.scheduler"
local state = require "chorus.server_state"
local store = require "chorus.store"
local log = require "chorus.log"

local T0 = 1767225600

-- A scheduled workflow whose runs last an hour, noting the most runs in
-- flight the service had, and charged to its workflow, while one ran.
local function long(name, sched, seen)
  return { workflow = chorus.workflow { name = name, schedule = sched, run = function(ctx)
    local svc = state.runs
    seen.server = math.max(seen.server or 0, svc.inflight)
    seen[name] = math.max(seen[name] or 0, svc.charged[name] or 0)
    ctx.sleep(3600)
  end }, hash = "h:" .. name }
end

-- Runs the scheduler's loop for seconds of virtual time over workflows,
-- with limits; st: the data folder's store (nil: none). Returns the runs in
-- flight then, in the server's count and by workflow; the runs are then
-- cancelled (none is left for the next spec's loop).
local function run_loop(workflows, limits, seconds, st)
  local saved = { runs = state.runs, store = state.store, workflows = state.workflows, draining = state.draining }
  local svc = runs.service({ store = st, backend = outbox.memory(true), config = { limits = limits },
    log = function() end, log_sink = function() end })
  state.runs, state.store, state.workflows, state.draining = svc, st, workflows, false
  core.set_clock("virtual", T0)
  log.set_level("error") -- the loop's lines on each start are not this spec's subject
  local ok, err = core.run(nil, function()
    core.spawn(function()
      core.sleep(seconds)
      state.draining = true
    end)
    scheduler.loop()
    local counts = { inflight = svc.inflight, charged = {} }
    for k, v in pairs(svc.charged) do
      counts.charged[k] = v
    end
    for id in pairs(svc.running) do
      svc:cancel(id, "spec")
    end
    while next(svc.running) do
      core.sleep(1)
    end
    return counts
  end)
  core.set_clock("real")
  log.set_level("info")
  for k, v in pairs(saved) do
    state[k] = v
  end
  assert(ok, tostring(err))
  return err
end

describe("the scheduler", function()
  it("starts no more slots due together than the server's max_inflight_runs", function()
    local seen, wfs = {}, {}
    for _, name in ipairs({ "a", "b", "c", "d" }) do
      wfs[name] = long(name, { every = 60 }, seen)
    end
    local counts = run_loop(wfs, { max_inflight_runs = 2, inflight_runs_per_workflow = 0 }, 61)
    assert.are.equal(2, seen.server)
    assert.are.equal(2, counts.inflight)
  end)

  it("starts no more of one workflow's backlog than its inflight_runs_per_workflow share", function()
    local seen = {}
    local sched = { every = 60, catch_up = "all", overlap = "allow" }
    local wfs = { tick = long("tick", sched, seen) }
    -- the data folder says ten slots were missed while the server was down
    local st = store.memory()
    local spec = assert(schedule.check(sched))
    st:put_schedule("tick", { key = schedule.key(spec), every = 60, catch_up = "all", overlap = "allow",
      through = T0 - 600 })
    st:commit()
    local counts = run_loop(wfs, { max_inflight_runs = 10, inflight_runs_per_workflow = 3 }, 1, st)
    assert.are.equal(3, seen.tick)
    assert.are.same({ 3, 3 }, { counts.inflight, counts.charged.tick })
  end)
end)
