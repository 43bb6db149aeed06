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

describe("workflow memory accounts", function()
  local LIMITS = { memory = 64 * MB, instructions = 0, cpu_ms = 0 }

  local function run_as(account, fn)
    local opts = { memory = LIMITS.memory, instructions = 0, cpu_ms = 0, account = account }
    return core.run(opts, fn)
  end

  local function with_cap(mb, fn)
    core.set_limits({ workflow_memory = mb * MB })
    local ok, err = pcall(fn)
    core.set_limits({ workflow_memory = 256 * MB })
    assert(ok, err)
  end

  it("charges what a run leaves alive to its workflow and credits it back when freed", function()
    local account = core.workflow_account("keeper")
    local keep = {} -- the script's module state
    for i = 1, 3 do
      local ok, err = run_as(account, function() keep[i] = ("x"):rep(4 * MB) .. i end)
      assert.is_true(ok, tostring(err))
    end
    assert.are.equal(3, #keep)
    assert.is_true(core.workflow_kept(account) >= 12 * MB, "kept " .. core.workflow_kept(account))
    keep = nil -- luacheck: ignore
    collectgarbage("collect")
    assert.is_true(core.workflow_kept(account) < MB, "kept " .. core.workflow_kept(account))
  end)

  it("stops a run of a workflow keeping more than its cap, and only that workflow's", function()
    with_cap(16, function()
      local greedy, other = core.workflow_account("greedy"), core.workflow_account("other")
      local keep, refused = {}, nil
      for i = 1, 8 do
        local ok, err = run_as(greedy, function() keep[i] = ("x"):rep(4 * MB) .. i end)
        if not ok then
          refused = { i = i, err = err }
          break
        end
      end
      assert.is_truthy(refused, "never refused")
      assert.are.equal(refused.i - 1, #keep)
      assert.is_true(refused.i >= 5 and refused.i <= 6, "refused at run " .. refused.i)
      assert.are.equal("memory", refused.err.kind)
      assert.truthy(refused.err.message:find("workflow greedy keeps 16 MiB between runs "
        .. "(limits.workflow_memory_mb = 16)", 1, true), refused.err.message)
      local ok, n = run_as(other, function() return #("y"):rep(4 * MB) end)
      assert.is_true(ok, tostring(n))
      -- what it keeps freed (the script reloaded, say), its runs start again
      keep = nil -- luacheck: ignore
      collectgarbage("collect")
      local ok2, err2 = run_as(greedy, function() return 1 end)
      assert.is_true(ok2, type(err2) == "table" and err2.message or tostring(err2))
    end)
  end)

  it("does not count garbage: a run over the cap first collects", function()
    with_cap(16, function()
      local account = core.workflow_account("churner")
      collectgarbage("stop") -- only the cap's collection frees them
      local results = {}
      for i = 1, 10 do
        -- the run's result outlives the run, then its caller drops it
        local ok, err = run_as(account, function() return ("x"):rep(4 * MB) .. i end)
        results[i] = ok or (type(err) == "table" and err.message or tostring(err))
      end
      collectgarbage("restart")
      for i = 1, 10 do
        assert.are.equal(true, results[i])
      end
    end)
  end)
end)
