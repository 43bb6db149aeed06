-- chorus.schedule: the schedule field of chorus.workflow (its checks and
-- errors), the slots of cron and every schedules, the run id of a slot, and
-- the scheduler's step: catch_up after a downtime and overlap, as pure
-- functions of what was handled, the time and whether a run is in flight.
local chorus = require "chorus"
local core = require "chorus.core"
local schedule = require "chorus.schedule"

local function run() end

local function declare(sched)
  return chorus.workflow({ name = "tick", run = run, schedule = sched })
end

local function declare_error(sched)
  local ok, err = pcall(declare, sched)
  assert.is_false(ok)
  return tostring(err)
end

local function spec(t)
  return assert(schedule.check(t))
end

-- 2026-01-01T00:00:00Z
local T0 = 1767225600

describe("the schedule field of chorus.workflow", function()
  it("takes cron or every, with catch_up = latest and overlap = skip by default", function()
    local wf = declare({ cron = "*/5 * * * *" })
    assert.are.same({ cron = "*/5 * * * *", catch_up = "latest", overlap = "skip" }, wf.schedule)
    wf = declare({ every = 300, catch_up = "all", overlap = "allow" })
    assert.are.same({ every = 300, catch_up = "all", overlap = "allow" }, wf.schedule)
    assert.are.equal("integer", math.type(declare({ every = 60.0 }).schedule.every))
  end)

  it("survives chorus.own, as the server copies every workflow", function()
    local wf = assert(chorus.own(declare({ every = 10, catch_up = "skip" })))
    assert.are.same({ every = 10, catch_up = "skip", overlap = "skip" }, wf.schedule)
  end)

  it("refuses a schedule that is not a table", function()
    assert.matches("field 'schedule' must be a table, got string", declare_error("*/5 * * * *"), 1, true)
  end)

  it("refuses neither or both of cron and every", function()
    assert.matches('chorus.workflow "tick": schedule: give exactly one of cron', declare_error({}), 1, true)
    assert.matches("exactly one of cron", declare_error({ cron = "* * * * *", every = 60 }), 1, true)
  end)

  it("refuses a bad cron expression, naming the field and the cron error", function()
    local err = declare_error({ cron = "61 * * * *" })
    assert.matches("schedule.cron: ", err, 1, true)
    assert.matches("minute", err, 1, true)
    assert.matches("schedule.cron must be a string, got number", declare_error({ cron = 5 }), 1, true)
    assert.matches("never fires", declare_error({ cron = "0 0 30 2 *" }), 1, true)
  end)

  it("refuses every that is not a whole number of seconds, at least 1", function()
    for _, bad in ipairs({ 0, -5, 1.5, 0 / 0, math.huge, "60" }) do
      assert.matches("schedule.every must be a whole number of seconds, at least 1",
        declare_error({ every = bad }), 1, true)
    end
  end)

  it("refuses unknown catch_up and overlap values and unknown fields", function()
    assert.matches('schedule.catch_up must be "skip", "latest" or "all" (got none)',
      declare_error({ every = 5, catch_up = "none" }), 1, true)
    assert.matches('schedule.overlap must be "skip" or "allow" (got queue)',
      declare_error({ every = 5, overlap = "queue" }), 1, true)
    assert.matches("schedule: unknown field 'at' (known: cron, every, catch_up, overlap)",
      declare_error({ every = 5, at = "noon" }), 1, true)
  end)

  it("is listed among the known fields", function()
    local ok, err = pcall(chorus.workflow, { name = "x", run = run, shedule = {} })
    assert.is_false(ok)
    assert.matches("schedule", tostring(err):match("known: (.*)"), 1, true)
  end)
end)

describe("slots", function()
  it("of every are the multiples of its seconds since the epoch", function()
    local s = spec({ every = 300 })
    assert.are.equal(T0 + 300, schedule.next_after(s, T0))
    assert.are.equal(T0 + 300, schedule.next_after(s, T0 + 1))
    assert.are.equal(T0 + 600, schedule.next_after(s, T0 + 300))
  end)

  it("of cron are its minutes, in UTC", function()
    local s = spec({ cron = "*/15 * * * *" })
    assert.are.equal(T0 + 900, schedule.next_after(s, T0))
    assert.are.equal(T0 + 900, schedule.next_after(s, T0 + 899.5))
  end)

  it("due: those in (after, upto], oldest first, the newest max of them", function()
    local s = spec({ every = 10 })
    assert.are.same({ T0 + 10, T0 + 20, T0 + 30 }, (schedule.due(s, T0, T0 + 35, 100)))
    assert.are.same({}, (schedule.due(s, T0, T0 + 9, 100)))
    local list, older = schedule.due(s, T0, T0 + 1000, 3)
    assert.are.same({ T0 + 980, T0 + 990, T0 + 1000 }, list)
    assert.is_true(older)
    list, older = schedule.due(s, T0, T0 + 30, 3)
    assert.are.same({ T0 + 10, T0 + 20, T0 + 30 }, list)
    assert.is_false(older)
  end)

  it("due for cron finds the newest slots of a long range without walking all of it", function()
    local s = spec({ cron = "0 * * * *" })
    local year = 365 * 86400
    local list, older = schedule.due(s, T0, T0 + year + 1800, 3)
    assert.are.same({ T0 + year - 7200, T0 + year - 3600, T0 + year }, list)
    assert.is_true(older)
    list, older = schedule.due(s, T0, T0 + 3 * 3600, 10)
    assert.are.same({ T0 + 3600, T0 + 7200, T0 + 10800 }, list)
    assert.is_false(older)
  end)

  it("each has its own run id, UUID-shaped, the same for the same workflow and slot", function()
    local a = schedule.run_id(core.sha256, "report", T0)
    assert.matches("^%x%x%x%x%x%x%x%x%-%x%x%x%x%-5%x%x%x%-[89ab]%x%x%x%-%x%x%x%x%x%x%x%x%x%x%x%x$", a)
    assert.are.equal(a, schedule.run_id(core.sha256, "report", T0))
    assert.are_not.equal(a, schedule.run_id(core.sha256, "report", T0 + 60))
    assert.are_not.equal(a, schedule.run_id(core.sha256, "other", T0))
  end)
end)

-- The slots started and the skips of one step.
local function step(sched, s, now, busy)
  local started, skipped = {}, {}
  for _, a in ipairs(schedule.step(sched, s, now, busy)) do
    if a.start then
      started[#started + 1] = a.start
    else
      skipped[#skipped + 1] = a
    end
  end
  return started, skipped
end

describe("a scheduler step", function()
  it("starts the slot that came due, and nothing before the next", function()
    local s = { through = T0 }
    local sched = spec({ every = 60 })
    assert.are.same({}, (step(sched, s, T0 + 59, false)))
    assert.are.same({ T0 + 60 }, (step(sched, s, T0 + 60.2, false)))
    assert.are.equal(T0 + 60, s.through)
    assert.are.same({}, (step(sched, s, T0 + 61, false)))
  end)

  describe("after a downtime (slots T0+10 .. T0+50 missed)", function()
    local function after_downtime(catch_up, overlap, busy)
      local s = { through = T0, backlog_until = T0 + 55 }
      return s, step(spec({ every = 10, catch_up = catch_up, overlap = overlap }), s, T0 + 55, busy)
    end

    it("skip: none of them", function()
      local s, started, skipped = after_downtime("skip")
      assert.are.same({}, started)
      assert.are.same({ { skip = T0 + 50, count = 5, reason = "catch_up" } }, skipped)
      assert.are.equal(T0 + 50, s.through)
      assert.is_nil(s.backlog_until)
    end)

    it("latest: only the last", function()
      local s, started, skipped = after_downtime("latest")
      assert.are.same({ T0 + 50 }, started)
      assert.are.same({ { skip = T0 + 40, count = 4, reason = "catch_up" } }, skipped)
      assert.is_nil(s.backlog_until)
    end)

    it("latest, while a run of the schedule is still in flight: skipped too (overlap = skip)", function()
      local _, started, skipped = after_downtime("latest", "skip", true)
      assert.are.same({}, started)
      assert.are.same("overlap", skipped[2].reason)
    end)

    it("all, overlap = allow: every one at once, oldest first", function()
      local s, started = after_downtime("all", "allow")
      assert.are.same({ T0 + 10, T0 + 20, T0 + 30, T0 + 40, T0 + 50 }, started)
      assert.is_nil(s.backlog_until)
    end)

    it("all, overlap = skip: one at a time, oldest first, each when the previous has ended", function()
      local sched = spec({ every = 10, catch_up = "all" })
      local s = { through = T0, backlog_until = T0 + 55 }
      local order = {}
      for _ = 1, 5 do
        assert.are.same({}, (step(sched, s, T0 + 56, true))) -- the previous is in flight: wait
        local started = step(sched, s, T0 + 56, false)
        assert.are.equal(1, #started)
        order[#order + 1] = started[1]
      end
      assert.are.same({ T0 + 10, T0 + 20, T0 + 30, T0 + 40, T0 + 50 }, order)
      assert.is_nil(s.backlog_until)
      -- the slot that came due during the catch-up: live again
      assert.are.same({ T0 + 60 }, (step(sched, s, T0 + 61, false)))
    end)

    it("all: at most MAX_CATCH_UP slots, the newest; the older ones skipped", function()
      local sched = spec({ every = 1, catch_up = "all", overlap = "allow" })
      local s = { through = T0, backlog_until = T0 + 1000 }
      local started, skipped = step(sched, s, T0 + 1000, false)
      assert.are.equal(schedule.MAX_CATCH_UP, #started)
      assert.are.equal(T0 + 1000 - schedule.MAX_CATCH_UP + 1, started[1])
      assert.are.same({ { skip = T0 + 1000 - schedule.MAX_CATCH_UP, reason = "catch_up" } }, skipped)
    end)

    it("nothing missed: nothing to catch up", function()
      local s = { through = T0 + 50, backlog_until = T0 + 55 }
      local started, skipped = step(spec({ every = 10, catch_up = "all" }), s, T0 + 55, false)
      assert.are.same({}, started)
      assert.are.same({}, skipped)
      assert.is_nil(s.backlog_until)
    end)
  end)

  describe("overlap", function()
    it("skip: a slot that comes due while a run is in flight is skipped", function()
      local s = { through = T0 }
      local started, skipped = step(spec({ every = 10 }), s, T0 + 10, true)
      assert.are.same({}, started)
      assert.are.same({ { skip = T0 + 10, count = 1, reason = "overlap" } }, skipped)
      assert.are.equal(T0 + 10, s.through)
    end)

    it("allow: it starts anyway", function()
      local s = { through = T0 }
      assert.are.same({ T0 + 10 }, (step(spec({ every = 10, overlap = "allow" }), s, T0 + 10, true)))
    end)

    it("skip, after a stall of the loop: the newest slot runs, the older ones are skipped", function()
      local s = { through = T0 }
      local started, skipped = step(spec({ every = 10 }), s, T0 + 30, false)
      assert.are.same({ T0 + 30 }, started)
      assert.are.same({ { skip = T0 + 20, count = 2, reason = "overlap" } }, skipped)
    end)
  end)
end)

describe("testing.schedule", function()
  local testing = require "chorus.testing"
  before_each(testing.reset)

  local function workflow(sched, nap)
    return chorus.workflow({ name = "report", schedule = sched, run = function(ctx, input)
      local http = require "chorus.http"
      http.upstream("reports"):post("/run", { json = { slot = input.slot } })
      if nap then
        ctx.sleep(nap)
      end
      return { slot = input.slot, slot_time = input.slot_time, now = ctx.now() }
    end })
  end

  it("fires each slot of the range on the virtual clock, a run at its slot's time", function()
    testing.mock("reports", { status = 200, json = {} })
    local out = testing.schedule(workflow({ cron = "0 * * * *" }), { from = T0, to = T0 + 3 * 3600 })
    assert.are.same({ T0 + 3600, T0 + 7200, T0 + 10800 }, out.slots)
    for i, r in ipairs(out.runs) do
      assert.is_true(r.ok)
      assert.are.equal(out.slots[i], r.value.slot)
      assert.are.equal(out.slots[i], r.value.now)
      assert.are.equal(os.date("!%Y-%m-%dT%H:%M:%SZ", out.slots[i]), r.value.slot_time)
      assert.called_upstream(r, "reports", "POST", "/run")
    end
  end)

  it("skips the slots that come due while a run is in flight (overlap = skip)", function()
    testing.mock("reports", { status = 200, json = {} })
    local out = testing.schedule(workflow({ every = 60 }, 150), { from = T0, to = T0 + 600 })
    -- each run takes 150 s: slots 60, 240, 420, 600 run; the two after each are skipped
    assert.are.same({ T0 + 60, T0 + 240, T0 + 420, T0 + 600 }, out.slots)
    assert.are.equal("overlap", out.skipped[1].reason)
    local allowed = testing.schedule(workflow({ every = 60, overlap = "allow" }, 150), { from = T0, to = T0 + 600 })
    assert.are.equal(10, #allowed.slots)
  end)

  it("follows catch_up for the slots missed while the server was down", function()
    testing.mock("reports", { status = 200, json = {} })
    local down = { T0 + 100, T0 + 400 } -- slots 120 .. 360 missed
    local function slots(catch_up)
      return testing.schedule(workflow({ every = 60, catch_up = catch_up }),
        { from = T0, to = T0 + 500, down = down }).slots
    end
    assert.are.same({ T0 + 60, T0 + 420, T0 + 480 }, slots("skip"))
    assert.are.same({ T0 + 60, T0 + 360, T0 + 420, T0 + 480 }, slots("latest"))
    assert.are.same({ T0 + 60, T0 + 120, T0 + 180, T0 + 240, T0 + 300, T0 + 360, T0 + 420, T0 + 480 },
      slots("all"))
  end)

  it("refuses a workflow without a schedule, a bad range, and too many runs", function()
    local plain = chorus.workflow({ name = "plain", run = run })
    assert.has_error(function() testing.schedule(plain, { from = T0, to = T0 + 60 }) end,
      "testing.schedule: the workflow has no schedule")
    assert.has_error(function() testing.schedule(workflow({ every = 60 }), { from = T0 }) end)
    testing.mock("reports", { status = 200, json = {} })
    local ok, err = pcall(testing.schedule, workflow({ every = 1 }), { from = T0, to = T0 + 86400, max_runs = 5 })
    assert.is_false(ok)
    assert.matches("more than 5 runs", tostring(err), 1, true)
  end)
end)
