-- The promise at its edges, on a real server: what the SIGKILL probe of
-- tests/soak/edges/probe.py found, each kept as a bounded regression.
local H = require "tests.integration.helpers"

local FIX = "tests/integration/fixtures/runs_api/"
local ADMIN = { Authorization = "Bearer s3cret" }

describe("the promise at its edges", function()
  local dir, conf, data, srv

  local function post(path, body, headers)
    headers = headers or {}
    headers["Content-Type"] = "application/json"
    return H.request(srv.url .. path, { method = "POST", body = body or "{}", headers = headers })
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
end)
