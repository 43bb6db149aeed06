-- The scripts folder watch of `chorus serve` (server.watch_scripts), driven
-- by a fake clock: each fs event is a call of the watch function, core.sleep
-- advances the clock. A change must always end in a reload, whatever the
-- waiting run met before.
local real_core = require "chorus.core"
-- Its modules load once with the real core: only server.lua itself is
-- loaded again below with the fake one, so no other spec gets it.
require "chorus.server"

-- chorus.server with core.watch, core.monotime and core.sleep replaced.
-- early: how much sooner than asked a sleep wakes (a timer on a stale loop
-- time); every clock reading also moves the clock a little, as real time
-- passes between two readings. fail_sleeps: how many sleeps raise first.
local function load_server(opts)
  local fake = { now = 100, handlers = {}, sleeps = 0, fail_sleeps = opts.fail_sleeps or 0 }
  local core = setmetatable({
    watch = function(dir, fn) fake.handlers[dir] = fn return true end,
    monotime = function()
      fake.now = fake.now + 1e-5
      return fake.now
    end,
    sleep = function(s)
      if s < 0 then -- as the real core.sleep
        error("bad argument #1 to 'sleep' (seconds must be between 0 and 1e9)")
      end
      fake.sleeps = fake.sleeps + 1
      if fake.fail_sleeps > 0 then
        fake.fail_sleeps = fake.fail_sleeps - 1
        error("cancelled")
      end
      fake.now = fake.now + math.max(0, s - (opts.early or 0))
    end,
  }, { __index = real_core })
  local saved = { core = package.loaded["chorus.core"], server = package.loaded["chorus.server"] }
  package.loaded["chorus.core"], package.loaded["chorus.server"] = core, nil
  local ok, server = pcall(require, "chorus.server")
  package.loaded["chorus.core"], package.loaded["chorus.server"] = saved.core, saved.server
  assert(ok, server)
  local reloads = {}
  server.reload = function(reason) reloads[#reloads + 1] = reason end
  server.state.reload_pending = false
  server.watch_scripts({ "scripts" })
  return fake, fake.handlers.scripts, reloads, server.state
end

describe("server.watch_scripts", function()
  it("reloads once the folder is quiet, when sleeps wake early", function()
    local fake, changed, reloads, state = load_server({ early = 0.003 })
    changed("a.lua")
    assert.are.same({ "file change" }, reloads)
    assert.is_false(state.reload_pending)
    assert.truthy(fake.sleeps > 1)
    changed("a.lua") -- the next change reloads again
    assert.are.same({ "file change", "file change" }, reloads)
  end)

  it("still reloads a later change after the waiting run failed", function()
    local _, changed, reloads, state = load_server({ fail_sleeps = 1 })
    assert.has_error(function() changed("a.lua") end, "cancelled")
    assert.is_false(state.reload_pending)
    changed("a.lua")
    assert.are.same({ "file change" }, reloads)
  end)
end)
