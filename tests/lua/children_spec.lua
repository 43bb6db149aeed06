-- ctx.call: a child workflow run, durable, waited for; on mocks and the
-- virtual clock, the children resolved through testing.run's opts.workflows.
local testing = require "chorus.testing"
local chorus = require "chorus"
local http = require "chorus.http"

local charge = chorus.workflow {
  name = "charge",
  run = function(ctx, input)
    ctx.sleep(2)
    local res = http.upstream("cards"):post("/charges", { json = { amount = input.amount } })
    if res.status ~= 201 then
      error({ kind = "declined", message = "the card was declined" })
    end
    return { charge = res.json.id, amount = input.amount }
  end,
}

local function order(body)
  return chorus.workflow { name = "order", run = body }
end

describe("ctx.call", function()
  before_each(function()
    testing.reset()
    testing.mock("cards", { status = 201, json = { id = "ch_1" } })
  end)

  it("runs the child to its end and returns its result", function()
    local r = testing.run(order(function(ctx, input)
      local c = ctx.call("charge", { amount = input.amount })
      return { paid = c.charge, amount = c.amount }
    end), { amount = 12 }, { workflows = { charge = charge } })
    assert.is_true(r.ok, r.error and r.error.message)
    assert.are.same({ paid = "ch_1", amount = 12 }, r.value)
    assert.are.equal(2, r.elapsed)
    assert.called_upstream(r, "cards", "POST", "/charges")
  end)

  it("shows each child run in the parent's timeline: workflow, run id, how long, how it ended", function()
    local r = testing.run(order(function(ctx)
      ctx.call("charge", { amount = 1 })
      testing.mock("cards", { status = 402 })
      local _, err = pcall(ctx.call, "charge", { amount = 2 })
      return err.child_run_id
    end), {}, { workflows = { charge = charge } })
    local kids = {}
    for _, e in ipairs(r.timeline) do
      if e.kind == "child" then
        kids[#kids + 1] = e
      end
    end
    assert.are.equal(2, #kids)
    assert.are.same({ "charge", 2, "succeeded" }, { kids[1].workflow, kids[1].duration, kids[1].status })
    assert.are.same({ "failed", "declined", r.value }, { kids[2].status, kids[2].error_kind, kids[2].run_id })
    assert.are.equal(kids[1].start + 2, kids[2].start)
  end)

  it("raises the child's error, with its run id", function()
    testing.mock("cards", { status = 402 })
    local r = testing.run(order(function(ctx)
      local ok, err = pcall(ctx.call, "charge", { amount = 1 })
      return { ok = ok, kind = err.kind, message = err.message, child = err.child_run_id }
    end), {}, { workflows = { charge = charge } })
    assert.is_false(r.value.ok)
    assert.are.equal("declined", r.value.kind)
    assert.are.equal("the card was declined", r.value.message)
    assert.are.equal("string", type(r.value.child))
  end)

  it("refuses an unknown workflow and bad arguments", function()
    local r = testing.run(order(function(ctx) return ctx.call("nope") end), {}, { workflows = { charge = charge } })
    assert.are.equal("unknown_workflow", r.error.kind)
    for _, args in ipairs({ { 1 }, { "charge", "x" }, { "charge", {}, { bogus = 1 } } }) do
      local rr = testing.run(order(function(ctx) return ctx.call(table.unpack(args)) end), {},
        { workflows = { charge = charge } })
      assert.is_false(rr.ok)
      assert.matches("ctx.call", type(rr.error) == "table" and rr.error.message or tostring(rr.error))
    end
  end)

  it("hands the child a copy of its input as JSON data: no table or metamethod of the caller", function()
    -- the child is another workflow: sharing the caller's tables let it
    -- write into them, and ran the caller's __index in the child's run
    local child = chorus.workflow { name = "child", run = function(_, input)
      input.shared.n = 42
      return { spy = input.spy.anything, list = input.list, mt = getmetatable(input.spy) == nil }
    end }
    local r = testing.run(order(function(ctx)
      local shared, calls = { n = 0 }, 0
      local spy = setmetatable({}, { __index = function() calls = calls + 1 return "the caller's" end })
      local c = ctx.call("child", { shared = shared, spy = spy, list = chorus.json.array({}) })
      return { n = shared.n, calls = calls, child = c }
    end), {}, { workflows = { child = child } })
    assert.is_true(r.ok, r.error and r.error.message)
    assert.are.same({ n = 0, calls = 0, child = { list = {}, mt = true } }, r.value)
    local bad = testing.run(order(function(ctx) return ctx.call("child", { f = print }) end), {},
      { workflows = { child = child } })
    assert.is_false(bad.ok)
    assert.matches("ctx.call: input must be JSON data (cannot encode a function at $.f)",
      type(bad.error) == "table" and bad.error.message or tostring(bad.error), 1, true)
  end)

  it("ctx.later too: the later run gets a JSON copy, never the caller's tables or metamethods", function()
    -- the in-memory outbox (storage.durable = false) kept the caller's table
    -- itself: the later run wrote into it and ran the caller's metamethods
    local later = chorus.workflow { name = "later", run = function(_, input)
      input.shared.n = 42
      return input.spy.anything
    end }
    local shared, calls = { n = 0 }, 0
    local spy = setmetatable({}, { __index = function() calls = calls + 1 return "the caller's" end })
    local r = testing.run(order(function(ctx)
      ctx.later("later", { shared = shared, spy = spy })
    end), {}, { deliver = true, workflows = { later = later } })
    assert.is_true(r.ok, r.error and r.error.message)
    assert.are.equal("delivered", r.outbox[1].delivery)
    assert.are.same({ n = 0 }, shared)
    assert.are.equal(0, calls)
    local bad = testing.run(order(function(ctx) ctx.later("later", { f = print }) end), {},
      { workflows = { later = later } })
    assert.matches("ctx.later: input must be JSON data (cannot encode a function at $.f)",
      type(bad.error) == "table" and bad.error.message or tostring(bad.error), 1, true)
  end)

  it("ctx.later: a later run's huge error is kept brief in its outbox entry", function()
    -- the entry is written again at each attempt and its DLQ line shows it:
    -- the error was kept whole (20 MB for 20 MB)
    local failing = chorus.workflow { name = "failing", run = function()
      error({ kind = "boom", message = ("m"):rep(100000), detail = ("d"):rep(100000) })
    end }
    local r = testing.run(order(function(ctx)
      ctx.later("failing", {}, { attempts = 1 })
    end), {}, { deliver = true, workflows = { failing = failing } })
    assert.is_true(r.ok, r.error and r.error.message)
    assert.are.equal("dead", r.outbox[1].delivery)
    local last = r.outbox[1].last_error
    assert.are.equal("boom", last.kind)
    assert.truthy(#chorus.json.encode(last) <= 4096, #chorus.json.encode(last))
    assert.truthy(last.message:find("(100000 bytes)", 1, true), last.message:sub(1, 100))
    -- a small one stays whole
    r = testing.run(order(function(ctx) ctx.later("failing", { small = true }, { attempts = 1 }) end), {},
      { deliver = true, workflows = { failing = chorus.workflow { name = "failing", run = function()
        error({ kind = "boom", message = "short", detail = "d" })
      end } } })
    assert.are.same({ kind = "boom", message = "short", detail = "d" }, r.outbox[1].last_error)
  end)

  it("never starts the child twice when the parent is replayed after a crash", function()
    -- effects: parent "call" (not journaled until the child ends), child
    -- sleep, child POST; the crash after the child's POST leaves the child
    -- unfinished: the restart resumes it once, and the parent takes its
    -- outcome without starting another
    local r = testing.run(order(function(ctx)
      local c = ctx.call("charge", { amount = 5 })
      return { paid = c.charge }
    end), {}, { workflows = { charge = charge }, crash_after = 2 })
    assert.is_true(r.crashed)
    assert.is_true(r.ok, r.error and r.error.message)
    assert.are.same({ paid = "ch_1" }, r.value)
    assert.are.equal(1, #testing.calls_to(r, "cards", "POST", "/charges"))
  end)

  it("gives the parent a resumed child's real result, not its redacted record", function()
    local secret_charge = chorus.workflow {
      name = "charge", redact = { "charge" }, run = charge.run,
    }
    local r = testing.run(order(function(ctx)
      local c = ctx.call("charge", { amount = 5 })
      return { paid = c.charge }
    end), {}, { workflows = { charge = secret_charge }, crash_after = 2 }) -- the child resumes on its own
    assert.is_true(r.crashed)
    assert.is_true(r.ok, r.error and r.error.message)
    assert.are.same({ paid = "ch_1" }, r.value)
  end)

  it("replays a finished child's result from the parent's journal", function()
    local r = testing.run(order(function(ctx)
      local c = ctx.call("charge", { amount = 5 })
      ctx.sleep(1)
      http.upstream("cards"):get("/receipts/" .. c.charge)
      return { paid = c.charge }
    end), {}, { workflows = { charge = charge }, crash_after = 3 }) -- after the parent's GET
    assert.is_true(r.crashed)
    assert.are.same({ paid = "ch_1" }, r.value)
    assert.are.equal(1, #testing.calls_to(r, "cards", "POST", "/charges"))
    assert.are.equal(1, #testing.calls_to(r, "cards", "GET"))
  end)

  it("lets a child die with its parent in a simulated crash, and resumes it once", function()
    -- the parent crashes (its GET, effect 2) while its child sleeps: the
    -- child must die with the process, not go on beside its resumed copy
    local r = testing.run(order(function(ctx)
      return chorus.all(function() return ctx.call("charge", { amount = 5 }) end, function()
        ctx.sleep(1)
        http.upstream("cards"):get("/ping")
        return 1
      end)
    end), {}, { workflows = { charge = charge }, crash_after = 2 })
    assert.is_true(r.crashed)
    assert.is_true(r.ok, r.error and r.error.message)
    assert.are.equal("succeeded", r.status)
    assert.are.equal(1, #testing.calls_to(r, "cards", "POST", "/charges"))
  end)

  it("replays a chorus.race a child lost to the same winner after a crash; the child never charges", function()
    -- the loser's call is not in the journal (it never ended): the replay
    -- calls it again and must not be handed the cancel that ended it
    local slow_charge = chorus.workflow { name = "charge", run = function(ctx, input)
      ctx.sleep(20)
      return charge.run(ctx, input)
    end }
    local r = testing.run(order(function(ctx)
      local v = chorus.race(function() return ctx.call("charge", { amount = 5 }) end, function()
        ctx.sleep(1)
        return "fast"
      end)
      ctx.sleep(5)
      http.upstream("cards"):get("/ping")
      return v
    end), {}, { workflows = { charge = slow_charge }, crash_after = 3 }) -- after the GET
    assert.is_true(r.crashed)
    assert.is_true(r.ok, r.error and r.error.message)
    assert.are.equal("fast", r.value)
    assert.are.equal(0, #testing.calls_to(r, "cards", "POST", "/charges"))
    assert.are.equal(1, #testing.calls_to(r, "cards", "GET", "/ping"))
  end)

  it("caps the child with the parent's deadline", function()
    testing.mock("cards", { status = 201, json = { id = "ch_1" }, delay = 600 })
    local r = testing.run(chorus.workflow { name = "order", timeout = 30, run = function(ctx)
      return ctx.call("charge", { amount = 5 })
    end }, {}, { workflows = { charge = charge } })
    assert.are.equal("timed_out", r.status)
    assert.are.equal("deadline", r.error.kind)
    assert.are.equal(30, r.elapsed)
  end)

  -- The child's deadline is capped by the parent's, but its on_timeout
  -- runs past it (10 s of its own), and the parent waited for that too: a
  -- parent with 30 s timed out at 40, one level more of children at 50.
  it("ends the parent's wait for its child at the parent's deadline, the child's on_timeout running on", function()
    testing.mock("cards", { status = 201, json = { id = "ch_1" }, delay = 600 })
    testing.mock("alerts", { status = 202, delay = 8 })
    local slow_cleanup = chorus.workflow { name = "charge", run = charge.run, on_timeout = function()
      return http.upstream("alerts"):post("/late", {}).status
    end }
    local r = testing.run(chorus.workflow { name = "order", timeout = 30, run = function(ctx)
      return ctx.call("charge", { amount = 5 })
    end }, {}, { workflows = { charge = slow_cleanup } })
    assert.are.equal("timed_out", r.status)
    assert.are.equal("deadline", r.error.kind)
    assert.are.equal(30, r.elapsed)
    assert.called_upstream(r, "alerts", "POST", "/late") -- (the child's on_timeout, after the parent's end)
  end)

  it("cancelling the parent cancels the child", function()
    testing.mock("cards", { status = 201, json = { id = "ch_1" }, delay = 600 })
    local r = testing.run(order(function(ctx) return ctx.call("charge", { amount = 5 }) end), {},
      { workflows = { charge = charge }, cancel_at = 10 })
    assert.are.equal("cancelled", r.status)
    assert.are.equal(10, r.elapsed)
  end)
end)

-- A child whose parent stops waiting for it: on a run service over a store
-- kept in memory, so the child's own record (what GET /runs/ID shows, and
-- what a restart resumes) can be read.
describe("a child run its parent stops waiting for", function()
  local core = require "chorus.core"
  local runs = require "chorus.runs"
  local store = require "chorus.store"
  local outbox = require "chorus.outbox"
  local json = core.json
  local T0 = 1767225600

  -- sleeps long; its on_cancel's value shows in its record
  local slow = chorus.workflow {
    name = "slow",
    run = function(ctx)
      ctx.sleep(100)
      return "done"
    end,
    on_cancel = function() return "undone" end,
  }
  local mid = chorus.workflow { name = "mid", run = function(ctx) return ctx.call("slow", {}) end }

  local function boom(ctx)
    ctx.sleep(1)
    error({ kind = "boom", message = "a sibling failed" })
  end

  local function service(wfs, limits)
    local st = store.memory()
    local svc = runs.service({ store = st, backend = outbox.memory(true), log = function() end, limits = limits,
      log_sink = function() end, workflow = function(name)
        return wfs[name] and { workflow = wfs[name], hash = "h:" .. name }
      end })
    for name, wf in pairs(wfs) do
      svc:keep_version({ workflow = wf, hash = "h:" .. name })
    end
    return svc, st
  end

  -- Runs top to its end, then lets the service's other runs (its children)
  -- end too, within 1000 virtual seconds. before(svc, id): in the loop first.
  local function run_top(svc, top, before)
    core.set_clock("virtual", T0)
    local ok, out = core.run(nil, function()
      local id = core.uuid()
      if before then
        before(svc, id)
      end
      local _, value, rec = svc:start({ workflow = top, hash = "h:top" }, {}, { id = id })
      local ended = core.now() - T0
      for _ = 1, 1000 do
        if not next(svc.running) then
          break
        end
        core.sleep(1)
      end
      return { value = value, rec = rec, ended = ended }
    end)
    core.set_clock("real")
    assert(ok, tostring(out))
    return out
  end

  local function record(st, id)
    local text = st:get_run_text(id)
    return text and json.decode(text)
  end

  -- The first child of run id (its id).
  local function child(st, id)
    return record(st, id).children[1]
  end

  local function assert_cancelled(svc, st, id)
    local rec = record(st, id)
    assert.are.equal("cancelled", rec.status)
    assert.are.equal("parent", rec.cancel.via)
    assert.are.equal("cancelled", rec.error.kind)
    assert.is_nil(svc.running[id])
    return rec
  end

  local function assert_nothing_in_flight(svc, st)
    assert.are.same({}, st:unfinished()) -- a restart resumes nothing
    assert.are.equal(0, svc.inflight)
  end

  it("is cancelled when a sibling in chorus.all fails: on_cancel runs, its end is stored", function()
    local svc, st = service({ slow = slow })
    local out = run_top(svc, chorus.workflow { name = "top", run = function(ctx)
      return chorus.all(function() return ctx.call("slow", {}) end, function() boom(ctx) end)
    end })
    assert.are.equal("failed", out.rec.status)
    assert.are.equal("boom", out.rec.error.kind)
    local c = assert_cancelled(svc, st, child(st, out.rec.id))
    assert.are.same({ ok = true, value = "undone" }, c.on_cancel)
    assert.are.equal(out.rec.id, c.parent)
    assert_nothing_in_flight(svc, st)
  end)

  it("is cancelled when it loses a chorus.race (and in chorus.any)", function()
    for _, combinator in ipairs({ "race", "any" }) do
      local svc, st = service({ slow = slow })
      local out = run_top(svc, chorus.workflow { name = "top", run = function(ctx)
        return chorus[combinator](function() return ctx.call("slow", {}) end, function()
          ctx.sleep(1)
          return "fast"
        end)
      end })
      assert.are.equal("succeeded", out.rec.status)
      assert.are.equal("fast", out.value)
      assert_cancelled(svc, st, child(st, out.rec.id))
      assert_nothing_in_flight(svc, st)
    end
  end)

  it("is cancelled with its parent (DELETE /runs/PARENT)", function()
    local svc, st = service({ slow = slow })
    local out = run_top(svc, chorus.workflow { name = "top", run = function(ctx)
      return chorus.all(function() return ctx.call("slow", {}) end, function() ctx.sleep(500) end)
    end }, function(s, id)
      core.spawn(function()
        core.sleep(5)
        assert(s:cancel(id, "admin"))
      end)
    end)
    assert.are.equal("cancelled", out.rec.status)
    assert.are.equal(5, out.ended)
    assert_cancelled(svc, st, child(st, out.rec.id))
    assert_nothing_in_flight(svc, st)
  end)

  it("ends when its parent times out: the deadline's or a cancel's status, never running", function()
    local svc, st = service({ slow = slow })
    local out = run_top(svc, chorus.workflow { name = "top", timeout = 10, run = function(ctx)
      return chorus.all(function() return ctx.call("slow", {}) end, function() ctx.sleep(500) end)
    end })
    assert.are.equal("timed_out", out.rec.status)
    local c = record(st, child(st, out.rec.id))
    assert.truthy(c.status == "timed_out" or c.status == "cancelled", c.status)
    assert_nothing_in_flight(svc, st)
  end)

  it("is cancelled when its parent is stopped by its instruction budget", function()
    -- a killed run runs no Lua of its own any more, not even its closes:
    -- the parent's end cancels what it left
    local svc, st = service({ slow = slow }, { instructions = 1e6 })
    local out = run_top(svc, chorus.workflow { name = "top", run = function(ctx)
      return chorus.all(function() return ctx.call("slow", {}) end, function()
        ctx.sleep(1)
        local n = 0
        while true do
          n = n + 1
        end
      end)
    end })
    assert.are.equal("failed", out.rec.status)
    assert.are.equal("budget", out.rec.error.kind)
    assert_cancelled(svc, st, child(st, out.rec.id))
    assert_nothing_in_flight(svc, st)
  end)

  it("takes its own children with it (grandchildren)", function()
    local svc, st = service({ slow = slow, mid = mid })
    local out = run_top(svc, chorus.workflow { name = "top", run = function(ctx)
      return chorus.all(function() return ctx.call("mid", {}) end, function() boom(ctx) end)
    end })
    assert.are.equal("failed", out.rec.status)
    local m = child(st, out.rec.id)
    assert_cancelled(svc, st, m)
    local g = assert_cancelled(svc, st, child(st, m))
    assert.are.same({ ok = true, value = "undone" }, g.on_cancel)
    assert_nothing_in_flight(svc, st)
  end)

  it("runs afresh when its failed parent is redriven, instead of handing the parent its cancel", function()
    local svc, st = service({ slow = slow })
    local tries = 0
    local top = chorus.workflow { name = "top", run = function(ctx)
      return chorus.all(function() return ctx.call("slow", {}) end, function()
        ctx.sleep(1)
        tries = tries + 1
        if tries == 1 then
          error({ kind = "boom", message = "not this time" })
        end
        return "then"
      end)
    end }
    svc:keep_version({ workflow = top, hash = "h:top" })
    local out = run_top(svc, top)
    assert.are.equal("failed", out.rec.status)
    local cid = child(st, out.rec.id)
    assert_cancelled(svc, st, cid)
    core.set_clock("virtual", T0 + 2000)
    local ok, res = core.run(nil, function()
      local rec, wf, kept = assert(svc:prepare_redrive(out.rec.id, "admin"))
      return { svc:execute({ workflow = wf }, rec, rec.input, kept) }
    end)
    core.set_clock("real")
    assert(ok, tostring(res))
    assert.is_true(res[1], res[2] and res[2].message)
    assert.are.equal("done", res[2]) -- the child's result: it ran to its end this time
    assert.are.equal("succeeded", record(st, cid).status)
    assert_nothing_in_flight(svc, st)
  end)

  -- A cancel stored in a run that then failed (a limit stopped it first)
  -- stayed in its record through a redrive: a crash during the redrive
  -- resumed it cancelled, and its children with it (a child whose
  -- parent's record holds a cancel is cancelled as it resumes).
  it("is not cancelled for a cancel its redriven parent's failed run had stored", function()
    local svc, st = service({ slow = slow })
    local quick = chorus.workflow { name = "top", run = function(ctx)
      local tries = st:get_json("meta", "tries") or 0
      if tries == 0 then
        error({ kind = "boom", message = "not this time" })
      end
      return ctx.call("slow", {})
    end }
    svc:keep_version({ workflow = quick, hash = "h:top" })
    local out = run_top(svc, quick)
    assert.are.equal("failed", out.rec.status)
    core.set_clock("virtual", T0 + 2000)
    local ok, res = core.run(nil, function()
      local stored = record(st, out.rec.id)
      stored.cancel = { at = 1, via = "admin" } -- stored before the run failed
      st:put_run(stored)
      st:put_json("meta", "tries", 1)
      st:commit()
      local rec, wf, kept = assert(svc:prepare_redrive(out.rec.id, "admin"))
      return { rec.cancel, svc:execute({ workflow = wf }, rec, rec.input, kept) }
    end)
    core.set_clock("real")
    assert(ok, tostring(res))
    assert.is_nil(res[1])
    assert.is_true(res[2], res[3] and res[3].message)
    assert.are.equal("succeeded", record(st, out.rec.id).status)
  end)

  it("found unfinished after a restart while its parent has ended, is cancelled, not run on", function()
    -- a crash between the parent's end and the cancel of the child it left
    -- (two commits) leaves that child in flight in the data folder
    local svc, st = service({ slow = slow })
    local pid, cid = core.uuid(), core.uuid()
    st:put_run_text(pid, json.encode({ id = pid, workflow = "top", status = "failed", children = { cid } }))
    st:put_run({ id = cid, workflow = "slow", status = "running", parent = pid, started = T0, timeline = {},
      script_hash = "h:slow", input = {} })
    st:put_timer(cid, nil)
    st:commit()
    local resumed = {}
    assert.are.equal(1, svc:recover({ start = function(fn) resumed[#resumed + 1] = fn end }))
    core.set_clock("virtual", T0)
    local ok, err = core.run(nil, function() resumed[1]() end)
    core.set_clock("real")
    assert(ok, tostring(err))
    local c = assert_cancelled(svc, st, cid)
    assert.are.same({ ok = true, value = "undone" }, c.on_cancel)
    assert.are.equal(0, c.duration)
    assert_nothing_in_flight(svc, st)
  end)
end)

-- Without a journal the child's value reached its parent as it was: the
-- parent, another workflow, got the child's functions (closures over the
-- state every run of the child shares, which the parent could then change)
-- and coroutines. It gets JSON data, as a durable parent gets from the
-- journal.
describe("ctx.call: what the child hands its parent", function()
  before_each(testing.reset)

  local shared = { n = 0 }
  local leaky = chorus.workflow { name = "leaky", run = function(_, input)
    shared.n = shared.n + 1
    if input.how == "function" then
      return { n = shared.n, bump = function() shared.n = shared.n + 100 end }
    elseif input.how == "thread" then
      return { co = coroutine.create(function() end) }
    end
    return { n = shared.n, list = chorus.json.array({}) }
  end }

  for _, how in ipairs({ "function", "thread" }) do
    it(("is JSON data: a %s is refused in the parent's run"):format(how), function()
      local r = testing.run(order(function(ctx, input)
        local ok, v = pcall(ctx.call, "leaky", { how = input.how })
        if ok and type(v.bump) == "function" then
          v.bump()
        end
        return { ok = ok, message = not ok and tostring(v) or nil }
      end), { how = how }, { workflows = { leaky = leaky } })
      assert.is_true(r.ok, r.error and tostring(r.error.message or r.error))
      assert.is_false(r.value.ok)
      assert.truthy(r.value.message:find("the child's result must be JSON data", 1, true), r.value.message)
      assert.is_nil(r.value.message:find("chorus/", 1, true), r.value.message)
    end)
  end

  it("keeps what JSON carries, an empty array too, and leaves the child's state alone", function()
    shared.n = 0
    local r = testing.run(order(function(ctx)
      local v = ctx.call("leaky", {})
      return { n = v.n, empty = chorus.json.encode(v.list) }
    end), {}, { workflows = { leaky = leaky } })
    assert.is_true(r.ok, r.error and tostring(r.error.message or r.error))
    assert.are.same({ n = 1, empty = "[]" }, r.value)
  end)
end)
