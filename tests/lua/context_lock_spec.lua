-- ctx.lock: mutual exclusion by name (in process; durable with issue 4).
local testing = require "chorus.testing"
local chorus = require "chorus"

local function racers(hold)
  return chorus.workflow {
    name = "racers",
    run = function(ctx, input)
      local trace = {}
      local function worker(id, key)
        return function()
          ctx.lock(key, function()
            trace[#trace + 1] = id .. " in"
            ctx.sleep(hold)
            trace[#trace + 1] = id .. " out"
          end)
        end
      end
      chorus.all(worker("a", "buyer-1"), worker("b", input.other or "buyer-1"), worker("c", "buyer-1"))
      return trace
    end,
  }
end

describe("ctx.lock", function()
  before_each(testing.reset)

  it("serializes holders of the same name, first come first served", function()
    local r = testing.run(racers(1))
    assert.are.same({ "a in", "a out", "b in", "b out", "c in", "c out" }, r.value)
    assert.are.equal(3, r.elapsed)
  end)

  it("lets different names run concurrently", function()
    local r = testing.run(racers(1), { other = "buyer-2" })
    local at = {}
    for i, event in ipairs(r.value) do
      at[event] = i
    end
    assert.are.equal(6, #r.value)
    -- a and b hold at once; c waits for a (same name), not for b; what
    -- happens at the same virtual instant (b's end, c's start) has no order
    assert.is_true(at["b in"] < at["a out"])
    assert.is_true(at["a out"] < at["c in"] and at["c in"] < at["c out"])
    assert.are.equal(2, r.elapsed)
  end)

  it("releases the lock when the holder fails", function()
    local wf = chorus.workflow { name = "fails", run = function(ctx)
      pcall(ctx.lock, "k", function() error("boom") end)
      return ctx.lock("k", function() return "again" end)
    end }
    assert.are.equal("again", testing.run(wf).value)
  end)
end)

describe("ctx.lock taken in a coroutine the script abandons", function()
  before_each(testing.reset)

  -- fn yielded from a coroutine of the script's that nobody resumed again:
  -- the lock's __close never ran, and the lock stayed held after the run
  -- (every run of any workflow asking for it waited until its deadline).
  it("is released when the run ends", function()
    local script = require "chorus.script"
    local locker = assert(script.compile([[
      local chorus = require "chorus"
      return chorus.workflow { name = "locker", run = function(ctx)
        local co = coroutine.wrap(function() ctx.lock("acct", function() coroutine.yield("held") end) end)
        return co()
      end }
    ]], "locker.lua"))
    local waiter = chorus.workflow { name = "waiter", timeout = 5, run = function(ctx)
      return ctx.lock("acct", function() return "got it" end)
    end }
    local r = testing.run(locker, {})
    assert.are.equal("held", r.value)
    r = testing.run(waiter, {})
    assert.is_true(r.ok, tostring(r.error and r.error.message))
    assert.are.equal("got it", r.value)
    assert.are.equal(0, r.elapsed)
  end)
end)

describe("ctx.lock reserved for a resumed run", function()
  before_each(testing.reset)

  -- Recovery reserves a lock a resumed run's journal shows held, so that
  -- run gets it back first. A run resumed once others run (a `chorus run
  -- --data` gone while the server ran, a child resumed by its parent's
  -- replay) had the lock reserved over the run holding it, and went in
  -- beside it: two inside the critical section.
  it("never lets the run in while another holds the lock: it waits its turn", function()
    local context = require "chorus.context"
    local wf = chorus.workflow { name = "resumed", run = function(ctx)
      local trace = {}
      chorus.all(function()
        ctx.lock("acct", function()
          trace[#trace + 1] = "holder in"
          ctx.sleep(10)
          trace[#trace + 1] = "holder out"
        end)
      end, function()
        ctx.sleep(1)
        context.reserve_lock("acct", ctx.run_id) -- as Service:resume does for the resumed run
        ctx.lock("acct", function() trace[#trace + 1] = "resumed in" end)
      end)
      return trace
    end }
    local r = testing.run(wf, {})
    assert.is_true(r.ok, tostring(r.error and r.error.message))
    assert.are.same({ "holder in", "holder out", "resumed in" }, r.value)
  end)
end)
