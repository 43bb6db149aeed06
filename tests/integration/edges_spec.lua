-- The promise at its edges, on a real server: what the SIGKILL probe of
-- tests/soak/edges/probe.py found, each kept as a bounded regression.
local H = require "tests.integration.helpers"

local FIX = "tests/integration/fixtures/runs_api/"
local ADMIN = { Authorization = "Bearer s3cret" }

describe("the promise at its edges", function()
  local dir, conf, data, srv

  local function post(path, body, headers)
    return H.post_json(srv.url .. path, body, headers)
  end

  local function by_key(key)
    local r = H.request(srv.url .. "/admin/runs?key=" .. key, { headers = ADMIN })
    assert.are.equal(200, r.status, r.body)
    return r.json.runs
  end

  setup(function()
    dir = H.temp_dir({ ["quick.lua"] = H.read(FIX .. "quick.lua"), ["parked.lua"] = H.read(FIX .. "parked.lua") })
    conf = H.write_temp([[return { admin_token = "s3cret" }]])
    data = H.temp_dir()
    srv = H.start_server({ "--config", conf, "--scripts", dir, "--data", data })
  end)

  teardown(function()
    H.clean(srv, dir, data, conf)
  end)

  -- An async keyed run stores its 202 under the key, not its end, so its
  -- record had no key and the index left it out: ?key= found nothing and
  -- the listing said key null.
  it("lists a Prefer: respond-async run under its Idempotency-Key, running and finished", function()
    local r = post("/workflows/parked", "{}", { Prefer = "respond-async", ["Idempotency-Key"] = "edge-async-1" })
    assert.are.equal(202, r.status, r.body)
    local runs = by_key("edge-async-1")
    assert.are.equal(1, #runs)
    assert.are.equal(r.json.run_id, runs[1].id)
    assert.are.equal("edge-async-1", runs[1].key)
    assert.are.equal("running", runs[1].status)

    r = post("/workflows/quick", "{}", { Prefer = "respond-async", ["Idempotency-Key"] = "edge-async-2" })
    assert.are.equal(202, r.status, r.body)
    local id = r.json.run_id
    assert.are.equal("succeeded", H.finished(srv, id, ADMIN, 20).status)
    runs = by_key("edge-async-2")
    assert.are.equal(1, #runs)
    assert.are.same({ id, "succeeded", "edge-async-2" }, { runs[1].id, runs[1].status, runs[1].key })
    local all = H.request(srv.url .. "/admin/runs?workflow=quick", { headers = ADMIN }).json.runs
    assert.are.equal("edge-async-2", all[1].key)
  end)

  -- Recovery resumes in batches while requests are served. A lock its
  -- holder's journal showed held was reserved only when the holder's batch
  -- came: a new run took it first, then the holder took it back too (two
  -- runs inside), and the second release failed the run ("attempt to index
  -- a nil value (local 'l')").
  it("keeps a lock held at a SIGKILL for its holder while recovery has not reached it", function()
    local mock = H.start_mock(300)
    local ldir = H.temp_dir({ ["locked.lua"] = H.read("tests/integration/fixtures/edges/locked.lua"),
      ["parked.lua"] = H.read(FIX .. "parked.lua") })
    local lconf = H.write_temp(([[
return { admin_token = "s3cret", storage = { recovery_batch = 1 }, upstreams = { mock = { base_url = %q } } }
]]):format(mock.url))
    local ldata = H.temp_dir()
    local args = { "--config", lconf, "--scripts", ldir, "--data", ldata }
    local s = H.start_server(args)
    local function async(url, path, body)
      local r = H.request(url .. path, { method = "POST", body = body,
        headers = { Prefer = "respond-async", ["Content-Type"] = "application/json" } })
      assert.are.equal(202, r.status, r.body)
      return r.json.run_id
    end
    -- runs older than the holder: recovery resumes them first (one per batch)
    for _ = 1, 4 do
      async(s.url, "/workflows/parked", "{}")
    end
    local holder = async(s.url, "/workflows/locked", '{"who":"holder","hold":3}')
    local function seen(path)
      for _, e in ipairs(mock.stats().log or {}) do
        if e.path == path then
          return true
        end
      end
      return false
    end
    assert.truthy(H.eventually(function() return seen("/enter/holder") end, 20))
    s.kill("KILL")
    s.wait()
    s = H.start_server(args, { CHORUS_TEST_RECOVERY_PAUSE = "0.5" })
    local newcomer = async(s.url, "/workflows/locked", '{"who":"newcomer","hold":2}')
    local a = H.finished(s, holder, ADMIN, 60)
    local b = H.finished(s, newcomer, ADMIN, 60)
    local order = {}
    for _, e in ipairs(mock.stats().log) do
      order[#order + 1] = e.path
    end
    s.stop()
    mock.stop()
    os.execute("rm -rf " .. H.quote(ldir) .. " " .. H.quote(ldata) .. " " .. H.quote(lconf))
    assert.are.same({ "succeeded", "succeeded" }, { a.status, b.status })
    -- the holder left before the newcomer entered
    assert.are.same({ "/enter/holder", "/leave/holder", "/enter/newcomer", "/leave/newcomer" }, order)
  end)

  -- A cancel that lands before recovery reaches its run (batches of one,
  -- paused): the run ends cancelled once, the listing and the status index
  -- agree with its record, and the runs around it are resumed as before.
  it("cancels a run recovery has not reached yet, and lists it as its record says", function()
    local cdir = H.temp_dir({ ["parked.lua"] = H.read(FIX .. "parked.lua") })
    local cconf = H.write_temp([[return { admin_token = "s3cret", storage = { recovery_batch = 1 } }]])
    local cdata = H.temp_dir()
    local args = { "--config", cconf, "--scripts", cdir, "--data", cdata }
    local s = H.start_server(args)
    local ids = {}
    for i = 1, 6 do
      local r = H.request(s.url .. "/workflows/parked", { method = "POST", body = "{}",
        headers = { Prefer = "respond-async", ["Content-Type"] = "application/json" } })
      assert.are.equal(202, r.status, r.body)
      ids[i] = r.json.run_id
    end
    s.kill("KILL")
    s.wait()
    s = H.start_server(args, { CHORUS_TEST_RECOVERY_PAUSE = "0.5" })
    local ready = H.request(s.url .. "/readyz")
    assert.are.equal(503, ready.status, ready.body)
    local last = ids[6] -- resumed last: about 2.5 s from now
    local del = H.request(s.url .. "/runs/" .. last, { method = "DELETE", headers = ADMIN })
    assert.are.equal(202, del.status, del.body)
    local rec = H.finished(s, last, ADMIN, 60)
    assert.is_truthy(H.eventually(function() return H.request(s.url .. "/readyz").status == 200 end, 60))
    local listed = {}
    for _, st in ipairs({ "running", "cancelled" }) do
      local r = H.request(s.url .. "/admin/runs?status=" .. st, { headers = ADMIN })
      for _, run in ipairs(r.json.runs) do
        listed[run.id] = st
      end
    end
    local others = {}
    for i = 1, 5 do
      others[i] = H.run_record(s, ids[i], ADMIN).status
    end
    s.stop()
    os.execute("rm -rf " .. H.quote(cdir) .. " " .. H.quote(cdata) .. " " .. H.quote(cconf))
    assert.are.equal("cancelled", rec.status)
    assert.are.equal("cancelled", listed[last])
    assert.are.same({ "running", "running", "running", "running", "running" }, others)
    for i = 1, 5 do
      assert.are.equal("running", listed[ids[i]])
    end
  end)

  -- A run the outbox started (ctx.later) and DELETE /runs/ID cancelled
  -- settled its entry as a failure to retry: the relay started it again
  -- under the same id, and that run replaced the cancelled record (a 202
  -- cancel, a run that then ended succeeded). Now the entry goes to the DLQ.
  it("does not start a cancelled ctx.later run again", function()
    local odir = H.temp_dir({ ["parked.lua"] = H.read(FIX .. "parked.lua"),
      ["starter.lua"] = H.read("tests/integration/fixtures/edges/starter.lua") })
    local oconf = H.write_temp([[return { admin_token = "s3cret", outbox = { base = 0.05, cap = 0.2, poll = 0.02 } }]])
    local s = H.start_server({ "--config", oconf, "--scripts", odir })
    local r = H.request(s.url .. "/workflows/starter", { method = "POST", body = "{}",
      headers = { ["Content-Type"] = "application/json" } })
    assert.are.equal(200, r.status, r.body)
    local id = H.eventually(function()
      local runs = H.request(s.url .. "/admin/runs?workflow=parked&status=running", { headers = ADMIN }).json.runs
      return runs[1] and runs[1].id
    end, 20)
    assert.truthy(id, "the parked run did not start")
    local del = H.request(s.url .. "/runs/" .. id, { method = "DELETE", headers = ADMIN })
    assert.are.equal(202, del.status, del.body)
    local dead = H.eventually(function()
      local dlq = H.request(s.url .. "/admin/dlq", { headers = ADMIN }).json
      return dlq.depth == 1 and dlq.entries[1]
    end, 20)
    local rec = H.run_record(s, id, ADMIN)
    local outbox = H.request(s.url .. "/admin/outbox", { headers = ADMIN }).json
    H.clean(s, odir, oconf)
    assert.truthy(dead, "the cancelled run's entry is not in the DLQ")
    assert.are.equal(id, dead.id)
    assert.are.equal("cancelled", rec.status)
    assert.are.equal(0, outbox.depth)
  end)
end)

