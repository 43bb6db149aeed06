-- The workflow `timeout`: an overall deadline that caps every call and
-- sleep inside the run, then runs on_timeout.
local testing = require "chorus.testing"
local chorus = require "chorus"
local http = require "chorus.http"

local function workflow(body, on_timeout)
  return chorus.workflow { name = "deadline", timeout = 5, run = body, on_timeout = on_timeout }
end

describe("the run deadline", function()
  before_each(testing.reset)

  it("cuts a slow call at the deadline with kind = deadline", function()
    testing.mock("slow", { status = 200, delay = 60 })
    local r = testing.run(workflow(function() return http.upstream("slow"):get("/x", { timeout = 30 }) end))
    assert.is_false(r.ok)
    assert.are.equal("deadline", r.error.kind)
    assert.are.equal(5, r.elapsed)
  end)

  it("caps the calls of concurrent tasks too", function()
    testing.mock("slow", { status = 200, delay = 60 })
    local r = testing.run(workflow(function()
      return chorus.all(function() return http.upstream("slow"):get("/a") end,
        function() return http.upstream("slow"):get("/b") end)
    end))
    assert.are.equal("deadline", r.error.kind)
    assert.are.equal(5, r.elapsed)
  end)

  it("never sleeps past the deadline", function()
    local r = testing.run(workflow(function(ctx) ctx.sleep(3); ctx.sleep(3) end))
    assert.are.equal("deadline", r.error.kind)
    assert.are.equal(5, r.elapsed)
  end)

  -- min(NaN, the time left) is NaN: a call with timeout = 0/0 was not
  -- capped by the deadline (the C transport refuses it; a mock did not)
  it("refuses a NaN timeout rather than leave the call uncapped", function()
    testing.mock("slow", { status = 200, delay = 60 })
    local r = testing.run(workflow(function() return http.upstream("slow"):get("/x", { timeout = 0 / 0 }) end))
    assert.is_false(r.ok)
    assert.matches("timeout must be a non-negative number of seconds", tostring(r.error.message or r.error), 1, true)
    assert.are.equal(0, r.elapsed)
  end)

  it("refuses a NaN sleep (it slept not at all, its wake time NaN in the journal)", function()
    local r = testing.run(workflow(function(ctx) ctx.sleep(0 / 0) end))
    assert.is_false(r.ok)
    assert.matches("ctx.sleep: seconds must be a non-negative number", tostring(r.error.message or r.error), 1, true)
  end)

  -- Only the run's own deadline times it out: an error of kind deadline
  -- that the script raised, or a child's that timed out on its own (shorter)
  -- timeout and that the script let through, made a run with no deadline
  -- timed_out, ran its on_timeout and rolled back its sagas.
  it("takes a deadline error the script raises or lets through for an ordinary failure", function()
    local mine = chorus.workflow { name = "mine", run = function() error({ kind = "deadline", message = "mine" }) end,
      on_timeout = function() return "ran" end }
    local r = testing.run(mine, {})
    assert.are.same({ "failed", "deadline" }, { r.status, r.error.kind })
    assert.is_nil(r.on_timeout)
    local child = chorus.workflow { name = "child", timeout = 5, run = function(ctx) ctx.sleep(100) end }
    local parent = chorus.workflow { name = "parent", run = function(ctx) return ctx.call("child", {}) end,
      on_timeout = function() return "ran" end }
    r = testing.run(parent, {}, { workflows = { child = child } })
    assert.are.same({ "failed", "deadline", 5 }, { r.status, r.error.kind, r.elapsed })
    assert.is_truthy(r.error.child_run_id)
    assert.is_nil(r.on_timeout)
  end)

  it("lets a call that fits finish normally", function()
    testing.mock("quick", { status = 200, delay = 1 })
    local r = testing.run(workflow(function() return http.upstream("quick"):get("/x").status end))
    assert.are.equal(200, r.value)
  end)

  it("runs on_timeout with time to clean up, then fails the run", function()
    testing.mock("slow", { status = 200, delay = 60 })
    testing.mock("alerts", { status = 202 })
    local r = testing.run(workflow(function() return http.upstream("slow"):get("/x") end,
      function(ctx) http.upstream("alerts"):post("/timeouts", { json = { run = ctx.run_id } }) end))
    assert.are.equal("deadline", r.error.kind)
    assert.called_upstream(r, "alerts", "POST", "/timeouts")
  end)
end)
