-- Control errors (a crash, a nondeterministic replay, the deadline) end a
-- run whatever the script does: pcall, xpcall, coroutines, chorus.all_settled
-- and saga:abort cannot swallow them, and every wait is bounded by the
-- run's deadline (chorus.runstate).
local testing = require "chorus.testing"
local chorus = require "chorus"
local core = require "chorus.core"
local http = require "chorus.http"
local retry = require "chorus.retry"
local bulkhead = require "chorus.bulkhead"

local SWALLOW = testing.here "fixtures/control_swallow.lua"
local DEADLINE = testing.here "fixtures/control_deadline.lua"
local MODES = { "pcall", "xpcall", "wrap", "resume", "close", "all_settled" }

local function api_ok()
  testing.mock("api", function(req)
    return { status = req.path == "/reserve" and 201 or 200 }
  end)
end

describe("control errors", function()
  before_each(testing.reset)

  for _, mode in ipairs(MODES) do
    it(("a simulated crash is not swallowed by %s: no compensation, one commit"):format(mode), function()
      api_ok()
      local r = testing.run(SWALLOW, { mode = mode }, { crash_after = 2, deliver = true })
      assert.is_true(r.crashed)
      assert.is_true(r.ok, r.error and r.error.message)
      assert.are.same({ caught = false }, r.value)
      assert.are.equal(1, #r.outbox)
      assert.are.equal(0, #testing.calls_to(r, "api", "POST", "/release"))
      assert.are.equal(1, #testing.calls_to(r, "api", "POST", "/confirm"))
    end)

    it(("a nondeterministic replay fails the run under %s, compensating nothing"):format(mode), function()
      api_ok()
      local r = testing.run(SWALLOW, { mode = mode, diverge = true }, { crash_after = 2, deliver = true })
      assert.is_true(r.crashed)
      assert.is_false(r.ok)
      assert.are.equal("nondeterminism", r.error.kind)
      assert.are.equal(0, #r.outbox)
      assert.are.equal(0, #testing.calls_to(r, "api", "POST", "/release"))
      assert.are.equal(0, #testing.calls_to(r, "api", "POST", "/confirm"))
    end)
  end

  it("a pcall does not swallow the deadline; on_timeout runs and its value is kept", function()
    local r = testing.run(DEADLINE)
    assert.is_false(r.ok)
    assert.are.equal("deadline", r.error.kind)
    assert.are.equal(2, r.elapsed)
    assert.are.same({ ok = true, value = { alerted = r.run_id } }, r.on_timeout)
  end)
end)

describe("the deadline bounds every wait", function()
  before_each(testing.reset)

  local function timing_out(run)
    return chorus.workflow { name = "bounded", timeout = 5, run = run,
      on_timeout = function() return { cleaned = true } end }
  end

  local function assert_timed_out(r)
    assert.is_false(r.ok)
    assert.are.equal("deadline", r.error.kind)
    assert.is_true(r.elapsed <= 5, ("ran %g s past a 5 s deadline"):format(r.elapsed))
    assert.are.same({ ok = true, value = { cleaned = true } }, r.on_timeout)
  end

  it("retry.run's backoff: exponential base 4 cap 8 ends timed out at 5 s, not after 12 s", function()
    testing.mock("api", { status = 503 })
    local r = testing.run(timing_out(function()
      local p = retry.policy { attempts = 3, backoff = "exponential", base = 4, cap = 8 }
      return retry.run(p, function() return http.upstream("api"):get("/x") end).status
    end))
    assert_timed_out(r)
    assert.are.equal(2, #r.calls)
  end)

  it("an upstream's retry policy too", function()
    testing.mock("api", { status = 503 }, { retry = { attempts = 3, backoff = "exponential", base = 4, cap = 8 } })
    local r = testing.run(timing_out(function() return http.upstream("api"):get("/x").status end))
    assert_timed_out(r)
  end)

  it("a Retry-After longer than the policy's cap waits the cap", function()
    testing.mock("api", { { status = 429, headers = { ["Retry-After"] = "86400" } }, { status = 200 } })
    local r = testing.run(chorus.workflow { name = "retry-after", run = function()
      return retry.run({ attempts = 2, base = 1, cap = 3 }, function() return http.upstream("api"):get("/x") end).status
    end })
    assert.are.equal(200, r.value)
    assert.are.equal(3, r.elapsed)
  end)

  it("a bulkhead's queue", function()
    local r = testing.run(timing_out(function()
      local b = bulkhead.get("deadline-bh", { max = 1, queue = 1, wait = 100 })
      return chorus.all(function() return b:call(core.sleep, 60) end,
        function() return b:call(function() return "second" end) end)
    end))
    assert_timed_out(r)
  end)

  it("a rate limit's wait for a token", function()
    testing.mock("api", { status = 200 }, { rate_limit = { rate = 0.01, burst = 1, wait = 1000 } })
    local r = testing.run(timing_out(function()
      local api = http.upstream("api")
      return api:get("/1").status + api:get("/2").status
    end))
    assert_timed_out(r)
    assert.are.equal(1, #r.calls)
  end)

  it("a lock wait, and the lock is free afterwards", function()
    local r = testing.run(timing_out(function(ctx)
      return chorus.all(function() return ctx.lock("deadline-lock", function() core.sleep(60) end) end,
        function() return ctx.lock("deadline-lock", function() return "second" end) end)
    end))
    assert_timed_out(r)
    local again = testing.run(chorus.workflow { name = "again", run = function(ctx)
      return ctx.lock("deadline-lock", function() return "taken" end)
    end })
    assert.are.equal("taken", again.value)
    assert.are.equal(0, again.elapsed)
  end)

  it("ctx.sleep", function()
    local r = testing.run(timing_out(function(ctx) ctx.sleep(4); ctx.sleep(4) end))
    assert_timed_out(r)
  end)
end)

describe("a saga the deadline leaves open", function()
  before_each(testing.reset)

  local function order(after)
    return chorus.workflow { name = "saga-deadline", timeout = 5, run = function(ctx)
      local saga = require "chorus.saga"
      local api = http.upstream("api")
      local s = saga.new(ctx)
      local ok, err = pcall(function()
        s:step("reserve", function() return api:post("/reserve").status end,
          function() api:post("/release") end)
        if after == "commit" then
          s:commit("confirm", function() api:post("/confirm") end)
        end
        ctx.sleep(10)
      end)
      if not ok then
        s:abort(err)
      end
    end }
  end

  it("is compensated once at the deadline, though the script's pcall never got to abort", function()
    testing.mock("api", { status = 201 })
    local r = testing.run(order(), nil, { deliver = true })
    assert.are.equal("deadline", r.error.kind)
    assert.are.equal(1, #testing.calls_to(r, "api", "POST", "/release"))
  end)

  it("is not undone once committed", function()
    testing.mock("api", { status = 201 })
    local r = testing.run(order("commit"), nil, { deliver = true })
    assert.are.equal("deadline", r.error.kind)
    assert.are.equal(0, #testing.calls_to(r, "api", "POST", "/release"))
    assert.are.equal(1, #testing.calls_to(r, "api", "POST", "/confirm"))
  end)
end)
