-- Limits through real processes: response bodies count against the run's
-- memory cap and each call's max_response_bytes (issue 13, item 4); config
-- numbers are range-checked and a server drains within drain_timeout even
-- under a tiny memory cap (item 8).
local H = require "tests.integration.helpers"

local BIG_BODY = "tests/integration/fixtures/big_body.lua"

describe("response bodies", function()
  local mock, conf, small

  setup(function()
    mock = H.start_mock(200)
    conf = H.write_temp(([[
return { upstreams = { mock = { base_url = %q }, capped = { base_url = %q, max_response_bytes = 50000 } } }
]]):format(mock.url, mock.url))
    small = H.write_temp(([[
return { limits = { run_memory_mb = 4 },
  upstreams = { mock = { base_url = %q, max_response_bytes = 100000000 } } }
]]):format(mock.url))
  end)

  teardown(function() H.clean(mock, conf, small) end)

  local function run(config, input)
    local r = H.chorus_run({ "run", BIG_BODY, "--config", config, "--input", H.encode(input) }, nil, 60)
    return r, H.decode(r.stdout), H.decode(r.stderr)
  end

  it("stops an endless body at the default 16 MiB with kind too_large", function()
    local r, out = run(conf, { path = "/x?stream_bytes=endless" })
    assert.are.equal(0, r.code, r.stderr)
    assert.are.equal("too_large", out.kind)
    assert.are.equal("mock", out.upstream)
    assert.are.equal(1, out.attempts)
    assert.truthy(out.message:find("max_response_bytes (16777216 bytes)", 1, true), out.message)
  end)

  it("stops a body without Content-Length at the per-call limit", function()
    local _, out = run(conf, { path = "/x?stream_bytes=100000&chunked=1", max = 20000 })
    assert.are.equal("too_large", out.kind)
    assert.truthy(out.message:find("(20000 bytes)", 1, true), out.message)
  end)

  it("refuses a Content-Length past the upstream's limit before reading the body", function()
    local _, out = run(conf, { path = "/x?stream_bytes=60000" })
    assert.are.equal(200, out.status) -- "mock" has the default limit: 60,000 bytes pass
    local _, capped = run(conf, { path = "/x?stream_bytes=60000", via = "capped" })
    assert.are.equal("too_large", capped.kind)
    assert.are.equal("capped", capped.upstream)
    assert.truthy(capped.message:find("Content-Length exceeds max_response_bytes (50000 bytes)", 1, true),
      capped.message)
  end)

  it("ends a run whose body would pass its memory cap with kind memory", function()
    for _, path in ipairs({ "/x?stream_bytes=endless", "/x?stream_bytes=8000000" }) do
      local r, _, err = run(small, { path = path })
      assert.are.equal(1, r.code, r.stdout)
      assert.are.equal("memory", err.error.kind, r.stderr)
    end
  end)

  it("still delivers a body within every limit", function()
    local r, out = run(small, { path = "/x?stream_bytes=1000000" })
    assert.are.equal(0, r.code, r.stderr)
    assert.are.same({ status = 200, bytes = 1000000 }, out)
    local _, plain = run(conf, { url = mock.url, path = "/x?stream_bytes=200000" })
    assert.are.same({ status = 200, bytes = 200000 }, plain)
  end)
end)

describe("config ranges", function()
  local dir

  setup(function()
    dir = H.temp_dir({ ["echo.lua"] = H.read("tests/integration/fixtures/serve/echo.lua") })
  end)

  teardown(function() H.clean(dir) end)

  -- `chorus serve --config` with the given config body: exit code and stderr.
  local function serve_with(body, listen)
    local conf = H.write_temp("return { " .. body .. " }")
    local data = H.temp_dir()
    local r = H.chorus_run({ "serve", "--config", conf, "--scripts", dir, "--data", data,
      "--listen", listen or "127.0.0.1:0" }, nil, 20)
    os.remove(conf)
    os.execute("rm -rf " .. H.quote(data))
    return r
  end

  local cases = {
    { "limits = { run_memory_mb = 0/0 }", "limits.run_memory_mb must be a number, got NaN" },
    { "limits = { drain_timeout = math.huge }", "limits.drain_timeout must be finite, got infinity" },
    { "limits = { client_timeout = -math.huge }", "limits.client_timeout must be finite, got -infinity" },
    { "limits = { max_body_bytes = 1e300 }", "limits.max_body_bytes must be between 1 and 1073741824, got 1e+300" },
    { "limits = { max_connections = -1 }", "limits.max_connections must be between 1 and 1000000, got -1" },
    { "limits = { max_header_bytes = 8192.5 }", "limits.max_header_bytes must be an integer, got 8192.5" },
    { "limits = { run_memory_mb = 0.01 }",
      "limits.run_memory_mb must be between 1 and 1048576 (or 0 for none), got 0.01" },
    { "limits = { run_instructions = 10 }",
      "limits.run_instructions must be between 100000 and 1000000000000000 (or 0 for none), got 10" },
    { "limits = { run_cpu_seconds = 0.01 }",
      "limits.run_cpu_seconds must be between 0.1 and 1000000 (or 0 for none), got 0.01" },
    { "limits = { run_cpu_seconds = -1 }",
      "limits.run_cpu_seconds must be between 0.1 and 1000000 (or 0 for none), got -1" },
    { "outbox = { poll = 0 }", "outbox.poll must be between 0.001 and 3600, got 0" },
    { "limits = { outbox_pending_per_workflow = -1 }",
      "limits.outbox_pending_per_workflow must be between 0 and 1000000000, got -1" },
    { "limits = { inflight_runs_per_workflow = -1 }",
      "limits.inflight_runs_per_workflow must be between 0 and 10000000, got -1" },
    { "limits = { inflight_runs_per_workflow = 2.5 }",
      "limits.inflight_runs_per_workflow must be an integer, got 2.5" },
    { "limits = { inflight_runs_per_workflow = 1e9 }",
      "limits.inflight_runs_per_workflow must be between 0 and 10000000, got 1000000000" },
    { "limits = { inflight_runs_per_workflow = 0/0 }", "limits.inflight_runs_per_workflow must be a number, got NaN" },
    { "limits = { inflight_runs_per_workflow = '5' }",
      "limits.inflight_runs_per_workflow must be a number, got string" },
    { "storage = { map_size_mb = 1e12 }", "storage.map_size_mb must be between 1 and 16777216, got 1000000000000" },
    { "storage = { recovery_batch = 0 }", "storage.recovery_batch must be between 1 and 1000000, got 0" },
    { "storage = { recovery_batch = 2.5 }", "storage.recovery_batch must be an integer, got 2.5" },
    { "alerts = { dlq_depth = 0/0 }", "alerts.dlq_depth must be a number, got NaN" },
    { "upstreams = { a = { base_url = 'http://127.0.0.1:1', timeout = -1 } }",
      "upstreams.a.timeout must be between 0 and 1000000, got -1" },
    { "upstreams = { a = { base_url = 'http://127.0.0.1:1', max_response_bytes = 0 } }",
      "upstreams.a.max_response_bytes must be between 1 and 1125899906842624, got 0" },
    { "upstreams = { a = { base_url = 'http://127.0.0.1:1', bulkhead = { max = 2.5 } } }",
      "upstreams.a.bulkhead.max must be an integer, got 2.5" },
    { "upstreams = { a = { base_url = 'http://127.0.0.1:1', rate_limit = { rate = 0 } } }",
      "upstreams.a.rate_limit.rate must be between 1e-06 and 1000000000, got 0" },
    -- values the breaker itself refuses: at load, not at every call
    { "upstreams = { a = { base_url = 'http://127.0.0.1:1', breaker = { failure_rate = 0 } } }",
      "upstreams.a.breaker.failure_rate must be above 0 and at most 100, got 0" },
    { "upstreams = { a = { base_url = 'http://127.0.0.1:1', breaker = { slow_call_rate = 0 } } }",
      "upstreams.a.breaker.slow_call_rate must be above 0 and at most 100, got 0" },
    { "upstreams = { a = { base_url = 'http://127.0.0.1:1', breaker = { slow_call_duration = 0 } } }",
      "upstreams.a.breaker.slow_call_duration must be above 0 and at most 86400, got 0" },
    { "upstreams = { a = { base_url = 'http://127.0.0.1:1', breaker = { window_seconds = 100000 } } }",
      "upstreams.a.breaker.window_seconds must be between 1 and 86400, got 100000" },
  }
  for _, case in ipairs(cases) do
    it(("refuses to start with %s"):format(case[1]), function()
      local r = serve_with(case[1])
      assert.are.equal(2, r.code, r.stderr)
      assert.truthy(r.stderr:find(case[2], 1, true), r.stderr)
      assert.are.equal("", r.stdout) -- never listened
    end)
  end

  it("refuses a listen port past 65535", function()
    local r = serve_with("", "127.0.0.1:70000")
    assert.are.equal(2, r.code)
    assert.truthy(r.stderr:find("--listen must be IPV4:PORT", 1, true), r.stderr)
  end)

  it("serves with every limit at its floor", function()
    local srv = H.start_server({ "--config", H.write_temp([[
return { limits = { run_memory_mb = 1, run_instructions = 100000, run_cpu_seconds = 0.1, max_header_bytes = 4096,
  max_body_bytes = 64, drain_timeout = 0 }, storage = { durable = false } }
]]), "--scripts", dir })
    local res = H.request(srv.url .. "/workflows/echo", { method = "POST", body = '{"a":1}' })
    srv.stop()
    assert.are.equal(200, res.status, res.body)
    assert.are.same({ a = 1 }, res.json.input)
  end)
end)

describe("draining", function()
  -- alive: the process exists and is not a zombie
  local function alive(pid)
    local f = io.open(("/proc/%d/stat"):format(pid))
    if not f then
      return false
    end
    local stat = f:read("a")
    f:close()
    return not stat:match("^%d+ %b() Z")
  end

  it("a signal's run is not stopped by the per-run memory cap", function()
    -- server.lua's drain runs from core.on_signal; under a 2 KiB cap it
    -- used to be killed, and the server never exited
    local script = H.write_temp([[
package.cpath = "build/lua/?.so;" .. package.cpath
package.path = "lua/?.lua;" .. package.path
local core = require "chorus.core"
core.set_limits({ memory = 2048 })
local pid = io.open("/proc/self/stat"):read("l"):match("^%d+")
local got
core.on_signal("SIGTERM", function(sig)
  local t = {}
  for i = 1, 10000 do t[i] = tostring(i) end
  got = sig .. " " .. #t
  core.stop()
end)
core.start({ memory = 0 }, function() core.sleep(0.05); os.execute("kill -TERM " .. pid) end)
core.start({ memory = 0 }, function() core.sleep(5); got = got or "timed out"; core.stop() end)
core.loop()
print(got)
]])
    local r = H.exec("lua5.4 " .. H.quote(script), nil, 30)
    os.remove(script)
    assert.are.equal("SIGTERM 10000\n", r.stdout, r.stderr)
  end)

  it("exits within drain_timeout on SIGTERM under the smallest memory cap, with slow requests in flight",
    function()
      local mock = H.start_mock(120)
      local scripts = H.temp_dir({ ["calls.lua"] = H.read("tests/integration/fixtures/serve/calls.lua") })
      local conf = H.write_temp(([[
return { limits = { run_memory_mb = 1, drain_timeout = 2 }, upstreams = { mock = { base_url = %q } } }
]]):format(mock.url))
      local srv = H.start_server({ "--config", conf, "--scripts", scripts })
      local calls = {}
      for i = 1, 3 do
        calls[i] = H.request_async(srv.url .. "/workflows/calls",
          { method = "POST", body = '{"delay":60000}', max_time = 60 })
      end
      assert.truthy(H.eventually(function() return mock.stats().in_flight == 3 end, 20))
      local t0 = H.now()
      srv.kill("TERM")
      local gone = H.eventually(function() return not alive(srv.pid) end, 2 + 15)
      local waited = H.now() - t0
      if not gone then
        srv.kill("KILL")
      end
      local code = srv.wait()
      local log = H.read(srv.log)
      os.remove(srv.log)
      os.remove(conf)
      mock.stop()
      os.execute("rm -rf " .. H.quote(scripts) .. " " .. H.quote(srv.data))
      for _, c in ipairs(calls) do
        c.wait(5)
      end
      assert.truthy(gone, ("still running %.1f s after SIGTERM:\n%s"):format(waited, log))
      assert.are.equal(0, code)
      assert.truthy(log:find('"msg":"stopped"', 1, true), log)
    end)
end)

describe("request bodies", function()
  -- Each call copies its body for curl: one string sent by many calls at
  -- once was a copy per call outside the run's memory cap (30 calls of a
  -- 20 MiB body: 650 MB of the server under a 64 MiB cap). The copies
  -- count now.
  local mock, small, script

  setup(function()
    mock = H.start_mock(200)
    small = H.write_temp(([[
return { limits = { run_memory_mb = 8 }, upstreams = { mock = { base_url = %q } } }
]]):format(mock.url))
    script = H.write_temp([[
local chorus = require "chorus"
local http = require "chorus.http"
return chorus.workflow { name = "bodies", run = function(ctx, input)
  local body, calls = ("x"):rep(2 * 1024 * 1024), {}
  for i = 1, input.calls do
    calls[i] = function() return http.upstream("mock"):post("/x?stream_bytes=1&delay=200", { body = body }).status end
  end
  return { chorus.all(table.unpack(calls)) }
end }
]])
  end)

  teardown(function() H.clean(mock, small, script) end)

  local function run(n)
    local r = H.chorus_run({ "run", script, "--config", small, "--input", H.encode({ calls = n }) }, nil, 60)
    return r, H.decode(r.stdout), H.decode(r.stderr)
  end

  it("count against the run's memory cap, one copy per call in flight", function()
    local r, out = run(1)
    assert.are.equal(0, r.code, r.stderr)
    assert.are.same({ 200 }, out)
    local r8, _, err = run(8)
    assert.are.equal(1, r8.code, r8.stdout)
    assert.are.equal("memory", err.error.kind, r8.stderr)
  end)
end)
