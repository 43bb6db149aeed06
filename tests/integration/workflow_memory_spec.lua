-- What a workflow keeps between its runs (limits.workflow_memory_mb),
-- through a real `chorus serve` on loopback: a script whose runs each leave
-- 4 MiB in its module state is refused with kind memory once it keeps more
-- than its cap, while another workflow of the same server keeps answering,
-- and the server's memory stays bounded (without the cap, 100 such runs
-- held 400 MiB and more).
local H = require "tests.integration.helpers"

local FIX = "tests/integration/fixtures/kept/"

-- The server's resident set in MiB (srv.pid is `timeout`; chorus its child).
local function rss_mib(srv)
  local child = H.exec(("pgrep -P %d"):format(srv.pid)).stdout:match("%d+")
  local status = H.read(("/proc/%s/status"):format(child)) or ""
  return tonumber(status:match("VmRSS:%s*(%d+) kB")) / 1024
end

describe("limits.workflow_memory_mb", function()
  local dir, conf, srv

  setup(function()
    dir = H.temp_dir({ ["hoarder.lua"] = H.read(FIX .. "hoarder.lua"),
      ["neighbour.lua"] = H.read(FIX .. "neighbour.lua") })
    conf = H.write_temp('return { admin_token = "s3cret", limits = { workflow_memory_mb = 32 } }\n')
    srv = H.start_server({ "--config", conf, "--scripts", dir })
  end)

  teardown(function() H.clean(srv, dir, conf) end)

  it("refuses the runs of a workflow keeping more than its cap; the others are served", function()
    local first_refused, refusal
    for i = 1, 100 do
      local r = H.post_json(srv.url .. "/workflows/hoarder", "{}")
      if r.status ~= 200 and not first_refused then
        first_refused, refusal = i, r
      end
      if first_refused then
        assert.are_not.equal(200, r.status, "run " .. i .. " served after a refusal")
      end
      local n = H.post_json(srv.url .. "/workflows/neighbour", "{}")
      assert.are.equal(200, n.status, n.body)
    end
    local rss = rss_mib(srv)
    assert.is_true(rss < 200, ("server resident set %.0f MiB after 100 runs"):format(rss))
    local kept = H.request(srv.url .. "/metrics").body:match('\nchorus_workflow_kept_bytes{workflow="hoarder"} (%d+)')
    assert.is_true(tonumber(kept) >= 32 * 1024 * 1024, tostring(kept))
    assert.is_truthy(first_refused, "hoarder was never refused")
    -- 8 runs keep 32 MiB: the 9th or 10th is the first over the cap
    assert.is_true(first_refused >= 9 and first_refused <= 10, "first refused: " .. first_refused)
    local problem = H.decode(refusal.body)
    assert.are.equal("memory", problem.kind, refusal.body)
    local rec = H.run_record(srv, problem.run_id)
    assert.are.equal("failed", rec.status)
    assert.are.equal("memory", rec.error.kind)
    assert.truthy(rec.error.message:find("workflow hoarder keeps 3%d MiB between runs "
      .. "%(limits.workflow_memory_mb = 32%)"), rec.error.message)
  end)

  it("serves the workflow again once a reload gives its script a fresh state", function()
    local r = H.post_json(srv.url .. "/workflows/hoarder", "{}")
    assert.are.equal(500, r.status, r.body)
    local reload = H.request(srv.url .. "/admin/reload",
      { method = "POST", headers = { Authorization = "Bearer s3cret" } })
    assert.are.equal(200, reload.status, reload.body)
    r = H.post_json(srv.url .. "/workflows/hoarder", "{}")
    assert.are.equal(200, r.status, r.body)
    assert.are.equal(1, H.decode(r.body).kept)
    -- what the old compile kept is gone with it (the server held every
    -- version it had run, and all they kept, for good)
    local metrics = H.request(srv.url .. "/metrics").body
    local lua_bytes = tonumber(metrics:match("\nchorus_lua_memory_bytes (%S+)"))
    assert.is_true(lua_bytes < 16 * 1024 * 1024, metrics:match("\nchorus_lua_memory_bytes [^\n]*"))
  end)
end)
