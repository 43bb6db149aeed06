-- Specs of lua/chorus/init.lua on the real C core (build/chorus/core.so):
-- workflow validation and structured concurrency.
local core = require "chorus.core"
local chorus = require "chorus"

-- Runs fn as a whole run; returns ok, value.
local function run(fn, opts)
  local ok, value = core.run(opts, fn)
  return ok, value
end

local function sleeper(seconds, value)
  return function()
    core.sleep(seconds)
    return value
  end
end

describe("chorus.workflow", function()
  local run_fn = function() end

  it("accepts a name and a run function", function()
    local wf = chorus.workflow { name = "donation", run = run_fn, timeout = 30 }
    assert.is_true(chorus.is_workflow(wf))
  end)

  it("rejects a missing or malformed name", function()
    assert.has_error(function() chorus.workflow { run = run_fn } end,
      "chorus.workflow: name must be letters, digits, '_', '-' or '.'")
    assert.has_error(function() chorus.workflow { name = "a b", run = run_fn } end,
      "chorus.workflow: name must be letters, digits, '_', '-' or '.'")
  end)

  it("rejects unknown fields, naming them", function()
    local ok, err = pcall(chorus.workflow, { name = "x", run = run_fn, retires = 3 })
    assert.is_false(ok)
    assert.truthy(err:find("unknown field 'retires'", 1, true))
  end)

  it("rejects fields of the wrong type and bad values", function()
    assert.is_false(pcall(chorus.workflow, { name = "x", run = "nope" }))
    assert.is_false(pcall(chorus.workflow, { name = "x", run = run_fn, timeout = -1 }))
    assert.is_false(pcall(chorus.workflow, { name = "x", run = run_fn, idempotency = { ttl = "1d" } }))
    assert.is_false(pcall(chorus.workflow, { name = "x", run = run_fn, idempotency = { on_failure = "retry" } }))
    assert.is_false(pcall(chorus.workflow, { name = "x", run = run_fn, idempotency = { on_fail = "redrive" } }))
    assert.is_true(pcall(chorus.workflow, { name = "x", run = run_fn, idempotency = { on_failure = "redrive" } }))
    assert.is_false(pcall(chorus.workflow, "x"))
  end)
end)

describe("chorus.all", function()
  it("returns results in argument order, not finishing order", function()
    local ok, v = run(function()
      return { chorus.all(sleeper(0.03, "slow"), sleeper(0.001, "fast"), function() return "now" end) }
    end)
    assert.is_true(ok)
    assert.are.same({ "slow", "fast", "now" }, v)
  end)

  it("runs concurrently: three 50 ms sleeps take about 50 ms", function()
    local ok, elapsed = run(function()
      local t0 = core.monotime()
      chorus.all(sleeper(0.05), sleeper(0.05), sleeper(0.05))
      return core.monotime() - t0
    end)
    assert.is_true(ok)
    assert.is_true(elapsed < 0.14, ("took %.3f s"):format(elapsed))
  end)

  it("raises the first error and cancels the others", function()
    local finished = false
    local ok, err = run(function()
      chorus.all(function() core.sleep(5); finished = true end, function() error({ kind = "boom" }) end)
    end)
    assert.is_false(ok)
    assert.are.equal("boom", err.kind)
    assert.is_false(finished)
  end)

  it("cancels nested tasks of a cancelled task too", function()
    local reached = false
    local ok = run(function()
      chorus.all(
        function() chorus.all(function() core.sleep(2); reached = true end) end,
        function() core.sleep(0.01); error("stop") end)
    end)
    assert.is_false(ok)
    assert.is_false(reached)
  end)

  it("rejects non-functions with a message naming the argument", function()
    local ok, err = run(function() chorus.all(function() end, 42) end)
    assert.is_false(ok)
    assert.truthy(tostring(err):find("argument 2 is a number", 1, true))
  end)
end)

describe("chorus.all_settled", function()
  it("reports every outcome without stopping at failures", function()
    local ok, v = run(function()
      return chorus.all_settled(sleeper(0.01, 1), function() error({ kind = "x" }) end, sleeper(0.02, 3))
    end)
    assert.is_true(ok)
    assert.are.same({ ok = true, value = 1 }, v[1])
    assert.is_false(v[2].ok)
    assert.are.equal("x", v[2].err.kind)
    assert.are.same({ ok = true, value = 3 }, v[3])
  end)
end)

describe("chorus.race and chorus.any", function()
  it("race returns the first to settle and its position", function()
    local ok, v = run(function()
      local value, i = chorus.race(sleeper(1, "slow"), sleeper(0.01, "quick"))
      return { value, i }
    end)
    assert.is_true(ok)
    assert.are.same({ "quick", 2 }, v)
  end)

  it("race raises when the first to settle failed", function()
    local ok, err = run(function()
      return chorus.race(sleeper(1, "slow"), function() error({ kind = "early" }) end)
    end)
    assert.is_false(ok)
    assert.are.equal("early", err.kind)
  end)

  it("any skips failures and returns the first success", function()
    local ok, v = run(function()
      return chorus.any(function() error("a") end, sleeper(0.02, "b"), sleeper(1, "c"))
    end)
    assert.is_true(ok)
    assert.are.equal("b", v)
  end)

  it("any raises all_failed with every error when nothing succeeds", function()
    local ok, err = run(function()
      return chorus.any(function() error({ kind = "a" }) end, function() error({ kind = "b" }) end)
    end)
    assert.is_false(ok)
    assert.are.equal("all_failed", err.kind)
    assert.are.equal("a", err.errors[1].kind)
    assert.are.equal("b", err.errors[2].kind)
  end)
end)

describe("chorus.core limits", function()
  it("stops a run past its instruction budget", function()
    local ok, err = run(function() while true do end end, { instructions = 100000 })
    assert.is_false(ok)
    assert.are.equal("budget", err.kind)
  end)

  it("stops a run past its memory cap", function()
    local ok, err = run(function()
      local t = {}
      for i = 1, 1e8 do t[i] = ("x"):rep(1000) .. i end
      return #t
    end, { memory = 4 * 1024 * 1024 })
    assert.is_false(ok)
    assert.are.equal("memory", err.kind)
  end)

  it("never wakes a sleep before its time, also one under a millisecond", function()
    for _, seconds in ipairs { 0.0004, 0.0015 } do
      local ok, slept = run(function()
        local t0 = core.now()
        core.sleep(seconds)
        return core.now() - t0
      end)
      assert.is_true(ok)
      assert.is_true(slept >= seconds, ("slept %.6f s of %.4f"):format(slept, seconds))
    end
  end)

  it("refuses primitives outside a run", function()
    assert.has_error(function() core.sleep(0.01) end, "this call is only allowed inside a workflow run")
  end)

  it("refuses yields from a coroutine the script created", function()
    local ok, err = run(function()
      local co = coroutine.wrap(function() core.sleep(0.01) end)
      co()
    end)
    assert.is_false(ok)
    assert.truthy(tostring(err):find("inside a coroutine the script created", 1, true))
  end)
end)

describe("chorus.json", function()
  it("round-trips nested values", function()
    local v = { a = { 1, 2, 3 }, b = "x", c = true }
    assert.are.same(v, chorus.json.decode(chorus.json.encode(v)))
  end)

  it("refuses values JSON cannot carry", function()
    assert.has_error(function() chorus.json.encode({ f = function() end }) end)
  end)
end)

describe("the scheduler", function()
  it("runs a task right after the task that spawned or woke it, before runs waiting their turn", function()
    local order = {}
    assert.has_error(function() core.start(nil, 42) end) -- a refused start leaves the order as it was
    core.start(nil, function()
      order[#order + 1] = "A"
      core.spawn(function() order[#order + 1] = "A's child" end)
      core.await()
      order[#order + 1] = "A again"
    end)
    core.start(nil, function() order[#order + 1] = "B" end)
    core.loop()
    assert.are.same({ "A", "A's child", "A again", "B" }, order)
  end)

  it("queues a run another run starts, or a waiter it notifies, behind the tasks already waiting", function()
    local order = {}
    local token = core.wait_token()
    core.start(nil, function()
      order[#order + 1] = "W waits"
      core.wait(token)
      order[#order + 1] = "W woken"
    end)
    core.start(nil, function()
      order[#order + 1] = "A"
      core.start(nil, function() order[#order + 1] = "started by A" end)
      core.notify(token, true)
    end)
    core.start(nil, function() order[#order + 1] = "B" end)
    core.start(nil, function() order[#order + 1] = "C" end)
    core.loop()
    assert.are.same({ "W waits", "A", "B", "C", "started by A", "W woken" }, order)
  end)

  it("does not let a run that keeps spawning hold the others back", function()
    local rounds, b_at = 0, nil
    core.start(nil, function()
      for _ = 1, 1000 do
        core.spawn(function() end)
        core.await()
        rounds = rounds + 1
      end
    end)
    core.start(nil, function() b_at = rounds end)
    core.loop()
    assert.are.equal(1000, rounds)
    assert.is_true(b_at < 100, ("B ran after %d rounds of A"):format(b_at))
  end)
end)
