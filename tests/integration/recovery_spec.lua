-- Recovery after SIGKILL with many runs parked on an upstream call: the
-- restarted server answers /healthz while it is still starting the runs
-- again, /readyz says 503 "recovering" (with its progress) until the last
-- one has started, and then every run sends its call again and finishes.
-- storage.recovery_batch and CHORUS_TEST_RECOVERY_PAUSE (a test-only pause
-- between batches) keep recovery going long enough to be seen.
local H = require "tests.integration.helpers"

local RUNS = 200

local PARK = [[
local chorus = require "chorus"
local http = require "chorus.http"
return chorus.workflow {
  name = "park",
  run = function()
    local r = http.upstream("mock"):get("/park")
    return { status = r.status }
  end,
}
]]

-- Starts n runs of park at once (curl --parallel); returns their ids.
local function start_runs(url, n)
  local lines = {}
  for _ = 1, n do
    lines[#lines + 1] = ("url = %q\noutput = \"/dev/null\""):format(url .. "/workflows/park")
  end
  local conf = H.write_temp(table.concat(lines, "\n") .. "\n", ".curl")
  local r = H.exec(("curl -s --parallel --parallel-max 32 -X POST -H 'Prefer: respond-async' "
    .. "-H 'Content-Type: application/json' -d '{}' -w '%%{http_code} %%header{location}\\n' -K %s")
    :format(H.quote(conf)), nil, 60)
  os.remove(conf)
  local ids = {}
  for code, id in r.stdout:gmatch("(%d+) /runs/([%w%-]+)") do
    assert.are.equal("202", code)
    ids[#ids + 1] = id
  end
  return ids
end

describe("recovery after SIGKILL", function()
  local mock, dir, data, srv

  local function serve(delay_ms, env)
    local conf = H.write_temp(([[
return { access_log = false, storage = { recovery_batch = 10 },
  upstreams = { mock = { base_url = %q, timeout = 120 } } }
]]):format(mock.url .. "?delay=" .. delay_ms))
    return H.start_server({ "--config", conf, "--scripts", dir, "--data", data }, env)
  end

  setup(function()
    mock = H.start_mock(300)
    dir = H.temp_dir({ ["park.lua"] = PARK })
    data = H.temp_dir()
  end)

  teardown(function() H.clean(srv, mock, dir, data) end)

  it("answers /healthz at once, /readyz 503 until every run is started again, and finishes them all",
    function()
      -- the calls are held for a minute: every run is parked when killed
      srv = serve(60000)
      local ids = start_runs(srv.url, RUNS)
      assert.are.equal(RUNS, #ids)
      assert.is_truthy(H.eventually(function() return mock.stats().in_flight == RUNS end, 20),
        "the runs did not all reach the upstream")
      srv.kill("KILL")
      srv.wait()
      assert.is_truthy(H.eventually(function() return mock.stats().in_flight == 0 end, 10))
      mock.reset()

      -- restarted with calls that now answer after 300 ms; 20 batches of
      -- 10 with a 0.1 s pause between them: about 2 s of recovery
      srv = serve(300, { CHORUS_TEST_RECOVERY_PAUSE = "0.1" })
      local health = H.request(srv.url .. "/healthz")
      assert.are.equal(200, health.status)
      local ready = H.request(srv.url .. "/readyz")
      assert.are.equal(503, ready.status)
      assert.are.equal("recovering", ready.json.status)
      assert.are.equal(RUNS, ready.json.total)
      assert.is_true(ready.json.resumed < RUNS)

      -- a new run is accepted while recovery goes on
      local extra = H.request(srv.url .. "/workflows/park", { method = "POST", body = "{}",
        headers = { Prefer = "respond-async" } })
      assert.are.equal(202, extra.status)

      local done = H.eventually(function()
        local r = H.request(srv.url .. "/readyz")
        return r.status == 200 and r
      end, 30)
      assert.is_truthy(done, "/readyz never said ready")
      assert.are.equal("ready", done.json.status)

      ids[#ids + 1] = extra.json.run_id
      for _, id in ipairs(ids) do
        local rec = H.eventually(function()
          local r = H.request(srv.url .. "/runs/" .. id)
          return r.json and r.json.status ~= "running" and r.json
        end, 20)
        assert.is_truthy(rec, "run " .. id .. " did not finish")
        assert.are.equal("succeeded", rec.status)
        assert.are.equal(200, rec.result.status)
      end
      -- each resumed run sent its call again, once; and the new run its own
      assert.are.equal(RUNS + 1, mock.stats().by_path["/park"])

      local log = H.read(srv.log)
      assert.is_truthy(log:find('"msg":"resuming runs after a restart"', 1, true))
      local summary = log:match('[^\n]*"msg":"resumed runs after a restart"[^\n]*')
      assert.is_truthy(summary, "no recovery summary in the log")
      assert.are.equal(RUNS, H.decode(summary).runs)
    end)
end)
