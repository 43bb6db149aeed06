-- GET /runs/ID after crashes: the timeline shows every call of a run, those
-- made before a SIGKILL included, with a "resumed" mark per restart; the
-- record lists the outbox entries the run enqueued with their delivery
-- state as it changes; lock waits show how long they waited and held.
local H = require "tests.integration.helpers"

-- Twelve calls one after the other; the calls listed in input.slow park at
-- the mock for input.delay ms (the test kills the server meanwhile). Then
-- work for the outbox: a workflow start, a queued call, a queued call the
-- mock refuses for good (400: dead), and a saga's compensation chain.
local TWELVE = [[
local chorus = require "chorus"
local http = require "chorus.http"
local saga = require "chorus.saga"

return chorus.workflow {
  name = "twelve",
  run = function(ctx, input)
    local mock = http.upstream "mock"
    local slow = {}
    for _, i in ipairs(input.slow or {}) do
      slow[i] = true
    end
    for i = 1, 12 do
      mock:get("/step/" .. i .. (slow[i] and ("?delay=" .. input.delay) or ""))
    end
    ctx.later("noted", { from = ctx.run_id })
    mock:post("/queued?idempotent=1", { json = {}, later = true })
    mock:post("/refused?status=400", { json = {}, later = { attempts = 2 } })
    local s = saga.new(ctx, { policy = { attempts = 3, base = 0.05 } })
    s:step("reserve", function() return mock:post("/reserve", { json = {} }).status end,
      function() mock:post("/undo-reserve?idempotent=1", { json = {}, idempotency_key = ctx.key "undo" }) end)
    pcall(s.abort, s, "changed my mind")
    return { calls = 12 }
  end,
}
]]

local NOTED = [[
local chorus = require "chorus"
return chorus.workflow { name = "noted", run = function(_, input) return input end }
]]

-- Holds a per-buyer lock across a slow call.
local LOCKED = [[
local chorus = require "chorus"
local http = require "chorus.http"
return chorus.workflow {
  name = "locked",
  run = function(ctx, input)
    return ctx.lock("buyer:" .. input.buyer, function()
      http.upstream("mock"):get("/locked?delay=" .. input.delay)
      return "ok"
    end)
  end,
}
]]

describe("run records across restarts", function()
  local mock, dir, conf, data, srv

  local function start()
    srv = H.start_server({ "--config", conf, "--scripts", dir, "--data", data })
  end

  local function crash()
    srv.kill("KILL")
    srv.wait()
    start()
  end

  local function run_record(id)
    return H.run_record(srv, id)
  end

  local function finished(id)
    return H.finished(srv, id, nil, 20)
  end

  -- True once the mock holds a request to path (parked on its delay).
  local function parked_at(path)
    return H.eventually(function()
      local stats = mock.stats()
      return stats.in_flight > 0 and stats.by_path[path] and true
    end, 10)
  end

  local function calls_in(rec)
    local out = {}
    for _, e in ipairs(rec.timeline) do
      if e.url then
        out[#out + 1] = e
      end
    end
    return out
  end

  local function marks_in(rec)
    local out = {}
    for i, e in ipairs(rec.timeline) do
      if e.kind == "resumed" then
        out[#out + 1] = { at = i, replayed = e.replayed }
      end
    end
    return out
  end

  setup(function()
    mock = H.start_mock(300)
    dir = H.temp_dir({ ["twelve.lua"] = TWELVE, ["noted.lua"] = NOTED, ["locked.lua"] = LOCKED })
    conf = H.write_temp(([[
return {
  egress = { allow = { "127.0.0.1" } }, -- the webhook goes to the mock
  outbox = { base = 0.05, cap = 0.2, poll = 0.02 },
  upstreams = { mock = { base_url = %q } },
}
]]):format(mock.url))
    data = H.temp_dir()
    start()
  end)

  teardown(function() H.clean(srv, mock, dir, data, conf) end)

  before_each(function()
    mock.reset()
  end)

  it("shows all twelve calls and a resumed mark per restart after two SIGKILLs", function()
    local r = H.request(srv.url .. "/workflows/twelve?callback_url=" .. mock.url .. "/hook", { method = "POST",
      body = '{"slow":[7,10],"delay":1500}', headers = { Prefer = "respond-async" } })
    assert.are.equal(202, r.status, r.body)
    local id = r.json.run_id
    -- killed while call 7 is parked at the mock: calls 1 to 6 are journaled
    assert.is_truthy(parked_at("/step/7"), "call 7 never reached the mock")
    H.sleep(0.3)
    crash()
    -- and again while call 10 is parked, after the first restart
    assert.is_truthy(parked_at("/step/10"), "call 10 never reached the mock after the restart")
    H.sleep(0.3)
    crash()
    local rec = finished(id)
    assert.is_truthy(rec, "the run did not finish after the restarts")
    assert.are.equal("compensated", rec.status) -- the saga at its end rolled back

    local calls = calls_in(rec)
    local steps = {}
    for _, c in ipairs(calls) do
      local n = c.url:match("/step/(%d+)")
      if n then
        steps[#steps + 1] = tonumber(n)
        assert.are.equal(200, c.status)
        assert.are.equal("mock", c.target)
      end
    end
    assert.are.same({ 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12 }, steps)
    -- 12 steps + the saga's reserve call
    assert.are.equal(13, #calls)
    local marks = marks_in(rec)
    assert.are.equal(2, #marks)
    -- the first restart replayed calls 1-6 and went live at call 7; the
    -- second replayed 1-9 (the first mark is rebuilt where it was)
    assert.are.same({ { at = 7, replayed = 6 }, { at = 11, replayed = 9 } }, marks)
    assert.matches("/step/7", rec.timeline[8].url)
    assert.matches("/step/10", rec.timeline[12].url)
    -- the calls before each crash keep the times they were made at
    assert.is_true(rec.timeline[6].start < rec.timeline[8].start)
    assert.is_true(rec.timeline[6].start + rec.timeline[6].duration <= rec.timeline[7].at + 0.001)
  end)

  it("lists the outbox entries a run enqueued, with their delivery state as it changes", function()
    local r = H.request(srv.url .. "/workflows/twelve?callback_url=" .. mock.url .. "/hook", { method = "POST",
      body = '{"slow":[3],"delay":1000}', headers = { Prefer = "respond-async" } })
    local id = r.json.run_id
    assert.is_truthy(parked_at("/step/3"))
    H.sleep(0.3)
    crash()
    local function entries()
      local rec = run_record(id)
      local by = {}
      for _, e in ipairs(rec.enqueued or {}) do
        by[e.target] = e
      end
      return rec, by
    end
    local settled = H.eventually(function()
      local rec, by = entries()
      if rec.status == "running" or #(rec.enqueued or {}) < 5 then
        return false
      end
      for _, e in pairs(by) do
        if e.state == "pending" then
          return false
        end
      end
      return by
    end, 20)
    assert.is_truthy(settled, "the run's outbox entries did not all settle: " .. H.encode(run_record(id)))
    local noted = settled.noted
    assert.are.same({ "workflow", "delivered", 1 }, { noted.kind, noted.state, noted.attempts })
    local queued = settled["POST " .. mock.url .. "/queued?idempotent=1"]
    assert.are.same({ "http", "delivered" }, { queued.kind, queued.state })
    local refused = settled["POST " .. mock.url .. "/refused?status=400"]
    assert.are.same({ "http", "dead", 1 }, { refused.kind, refused.state, refused.attempts })
    assert.are.equal(400, refused.last_error.status)
    local chain = settled["compensate (1 calls)"]
    assert.are.same({ "chain", "delivered" }, { chain.kind, chain.state })
    local hook = settled["POST " .. mock.url .. "/hook"]
    assert.are.same({ "webhook", "delivered" }, { hook.kind, hook.state })
    for _, e in pairs(settled) do
      assert.is_string(e.id)
      assert.is_number(e.created)
      assert.is_number(e.settled)
    end
    -- the entries the run made did their work once each: a delivery may
    -- go out again (an attempt that timed out on a busy machine), always
    -- with the entry's Idempotency-Key, which the upstream (idempotent=1
    -- here, as a payment API is) answers from its first reply
    local stats = mock.stats()
    assert.is_true(stats.by_path["/queued"] >= 1 and stats.by_path["/undo-reserve"] >= 1)
    assert.are.equal(1, stats.effects[queued.id], H.encode(stats.effects)) -- the entry's id is its key
    assert.are.equal(1, stats.effects[id .. ":undo"], H.encode(stats.effects))
    -- and the record says so after another restart too
    crash()
    local _, again = entries()
    assert.are.equal("delivered", again.noted.state)
    assert.are.equal("dead", again["POST " .. mock.url .. "/refused?status=400"].state)
  end)

  it("shows a pending entry as pending, then delivered once it goes out", function()
    -- a queued call due in 1.5 s: the record lists it pending at first
    local wf = H.write_temp([[
local chorus = require "chorus"
local http = require "chorus.http"
return chorus.workflow { name = "delayed", run = function()
  http.upstream("mock"):post("/delayed", { json = {}, later = { delay = 1.5 } })
  return "ok"
end }
]])
    os.execute("cp " .. H.quote(wf) .. " " .. H.quote(dir .. "/delayed.lua"))
    os.remove(wf)
    crash() -- the new script loads at the start
    local r = H.request(srv.url .. "/workflows/delayed", { method = "POST", body = "{}" })
    assert.are.equal(200, r.status, r.body)
    local id = r.headers["x-run-id"]
    local pending = H.eventually(function()
      local e = (run_record(id).enqueued or {})[1]
      return e and e
    end, 5)
    assert.is_truthy(pending, "the record lists no outbox entry")
    assert.are.same({ "http", "pending", 0 }, { pending.kind, pending.state, pending.attempts })
    assert.is_nil(pending.settled)
    local delivered = H.eventually(function()
      local e = run_record(id).enqueued[1]
      return e.state == "delivered" and e
    end, 10)
    assert.is_truthy(delivered, "the entry never showed delivered")
    assert.are.equal(pending.id, delivered.id)
    assert.are.equal(1, delivered.attempts)
  end)

  it("shows how long a run waited for a lock and how long it held it", function()
    local async = { Prefer = "respond-async" }
    local a = H.request(srv.url .. "/workflows/locked", { method = "POST", body = '{"buyer":1,"delay":1000}',
      headers = async })
    assert.is_truthy(parked_at("/locked"))
    local b = H.request(srv.url .. "/workflows/locked", { method = "POST", body = '{"buyer":1,"delay":10}',
      headers = async })
    local ra, rb = finished(a.json.run_id), finished(b.json.run_id)
    local function lock_of(rec)
      for _, e in ipairs(rec.timeline) do
        if e.kind == "lock" then
          return e
        end
      end
    end
    local la, lb = lock_of(ra), lock_of(rb)
    assert.are.equal("buyer:1", la.lock)
    assert.is_true(la.held >= 0.9, "a held " .. la.held)
    -- b asked while a held it, and got it when a let go
    assert.is_true(lb.waited > 0, "b waited " .. lb.waited)
    assert.is_true(lb.start + lb.waited >= la.start + la.waited + la.held - 0.01)
  end)
end)
