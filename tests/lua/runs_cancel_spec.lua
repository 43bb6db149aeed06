-- Cancelling a run (DELETE /runs/ID, `chorus runs cancel`) on mocks and the
-- virtual clock: testing.run's cancel_at cancels through the run service
-- exactly as the server does (Service:cancel).
local testing = require "chorus.testing"
local chorus = require "chorus"
local http = require "chorus.http"
local saga = require "chorus.saga"

local function booking(on_cancel)
  return chorus.workflow {
    name = "booking",
    on_cancel = on_cancel,
    run = function(ctx)
      local s = saga.new(ctx)
      s:step("hold", function() return http.upstream("hotel"):post("/holds").json.id end,
        function(id) return http.upstream("hotel"):delete("/holds/" .. id) end)
      ctx.sleep(1)
      local ok, err = pcall(function() return http.upstream("slow"):get("/confirm", { timeout = 300 }) end)
      -- a cancel is not the script's to catch (a script's pcall re-raises
      -- it; this spec's plain one does not, but no effect happens after it)
      return { caught = not ok and err.kind, later = http.upstream("hotel"):post("/after") }
    end,
  }
end

describe("cancelling a run", function()
  before_each(function()
    testing.reset()
    testing.mock("hotel", { status = 201, json = { id = "h1" } })
    testing.mock("slow", { status = 200, delay = 120 })
    testing.mock("alerts", { status = 202 })
  end)

  it("stops it at its wait with kind cancelled, compensates its saga, runs on_cancel", function()
    local r = testing.run(booking(function(ctx)
      http.upstream("alerts"):post("/cancelled", { json = { run = ctx.run_id } })
      return "cleaned up"
    end), {}, { cancel_at = 10, deliver = true })
    assert.is_false(r.ok)
    assert.are.equal("cancelled", r.status)
    assert.are.equal("cancelled", r.error.kind)
    assert.are.same({ ok = true, value = "cleaned up" }, r.on_cancel)
    assert.called_upstream(r, "hotel", "DELETE", "/holds/h1") -- the compensation, through the outbox
    assert.called_upstream(r, "alerts", "POST", "/cancelled")
    assert.not_called_upstream(r, "hotel", "POST", "/after") -- pcall did not swallow it
  end)

  it("cuts the call it waits on at the cancel", function()
    local r = testing.run(booking(), {}, { cancel_at = 10 })
    assert.are.equal("cancelled", r.status)
    assert.are.equal(10, r.elapsed) -- the 120 s call was cut
    assert.is_nil(r.on_cancel) -- none declared
  end)

  it("cancels a run that sleeps", function()
    local r = testing.run(chorus.workflow { name = "sleeper", run = function(ctx) ctx.sleep(3600); return 1 end },
      {}, { cancel_at = 60 })
    assert.are.equal("cancelled", r.status)
    assert.are.equal(60, r.elapsed)
  end)

  it("cuts every task of chorus.all", function()
    local r = testing.run(chorus.workflow { name = "fan", run = function()
      return chorus.all(function() return http.upstream("slow"):get("/a") end,
        function() return http.upstream("slow"):get("/b") end)
    end }, {}, { cancel_at = 5 })
    assert.are.equal("cancelled", r.status)
    assert.are.equal(5, r.elapsed)
  end)

  it("keeps on_cancel's error in the outcome, and the run still ends cancelled", function()
    local r = testing.run(booking(function() error({ kind = "oops", message = "alert failed" }) end), {},
      { cancel_at = 10 })
    assert.are.equal("cancelled", r.status)
    assert.is_false(r.on_cancel.ok)
    assert.are.equal("oops", r.on_cancel.error.kind)
  end)

  it("gives on_cancel a short deadline of its own", function()
    local r = testing.run(booking(function(ctx) ctx.sleep(3600) end), {}, { cancel_at = 10 })
    assert.are.equal("cancelled", r.status)
    assert.are.equal("deadline", r.on_cancel.error.kind)
    assert.are.equal(20, r.elapsed) -- 10 s of grace after the cancel
  end)

  it("does nothing to a run that ended first", function()
    local r = testing.run(chorus.workflow { name = "quick", run = function(ctx) ctx.sleep(1); return 7 end },
      {}, { cancel_at = 30 })
    assert.are.equal("succeeded", r.status)
    assert.are.equal(7, r.value)
  end)

  it("is not the status of a run whose own code raised kind cancelled", function()
    local r = testing.run(chorus.workflow { name = "self", run = function()
      error({ kind = "cancelled", message = "mine" })
    end })
    assert.are.equal("failed", r.status)
  end)

  it("rejects an on_cancel that is not a function", function()
    assert.has_error(function() chorus.workflow { name = "bad", run = function() end, on_cancel = 1 } end,
      "chorus.workflow: field 'on_cancel' must be a function, got number")
  end)

  it("survives a crash: the resumed run is cancelled after its replay", function()
    -- the cancel lands at 10 s and its compensation is the run's third
    -- effect, after which the process dies: the restart finds the cancel
    -- in the run's record (nobody cancels it again)
    local r = testing.run(booking(function() return "again" end), {}, { cancel_at = 10, crash_after = 3 })
    assert.is_true(r.crashed)
    local mark = r.timeline[#r.timeline]
    assert.are.equal("resumed", mark.kind)
    assert.are.equal(1767225610, mark.at)
    assert.are.equal("cancelled", r.status)
    assert.are.same({ ok = true, value = "again" }, r.on_cancel)
  end)
end)

describe("cancelling a run of a script", function()
  before_each(function()
    testing.reset()
    testing.mock("slow", { status = 200, delay = 120 })
    testing.mock("after", { status = 200 })
  end)

  local function script(body)
    local path = os.tmpname() .. ".lua"
    local f = assert(io.open(path, "w"))
    f:write(body)
    f:close()
    return path
  end

  it("cannot be caught by the script's pcall", function()
    local path = script([[
local chorus = require "chorus"
local http = require "chorus.http"
return chorus.workflow { name = "catcher", run = function()
  local ok, err = pcall(function() return http.upstream("slow"):get("/x") end)
  http.upstream("after"):post("/caught", { json = { ok = ok, kind = err and err.kind } })
  return "went on"
end }
]])
    local r = testing.run(path, {}, { cancel_at = 3 })
    os.remove(path)
    assert.are.equal("cancelled", r.status)
    assert.not_called_upstream(r, "after")
  end)

  it("ends a lock wait and a ctx.poll wait", function()
    local path = script([[
local chorus = require "chorus"
return chorus.workflow { name = "waiter", run = function(ctx)
  return chorus.all(function() return ctx.poll(function() return nil end, { every = 60 }) end,
    function() return ctx.lock("l", function() ctx.sleep(600) end) end)
end }
]])
    local r = testing.run(path, {}, { cancel_at = 100 })
    os.remove(path)
    assert.are.equal("cancelled", r.status)
    assert.are.equal(100, r.elapsed)
  end)
end)
