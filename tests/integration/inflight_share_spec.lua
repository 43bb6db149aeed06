-- One workflow's share of the runs in flight (limits.inflight_runs_per_workflow),
-- through a real `chorus serve` on loopback: a workflow flooded with slow
-- requests takes its share and no more, so the others are still served; its
-- own requests past the share get 503 naming it; its outbox entries wait
-- without holding up the entries queued behind them; and its count goes
-- back down however its runs end.
local H = require "tests.integration.helpers"

local FIX = "tests/integration/fixtures/share/"
local ADMIN = { Authorization = "Bearer s3cret" }
local ASYNC = { Prefer = "respond-async" }

local function fixtures(names)
  local files = {}
  for _, name in ipairs(names) do
    files[name .. ".lua"] = H.read(FIX .. name .. ".lua")
  end
  return files
end

-- Starts a server over the share fixtures with max_inflight_runs = 4 (so by
-- default a workflow's share is 2); extra: more config text.
local function serve(mock, extra)
  local dir = H.temp_dir(fixtures({ "slow", "slow_too", "quick", "ends", "deadline", "parent", "feeder", "fan",
    "deep" }))
  local conf = H.write_temp(([[
return { admin_token = "s3cret", limits = { max_inflight_runs = 4, run_instructions = 1e7 },
  upstreams = { mock = { base_url = %q } }, %s }
]]):format(mock.url, extra or ""))
  local srv = H.start_server({ "--config", conf, "--scripts", dir })
  srv.files = { dir, conf }
  return srv
end

local function post(srv, name, input, headers)
  return H.post_json(srv.url .. "/workflows/" .. name, H.encode(input or {}), headers)
end

-- chorus_workflow_runs_in_flight{workflow=NAME} on srv's /metrics (nil: no series).
local function inflight(srv, name)
  local body = H.request(srv.url .. "/metrics").body or ""
  return tonumber(body:match('\nchorus_workflow_runs_in_flight{workflow="' .. name:gsub("%p", "%%%0") .. '"} (%d+)'))
end

-- Waits until every workflow's count is 0 again.
local function drained(srv, names)
  return H.eventually(function()
    for _, name in ipairs(names) do
      if inflight(srv, name) ~= 0 then
        return false
      end
    end
    return true
  end, 30)
end

describe("a workflow's share of the runs in flight", function()
  local mock, srv

  setup(function()
    mock = H.start_mock(200)
    srv = serve(mock)
  end)

  teardown(function()
    H.clean(srv, mock)
    if srv then
      H.clean(table.unpack(srv.files))
    end
  end)

  it("leaves the other workflows served while one is flooded with slow requests", function()
    local codes = {}
    for i = 1, 4 do -- a flood: as many as the whole server takes
      codes[i] = post(srv, "slow", { delay = 3000 }, ASYNC).status
    end
    local quick = post(srv, "quick")
    local counts = { slow = inflight(srv, "slow"), quick = inflight(srv, "quick") }
    assert.are.same({ 202, 202, 503, 503 }, codes)
    assert.are.equal(200, quick.status, quick.body)
    assert.are.same({ slow = 2, quick = 0 }, counts)
    assert.is_true(drained(srv, { "slow" }))
  end)

  it("holds to the share under a burst of concurrent async requests", function()
    local pending = {}
    for i = 1, 8 do
      pending[i] = H.request_async(srv.url .. "/workflows/slow", { method = "POST", body = '{"delay":3000}',
        headers = { Prefer = "respond-async", ["Content-Type"] = "application/json" } })
    end
    local codes = {}
    for _, p in ipairs(pending) do
      local st = p.wait().status
      codes[st] = (codes[st] or 0) + 1
    end
    assert.are.same({ [202] = 2, [503] = 6 }, codes)
    assert.is_true(drained(srv, { "slow" }))
  end)

  it("answers 503 problem+json with Retry-After naming the workflow and its limit", function()
    assert.are.equal(202, post(srv, "slow", { delay = 3000 }, ASYNC).status)
    assert.are.equal(202, post(srv, "slow", { delay = 3000 }, ASYNC).status)
    local shed = post(srv, "slow", {}, { ["Idempotency-Key"] = "shed-share-1" })
    assert.are.equal(503, shed.status)
    assert.are.equal("1", shed.headers["retry-after"])
    assert.are.equal("application/problem+json", shed.headers["content-type"])
    assert.are.equal(503, shed.json.status)
    assert.truthy(shed.json.detail:find("workflow 'slow' has 2 runs in flight", 1, true), shed.json.detail)
    assert.truthy(shed.json.detail:find("limits.inflight_runs_per_workflow = 2", 1, true), shed.json.detail)
    -- the whole server full: its own message
    assert.are.equal(202, post(srv, "slow_too", { delay = 3000 }, ASYNC).status)
    assert.are.equal(202, post(srv, "slow_too", { delay = 3000 }, ASYNC).status)
    local full = post(srv, "quick")
    assert.are.equal(503, full.status)
    assert.are.equal("1", full.headers["retry-after"])
    assert.truthy(full.json.detail:find("4 runs are in flight, the most this server takes", 1, true),
      full.json.detail)
    assert.is_true(drained(srv, { "slow", "slow_too" }))
    -- nothing was stored for the shed request: the key runs now
    local retry = post(srv, "slow", { delay = 10 }, { ["Idempotency-Key"] = "shed-share-1" })
    assert.are.equal(200, retry.status, retry.body)
    assert.is_nil(retry.headers["idempotent-replayed"])
  end)

  it("charges a child run (ctx.call) to the workflow whose run called it, within its share", function()
    local first = post(srv, "parent", { delay = 3000 }, ASYNC)
    assert.are.equal(202, first.status, first.body)
    assert.truthy(H.eventually(function() return inflight(srv, "parent") == 2 end, 10),
      "the parent and its child are not both charged to parent")
    local second = post(srv, "parent", { delay = 10 })
    assert.are.equal(503, second.status)
    assert.truthy(second.json.detail:find("workflow 'parent'", 1, true), second.json.detail)
    -- slow's own share is untouched by parent's child
    assert.are.equal(0, inflight(srv, "slow"))
    assert.are.equal(200, post(srv, "slow", { delay = 10 }).status)
    assert.are.equal("succeeded", H.finished(srv, first.json.run_id, ADMIN, 30).status)
    assert.is_true(drained(srv, { "parent", "slow" }))
  end)

  -- a child run was started whatever the counts: one request's run calling
  -- itself put 10,000 runs in flight, every other workflow's requests 503
  it("refuses a child run (ctx.call) past the share of the workflow it is charged to: kind runs_full", function()
    local r = post(srv, "deep", { depth = 10, wait = 2 }, ASYNC)
    assert.are.equal(202, r.status, r.body)
    H.sleep(0.3) -- the chain is as long as it gets (its leaf waits 2 s)
    assert.truthy((inflight(srv, "deep") or 0) <= 2)
    assert.are.equal(200, post(srv, "quick").status) -- the server has room for the others
    local rec = H.finished(srv, r.json.run_id, ADMIN, 30)
    assert.are.equal("failed", rec.status)
    assert.are.equal("runs_full", rec.error.kind, H.encode(rec.error))
    assert.is_true(drained(srv, { "deep" }))
  end)

  it("counts a run out however it ends", function()
    -- finished, failed, stopped by the instruction budget
    assert.are.equal(200, post(srv, "ends", { mode = "finish" }).status)
    assert.are.equal(500, post(srv, "ends", { mode = "fail" }).status)
    local looped = post(srv, "ends", { mode = "loop" })
    assert.are.equal(500, looped.status)
    assert.are.equal("budget", looped.json.kind)
    assert.are.equal(0, inflight(srv, "ends"))
    -- cancelled, one of them with an on_cancel handler that raises
    local parked = post(srv, "ends", { mode = "park" }, ASYNC)
    local bad = post(srv, "ends", { mode = "bad_cancel" }, ASYNC)
    assert.truthy(H.eventually(function() return inflight(srv, "ends") == 2 end, 10))
    for _, r in ipairs({ parked, bad }) do
      local del = H.request(srv.url .. "/runs/" .. r.json.run_id, { method = "DELETE", headers = ADMIN })
      assert.are.equal(202, del.status, del.body)
      assert.are.equal("cancelled", H.finished(srv, r.json.run_id, ADMIN, 20).status)
    end
    -- timed out, its on_timeout handler raising
    local late = post(srv, "deadline", {}, ASYNC)
    assert.are.equal("timed_out", H.finished(srv, late.json.run_id, ADMIN, 20).status)
    -- a child run whose caller stopped waiting (chorus.all cancelled it)
    assert.are.equal(500, post(srv, "fan").status)
    assert.is_true(drained(srv, { "ends", "deadline", "fan" }))
    assert.truthy(H.request(srv.url .. "/metrics").body:find("\nchorus_runs_in_flight 0\n"))
    -- and the share is whole again: two runs in flight at once
    local a = post(srv, "ends", { mode = "park" }, ASYNC)
    local b = post(srv, "ends", { mode = "park" }, ASYNC)
    assert.are.same({ 202, 202 }, { a.status, b.status })
    for _, r in ipairs({ a, b }) do
      H.request(srv.url .. "/runs/" .. r.json.run_id, { method = "DELETE", headers = ADMIN })
    end
    assert.is_true(drained(srv, { "ends" }))
  end)
end)

describe("the outbox under a workflow's share", function()
  local mock, srv

  setup(function()
    mock = H.start_mock(200)
    -- one delivery at a time: quick's entry can only go if slow's, before
    -- it in feeder's lane, stops being looked at while slow is full
    srv = serve(mock, "outbox = { concurrency = 1, poll = 0.05 }")
  end)

  teardown(function()
    H.clean(srv, mock)
    if srv then
      H.clean(table.unpack(srv.files))
    end
  end)

  it("keeps the full workflow's entry waiting, no attempt counted, and delivers the entries behind it", function()
    assert.are.equal(202, post(srv, "slow", { delay = 4000 }, ASYNC).status)
    assert.are.equal(202, post(srv, "slow", { delay = 4000 }, ASYNC).status)
    assert.are.equal(200, post(srv, "feeder").status)
    local quick = H.eventually(function()
      local runs = H.request(srv.url .. "/admin/runs?workflow=quick", { headers = ADMIN }).json.runs
      return runs[1] and runs[1].status == "succeeded" and runs[1]
    end, 10)
    local outbox = H.request(srv.url .. "/admin/outbox", { headers = ADMIN }).json
    assert.truthy(quick, "quick's entry waited behind slow's")
    assert.are.equal(1, outbox.depth)
    assert.are.equal("slow", outbox.entries[1].workflow)
    assert.are.equal(0, outbox.entries[1].attempts)
    assert.are.equal(2, inflight(srv, "slow"))
    -- once slow's runs end, its entry runs
    assert.truthy(H.eventually(function()
      return H.request(srv.url .. "/admin/outbox", { headers = ADMIN }).json.depth == 0
    end, 20), "slow's entry never ran")
    assert.is_true(drained(srv, { "slow", "quick", "feeder" }))
  end)
end)

describe("runs resumed after a restart", function()
  local mock, dir, data, conf_wide, conf_shared, srv

  setup(function()
    mock = H.start_mock(200)
    dir = H.temp_dir(fixtures({ "slow", "quick" }))
    data = H.temp_dir()
    local base = "return { admin_token = 's3cret', upstreams = { mock = { base_url = %q } }, limits = { %s } }"
    conf_wide = H.write_temp(base:format(mock.url, "max_inflight_runs = 4, inflight_runs_per_workflow = 0"))
    conf_shared = H.write_temp(base:format(mock.url, "max_inflight_runs = 4"))
  end)

  teardown(function() H.clean(srv, mock, dir, data, conf_wide, conf_shared) end)

  it("are never refused, even past the workflow's share, and count in it", function()
    -- three runs of slow in flight under a config without a share
    srv = H.start_server({ "--config", conf_wide, "--scripts", dir, "--data", data })
    local ids = {}
    for i = 1, 3 do
      local r = post(srv, "slow", { delay = 4000 }, ASYNC)
      assert.are.equal(202, r.status, r.body)
      ids[i] = r.json.run_id
    end
    assert.truthy(H.eventually(function() return mock.stats().in_flight >= 3 end, 10))
    srv.kill("KILL")
    srv.wait()
    os.remove(srv.log)
    -- back with a share of 2: all three resume
    srv = H.start_server({ "--config", conf_shared, "--scripts", dir, "--data", data })
    assert.truthy(H.eventually(function() return inflight(srv, "slow") == 3 end, 20),
      "the three runs were not all resumed")
    local shed = post(srv, "slow", { delay = 10 })
    assert.are.equal(503, shed.status)
    assert.truthy(shed.json.detail:find("workflow 'slow' has 3 runs in flight", 1, true), shed.json.detail)
    assert.are.equal(200, post(srv, "quick").status)
    for _, id in ipairs(ids) do
      assert.are.equal("succeeded", H.finished(srv, id, ADMIN, 30).status)
    end
    assert.is_true(drained(srv, { "slow" }))
    assert.are.equal(200, post(srv, "slow", { delay = 10 }).status)
  end)
end)
