-- Cancelling runs on a real server: DELETE /runs/ID stops the transfer the
-- run waits on, compensates its saga, runs on_cancel; the run ends
-- "cancelled", also across a SIGKILL; `chorus runs cancel ID` marks a run
-- of a stopped server's data folder.
local H = require "tests.integration.helpers"

local FIX = "tests/integration/fixtures/cancel/"
local ADMIN = { Authorization = "Bearer s3cret" }

describe("cancelling a run", function()
  local mock, dir, conf, data, srv

  local function start()
    srv = H.start_server({ "--config", conf, "--scripts", dir, "--data", data })
  end

  local function post(path, body, headers)
    headers = headers or {}
    headers.Prefer = "respond-async"
    return H.post_json(srv.url .. path, body, headers)
  end

  local function cancel(id, headers)
    return H.request(srv.url .. "/runs/" .. id, { method = "DELETE", headers = headers })
  end

  local function record(id)
    return H.run_record(srv, id, ADMIN)
  end

  local function finished(id)
    return H.finished(srv, id, ADMIN, 15)
  end

  local function count(path)
    return mock.stats().by_path[path] or 0
  end

  -- A booking run parked on its 60 s call.
  local function parked_booking(input)
    local before = count("/slow")
    local r = post("/workflows/booking", input)
    assert.are.equal(202, r.status, r.body)
    assert.truthy(H.eventually(function() return count("/slow") > before end, 10))
    return r.json.run_id
  end

  setup(function()
    mock = H.start_mock(300)
    dir = H.temp_dir({ ["booking.lua"] = H.read(FIX .. "booking.lua"), ["guarded.lua"] = H.read(FIX .. "guarded.lua"),
      ["quick.lua"] = H.read(FIX .. "quick.lua") })
    conf = H.write_temp(([[
return {
  admin_token = "s3cret",
  auth = { guarded = { token = "g-token" } },
  upstreams = { mock = { base_url = %q } },
}
]]):format(mock.url))
    data = H.temp_dir()
    start()
  end)

  teardown(function()
    srv.stop()
    mock.stop()
    os.execute("rm -rf " .. H.quote(dir) .. " " .. H.quote(data))
  end)

  it("stops the transfer, compensates, runs on_cancel and ends cancelled", function()
    local aborted = mock.stats().aborted
    local id = parked_booking()
    local r = cancel(id, ADMIN)
    assert.are.equal(202, r.status, r.body)
    assert.are.equal("cancelling", r.json.status)
    assert.are.equal("api", r.json.cancel.via)
    local rec = finished(id)
    assert.are.equal("cancelled", rec.status)
    assert.are.equal("cancelled", rec.error.kind)
    assert.are.same({ ok = true, value = "cleaned up" }, rec.on_cancel)
    assert.are.equal("api", rec.cancel.via)
    -- the mock saw the client leave its 60 s request
    assert.truthy(H.eventually(function() return mock.stats().aborted > aborted end, 10))
    assert.truthy(H.eventually(function() return count("/release") >= 1 end, 10)) -- the saga's compensation
    assert.are.equal(1, count("/on-cancel"))
  end)

  it("answers a synchronous request waiting on the run with 409", function()
    local before = count("/slow")
    local waiting = H.request_async(srv.url .. "/workflows/booking", { method = "POST", body = "{}",
      headers = { ["Content-Type"] = "application/json" }, max_time = 30 })
    assert.truthy(H.eventually(function() return count("/slow") > before end, 10))
    -- the run's id, from the data folder (a synchronous request is told it only at the end)
    local id
    local listed = H.exec(H.chorus .. " runs list --limit 10 --data " .. H.quote(data))
    for line in listed.stdout:gmatch("[^\n]+") do
      local rec = H.decode(line)
      if rec and rec.workflow == "booking" and rec.status == "running" then
        id = rec.id
      end
    end
    assert.truthy(id, "no running booking run")
    assert.are.equal(202, cancel(id, ADMIN).status)
    local resp = waiting.wait(30)
    assert.are.equal(409, resp.status, resp.body)
    assert.are.equal("cancelled", resp.json.kind)
    assert.are.equal(id, resp.json.run_id)
  end)

  it("answers 409 for a finished run, and again for a cancelled one", function()
    local r = H.request(srv.url .. "/workflows/quick", { method = "POST", body = "{}",
      headers = { ["Content-Type"] = "application/json" } })
    assert.are.equal(200, r.status)
    local id = r.headers["x-run-id"]
    local c = cancel(id, ADMIN)
    assert.are.equal(409, c.status)
    assert.matches("succeeded", c.json.detail)
    local id2 = parked_booking()
    assert.are.equal(202, cancel(id2, ADMIN).status)
    finished(id2)
    assert.are.equal(409, cancel(id2, ADMIN).status)
  end)

  it("answers 404 for an unknown id and for credentials that cannot read the run", function()
    assert.are.equal(404, cancel("no-such-run", ADMIN).status)
    local r = post("/workflows/guarded", "{}", { Authorization = "Bearer g-token" })
    assert.are.equal(202, r.status, r.body)
    local id = r.json.run_id
    assert.are.equal(404, cancel(id).status) -- no token
    assert.are.equal(404, cancel(id, { Authorization = "Bearer wrong" }).status)
    assert.are.equal("running", record(id).status)
    assert.are.equal(202, cancel(id, { Authorization = "Bearer g-token" }).status) -- the workflow's own token
    assert.are.equal("cancelled", finished(id).status)
  end)

  it("keeps a cancel across a SIGKILL: the restarted server cancels the resumed run", function()
    local id = parked_booking('{"cleanup": 2}') -- on_cancel takes 2 s: the kill lands in it
    local before = count("/on-cancel")
    assert.are.equal(202, cancel(id, ADMIN).status)
    srv.kill("KILL")
    srv.wait()
    start()
    local rec = finished(id)
    assert.are.equal("cancelled", rec.status)
    assert.are.same({ ok = true, value = "cleaned up" }, rec.on_cancel)
    assert.are.equal(before + 1, count("/on-cancel"))
  end)

  it("`chorus runs cancel ID` marks a stopped server's run, cancelled at the next start", function()
    local id = parked_booking()
    local busy = H.exec(H.chorus .. " runs cancel " .. H.quote(id) .. " --data " .. H.quote(data))
    assert.are.equal(1, busy.code) -- the server holds the folder: ask it
    assert.matches("DELETE /runs/" .. id, busy.stderr, 1, true)
    srv.kill("KILL")
    srv.wait()
    local r = H.exec(H.chorus .. " runs cancel " .. H.quote(id) .. " --data " .. H.quote(data))
    assert.are.equal(0, r.code, r.stderr)
    assert.are.equal("cli", H.decode(r.stdout).cancel.via)
    local unknown = H.exec(H.chorus .. " runs cancel nope --data " .. H.quote(data))
    assert.are.equal(1, unknown.code)
    assert.matches("not_found", unknown.stderr)
    start()
    local rec = finished(id)
    assert.are.equal("cancelled", rec.status)
    assert.are.equal("cli", rec.cancel.via)
    assert.are.same({ ok = true, value = "cleaned up" }, rec.on_cancel)
    local again = H.exec(H.chorus .. " runs cancel " .. H.quote(id) .. " --data " .. H.quote(data))
    assert.are.equal(1, again.code) -- the server holds the folder again
  end)
end)
