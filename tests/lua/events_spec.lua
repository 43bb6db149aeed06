-- Durable events: ctx.event parks a run until an event of its name and key
-- arrives (testing.emit, chorus.emit) and returns its payload; each event
-- goes to one wait, once, even across crashes; a wait times out with kind
-- "timeout", and the run's deadline still applies. Virtual time throughout.
local testing = require "chorus.testing"
local chorus = require "chorus"

-- A run waiting for "processed" keyed by input.task; its value is the payload.
local function waiter(timeout, run_timeout)
  return chorus.workflow { name = "waiter", timeout = run_timeout, run = function(ctx, input)
    return ctx.event("processed", { key = input.task, timeout = timeout })
  end }
end

describe("ctx.event", function()
  before_each(testing.reset)

  it("returns the payload of an event that arrives while the run waits", function()
    testing.emit("processed", "t1", { category = "food" }, { at = 30 })
    local r = testing.run(waiter(3600), { task = "t1" })
    assert.is_true(r.ok, r.error and r.error.message)
    assert.same({ category = "food" }, r.value)
    assert.equal(30, r.elapsed)
  end)

  it("shows the wait in the run's timeline: when it began, how long it waited, and what came", function()
    testing.emit("processed", "t1", { category = "food" }, { at = 30 })
    local r = testing.run(chorus.workflow { name = "two_waits", run = function(ctx)
      ctx.event("processed", { key = "t1", timeout = 3600 })
      return pcall(ctx.event, "processed", { key = "t2", timeout = 5 })
    end })
    local waits = {}
    for _, e in ipairs(r.timeline) do
      if e.kind == "event" then
        waits[#waits + 1] = { e.event, e.key, e.waited, e.outcome, e.start - r.timeline[1].start }
      end
    end
    assert.same({ { "processed", "t1", 30, "came", 0 }, { "processed", "t2", 5, "timeout", 30 } }, waits)
  end)

  it("hands an event that arrived before the wait to the first wait, without waiting", function()
    testing.emit("processed", "t1", { category = "rent" })
    local r = testing.run(waiter(3600), { task = "t1" })
    assert.is_true(r.ok, r.error and r.error.message)
    assert.same({ category = "rent" }, r.value)
    assert.equal(0, r.elapsed)
  end)

  it("ignores events with another key", function()
    testing.emit("processed", "other", { category = "foreign" })
    testing.emit("processed", "t1", { category = "mine" }, { at = 10 })
    local r = testing.run(waiter(3600), { task = "t1" })
    assert.same({ category = "mine" }, r.value)
  end)

  it("absorbs a redelivery with the same event id: the second wait times out", function()
    testing.emit("processed", "t1", { id = "evt-1", n = 1 })
    testing.emit("processed", "t1", { id = "evt-1", n = 2 }, { at = 5 })
    local wf = chorus.workflow { name = "twice", run = function(ctx)
      local first = ctx.event("processed", { key = "t1", timeout = 60 })
      local ok, err = pcall(ctx.event, "processed", { key = "t1", timeout = 60 })
      return { first = first.n, second_ok = ok, second = ok and err.n or err.kind }
    end }
    local r = testing.run(wf)
    assert.is_true(r.ok, r.error and r.error.message)
    assert.same({ first = 1, second_ok = false, second = "timeout" }, r.value)
  end)

  it("gives two events without ids (or with different ids) to two waits, in arrival order", function()
    testing.emit("processed", "t1", { n = 1 })
    testing.emit("processed", "t1", { n = 2 })
    local wf = chorus.workflow { name = "two", run = function(ctx)
      local a = ctx.event("processed", { key = "t1" })
      local b = ctx.event("processed", { key = "t1" })
      return { a.n, b.n }
    end }
    assert.same({ 1, 2 }, testing.run(wf).value)
  end)

  it("raises kind timeout when no event arrives within timeout", function()
    local r = testing.run(waiter(120), { task = "t1" })
    assert.is_false(r.ok)
    assert.equal("timeout", r.error.kind)
    assert.equal(120, r.elapsed)
  end)

  it("leaves no parked wait behind once a wait timed out", function()
    local wf = chorus.workflow { name = "unique_keys", run = function(ctx)
      for i = 1, 3 do
        pcall(ctx.event, "processed", { key = "k" .. i, timeout = 5 })
      end
      return { require("chorus.events").waiting() }
    end }
    assert.same({ 0, 0 }, testing.run(wf).value)
  end)

  it("raises kind timeout when the event arrives too late", function()
    testing.emit("processed", "t1", { late = true }, { at = 200 })
    local r = testing.run(waiter(120), { task = "t1" })
    assert.equal("timeout", r.error.kind)
  end)

  it("stops at the run's deadline when it comes before the timeout", function()
    local r = testing.run(waiter(3600, 60), { task = "t1" })
    assert.is_false(r.ok)
    assert.equal("deadline", r.error.kind)
    assert.equal(60, r.elapsed)
  end)

  it("gives one event to one of several concurrent waits on the same name and key, the longest waiting", function()
    testing.emit("processed", "t1", { n = 1 }, { at = 10 })
    local wf = chorus.workflow { name = "many", run = function(ctx)
      local got = chorus.all_settled(
        function() return ctx.event("processed", { key = "t1", timeout = 60 }) end,
        function() ctx.sleep(1); return ctx.event("processed", { key = "t1", timeout = 60 }) end)
      return { got[1].ok and got[1].value.n or got[1].err.kind, got[2].ok and got[2].value.n or got[2].err.kind }
    end }
    local r = testing.run(wf)
    assert.is_true(r.ok, r.error and r.error.message)
    assert.same({ 1, "timeout" }, r.value)
  end)

  it("delivers to a run that crashed while waiting, once it is resumed", function()
    testing.emit("processed", "t1", { category = "travel" }, { at = 100 })
    local r = testing.run(waiter(3600), { task = "t1" }, { crash_after = 1 })
    assert.is_true(r.crashed)
    assert.is_true(r.ok, r.error and r.error.message)
    assert.same({ category = "travel" }, r.value)
    assert.equal(100, r.elapsed)
  end)

  it("keeps the timeout counting from the first wait across a crash", function()
    local wf = chorus.workflow { name = "slow", run = function(ctx)
      ctx.sleep(50) -- effect 1
      return ctx.event("processed", { key = "t1", timeout = 100 }) -- effects 2 (expiry), 3
    end }
    local r = testing.run(wf, {}, { crash_after = 2 })
    assert.is_true(r.crashed)
    assert.equal("timeout", r.error.kind)
    assert.equal(150, r.elapsed)
  end)

  it("replays a taken event after a crash, and never hands it to a second wait", function()
    testing.emit("processed", "t1", { n = 1 })
    local wf = chorus.workflow { name = "after_wake", run = function(ctx)
      local first = ctx.event("processed", { key = "t1", timeout = 60 }) -- effects 1, 2: crash after 2
      local ok, err = pcall(ctx.event, "processed", { key = "t1", timeout = 60 })
      return { first = first.n, second = ok and "got one" or err.kind }
    end }
    local r = testing.run(wf, {}, { crash_after = 2 })
    assert.is_true(r.crashed)
    assert.is_true(r.ok, r.error and r.error.message)
    assert.same({ first = 1, second = "timeout" }, r.value)
  end)

  it("refuses bad names, keys and options", function()
    local function try(name, opts)
      local wf = chorus.workflow { name = "bad", run = function(ctx) return ctx.event(name, opts) end }
      local r = testing.run(wf)
      assert.is_false(r.ok)
      return tostring(r.error)
    end
    assert.matches("name must be a non%-empty string", try("", { key = "k" }))
    assert.matches("key must be a non%-empty string", try("e", {}))
    assert.matches("timeout must be a positive number", try("e", { key = "k", timeout = -1 }))
    assert.matches("unknown option 'keys'", try("e", { keys = "k" }))
    assert.matches("NUL", try("e", { key = "a\0b" }))
  end)
end)

describe("chorus.emit", function()
  before_each(testing.reset)

  -- A script's top level has no run: what it emitted at each load was
  -- kept as no workflow's, past every cap and share (100 events of 500 KB
  -- filled a 32 MiB data folder: 507 for every workflow).
  it("is refused at a script's top level, nothing kept", function()
    local script = require "chorus.script"
    local wf, err = script.compile([[
      local chorus = require "chorus"
      for i = 1, 3 do chorus.emit("loaded", "k" .. i, { pad = "x" }) end
      return chorus.workflow { name = "loader", run = function() end }
    ]], "loader.lua")
    assert.is_nil(wf)
    assert.matches("loader.lua:2: chorus.emit: only inside a run", err, 1, true)
    local listener = chorus.workflow { name = "listener", run = function(ctx)
      local ok, e = pcall(ctx.event, "loaded", { key = "k1", timeout = 1 })
      return ok and "came" or e.kind
    end }
    assert.are.equal("timeout", testing.run(listener).value)
  end)

  it("delivers from one workflow to the run waiting in another, once per event id", function()
    local receiver = chorus.workflow { name = "receiver", run = function(ctx)
      -- a provider's webhook, delivered twice: the second emit is absorbed
      local first = chorus.emit("processed", "t9", { id = "hook-1", category = "fuel" })
      local second = chorus.emit("processed", "t9", { id = "hook-1", category = "fuel" })
      return { first, second, ctx.event("processed", { key = "t9", timeout = 1 }).category }
    end }
    local r = testing.run(receiver)
    assert.is_true(r.ok, r.error and r.error.message)
    assert.same({ "kept", "duplicate", "fuel" }, r.value)
  end)

  it("does not emit again when a crashed run replays", function()
    local wf = chorus.workflow { name = "emit_crash", run = function(ctx)
      chorus.emit("processed", "t1", { n = 1 }) -- effect 1: crash after it
      local first = ctx.event("processed", { key = "t1", timeout = 5 })
      local ok, err = pcall(ctx.event, "processed", { key = "t1", timeout = 5 })
      return { first.n, ok and "twice" or err.kind }
    end }
    local r = testing.run(wf, {}, { crash_after = 1 })
    assert.is_true(r.crashed)
    assert.same({ 1, "timeout" }, r.value)
  end)

  it("hands an event kept just before a crash to the resumed wait (between arrival and wake)", function()
    local wf = chorus.workflow { name = "arrival_crash", run = function(ctx)
      local got, emitted = chorus.all(
        function() return ctx.event("processed", { key = "t1", timeout = 60 }) end, -- effect 1, then parks
        function() ctx.sleep(1); return chorus.emit("processed", "t1", { n = 7 }) end) -- effects 2, 3: crash
      return { got.n, emitted }
    end }
    local r = testing.run(wf, {}, { crash_after = 3 })
    assert.is_true(r.crashed)
    assert.is_true(r.ok, r.error and r.error.message)
    assert.same({ 7, "kept" }, r.value)
  end)

  it("refuses a bad key", function()
    local wf = chorus.workflow { name = "emit_bad", run = function() return chorus.emit("processed", "", {}) end }
    local r = testing.run(wf)
    assert.matches("chorus.emit: the event's key must be a non%-empty string", tostring(r.error))
  end)
end)

describe("events.ttl", function()
  local core = require "chorus.core"
  local events = require "chorus.events"
  local store = require "chorus.store"

  after_each(function() core.set_clock("real") end)

  it("drops a kept event and forgets a seen id once the ttl is up", function()
    core.set_clock("virtual", 1767225600)
    local ok, res = core.run(nil, function()
      events.configure({ store = store.memory(), ttl = 10 })
      local out = { events.deliver("e", "k", { a = 1 }, "id-1"), events.deliver("e", "k", { a = 1 }, "id-1") }
      core.sleep(11)
      local wok, err = pcall(events.wait, "e", { key = "k", timeout = 1 })
      out[3] = wok and "taken" or err.kind
      out[4] = events.deliver("e", "k", { a = 2 }, "id-1") -- the id is forgotten: kept again
      out[5] = events.wait("e", { key = "k", timeout = 1 }).a
      return out
    end)
    assert.is_true(ok, tostring(res))
    assert.same({ "kept", "duplicate", "timeout", "kept", 2 }, res)
  end)
end)

describe("events between testing.run calls", function()
  before_each(testing.reset)

  it("keeps what one run emitted for the next run, until testing.reset", function()
    local emitter = chorus.workflow { name = "emitter", run = function()
      return chorus.emit("processed", "t5", { id = "p-1", category = "gifts" })
    end }
    assert.equal("kept", testing.run(emitter).value)
    assert.equal("duplicate", testing.run(emitter).value) -- the id was seen
    assert.same({ id = "p-1", category = "gifts" }, testing.run(waiter(60), { task = "t5" }).value)
    assert.equal("timeout", testing.run(waiter(60), { task = "t5" }).error.kind) -- taken once
    testing.emit("processed", "t6", { category = "x" })
    testing.reset()
    assert.equal("timeout", testing.run(waiter(60), { task = "t6" }).error.kind)
  end)
end)

-- config.load of a file returning { text }: the config, or nil and the
-- error without the file's name.
local function load_config(text)
  local path = os.tmpname()
  local f = assert(io.open(path, "w"))
  f:write("return { " .. text .. " }")
  f:close()
  local conf, err = require("chorus.config").load(path)
  os.remove(path)
  return conf, err and (err:gsub("^[^:]*: ", ""))
end

describe("the events config", function()
  local load = load_config

  it("takes a ttl and per-name auth rules", function()
    local conf, err = load([[events = { ttl = 3600, processed = { auth = { token = "t", hmac_secret = "h" },
      emitters = { "receiver" } } }, auth = { charge = { token = "c", callers = { "order" } } }]])
    assert.is_nil(err)
    assert.equal(3600, conf.events.ttl)
    assert.same({ "receiver" }, conf.events.processed.emitters)
    assert.same({ "order" }, conf.auth.charge.callers)
  end)

  it("refuses a bad ttl, an unknown setting and a bad auth rule, naming the key", function()
    local cases = {
      { "events = { ttl = 0 }", "events.ttl must be between 1 and 3153600000, got 0" },
      { "events = { ttl = 0/0 }", "events.ttl must be a number, got NaN" },
      { "events = { processed = { auth = { token = 't' }, retries = 1 } }",
        "events.processed: unknown setting 'retries' (auth, emitters, waiters)" },
      { "events = { processed = { auth = { token = 't' }, emitters = 'receiver' } }",
        "events.processed.emitters must be a list of workflow names" },
      { "events = { processed = { auth = { token = 't' }, emitters = { 'a', 2 } } }",
        "events.processed.emitters must be a list of workflow names" },
      { "events = { processed = { auth = { token = 't', callers = { 'a' } } } }",
        "events.processed.auth: callers is for workflows; an event takes emitters" },
      { "auth = { charge = { token = 't', callers = { 'a', x = 'b' } } }",
        "auth.charge.callers must be a list of workflow names" },
      { "events = { processed = {} }",
        "events.processed.auth must be { token = ... } and/or { hmac_secret = ... }" },
      { "events = { processed = { auth = { token = '' } } }",
        "events.processed.auth.token: only token and hmac_secret, non-empty strings, and callers" },
      { "events = { processed = true }", "events.processed must be a table { auth = { token = ... } }" },
      { "events = 1", "'events' must be a table" },
    }
    for _, case in ipairs(cases) do
      local conf, err = load(case[1])
      assert.is_nil(conf, case[1])
      assert.equal(case[2], err)
    end
  end)
end)

describe("ctx.event and cancellation", function()
  before_each(testing.reset)

  it("a run waiting for an event is cancelled at that wait", function()
    local wf = chorus.workflow { name = "waits", run = function(ctx)
      return ctx.event("processed", { key = "task-1", timeout = 3600 })
    end }
    local r = testing.run(wf, {}, { cancel_at = 5 })
    assert.is_false(r.ok)
    assert.are.equal("cancelled", r.status)
    assert.are.equal("cancelled", r.error.kind)
    assert.are.equal(5, r.elapsed)
  end)
end)

-- Isolation: a workflow's runs keep at most limits.events_kept_per_workflow
-- events no wait took (the emit past it stops the run, kind events_full,
-- whatever pcall catches), places free when a wait takes one, the ttl passes
-- or the server starts again over the same store; an emitted payload is at
-- most limits.max_body_bytes. Events sent by POST /events are not counted.
describe("the events a workflow keeps", function()
  local core = require "chorus.core"
  local events = require "chorus.events"
  local store = require "chorus.store"

  before_each(testing.reset)
  after_each(function()
    events.kept_cap, events.kept_bytes_cap, events.max_payload = 10000, 64 * 1024 * 1024, 1048576
    core.set_clock("real")
  end)

  -- emits n events on distinct keys, swallowing every error it can
  local function flooder(n)
    return chorus.workflow { name = "flooder", run = function()
      local kept = 0
      for i = 1, n do
        if pcall(chorus.emit, "spam", "k" .. i, { i = i, pad = ("x"):rep(100) }) then
          kept = kept + 1
        end
      end
      return kept
    end }
  end

  it("stops a run emitting past the cap, uncatchably, and leaves other workflows their own", function()
    events.kept_cap = 3
    local r = testing.run(flooder(50))
    assert.is_false(r.ok)
    assert.equal("events_full", r.error.kind)
    assert.matches("limits.events_kept_per_workflow", r.error.message)
    assert.equal(3, events.kept("flooder"))
    local again = testing.run(flooder(1)) -- a new run of the same workflow: still full
    assert.equal("events_full", again.error.kind)
    local other = chorus.workflow { name = "other", run = function() return chorus.emit("spam", "mine", {}) end }
    assert.equal("kept", testing.run(other).value)
  end)

  it("caps the bytes of payload a workflow keeps, and frees them when a wait takes one", function()
    local one = #core.json.encode({ i = 1, pad = ("x"):rep(100) }) -- a flooder payload as JSON: two fit
    events.kept_bytes_cap = 3 * one - 1
    local r = testing.run(flooder(50))
    assert.equal("events_full", r.error.kind)
    assert.matches("limits.events_kept_bytes_per_workflow", r.error.message)
    assert.same({ 2, 2 * one }, { events.kept("flooder"), events.kept_bytes("flooder") })
    assert.is_true(testing.run(chorus.workflow { name = "taker", run = function(ctx)
      return ctx.event("spam", { key = "k1", timeout = 1 })
    end }).ok)
    assert.same({ 1, one }, { events.kept("flooder"), events.kept_bytes("flooder") })
  end)

  it("frees a place when a wait takes an event", function()
    events.kept_cap = 2
    assert.equal(2, testing.run(chorus.workflow { name = "flooder", run = function()
      return #{ chorus.emit("spam", "a", {}), chorus.emit("spam", "b", {}) }
    end }).value)
    local r = testing.run(chorus.workflow { name = "taker", run = function(ctx)
      return ctx.event("spam", { key = "a", timeout = 1 })
    end })
    assert.is_true(r.ok, r.error and r.error.message)
    assert.equal(1, events.kept("flooder"))
    assert.equal(1, testing.run(flooder(1)).value)
  end)

  it("counts what the store keeps when it starts again, frees expired events at the cap", function()
    core.set_clock("virtual", 1767225600)
    events.kept_cap = 2
    local st = store.memory()
    local ok, res = core.run(nil, function()
      events.configure({ store = st, ttl = 10 })
      events.deliver("e", "k1", { a = 1 }, "id-1", "wf")
      events.deliver("e", "k2", { b = 22 }, "id-2", "wf")
      events.deliver("e", "posted", {}, nil, nil) -- POST /events: no workflow's
      events.configure({ store = st, ttl = 10 }) -- a restart over the same store
      local out = { events.kept("wf"), events.kept_bytes("wf") }
      out[3] = select(2, pcall(events.deliver, "e", "k3", {}, "id-3", "wf")).kind
      core.sleep(11) -- the ttl passes: the places free
      out[4] = events.deliver("e", "k3", {}, "id-3", "wf")
      out[5], out[6] = events.kept("wf"), events.kept_bytes("wf")
      return out
    end)
    assert.is_true(ok, tostring(res))
    assert.same({ 2, #'{"a":1}' + #'{"b":22}', "events_full", "kept", 1, 2 }, res)
  end)

  it("refuses an emitted payload larger than limits.max_body_bytes, keeping nothing", function()
    events.max_payload = 100
    local r = testing.run(chorus.workflow { name = "big", run = function()
      local ok, err = pcall(chorus.emit, "e", "k", { pad = ("x"):rep(200) })
      return { ok, err.kind, chorus.emit("e", "k", { small = true }) }
    end })
    assert.is_true(r.ok, r.error and r.error.message)
    assert.same({ false, "too_large", "kept" }, r.value)
    assert.equal(1, events.kept("big"))
  end)

  it("checks limits.events_kept_per_workflow in the config", function()
    local config = require "chorus.config"
    local function load(text)
      return load_config("limits = { " .. text .. " }")
    end
    local _, err = load("events_kept_per_workflow = -1")
    assert.matches("events_kept_per_workflow", tostring(err))
    _, err = load("events_kept_bytes_per_workflow = 0.5")
    assert.matches("events_kept_bytes_per_workflow", tostring(err))
    local conf = assert(load("events_kept_per_workflow = 0, events_kept_bytes_per_workflow = 0, "
      .. "max_body_bytes = 4096"))
    config.apply(conf)
    assert.same({ 0, 0 }, { events.kept_cap, events.kept_bytes_cap })
    assert.equal(4096, events.max_payload)
  end)
end)
