-- `chorus serve` under a systemd unit of Type=notify (contrib/chorus.service),
-- without systemd: tests/integration/notify_listener.py binds the unix
-- datagram socket that NOTIFY_SOCKET names, as systemd would, and writes
-- down every message chorus sends through libsystemd's sd_notify.
local H = require "tests.integration.helpers"

local HELLO = [[
local chorus = require "chorus"
return chorus.workflow { name = "hello", run = function() return { status = 200 } end }
]]

local PARK = [[
local chorus = require "chorus"
local http = require "chorus.http"
return chorus.workflow {
  name = "park",
  run = function()
    return { status = http.upstream("mock"):get("/park").status }
  end,
}
]]

-- Starts the listener; returns { socket, messages(), stop() }.
local function listen()
  local sock, out = os.tmpname(), os.tmpname()
  os.remove(sock)
  os.remove(out)
  local p = assert(io.popen(("sh -c 'echo $$; exec python3 tests/integration/notify_listener.py %s %s 120'")
    :format(sock, out), "r"))
  local pid = assert(tonumber(p:read("l")), "the listener did not start")
  assert(H.eventually(function() return io.open(out, "rb") end, 10), "the listener did not bind")
  local l = { socket = sock }
  function l.messages()
    local list = {}
    for line in H.read(out):gmatch("[^\n]+") do
      list[#list + 1] = line
    end
    return list
  end
  function l.has(prefix)
    for i, m in ipairs(l.messages()) do
      if m:sub(1, #prefix) == prefix then
        return i
      end
    end
    return nil
  end
  function l.count(prefix)
    local n = 0
    for _, m in ipairs(l.messages()) do
      if m:sub(1, #prefix) == prefix then
        n = n + 1
      end
    end
    return n
  end
  function l.stop()
    os.execute("kill " .. pid .. " 2>/dev/null")
    p:close()
    os.remove(out)
    os.remove(sock)
  end
  return l
end

describe("chorus serve with NOTIFY_SOCKET", function()
  local dir, listener, srv

  setup(function() dir = H.temp_dir({ ["hello.lua"] = HELLO }) end)
  teardown(function() H.clean(dir) end)
  after_each(function()
    H.clean(srv, listener)
    srv, listener = nil, nil
  end)

  it("sends READY=1 once it listens, WATCHDOG=1 at half of WATCHDOG_USEC, STOPPING=1 on SIGTERM", function()
    listener = listen()
    srv = H.start_server({ "--scripts", dir }, { NOTIFY_SOCKET = listener.socket, WATCHDOG_USEC = "200000" })
    assert.is_truthy(H.eventually(function() return listener.has("READY=1") end, 10), "no READY=1")
    local ready = listener.messages()[listener.has("READY=1")]
    assert.are.equal("READY=1|STATUS=serving on " .. srv.url:gsub("^http://", ""), ready)
    assert.are.equal(200, H.request(srv.url .. "/readyz").status)
    -- a ping every 0.1 s: several arrive while the server runs
    assert.is_truthy(H.eventually(function() return listener.count("WATCHDOG=1") >= 3 end, 10),
      "no WATCHDOG=1 pings: " .. table.concat(listener.messages(), ", "))
    assert.is_nil(listener.has("STOPPING=1"))
    srv.kill("TERM")
    assert.are.equal(0, srv.wait())
    local stopping = listener.has("STOPPING=1")
    assert.is_truthy(stopping, table.concat(listener.messages(), ", "))
    assert.are.equal("STOPPING=1|STATUS=draining", listener.messages()[stopping])
    assert.is_true(listener.has("READY=1") < stopping)
    assert.are.equal(1, listener.count("READY=1"))
  end)

  it("sends no watchdog pings without WATCHDOG_USEC, nor when WATCHDOG_PID names another process", function()
    listener = listen()
    srv = H.start_server({ "--scripts", dir }, { NOTIFY_SOCKET = listener.socket })
    assert.is_truthy(H.eventually(function() return listener.has("READY=1") end, 10))
    local other = H.start_server({ "--scripts", dir },
      { NOTIFY_SOCKET = listener.socket, WATCHDOG_USEC = "100000", WATCHDOG_PID = "1" })
    assert.is_truthy(H.eventually(function() return listener.count("READY=1") == 2 end, 10))
    H.sleep(0.5) -- five intervals of the second server's would-be pings
    other.stop()
    assert.are.equal(0, listener.count("WATCHDOG=1"))
  end)

  it("serves on, saying so once in the log, when nobody listens at NOTIFY_SOCKET", function()
    local nowhere = os.tmpname() .. ".missing"
    srv = H.start_server({ "--scripts", dir }, { NOTIFY_SOCKET = nowhere, WATCHDOG_USEC = "100000" })
    assert.are.equal(200, H.request(srv.url .. "/workflows/hello", { method = "POST", body = "{}" }).status)
    H.sleep(0.5) -- pings that fail as well
    local log = H.read(srv.log)
    local _, warnings = log:gsub("serving on without it", "")
    assert.are.equal(1, warnings, log)
    assert.truthy(log:find(nowhere, 1, true), log)
  end)

  it("refuses a malformed WATCHDOG_USEC with a warning and still says READY=1", function()
    listener = listen()
    srv = H.start_server({ "--scripts", dir }, { NOTIFY_SOCKET = listener.socket, WATCHDOG_USEC = "soon" })
    assert.is_truthy(H.eventually(function() return listener.has("READY=1") end, 10))
    local log = H.read(srv.log)
    assert.truthy(log:find("no watchdog pings", 1, true), log)
    assert.truthy(log:find('"watchdog_usec":"soon"', 1, true), log)
    assert.are.equal(0, listener.count("WATCHDOG=1"))
  end)
end)

describe("chorus serve with NOTIFY_SOCKET after a crash", function()
  local mock, dir, data, srv, listener

  setup(function()
    mock = H.start_mock(300)
    dir = H.temp_dir({ ["park.lua"] = PARK })
    data = H.temp_dir()
  end)
  teardown(function() H.clean(srv, listener, mock, dir, data) end)

  local function serve(delay_ms, env)
    local conf = H.write_temp(([[
return { access_log = false, storage = { recovery_batch = 2 },
  upstreams = { mock = { base_url = %q, timeout = 120 } } }
]]):format(mock.url .. "?delay=" .. delay_ms))
    return H.start_server({ "--config", conf, "--scripts", dir, "--data", data }, env)
  end

  it("says READY=1 only once every unfinished run has started again", function()
    srv = serve(60000)
    for _ = 1, 20 do
      local r = H.request(srv.url .. "/workflows/park", { method = "POST", body = "{}",
        headers = { Prefer = "respond-async" } })
      assert.are.equal(202, r.status, r.body)
    end
    assert.is_truthy(H.eventually(function() return mock.stats().in_flight == 20 end, 20))
    srv.kill("KILL")
    srv.wait()
    mock.reset()

    listener = listen()
    -- 10 batches of 2, 0.1 s apart: about a second of recovery
    srv = serve(10, { NOTIFY_SOCKET = listener.socket, CHORUS_TEST_RECOVERY_PAUSE = "0.1" })
    local saw_recovering = false
    local ready = H.eventually(function()
      local said = listener.has("READY=1") -- read first: READY then still 503 would be wrong
      local status = H.request(srv.url .. "/readyz").status
      if status == 503 then
        saw_recovering = true
        assert.is_nil(said, "READY=1 while /readyz still said recovering")
      end
      return said and status == 200
    end, 30)
    assert.is_truthy(ready, table.concat(listener.messages(), ", "))
    assert.is_true(saw_recovering)
    assert.truthy(H.read(srv.log):find("resumed runs after a restart", 1, true))
  end)
end)
