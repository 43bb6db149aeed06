-- Run memory accounting (runtime/alloc.c): a run is charged for what it
-- holds, not for what the collector happens to free while it is current.
local core = require "chorus.core"

local MB = 1 << 20

describe("run memory accounting", function()
  it("gives a big block back to the run that made it, whichever run the collector frees it under", function()
    -- the churner makes 20 MB of garbage a turn, 160 MB in all, under a
    -- 64 MB cap; the sweeper collects between its turns
    local churned
    core.start({ memory = 64 * MB, instructions = 0, cpu_ms = 0 }, function()
      for _ = 1, 8 do
        local s = ("x"):rep(20 * MB) -- luacheck: ignore 231
        s = nil -- garbage now, whichever stack slot held it
        core.sleep(0)
      end
      churned = true
    end)
    local ok, err, info = core.run({ memory = 64 * MB, instructions = 0, cpu_ms = 0 }, function()
      local keep = ("k"):rep(10 * MB) -- the sweeper's own
      for _ = 1, 12 do
        collectgarbage("collect")
        core.sleep(0)
      end
      return #keep
    end)
    assert.is_true(ok, type(err) == "table" and err.message or tostring(err))
    assert.is_true(churned, "the churner was killed for memory it no longer held")
    -- freeing the churner's strings gave the sweeper nothing: it is still
    -- charged for the 10 MB it holds
    assert.is_true(info.memory >= 9 * MB, "sweeper charged " .. info.memory)
  end)

  it("still stops a run that holds more than its cap", function()
    local ok, err = core.run({ memory = 16 * MB, instructions = 0, cpu_ms = 0 }, function()
      local held = {}
      for i = 1, 8 do
        held[i] = ("x"):rep(4 * MB) .. i
        core.sleep(0)
      end
      return #held
    end)
    assert.is_false(ok)
    assert.are.equal("memory", err.kind)
  end)
end)

describe("core.uncharged", function()
  it("counts a task's work against no run's memory cap while on; the cap holds again after", function()
    local ok, err = core.run({ memory = 8 * MB, instructions = 0, cpu_ms = 0 }, function()
      local was = core.uncharged(true)
      local big = ("x"):rep(20 * MB) -- past the cap
      local text = core.json.encode({ big, big })
      assert(core.uncharged(was) == true and #text > 40 * MB)
      local small = ("y"):rep(MB) -- charged again, and within the cap: the 60 MB are nobody's
      assert(#small == MB)
      return #("z"):rep(16 * MB)
    end)
    assert.is_false(ok)
    assert.are.equal("memory", err.kind)
  end)

  it("counts a task's work against no run's instruction budget while on", function()
    -- core.charge: the work a C function does, counted as the count hook
    -- would (no watchdog tick needed)
    local ok, err = core.run({ memory = 0, instructions = 200000, cpu_ms = 0 }, function()
      local was = core.uncharged(true)
      core.charge(1000000)
      core.uncharged(was)
      local hit = ("x"):rep(2 * MB):find("y") -- charged by the byte: within the budget
      core.charge(1000000)
      return hit
    end)
    assert.is_false(ok)
    assert.are.equal("budget", err.kind)
    local ok2, err2 = core.run({ memory = 0, instructions = 200000, cpu_ms = 0 }, function()
      core.uncharged(true)
      core.charge(1000000)
      return #("x"):rep(64 * MB)
    end)
    assert.is_true(ok2, type(err2) == "table" and err2.message or tostring(err2))
  end)

  it("is per task: a task spawned meanwhile is charged", function()
    local ok, out = core.run({ memory = 8 * MB, instructions = 0, cpu_ms = 0 }, function()
      core.uncharged(true)
      local id = core.spawn(function() return #("x"):rep(20 * MB) end)
      core.await()
      local rok, rerr = core.result(id)
      return { rok, type(rerr) == "table" and rerr.kind or rerr }
    end)
    assert.is_true(ok)
    assert.are.same({ false, "memory" }, out)
  end)

  it("is refused outside a task", function()
    assert.has_error(function() core.uncharged(true) end)
  end)
end)
