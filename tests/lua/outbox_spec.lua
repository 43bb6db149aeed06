-- chorus.outbox on the memory backend and the virtual clock: settling a
-- delivery (retry with backoff, DLQ), due order, and the alert log lines.
local core = require "chorus.core"
local outbox = require "chorus.outbox"
local metrics = require "chorus.metrics"

local function entry(id, due, opts)
  opts = opts or {}
  return { id = id, kind = "http", due = due, seq = 0, attempts = 0, max_attempts = opts.attempts or 3,
    base = 1, cap = 10, request = { method = "POST", url = "http://x.test/" } }
end

describe("chorus.outbox", function()
  local lines

  before_each(function()
    lines = {}
    outbox.log_sink = function(line) lines[#lines + 1] = line end
    core.set_clock("virtual", 1000)
  end)

  after_each(function()
    outbox.log_sink = nil
    core.set_clock("real")
  end)

  it("hands out due entries in due order, and none before they are due", function()
    local b = outbox.memory(true)
    b:add(entry("late", 1003))
    b:add(entry("early", 1001))
    b:add(entry("middle", 1002))
    b:add(entry("future", 2000))
    local ids = {}
    for _, e in ipairs(b:due(1500)) do
      ids[#ids + 1] = e.id
    end
    assert.are.same({ "early", "middle", "late" }, ids)
    assert.are.equal(1, #b:due(1500, 1))
  end)

  it("keeps due order through moves, removals, ties and skips, and hands out the same twice", function()
    local b = outbox.memory()
    local function ids(list)
      local out = {}
      for _, e in ipairs(list) do
        out[#out + 1] = e.id
      end
      return out
    end
    local es = {}
    for i = 1, 200 do -- due 1001..1050, four entries each, tie broken by seq
      es[i] = entry("e" .. i, 1000 + (i - 1) % 50 + 1)
      es[i].seq = i
      b:add(es[i])
    end
    local first = ids(b:due(1500, 5))
    assert.are.same({ "e1", "e51", "e101", "e151", "e2" }, first)
    assert.are.same(first, ids(b:due(1500, 5))) -- looking takes nothing away
    b:remove(es[1])
    b:bury(es[51])
    es[101].due = 1200 -- retried: later now
    b:move(1001, es[101])
    es[199].due = 900 -- and one earlier
    b:move(1049, es[199])
    b:update(es[199]) -- an update at the same due time changes nothing
    assert.are.same({ "e199", "e151", "e2", "e52" }, ids(b:due(1500, 4)))
    -- entries in flight are left out, and do not count against the limit
    assert.are.same({ "e2", "e52" }, ids(b:due(1500, 2, { e199 = true, e151 = true })))
    assert.are.equal(900, b:next_due())
    local all = ids(b:due(1500))
    assert.are.equal(198, #all)
    assert.are.equal("e101", all[198])
    assert.are.equal(197, #b:due(1100))
  end)

  it("reschedules a failed delivery with backoff and counts the attempt", function()
    local b = outbox.memory(true)
    local e = entry("a", 1000)
    b:add(e)
    assert.are.equal("retry", outbox.settle(b, e, { error = { kind = "timeout", message = "slow" } }))
    assert.are.equal(1, e.attempts)
    assert.is_true(e.due > 1000 and e.due <= 1001, "first backoff is within base")
    assert.are.equal("timeout", e.last_error.kind)
    assert.are.equal(0, #b:due(1000))
  end)

  it("waits between half and all of base * 2^(attempts-1), capped, as the retry engine's equal jitter", function()
    local b = outbox.memory(true)
    local lo, hi = math.huge, 0
    for i = 1, 200 do
      local e = entry("e" .. i, 1000, { attempts = 99 })
      e.attempts = 2 -- this failure is the third: the wait is within [2, 4)
      b:add(e)
      outbox.settle(b, e, { error = { kind = "connect" } })
      lo, hi = math.min(lo, e.due - 1000), math.max(hi, e.due - 1000)
    end
    assert.is_true(lo >= 2 and hi < 4, ("waits in [%g, %g]"):format(lo, hi))
    assert.is_true(lo < 2.2 and hi > 3.8, "spread over the upper half")
    local e = entry("capped", 1000, { attempts = 99 })
    e.attempts = 20
    b:add(e)
    outbox.settle(b, e, { error = { kind = "connect" } })
    assert.is_true(e.due - 1000 >= 5 and e.due - 1000 < 10, "cap 10: within [5, 10)")
    local over = entry("base over cap", 1000)
    over.base, over.cap = 5, 2
    b:add(over)
    outbox.settle(b, over, { error = { kind = "connect" } })
    assert.is_true(over.due - 1000 >= 1 and over.due - 1000 < 2, "a base above cap waits up to cap")
  end)

  it("honours Retry-After when it asks for longer than the backoff", function()
    local b = outbox.memory(true)
    local e = entry("a", 1000)
    b:add(e)
    outbox.settle(b, e, { error = { kind = "http", status = 429 }, retry_after = 30 })
    assert.are.equal(1030, e.due)
  end)

  it("moves a permanent failure to the DLQ at once, and the last attempt's failure too", function()
    local b = outbox.memory(true)
    local p, x = entry("permanent", 1000), entry("exhausted", 1000, { attempts = 2 })
    b:add(p)
    b:add(x)
    assert.are.equal("dead", outbox.settle(b, p, { permanent = true, error = { kind = "http", status = 400 } }))
    assert.are.equal("retry", outbox.settle(b, x, { error = { kind = "connect" } }))
    assert.are.equal("dead", outbox.settle(b, x, { error = { kind = "connect" } }))
    assert.are.equal(2, #b.dead)
    assert.are.equal(2, x.attempts)
    assert.are.equal("outbox entry moved to the DLQ", lines[1].msg)
  end)

  it("removes a delivered entry", function()
    local b = outbox.memory(true)
    local e = entry("a", 1000)
    b:add(e)
    assert.are.equal("delivered", outbox.settle(b, e, nil))
    assert.are.same({}, b:due(5000))
    assert.are.equal(1, #b.delivered)
  end)

  it("logs once when a threshold is crossed and once when it is back under", function()
    local b = outbox.memory(true)
    local relay = outbox.relay(b, { alerts = { outbox_depth = 2, dlq_depth = 0 } })
    b:add(entry("a", 1000))
    relay:observe()
    assert.are.equal(0, #lines)
    b:add(entry("b", 1000))
    relay:observe()
    relay:observe()
    assert.are.equal(1, #lines)
    assert.are.equal("warn", lines[1].level)
    assert.are.equal("outbox_depth", lines[1].alert)
    outbox.settle(b, b.entries.a, nil)
    relay:observe()
    assert.are.equal(2, #lines)
    assert.are.equal("info", lines[2].level)
  end)

  it("fires an alert at its threshold: dlq_depth = 1 at the first dead entry", function()
    local b = outbox.memory(true)
    local relay = outbox.relay(b, { alerts = { dlq_depth = 1 } })
    relay:observe()
    assert.are.equal(0, #lines)
    local e = entry("a", 1000)
    b:add(e)
    outbox.settle(b, e, { permanent = true, error = { kind = "http", status = 400 } })
    lines = {}
    relay:observe()
    assert.are.equal(1, #lines)
    assert.are.equal("dlq_depth", lines[1].alert)
    assert.are.equal(1, lines[1].value)
  end)

  it("measures the outbox age from the oldest pending entry's creation, also while it backs off", function()
    local b = outbox.memory(true)
    local relay = outbox.relay(b, { alerts = { outbox_age = 60 } })
    local e = outbox.new_entry("http", { request = { method = "POST", url = "http://x/" } })
    b:add(e)
    -- it fails again and again: each time its due time moves ahead of now
    outbox.settle(b, e, { error = { kind = "connect" } })
    core.set_clock("virtual", 1120)
    outbox.settle(b, e, { error = { kind = "connect" } })
    assert.is_true(e.due > core.now())
    local _, age = relay:observe()
    assert.is_true(age >= 120, tostring(age))
    assert.truthy(metrics.render():find("chorus_outbox_oldest_due_age_seconds 12%d"), metrics.render())
    local alert
    for _, l in ipairs(lines) do
      if l.alert == "outbox_age" then
        alert = l
      end
    end
    assert.is_truthy(alert, "outbox_age never fired")
  end)

  it("refuses bad ctx.later arguments with a clear message", function()
    assert.has_error(function() outbox.later(nil, {}) end,
      "ctx.later(workflow, input, opts): workflow must be a workflow name")
    assert.has_error(function() outbox.later("w", {}, { delay = -1 }) end,
      "ctx.later: option 'delay' must be a number of seconds from 0 to 100 years")
    assert.has_error(function() outbox.later("w", {}, { attempts = 0 }) end,
      "ctx.later: option 'attempts' must be a positive integer")
    assert.has_error(function() outbox.later("w", {}, { color = 1 }) end,
      "ctx.later: unknown option 'color' (known: delay, attempts, base, cap)")
    assert.has_error(function() outbox.later("w", {}, { base = 0 / 0 }) end,
      "ctx.later: option 'base' must be a number of seconds from 0 to 100 years")
    -- a due time the data folder's keys cannot hold: the entry's first
    -- retry (base 1e308) could not be settled after the run, and stayed
    for _, k in ipairs({ "delay", "base", "cap" }) do
      for _, v in ipairs({ math.huge, 1e308, math.maxinteger, outbox.MAX_SECONDS + 1 }) do
        assert.has_error(function() outbox.later("w", {}, { [k] = v }) end,
          ("ctx.later: option '%s' must be a number of seconds from 0 to 100 years"):format(k))
      end
    end
  end)

  -- The relay compares an entry's numbers after the run, outside it; the
  -- memory outbox keeps them as the entry got them. Options whose __pairs
  -- showed nothing passed the check, and their __index then gave the entry
  -- a table whose __lt looped in the relay: the server hung for good.
  it("keeps only the options it checked, read raw", function()
    local saved = outbox.backend
    outbox.backend = outbox.memory(true)
    finally(function() outbox.backend = saved end)
    local evil = setmetatable({}, { __lt = function() error("compared after the run") end,
      __add = function(_, b) return b end })
    local opts = setmetatable({ attempts = 2 }, { __pairs = function() return next, {} end,
      __index = function() return evil end })
    outbox.later("w", {}, opts)
    local e = outbox.backend.all[1]
    assert.are.equal(2, e.max_attempts)
    assert.are.same({ "number", "number", "number" }, { type(e.due), type(e.base), type(e.cap) })
    assert.are.equal(1000, e.due)
    outbox.later("w", {}, setmetatable({}, { __index = { attempts = "x" } })) -- nothing there, raw
    assert.are.equal(outbox.defaults.attempts, outbox.backend.all[2].max_attempts)
    assert.has_error(function() outbox.later("w", {}, { attempts = evil }) end,
      "ctx.later: option 'attempts' must be a positive integer")
  end)
end)
