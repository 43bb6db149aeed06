-- A run's timeline across crashes (chorus.testing's crash_after): the
-- effects made before a crash are shown again after the restart, as they
-- were first made, with a "resumed" mark where each restart went live.
local testing = require "chorus.testing"
local chorus = require "chorus"
local http = require "chorus.http"
local deliveries = require "chorus.deliveries"

-- n calls one after the other, each to its own path.
local function serial(n)
  return chorus.workflow { name = "serial", run = function(ctx)
    for i = 1, n do
      ctx.sleep(1) -- calls at distinct virtual times
      http.get("http://api.example.test/item/" .. i)
    end
    return "done"
  end }
end

local function calls_in(timeline)
  local out = {}
  for _, e in ipairs(timeline) do
    if e.url then
      out[#out + 1] = e
    end
  end
  return out
end

-- The timeline without its sleeps (each call here follows one).
local function plain(timeline)
  local out = {}
  for _, e in ipairs(timeline) do
    if e.kind ~= "sleep" then
      out[#out + 1] = e
    end
  end
  return out
end

local function marks_in(timeline)
  local out = {}
  for i, e in ipairs(timeline) do
    if e.kind == "resumed" then
      out[#out + 1] = { at = i, mark = e }
    end
  end
  return out
end

describe("a run's timeline after a crash", function()
  before_each(function()
    testing.reset()
    testing.mock("http://api.example.test", { status = 200, json = {} })
  end)

  it("shows every call, those made before the crash included, as a run without a crash does", function()
    local whole = testing.run(serial(6))
    -- 12 effects: six sleeps and six calls; the crash comes after the third call
    local r = testing.run(serial(6), {}, { crash_after = 6 })
    assert.is_true(r.ok, r.error and r.error.message)
    assert.is_true(r.crashed)
    assert.are.equal(6, r.replayed)
    local calls = calls_in(r.timeline)
    assert.are.equal(6, #calls)
    for i, c in ipairs(calls) do
      assert.are.equal("http://api.example.test/item/" .. i, c.url)
      assert.are.equal(200, c.status)
      -- the span id the call sent in its traceparent, also for those replayed
      assert.are.equal(r.calls[i].headers.traceparent:match("^00%-%x+%-(%x+)%-01$"), c.span_id)
      -- the same call at the same virtual time as in the run that did not crash
      local w = calls_in(whole.timeline)[i]
      w.span_id, c.span_id = nil, nil
      assert.are.same(w, c)
    end
  end)

  it("marks the restart once, where live execution began again", function()
    local r = testing.run(serial(6), {}, { crash_after = 6 })
    local tl = plain(r.timeline)
    local marks = marks_in(tl)
    assert.are.equal(1, #marks)
    assert.are.equal(6, marks[1].mark.replayed)
    -- after the three calls replayed from the journal, before the live ones
    assert.are.equal(4, marks[1].at)
    assert.are.equal("http://api.example.test/item/3", tl[3].url)
    assert.are.equal("http://api.example.test/item/4", tl[5].url)
    -- the restart came at the virtual time of the crash, after the third call
    assert.is_true(marks[1].mark.at >= tl[3].start)
    assert.is_true(marks[1].mark.at <= tl[5].start)
  end)

  it("shows one mark per restart, each where its restart went live", function()
    local r = testing.run(serial(6), {}, { crash_after = { 4, 9 } })
    assert.is_true(r.ok, r.error and r.error.message)
    assert.are.equal(6, #calls_in(r.timeline))
    local marks = marks_in(plain(r.timeline))
    assert.are.equal(2, #marks)
    assert.are.same({ 4, 9 }, { marks[1].mark.replayed, marks[2].mark.replayed })
    -- two calls before the first restart, four before the second (its
    -- crash came after the sleep that follows the fourth call)
    assert.are.equal(3, marks[1].at)
    assert.are.equal(6, marks[2].at)
    assert.is_true(marks[1].mark.at <= marks[2].mark.at)
  end)

  it("puts the mark at the end when the crash came after the run's last effect", function()
    local r = testing.run(serial(2), {}, { crash_after = 4 })
    assert.is_true(r.ok)
    assert.are.equal(4, r.replayed)
    assert.are.equal(2, #calls_in(r.timeline))
    local marks = marks_in(r.timeline)
    assert.are.equal(1, #marks)
    assert.are.equal(#r.timeline, marks[1].at)
  end)

  it("shows each sleep where it was first made, those before the crash included", function()
    local whole = testing.run(serial(3))
    local r = testing.run(serial(3), {}, { crash_after = 3 })
    local function sleeps(timeline)
      local out = {}
      for _, e in ipairs(timeline) do
        if e.kind == "sleep" then
          out[#out + 1] = e
        end
      end
      return out
    end
    assert.are.equal(3, #sleeps(r.timeline))
    assert.are.same(sleeps(whole.timeline), sleeps(r.timeline))
    for i, e in ipairs(sleeps(r.timeline)) do
      assert.are.equal(1, e.duration)
      -- each sleep ends where its call starts
      assert.are.equal(e.start + e.duration, calls_in(r.timeline)[i].start)
    end
  end)

  it("keeps every attempt of a call that failed before the crash, and its error replays", function()
    testing.mock("http://down.example.test", { status = 503 })
    local wf = chorus.workflow { name = "down", run = function(ctx)
      local first = http.get("http://down.example.test/x")
      ctx.sleep(1)
      local ok = pcall(http.get, "http://nowhere.example.test/y")
      http.get("http://api.example.test/z")
      return { first = first.status, second = ok }
    end }
    local r = testing.run(wf, {}, { crash_after = 3 })
    assert.is_true(r.ok, r.error and r.error.message)
    assert.are.same({ first = 503, second = false }, r.value)
    local calls = calls_in(r.timeline)
    assert.are.equal(3, #calls)
    assert.are.equal(503, calls[1].status)
    assert.are.equal("http://nowhere.example.test/y", calls[2].url)
    assert.are.equal("http://api.example.test/z", calls[3].url)
    assert.are.equal(1, #marks_in(r.timeline))
  end)

  it("shows each call of concurrent tasks once", function()
    local wf = chorus.workflow { name = "fan", run = function()
      local fns = {}
      for i = 1, 4 do
        fns[i] = function() return http.get("http://api.example.test/fan/" .. i).status end
      end
      return chorus.all(table.unpack(fns))
    end }
    local r = testing.run(wf, {}, { crash_after = 2 })
    assert.is_true(r.ok, r.error and r.error.message)
    local seen = {}
    for _, c in ipairs(calls_in(r.timeline)) do
      seen[c.url] = (seen[c.url] or 0) + 1
    end
    assert.are.same({ ["http://api.example.test/fan/1"] = 1, ["http://api.example.test/fan/2"] = 1,
      ["http://api.example.test/fan/3"] = 1, ["http://api.example.test/fan/4"] = 1 }, seen)
    assert.are.equal(1, #marks_in(r.timeline))
  end)
end)

describe("lock waits in the timeline", function()
  before_each(testing.reset)

  -- a holds the lock for 2 s; b asks for it 0.5 s later and waits 1.5 s
  local contended = chorus.workflow { name = "contended", run = function(ctx)
    chorus.all(function()
      ctx.lock("buyer-1", function() ctx.sleep(2) end)
    end, function()
      ctx.sleep(0.5)
      ctx.lock("buyer-1", function() ctx.sleep(1) end)
    end)
    return "ok"
  end }

  local function locks_in(timeline)
    local out = {}
    for _, e in ipairs(timeline) do
      if e.kind == "lock" then
        out[#out + 1] = e
      end
    end
    table.sort(out, function(x, y) return x.start < y.start end)
    return out
  end

  it("shows how long each holder waited for the lock and held it", function()
    local r = testing.run(contended)
    assert.is_true(r.ok)
    local locks = locks_in(r.timeline)
    assert.are.equal(2, #locks)
    assert.are.same({ "buyer-1", 0, 2 }, { locks[1].lock, locks[1].waited, locks[1].held })
    assert.are.same({ "buyer-1", 1.5, 1 }, { locks[2].lock, locks[2].waited, locks[2].held })
    assert.are.equal(0.5, locks[2].start - locks[1].start)
  end)

  it("keeps the waits of the first execution after a crash", function()
    -- effects: a's lock, b's sleep, a's sleep, a's unlock, b's lock, ...:
    -- the crash comes while b holds the lock
    local r = testing.run(contended, {}, { crash_after = 5 })
    assert.is_true(r.ok, r.error and r.error.message)
    assert.is_true(r.crashed)
    local locks = locks_in(r.timeline)
    assert.are.equal(2, #locks)
    assert.are.same({ 0, 2 }, { locks[1].waited, locks[1].held })
    assert.are.same({ 1.5, 1 }, { locks[2].waited, locks[2].held })
  end)
end)

describe("the delivery rows of a run's outbox entries", function()
  local core = require "chorus.core"
  local outbox = require "chorus.outbox"
  local store = require "chorus.store"
  local json = core.json

  before_each(function() core.set_clock("virtual", 1000) end)
  after_each(function() core.set_clock("real") end)

  local function made_by(run_id, id, kind, fields)
    local e = { id = id, kind = kind, due = 1000, created = 1000, seq = 0, attempts = 0, max_attempts = 2,
      base = 1, cap = 10, from_run = run_id }
    for k, v in pairs(fields or {}) do
      e[k] = v
    end
    return e
  end

  local function rows_by_id(backend, run_id)
    local out = {}
    for _, row in ipairs(backend:deliveries(run_id)) do
      out[row.id] = row
    end
    return out
  end

  -- the same contract on both backends: memory, and a data folder's (in memory)
  local function quiet(b)
    b.log_sink = function() end -- the DLQ moves' log lines
    return b
  end

  for name, make in pairs({ memory = function() return outbox.memory() end,
    durable = function() return outbox.durable(store.memory()) end }) do
    it(("follow each entry from pending to delivered or dead (%s backend)"):format(name), function()
      local b = quiet(make())
      local commit = function() if b.st then b.st:commit() end end
      local unavailable = { error = { kind = "http", status = 503, message = "HTTP 503" } }
      local call = made_by("run-1", "e-call", "http", { request = { method = "POST", url = "http://x.test/a" } })
      local start = made_by("run-1", "e-start", "workflow", { workflow = "receipt" })
      b:add(call)
      b:add(start)
      b:add(made_by("run-2", "e-other", "chain", { name = "compensate", steps = { {}, {} } }))
      commit()
      local rows = rows_by_id(b, "run-1")
      assert.are.same({ id = "e-call", kind = "http", target = "POST http://x.test/a", state = "pending",
        attempts = 0, created = 1000 }, rows["e-call"])
      assert.are.same({ "workflow", "receipt", "pending" },
        { rows["e-start"].kind, rows["e-start"].target, rows["e-start"].state })
      assert.is_nil(rows["e-other"]) -- another run's entry
      assert.are.equal("compensate (2 calls)", b:deliveries("run-2")[1].target)

      core.set_clock("virtual", 1005)
      assert.are.equal("retry", outbox.settle(b, call, unavailable))
      outbox.settle(b, start, nil)
      commit()
      rows = rows_by_id(b, "run-1")
      assert.are.same({ "pending", 1, 503 }, { rows["e-call"].state, rows["e-call"].attempts,
        rows["e-call"].last_error.status })
      assert.are.same({ "delivered", 1, 1005 }, { rows["e-start"].state, rows["e-start"].attempts,
        rows["e-start"].settled })

      assert.are.equal("dead", outbox.settle(b, call, unavailable))
      commit()
      rows = rows_by_id(b, "run-1")
      assert.are.same({ "dead", 2 }, { rows["e-call"].state, rows["e-call"].attempts })
    end)
  end

  it("calls the run-end webhook a webhook, and keeps no row for an entry no run made", function()
    local b = outbox.memory()
    b:add({ id = "hook", kind = "http", due = 1, created = 1, seq = 0, attempts = 0, max_attempts = 1,
      run_id = "run-9", request = { method = "POST", url = "http://cb.test/" } })
    b:add({ id = "loose", kind = "http", due = 1, created = 1, seq = 0, attempts = 0, max_attempts = 1,
      request = { method = "POST", url = "http://x.test/" } })
    assert.are.equal("webhook", b:deliveries("run-9")[1].kind)
    assert.are.same({}, b:deliveries("nil"))
  end)

  it("shows an entry pending again once its DLQ entry is replayed", function()
    local st = store.memory()
    local b = quiet(outbox.durable(st))
    local e = made_by("run-3", "e-dead", "workflow", { workflow = "w" })
    b:add(e)
    outbox.settle(b, e, { permanent = true, error = { kind = "http", status = 400, message = "HTTP 400" } })
    st:commit()
    assert.are.equal("dead", b:deliveries("run-3")[1].state)
    st:replay_dlq("e-dead", 2000)
    st:commit()
    local row = b:deliveries("run-3")[1]
    assert.are.same({ "pending", 0 }, { row.state, row.attempts })
    assert.is_nil(row.last_error)
  end)

  it("adds the rows to a record's JSON, oldest first, and leaves a record without any as it is", function()
    local text = json.encode({ id = "run-1", status = "succeeded" })
    assert.are.equal(text, deliveries.add_to_record(text, {}))
    local out = json.decode(deliveries.add_to_record(text, { { id = "b", created = 2 }, { id = "a", created = 1 } }))
    assert.are.equal("succeeded", out.status)
    assert.are.same({ "a", "b" }, { out.enqueued[1].id, out.enqueued[2].id })
  end)
end)
