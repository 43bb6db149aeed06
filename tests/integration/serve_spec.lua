-- `chorus serve` through real HTTP on loopback: every endpoint and every
-- bad input of the README's HTTP surface.
local H = require "tests.integration.helpers"

local FIX = "tests/integration/fixtures/serve/"

local function config_text(mock_url, extra)
  return ([[
return {
  admin_token = "s3cret",
  limits = { max_body_bytes = 2048, client_timeout = 1, drain_timeout = 5 },
  upstreams = { mock = { base_url = %q } },
  %s
}
]]):format(mock_url, extra or "")
end

-- Rewrites the "version" workflow of dir to return { version = v }.
local function write_version(dir, v)
  local f = assert(io.open(dir .. "/version.lua", "wb"))
  f:write(('local chorus = require "chorus"\nreturn chorus.workflow { name = "version", '
    .. 'run = function() return { version = %d } end }\n'):format(v))
  f:close()
end

local function copy_fixtures(names)
  local files = {}
  for _, name in ipairs(names) do
    files[name] = H.read(FIX .. name)
  end
  return H.temp_dir(files)
end

describe("chorus serve", function()
  local mock, srv, dir, conf

  setup(function()
    mock = H.start_mock(200)
    dir = copy_fixtures({ "echo.lua", "fails.lua", "calls.lua", "version.lua" })
    conf = H.write_temp(config_text(mock.url))
    srv = H.start_server({ "--config", conf, "--scripts", dir })
  end)

  teardown(function() H.clean(srv, mock, dir, conf) end)

  local function post(path, body, headers)
    return H.request(srv.url .. path, { method = "POST", body = body, headers = headers })
  end

  describe("POST /workflows/NAME", function()
    it("answers with the run's return value as 200 JSON", function()
      local r = post("/workflows/echo", '{"a":1}')
      assert.are.equal(200, r.status)
      assert.are.equal("application/json", r.headers["content-type"])
      assert.are.same({ a = 1 }, r.json.input)
      assert.are.equal(r.headers["x-run-id"], r.json.run_id)
    end)

    it("uses {status=, headers=, json=} as the response", function()
      local r = post("/workflows/echo", '{"status":201}')
      assert.are.equal(201, r.status)
      assert.are.equal("yes", r.headers["x-echo"])
      assert.are.equal(201, r.json.input.status)
    end)

    it("treats an empty body as an empty input", function()
      local r = post("/workflows/echo", "")
      assert.are.equal(200, r.status)
    end)

    it("rejects malformed JSON with 400 problem+json", function()
      local r = post("/workflows/echo", "{nope")
      assert.are.equal(400, r.status)
      assert.are.equal("application/problem+json", r.headers["content-type"])
      assert.are.equal(400, r.json.status)
      assert.truthy(r.json.detail:find("not valid JSON", 1, true))
    end)

    it("rejects JSON that is not strict RFC 8259 with 400, naming the offset", function()
      local r = post("/workflows/echo", "[01]")
      assert.are.equal(400, r.status)
      assert.are.equal("application/problem+json", r.headers["content-type"])
      assert.are.equal("the body is not valid JSON: invalid JSON at offset 1: leading zero in a number near '01]'",
        r.json.detail)
      r = post("/workflows/echo", '{"a":"\t"}')
      assert.are.equal(400, r.status)
      r = post("/workflows/echo", "\f")
      assert.are.equal(400, r.status)
    end)

    it("answers 404 for an unknown workflow", function()
      local r = post("/workflows/nope", "{}")
      assert.are.equal(404, r.status)
      assert.truthy(r.json.detail:find("no workflow named 'nope'", 1, true))
    end)

    it("answers 405 with Allow for the wrong method", function()
      local r = H.request(srv.url .. "/workflows/echo")
      assert.are.equal(405, r.status)
      assert.are.equal("POST", r.headers.allow)
    end)

    it("answers 413 for a body over the limit", function()
      local r = post("/workflows/echo", '{"x":"' .. ("a"):rep(4096) .. '"}')
      assert.are.equal(413, r.status)
    end)

    it("turns a script error into a 500 carrying the run id, traceback only in the log", function()
      local r = post("/workflows/fails", "{}")
      assert.are.equal(500, r.status)
      assert.truthy(r.json.run_id)
      assert.is_nil(r.body:find("traceback", 1, true))
      assert.is_nil(r.body:find("fails.lua", 1, true))
      local rec = H.request(srv.url .. "/runs/" .. r.json.run_id).json
      assert.are.equal("failed", rec.status)
      assert.truthy(rec.error.message:find("attempt to index a nil value", 1, true))
      assert.truthy(H.read(srv.log):find("stack traceback", 1, true))
    end)

    it("propagates the inbound traceparent to outbound calls", function()
      local trace = "4bf92f3577b34da6a3ce929d0e0e4736"
      local r = post("/workflows/calls", "{}", { traceparent = "00-" .. trace .. "-00f067aa0ba902b7-01" })
      assert.are.equal(200, r.status)
      assert.truthy(r.json.traceparent:find("^00%-" .. trace .. "%-%x+%-01$"), r.json.traceparent)
    end)

    it("starts a new trace when there is no traceparent", function()
      local r = post("/workflows/calls", "{}")
      assert.truthy(r.json.traceparent:match("^00%-%x+%-%x+%-01$"))
    end)
  end)

  describe("async request-reply", function()
    it("answers 202 with Location at once and records the outcome", function()
      -- the call takes 1 s: the 202 came first if the record still runs
      local r = post("/workflows/calls", '{"delay":1000}', { Prefer = "respond-async" })
      assert.are.equal(202, r.status)
      assert.are.equal("/runs/" .. r.json.run_id, r.headers.location)
      local rec = H.request(srv.url .. r.headers.location).json
      assert.are.equal("running", rec.status)
      rec = H.eventually(function()
        local x = H.request(srv.url .. r.headers.location).json
        return x.status ~= "running" and x
      end, 10)
      assert.are.equal("succeeded", rec.status)
      assert.are.equal(200, rec.result.status)
      assert.are.equal(1, #rec.timeline)
      assert.are.equal("mock", rec.timeline[1].target)
      assert.are.equal(200, rec.timeline[1].status)
      assert.is_true(rec.timeline[1].duration >= 1)
      assert.truthy(rec.timeline[1].start)
    end)

    it("answers 404 for an unknown run", function()
      assert.are.equal(404, H.request(srv.url .. "/runs/nope").status)
    end)
  end)

  describe("operations endpoints", function()
    it("serves Prometheus metrics", function()
      post("/workflows/echo", "{}")
      local r = H.request(srv.url .. "/metrics")
      assert.are.equal(200, r.status)
      assert.truthy(r.headers["content-type"]:find("text/plain", 1, true))
      assert.truthy(r.body:find('chorus_runs_total{workflow="echo",outcome="succeeded"}', 1, true))
      assert.truthy(r.body:find("chorus_run_duration_seconds_bucket", 1, true))
      assert.truthy(r.body:find('chorus_http_calls_total{upstream="mock",status="200",error=""}', 1, true))
      -- the process, the build and the inbound latency by route (a bounded label)
      assert.truthy(r.body:find('chorus_build_info{version="', 1, true))
      assert.truthy(r.body:match("\nprocess_resident_memory_bytes %d+"))
      assert.truthy(r.body:match("\nprocess_open_fds %d+"))
      assert.truthy(r.body:find("process_cpu_seconds_total ", 1, true))
      assert.truthy(r.body:find('chorus_http_request_duration_seconds_bucket{route="workflow",le="', 1, true))
      assert.truthy(r.body:find('chorus_run_duration_seconds_bucket{workflow="echo",le="3600"}', 1, true))
      assert.truthy(r.body:find("chorus_http_call_duration_seconds_bucket", 1, true))
      assert.truthy(r.body:find("chorus_runs_in_flight", 1, true))
      assert.truthy(r.body:find('chorus_reloads_total{result="ok"}', 1, true))
      assert.truthy(r.body:find("chorus_lua_memory_bytes", 1, true))
    end)

    it("answers /healthz and /readyz", function()
      assert.are.equal(200, H.request(srv.url .. "/healthz").status)
      assert.are.equal("ready", H.request(srv.url .. "/readyz").json.status)
    end)

    it("answers 404 for unknown paths", function()
      assert.are.equal(404, H.request(srv.url .. "/nope").status)
      -- /workflows/NAME takes one non-empty name and nothing after it
      for _, path in ipairs({ "/workflows/", "/workflows/echo/more", "/workflows//echo", "/x/workflows/echo" }) do
        local r = post(path, "{}")
        assert.are.equal(404, r.status, path)
        assert.truthy(r.body:find("nothing at", 1, true), path)
      end
    end)

    it("writes JSON-lines logs with run, trace and span ids; the access log line names the run and trace", function()
      local trace = "4bf92f3577b34da6a3ce929d0e0e4736"
      local r = post("/workflows/calls", "{}", { traceparent = "00-" .. trace .. "-00f067aa0ba902b7-01" })
      local run_id = r.headers["x-run-id"]
      local found, access = false, false
      for line in H.read(srv.log):gmatch("[^\n]+") do
        local entry = H.decode(line)
        if entry and entry.msg == "called the mock" and entry.run_id == run_id then
          assert.are.equal(trace, entry.trace_id)
          assert.truthy(entry.span_id and entry.span_id:match("^%x+$") and #entry.span_id == 16, line)
          found = true
        elseif entry and entry.msg == "request" and entry.run_id == run_id then
          assert.are.equal(trace, entry.trace_id)
          access = true
        end
      end
      assert.is_true(found)
      assert.is_true(access)
    end)

    it("cuts off a client that never finishes its request", function()
      local port = srv.url:match(":(%d+)$")
      local script = "exec 3<>/dev/tcp/127.0.0.1/%s; "
        .. "printf \"POST /workflows/echo HTTP/1.1\\r\\nHost: x\\r\\n\" >&3; cat <&3 >/dev/null"
      local r = H.exec(("bash -c '" .. script .. "'"):format(port), nil, 10)
      assert.is_true(r.elapsed < 4, ("stayed open %.1f s"):format(r.elapsed))
    end)
  end)

  describe("admin", function()
    local auth = { Authorization = "Bearer s3cret" }

    it("refuses reload without the bearer token", function()
      local r = post("/admin/reload", "")
      assert.are.equal(401, r.status)
      r = post("/admin/reload", "", { Authorization = "Bearer wrong" })
      assert.are.equal(401, r.status)
    end)

    it("lists the circuit breakers and their states", function()
      local r = H.request(srv.url .. "/admin/breakers", { headers = auth })
      assert.are.equal(200, r.status)
      assert.are.equal("table", type(r.json.breakers))
    end)

    it("lists the outbox and the DLQ, and 404s an unknown admin endpoint", function()
      for _, path in ipairs({ "/admin/outbox", "/admin/dlq" }) do
        local r = H.request(srv.url .. path, { headers = auth })
        assert.are.equal(200, r.status)
        assert.are.equal("table", type(r.json.entries))
      end
      local r = H.request(srv.url .. "/admin/nothing", { headers = auth })
      assert.are.equal(404, r.status)
      assert.are.equal("application/problem+json", r.headers["content-type"])
    end)

    it("reloads a changed script; new runs see the new version", function()
      assert.are.equal(1, post("/workflows/version", "{}").json.version)
      write_version(dir, 2)
      local r = post("/admin/reload", "", auth)
      assert.are.equal(200, r.status)
      assert.are.equal(2, post("/workflows/version", "{}").json.version)
    end)

    it("keeps the running set when a script is broken, and reports why", function()
      local before = post("/workflows/version", "{}").json.version
      local f = assert(io.open(dir .. "/broken.lua", "wb"))
      f:write("return chorus.workflow {")
      f:close()
      local r = post("/admin/reload", "", auth)
      os.remove(dir .. "/broken.lua")
      assert.are.equal(422, r.status)
      assert.is_false(r.json.ok)
      assert.truthy(r.json.errors[1]:find("broken.lua", 1, true))
      assert.are.equal(before, post("/workflows/version", "{}").json.version)
      assert.truthy(H.request(srv.url .. "/metrics").body:find('chorus_reloads_total{result="error"}', 1, true))
    end)

    -- Polls the version workflow for up to 3 s until it reports `want`.
    -- up to about 20 s: a reload waits for the files to be quiet, and a
    -- loaded machine stretches that (a 3 s bound flaked)
    local function eventually_version(want)
      local v
      for _ = 1, 400 do
        v = post("/workflows/version", "{}").json.version
        if v == want then break end
        os.execute("sleep 0.05")
      end
      return v
    end

    it("reloads on SIGHUP", function()
      write_version(dir, 3)
      srv.kill("HUP")
      assert.are.equal(3, eventually_version(3))
    end)

    it("reloads when a file in the scripts folder changes", function()
      write_version(dir, 4)
      assert.are.equal(4, eventually_version(4))
    end)
  end)
end)

describe("chorus serve shutdown", function()
  it("finishes in-flight runs on SIGTERM, then exits 0", function()
    local mock = H.start_mock(60)
    local dir = copy_fixtures({ "calls.lua" })
    local conf = H.write_temp(config_text(mock.url))
    local srv = H.start_server({ "--config", conf, "--scripts", dir })
    local out = os.tmpname()
    os.execute(("curl -s -o %s -w '%%{http_code}' -X POST --data '{\"delay\":500}' %s/workflows/calls > %s.code &")
      :format(out, srv.url, out))
    -- the run is in flight once its call reached the mock (a fixed sleep
    -- flaked on a loaded machine: SIGTERM came before curl connected)
    assert.truthy(H.eventually(function() return mock.stats().in_flight >= 1 end, 10))
    srv.kill("TERM")
    local code = srv.wait()
    os.execute("sleep 0.1")
    assert.are.equal(0, code)
    assert.are.equal("200", H.read(out .. ".code"))
    assert.are.equal(200, H.decode(H.read(out)).status)
    os.remove(out)
    os.remove(out .. ".code")
    mock.stop()
    os.execute("rm -rf " .. H.quote(dir))
  end)

  it("refuses to start when a script is broken", function()
    local dir = H.temp_dir({ ["bad.lua"] = "return 42" })
    local r = H.chorus_run({ "serve", "--listen", "127.0.0.1:0", "--scripts", dir }, nil, 10)
    assert.are.equal(1, r.code)
    assert.truthy(r.stderr:find("cannot load scripts", 1, true))
    os.execute("rm -rf " .. H.quote(dir))
  end)

  it("rejects a bad --listen with exit 2", function()
    local r = H.chorus_run({ "serve", "--listen", "localhost" }, nil, 10)
    assert.are.equal(2, r.code)
  end)
end)

describe("chorus serve with the examples", function()
  it("runs examples/fanout unchanged, as its busted specs do", function()
    local mock = H.start_mock(60)
    local conf = H.write_temp(([[
return { upstreams = { crm = { base_url = %q }, marketing = { base_url = %q } } }
]]):format(mock.url .. "/crm", mock.url .. "/marketing"))
    local srv = H.start_server({ "--config", conf, "--scripts", "examples" })
    local r = H.request(srv.url .. "/workflows/fanout", { method = "POST", body = '{"type":"signup"}' })
    srv.stop()
    mock.stop()
    os.remove(conf)
    assert.are.equal(200, r.status)
    assert.are.same({ ok = true, status = 200 }, r.json.crm)
    assert.are.same({ ok = true, status = 200 }, r.json.marketing)
  end)
end)
