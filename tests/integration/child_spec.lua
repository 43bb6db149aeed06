-- ctx.call on a real server: the child is a run of its own, linked both
-- ways in the records, started once even across a SIGKILL, and cancelled
-- with its parent or when its parent stops waiting for it, for good.
local H = require "tests.integration.helpers"

local FIX = "tests/integration/fixtures/cancel/"
local ADMIN = { Authorization = "Bearer s3cret" }

describe("child workflows (ctx.call)", function()
  local mock, dir, conf, data, srv

  local function start()
    srv = H.start_server({ "--config", conf, "--scripts", dir, "--data", data })
  end

  local function record(id)
    return H.run_record(srv, id, ADMIN)
  end

  local function finished(id)
    return H.finished(srv, id, ADMIN, 20)
  end

  local function count(path)
    return mock.stats().by_path[path] or 0
  end

  local function start_run(workflow, input)
    local r = H.request(srv.url .. "/workflows/" .. workflow, { method = "POST", body = input,
      headers = { Prefer = "respond-async", ["Content-Type"] = "application/json" } })
    assert.are.equal(202, r.status, r.body)
    return r.json.run_id
  end

  local function start_trip(input)
    return start_run("trip", input)
  end

  -- The child of parent id, once the parent's record names it.
  local function child_of(id)
    return H.eventually(function()
      local rec = record(id)
      return rec and type(rec.children) == "table" and rec.children[1]
    end, 10)
  end

  setup(function()
    mock = H.start_mock(300)
    dir = H.temp_dir({ ["trip.lua"] = H.read(FIX .. "trip.lua"), ["hotel.lua"] = H.read(FIX .. "hotel.lua"),
      ["party.lua"] = H.read(FIX .. "party.lua"), ["contest.lua"] = H.read(FIX .. "contest.lua") })
    conf = H.write_temp(([[
return { admin_token = "s3cret", upstreams = { mock = { base_url = %q } } }
]]):format(mock.url))
    data = H.temp_dir()
    start()
  end)

  teardown(function()
    srv.stop()
    mock.stop()
    os.execute("rm -rf " .. H.quote(dir) .. " " .. H.quote(data))
  end)

  it("returns the child's result and links parent and child", function()
    local id = start_trip('{"nights": 2, "wait_ms": 10}')
    local rec = finished(id)
    assert.are.equal("succeeded", rec.status)
    assert.are.same({ booked = true, nights = 2 }, rec.result.json.hotel)
    local child = record(rec.children[1])
    assert.are.equal("hotel", child.workflow)
    assert.are.equal("succeeded", child.status)
    assert.are.equal(id, child.parent)
  end)

  it("starts the child once across a SIGKILL of the server", function()
    local before = count("/book-hotel")
    local id = start_trip('{"wait_ms": 3000}')
    local child = child_of(id)
    assert.truthy(H.eventually(function() return count("/book-hotel") > before end, 10))
    srv.kill("KILL")
    srv.wait()
    start()
    local rec = finished(id)
    assert.are.equal("succeeded", rec.status)
    assert.are.same({ child }, rec.children)
    assert.are.equal("succeeded", record(child).status)
    assert.are.equal(before + 1, count("/book-hotel")) -- replayed, not sent again
  end)

  it("cancels the child with its parent", function()
    local id = start_trip('{"wait_ms": 60000}')
    local child = child_of(id)
    local r = H.request(srv.url .. "/runs/" .. id, { method = "DELETE", headers = ADMIN })
    assert.are.equal(202, r.status, r.body)
    assert.are.equal("cancelled", finished(id).status)
    local crec = finished(child)
    assert.are.equal("cancelled", crec.status)
    assert.are.equal("parent", crec.cancel.via)
  end)

  it("cancels a child its parent stops waiting for (a failed chorus.all); a restart leaves it cancelled", function()
    local before = count("/book-hotel")
    local id = start_run("party", '{"wait_ms": 60000, "fail_after": 1}')
    local child = child_of(id)
    local rec = finished(id)
    assert.are.equal("failed", rec.status)
    assert.are.equal("sold_out", rec.error.kind)
    local crec = finished(child) -- its record ends, as GET /runs/ID shows
    assert.are.equal("cancelled", crec.status)
    assert.are.equal("parent", crec.cancel.via)
    assert.are.equal(id, crec.parent)
    srv.kill("KILL")
    srv.wait()
    start()
    assert.truthy(H.eventually(function() return H.request(srv.url .. "/readyz").status == 200 end, 20))
    assert.are.equal("cancelled", record(child).status) -- not resumed as a zombie
    assert.are.equal(before + 1, count("/book-hotel"))
  end)

  it("cancels a child that lost a chorus.race while its parent goes on", function()
    local id = start_run("contest", '{"wait_ms": 60000, "linger": 30}')
    local child = child_of(id)
    local crec = finished(child)
    assert.are.equal("cancelled", crec.status)
    assert.are.equal("parent", crec.cancel.via)
    assert.are.equal("running", record(id).status) -- the parent did not wait for it
    local r = H.request(srv.url .. "/runs/" .. id, { method = "DELETE", headers = ADMIN })
    assert.are.equal(202, r.status, r.body)
    assert.are.equal("cancelled", finished(id).status)
  end)

  -- The parent's record names its children only once it is written again
  -- (its end, a cancel), so `chorus runs cancel` on the folder of a killed
  -- server marked the parent alone. At the restart the parent, replayed,
  -- stopped at its call before it asked for the child again, and the child
  -- was resumed as a run its parent still waited for: it sent its call
  -- again and ran to its end for nobody. A child whose parent's record
  -- holds a cancel is cancelled as it resumes, before its first effect.
  it("cancels at the restart a child whose parent was cancelled while the server was down", function()
    local before = count("/slow")
    local id = start_trip('{"wait_ms": 60000}')
    local child = child_of(id)
    assert.truthy(H.eventually(function() return count("/slow") > before end, 10))
    H.sleep(0.5) -- the booking's journal entry commits
    local booked, slow = count("/book-hotel"), count("/slow")
    srv.kill("KILL")
    srv.wait()
    local res = H.chorus_run({ "runs", "cancel", id, "--data", data })
    assert.are.equal(0, res.code, res.stderr)
    start()
    assert.are.equal("cancelled", finished(id).status)
    local crec = finished(child)
    assert.are.equal("cancelled", crec.status)
    assert.are.equal("parent", crec.cancel.via)
    assert.are.equal(booked, count("/book-hotel"))
    assert.are.equal(slow, count("/slow")) -- its call in flight at the kill is not sent again
  end)
end)

-- A child its parent stops waiting for is cancelled by a commit of its
-- own (the cancel mark in its record). Its on_cancel (and the compensation
-- of its sagas) waits for that commit: run before it, a SIGKILL that lands
-- between the two left a child with no mark, which the replay cancelled
-- again, so on_cancel ran twice. The disk syncs are held at a gate
-- (build/sync-gate.so) so the kill lands in that window every time.
describe("a race's loser, cancelled across a SIGKILL", function()
  local mock, dir, conf, data, gate, srv

  local function start(env)
    srv = H.start_server({ "--config", conf, "--scripts", dir, "--data", data }, env)
  end

  local function count(path)
    return mock.stats().by_path[path] or 0
  end

  setup(function()
    mock = H.start_mock(300)
    dir = H.temp_dir({ ["duel.lua"] = H.read(FIX .. "duel.lua"), ["lagging.lua"] = H.read(FIX .. "lagging.lua") })
    conf = H.write_temp(([[
return { admin_token = "s3cret", upstreams = { mock = { base_url = %q } } }
]]):format(mock.url))
    data = H.temp_dir()
    gate = H.temp_dir() .. "/gate"
  end)

  teardown(function()
    H.clean(srv, mock, dir, data, conf, gate:match("^(.*)/gate$"))
  end)

  it("runs the loser's on_cancel once", function()
    start({ LD_PRELOAD = "build/sync-gate.so", CHORUS_SYNC_GATE = gate })
    local r = H.request(srv.url .. "/workflows/duel", { method = "POST", body = '{"after": 2, "linger": 30}',
      headers = { Prefer = "respond-async", ["Content-Type"] = "application/json" } })
    assert.are.equal(202, r.status, r.body)
    local id = r.json.run_id
    -- the child is parked on the mock (its first records are on disk): from
    -- here no commit reaches the disk, the loser's cancel mark included
    assert.truthy(H.eventually(function() return count("/lagging") == 1 end, 10))
    assert(io.open(gate, "w")):close()
    assert.truthy(H.eventually(function() return io.open(gate .. ".held") ~= nil end, 10))
    -- the race is over and the cancel's commit held: an on_cancel that does
    -- not wait for it reports now (it never did before a second)
    H.eventually(function() return count("/lagging-cancelled") > 0 end, 3)
    srv.kill("KILL")
    srv.wait()
    os.remove(gate)
    start()
    local child = H.eventually(function()
      local rec = H.run_record(srv, id, ADMIN)
      return rec and type(rec.children) == "table" and rec.children[1]
    end, 20)
    local crec = H.finished(srv, child, ADMIN, 20)
    assert.are.equal("cancelled", crec.status)
    assert.are.same({ ok = true, value = "cleaned up" }, crec.on_cancel)
    assert.are.equal(1, count("/lagging-cancelled"))
  end)
end)
