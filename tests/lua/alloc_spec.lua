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
