-- Stopping a server while runs are parked in every kind of wait: SIGTERM
-- and SIGINT drain and exit 0 (README: the drain), with no crash and no
-- sanitizer report, and the next start resumes every parked run. A stop
-- with a workflow parked freed its run twice (a use after free, exit 139).
local H = require "tests.integration.helpers"

local FIX = "tests/integration/fixtures/shutdown/"
local ADMIN = { Authorization = "Bearer s3cret" }
-- the runs each kind leaves parked, in the order they are started
local KINDS = { "event", "sleep", "hold", "lock", "call", "narrow_hold", "bulkhead", "rated_first", "rate", "http" }

describe("stopping a server with runs parked", function()
  local mock, dir, conf, data, srv

  local function start()
    srv = H.start_server({ "--config", conf, "--scripts", dir, "--data", data })
  end

  local function record(id)
    return H.run_record(srv, id, ADMIN)
  end

  local function resumes(id)
    local n = 0
    for _, e in ipairs((record(id) or {}).timeline or {}) do
      if e.kind == "resumed" then
        n = n + 1
      end
    end
    return n
  end

  -- Stops srv with sig and checks the drain's outcome: exit 0, a clean log.
  local function stop(sig)
    srv.kill(sig)
    local log = H.read(srv.log)
    local code = srv.wait()
    log = H.read(srv.log) or log
    os.remove(srv.log)
    assert.are.equal(0, code, log)
    assert.is_nil(log:find("AddressSanitizer", 1, true), log)
    assert.is_nil(log:find("runtime error", 1, true), log) -- UBSan
    assert.matches('"msg":"stopped"', log, 1, true)
  end

  setup(function()
    mock = H.start_mock(300)
    dir = H.temp_dir({ ["waits.lua"] = H.read(FIX .. "waits.lua") })
    conf = H.write_temp(([[
return {
  admin_token = "s3cret",
  limits = { drain_timeout = 1 },
  upstreams = {
    mock = { base_url = %q },
    narrow = { base_url = %q, bulkhead = { max = 1, queue = 10, wait = 3600 } },
    rated = { base_url = %q, rate_limit = { rate = 0.001, burst = 1, wait = 3600 } },
  },
}
]]):format(mock.url, mock.url, mock.url))
    data = H.temp_dir()
    start()
  end)

  teardown(function()
    H.clean(srv, mock, dir, data, conf)
  end)

  -- Starts a run of each kind (holders first: each holds what the next
  -- kind waits for) and waits until they are parked.
  local function park(kinds, slow_calls)
    local out = {}
    local slow_before = mock.stats().by_path["/slow"] or 0
    for _, kind in ipairs(kinds) do
      local r = H.request(srv.url .. "/workflows/waits", { method = "POST", body = H.encode({ kind = kind }),
        headers = { ["Content-Type"] = "application/json", Prefer = "respond-async" } })
      assert.are.equal(202, r.status, r.body)
      out[kind] = r.json.run_id
      -- each holder holds before the next kind asks
      if kind == "hold" then -- the lock's timeline entry: taken
        assert.truthy(H.eventually(function()
          for _, e in ipairs((record(out[kind]) or {}).timeline or {}) do
            if e.kind == "lock" then
              return true
            end
          end
        end, 10))
      elseif kind == "narrow_hold" then -- its slow call is at the mock
        assert.truthy(H.eventually(function() return (mock.stats().by_path["/slow"] or 0) > slow_before end, 10))
      elseif kind == "rated_first" then -- it spends the burst; the next waits 1000 s for a token
        assert.truthy(H.eventually(function() return (record(out[kind]) or {}).status == "succeeded" end, 10))
      end
    end
    assert.truthy(H.eventually(function() return (mock.stats().by_path["/slow"] or 0) >= slow_calls end, 10))
    H.sleep(0.3) -- every run reaches its wait
    for kind, id in pairs(out) do
      if kind ~= "rated_first" then
        assert.are.equal("running", record(id).status, kind)
      end
    end
    return out
  end

  -- the kinds that, resumed, wait again for good; the others (a lock, a
  -- bulkhead or a rate limit wait) may get what they waited for at once,
  -- since a restart forgets who held what
  local FOR_GOOD = { event = true, sleep = true, hold = true, call = true, narrow_hold = true, http = true }

  local function check_resumed(runs, times)
    for kind, id in pairs(runs) do
      if kind ~= "rated_first" then
        assert.truthy(H.eventually(function() return resumes(id) >= times end, 15), kind)
        local status = record(id).status
        if FOR_GOOD[kind] then
          assert.are.equal("running", status, kind)
        else
          assert.truthy(status == "running" or status == "succeeded", kind .. ": " .. status)
        end
      end
    end
  end

  local first, second

  it("exits 0 on SIGTERM with runs parked in every kind of wait", function()
    first = park(KINDS, 2)
    stop("TERM")
  end)

  it("resumes every parked run after the restart, and exits 0 on SIGINT with runs parked", function()
    start()
    check_resumed(first, 1)
    -- the resumed holders hold again (the lock, the slot with their slow
    -- call, the rate limit's burst taken by the resumed "rate"): new runs
    -- wait behind them
    assert.truthy(H.eventually(function() return (mock.stats().by_path["/slow"] or 0) >= 4 end, 10))
    second = park({ "event", "sleep", "lock", "call", "bulkhead", "rate", "http" }, 5)
    stop("INT")
  end)

  it("keeps the promise after both stops: the parked runs resume again and end when they can", function()
    start()
    check_resumed(second, 1)
    for kind, id in pairs(first) do
      if FOR_GOOD[kind] then
        assert.truthy(H.eventually(function() return resumes(id) >= 2 end, 15), kind)
      end
    end
    local r = H.request(srv.url .. "/events/go/" .. first.event, { method = "POST", body = '{"n":1}', headers = ADMIN })
    assert.are.equal(202, r.status, r.body)
    local rec = H.finished(srv, first.event, ADMIN, 15)
    assert.truthy(rec)
    assert.are.equal("succeeded", rec.status)
    assert.are.same({ kind = "event", value = { n = 1 } }, rec.result)
    -- the holder lets the lock go, and the runs waiting for it get it
    r = H.request(srv.url .. "/events/go/" .. first.hold, { method = "POST", body = "{}", headers = ADMIN })
    assert.are.equal(202, r.status, r.body)
    for _, id in ipairs({ first.hold, first.lock, second.lock }) do
      rec = H.finished(srv, id, ADMIN, 15)
      assert.truthy(rec)
      assert.are.equal("succeeded", rec.status, id)
    end
    stop("TERM")
  end)
end)
