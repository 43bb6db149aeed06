-- OpenTelemetry traces on a real server, sent to a real OTLP/HTTP receiver
-- (tests/otlp/receiver.js: built on the official OpenTelemetry npm packages,
-- it checks every request against the protocol's protobuf definitions):
-- one trace from the caller's traceparent through the run, its effects, a
-- child run and the outbox, every parent link checked, and what the mock
-- upstream saw in its traceparent and tracestate headers.
local H = require "tests.integration.helpers"

local FIX = "tests/integration/fixtures/otlp/"
local ADMIN = { Authorization = "Bearer s3cret" }
local TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
local CALLER_SPAN = "00f067aa0ba902b7"
local STATE = "vendor1=opaque-1,rojo=00f067aa0ba902b7"
local SECRET = "sekret-api-key-4711"

local has_node = os.execute("command -v node >/dev/null 2>&1")

--- Starts the receiver; returns { url, port, spans(), rejected(), reset(), stop() }.
local function start_receiver()
  assert(io.open("tests/otlp/node_modules/@opentelemetry/otlp-transformer/package.json"),
    "tests/otlp/node_modules is missing: run `make deps` (npm ci --prefix tests/otlp)")
  local p = assert(io.popen("sh -c 'echo $$; exec node tests/otlp/receiver.js --max-seconds 300'", "r"))
  local pid = assert(tonumber(p:read("l")), "receiver did not start")
  local line = p:read("l") or ""
  local port = assert(tonumber(line:match("listening 127%.0%.0%.1:(%d+)")), "receiver said: " .. line)
  local r = { pid = pid, port = port, url = "http://127.0.0.1:" .. port }
  function r.get(path)
    return H.request(r.url .. path).json
  end
  function r.spans()
    return r.get("/spans")
  end
  function r.rejected()
    return r.get("/rejected")
  end
  function r.stop()
    os.execute(("kill -TERM %d 2>/dev/null"):format(pid))
    p:close()
  end
  return r
end

local function config(mock, endpoint, telemetry)
  return H.write_temp(([[
return {
  admin_token = "s3cret",
  upstreams = { mock = { base_url = %q } },
  outbox = { poll = 0.05, base = 0.05 },
  telemetry = { otlp_endpoint = %q, %s },
}
]]):format(mock.url, endpoint, telemetry))
end

local function scripts()
  return H.temp_dir({ ["traced.lua"] = H.read(FIX .. "traced.lua"), ["leaf.lua"] = H.read(FIX .. "leaf.lua"),
    ["later_leaf.lua"] = H.read(FIX .. "later_leaf.lua"), ["parked.lua"] = H.read(FIX .. "parked.lua") })
end

local function post(srv, headers)
  headers = headers or {}
  headers["Content-Type"] = "application/json"
  return H.request(srv.url .. "/workflows/traced", { method = "POST", body = "{}", headers = headers })
end

-- The spans of trace id, once at least n have arrived.
local function trace_spans(receiver, id, n)
  local got
  H.eventually(function()
    got = {}
    for _, s in ipairs(receiver.spans() or {}) do
      if s.traceId == id then
        got[#got + 1] = s
      end
    end
    return #got >= n
  end, 20)
  return got
end

local function find(spans, pred)
  local out = {}
  for _, s in ipairs(spans) do
    if pred(s) then
      out[#out + 1] = s
    end
  end
  return out
end

local function named(spans, name)
  return find(spans, function(s) return s.name == name end)
end

local function one(spans, name)
  local list = named(spans, name)
  assert.are.equal(1, #list, ("spans named %q: %d"):format(name, #list))
  return list[1]
end

local function metric(srv, name)
  local text = H.request(srv.url .. "/metrics").body
  return tonumber(text:match("\n" .. name .. " (%S+)")) or 0
end

-- The span id in a traceparent header.
local function parent_in(tp)
  return tp and tp:match("^00%-%x+%-(%x+)%-%x%x$")
end

-- The mock's log entries for path.
local function seen(mock, path)
  return find(mock.stats().log or {}, function(e) return e.path == path end)
end

describe("OpenTelemetry traces (OTLP/HTTP JSON)", function()
  if not has_node then
    pending("node is not installed: the OTLP receiver (tests/otlp/receiver.js) needs it; `make deps` installs it")
    return
  end

  local mock, receiver, dir, conf, srv

  setup(function()
    mock = H.start_mock(300)
    receiver = start_receiver()
    dir = scripts()
    conf = config(mock, receiver.url, 'interval = 0.2, batch = 512, queue = 4096, service_name = "chorus-test"')
    srv = H.start_server({ "--config", conf, "--scripts", dir }, { CHORUS_SECRET_API_KEY = SECRET })
  end)

  teardown(function()
    H.clean(srv, receiver, mock, dir, conf)
  end)

  it("exports one trace from the caller's traceparent through the run, its effects, its child and the outbox",
    function()
      local r = post(srv, { traceparent = "00-" .. TRACE .. "-" .. CALLER_SPAN .. "-01", tracestate = STATE })
      assert.are.equal(200, r.status, r.body)
      local run_id = r.headers["x-run-id"]
      -- traced (6: run, http, sleep, lock, event, call), 2 deliveries, leaf (2), later_leaf (2)
      local spans = trace_spans(receiver, TRACE, 12)
      assert.are.same({}, receiver.rejected())

      -- the run: a child of the caller's span, with the caller's tracestate
      local run = one(spans, "traced")
      assert.are.equal(CALLER_SPAN, run.parentSpanId)
      assert.are.equal(STATE, run.traceState)
      assert.are.equal(2, run.kind) -- server
      assert.are.equal(run_id, run.attributes["chorus.run_id"])
      assert.are.equal("succeeded", run.attributes["chorus.status"])
      assert.are.equal("chorus-test", run.service)
      assert.are.equal(1, run.status.code)
      local rec = H.run_record(srv, run_id, ADMIN)
      assert.are.equal(rec.span_id, run.spanId)

      -- each effect: a child of the run's span
      local gets = find(spans, function(s) return s.name == "GET" and s.parentSpanId == run.spanId end)
      assert.are.equal(1, #gets)
      local http = gets[1]
      for _, name in ipairs({ "sleep", "lock account", "event never", "call leaf" }) do
        local s = one(spans, name)
        assert.are.equal(run.spanId, s.parentSpanId, name)
      end
      for _, name in ipairs({ "GET", "sleep", "lock account", "event never", "call leaf" }) do
        local s = name == "GET" and http or one(spans, name)
        assert.is_true(tonumber(s.start) >= tonumber(run.start) and tonumber(s["end"]) <= tonumber(run["end"]), name)
      end
      assert.are.equal(3, http.kind) -- client
      assert.are.equal(200, http.attributes["http.response.status_code"])
      assert.are.equal("timeout", one(spans, "event never").attributes["chorus.event.outcome"])
      -- the upstream saw the HTTP attempt's own span as its parent, and the tracestate
      local hello = seen(mock, "/hello")
      assert.are.equal(1, #hello)
      assert.are.equal("00-" .. TRACE .. "-" .. http.spanId .. "-01", hello[1].traceparent)
      assert.are.equal(STATE, hello[1].tracestate)
      -- no secret in any attribute: the URL shows it redacted
      for _, s in ipairs(spans) do
        for k, v in pairs(s.attributes) do
          assert.is_nil(tostring(v):find(SECRET, 1, true), s.name .. " " .. k)
        end
      end
      assert.truthy(http.attributes["url.full"]:find("key=[REDACTED]", 1, true), http.attributes["url.full"])

      -- the child run: under the call's span, its call under its own span
      local call = one(spans, "call leaf")
      local leaf = one(spans, "leaf")
      assert.are.equal(call.spanId, leaf.parentSpanId)
      assert.are.equal(rec.children[1], leaf.attributes["chorus.run_id"])
      local leaf_get = find(spans, function(s) return s.name == "GET" and s.parentSpanId == leaf.spanId end)
      assert.are.equal(1, #leaf_get)
      assert.are.equal("00-" .. TRACE .. "-" .. leaf_get[1].spanId .. "-01", seen(mock, "/leaf")[1].traceparent)

      -- ctx.later: a delivery span under the run, the later run under it
      local delivery = one(spans, "outbox workflow later_leaf")
      assert.are.equal(run.spanId, delivery.parentSpanId)
      assert.are.equal("started", delivery.attributes["chorus.outbox.outcome"])
      local later = one(spans, "later_leaf")
      assert.are.equal(delivery.spanId, later.parentSpanId)
      local later_get = find(spans, function(s) return s.parentSpanId == later.spanId end)
      assert.are.equal(1, #later_get)
      assert.are.equal("00-" .. TRACE .. "-" .. later_get[1].spanId .. "-01", seen(mock, "/later")[1].traceparent)

      -- a queued call: its delivery is the span the upstream sees as parent
      local queued = one(spans, "outbox http mock")
      assert.are.equal(run.spanId, queued.parentSpanId)
      assert.are.equal("delivered", queued.attributes["chorus.outbox.outcome"])
      local q = seen(mock, "/queued")
      assert.are.equal(1, #q)
      assert.are.equal(queued.spanId, parent_in(q[1].traceparent))
      assert.are.equal(STATE, q[1].tracestate)

      -- every span but the run's has its parent in the trace
      local ids = {}
      for _, s in ipairs(spans) do
        ids[s.spanId] = true
      end
      for _, s in ipairs(spans) do
        if s ~= run then
          assert.is_true(ids[s.parentSpanId] == true, s.name .. " has no parent in the trace")
        end
      end
      assert.is_true(metric(srv, "chorus_otlp_spans_exported_total") >= 12)
      assert.are.equal(0, metric(srv, "chorus_otlp_spans_dropped_total"))
    end)

  it("keeps an unsampled caller's flag: the upstream sees -00 and nothing of the trace is exported", function()
    local trace = "0af7651916cd43dd8448eb211c80319c"
    H.request(mock.url .. "/__reset", { method = "POST" })
    local r = post(srv, { traceparent = "00-" .. trace .. "-b7ad6b7169203331-00" })
    assert.are.equal(200, r.status, r.body)
    local hello = H.eventually(function() return seen(mock, "/queued")[1] and seen(mock, "/hello") end, 10)
    assert.truthy(hello[1].traceparent:match("^00%-" .. trace .. "%-%x+%-00$"), hello[1].traceparent)
    assert.truthy(seen(mock, "/queued")[1].traceparent:match("%-00$"))
    H.sleep(0.6) -- three export intervals
    assert.are.same({}, trace_spans(receiver, trace, 0))
  end)

  it("starts a trace for a request without traceparent, and one for a malformed one", function()
    H.request(mock.url .. "/__reset", { method = "POST" })
    local r = post(srv, { traceparent = "00-" .. ("0"):rep(32) .. "-b7ad6b7169203331-01" })
    assert.are.equal(200, r.status, r.body)
    local rec = H.run_record(srv, r.headers["x-run-id"], ADMIN)
    assert.are_not.equal(("0"):rep(32), rec.trace_id)
    local spans = trace_spans(receiver, rec.trace_id, 8)
    assert.is_nil(one(spans, "traced").parentSpanId)
  end)

  it("keeps a run's span, parent and earlier effects' spans across a SIGKILL and restart", function()
    local data = H.temp_dir()
    local args = { "--config", conf, "--scripts", dir, "--data", data }
    local env = { CHORUS_SECRET_API_KEY = SECRET }
    local ksrv = H.start_server(args, env)
    finally(function() H.clean(ksrv, data) end)
    local trace = "5bf92f3577b34da6a3ce929d0e0e4737"
    local r = H.request(ksrv.url .. "/workflows/parked", { method = "POST", body = "{}", headers = {
      Prefer = "respond-async", ["Content-Type"] = "application/json",
      traceparent = "00-" .. trace .. "-" .. CALLER_SPAN .. "-01", tracestate = STATE } })
    assert.are.equal(202, r.status, r.body)
    local id = r.json.run_id
    assert.truthy(H.eventually(function() return seen(mock, "/park")[1] end, 10))
    local before = H.run_record(ksrv, id, ADMIN)
    ksrv.kill("KILL")
    ksrv.wait()
    ksrv = H.start_server(args, env)
    local rec = H.finished(ksrv, id, ADMIN, 20)
    assert.are.equal("succeeded", rec.status)
    assert.are.equal(before.span_id, rec.span_id)
    local spans = trace_spans(receiver, trace, 3)
    assert.are.same({}, receiver.rejected())
    local run = one(spans, "parked")
    assert.are.equal(rec.span_id, run.spanId)
    assert.are.equal(CALLER_SPAN, run.parentSpanId)
    assert.are.equal(STATE, run.traceState)
    assert.are.same({ "resumed" }, run.events)
    assert.are.equal(run.spanId, one(spans, "sleep").parentSpanId)
    -- the call the kill cut short was sent again, as a span of its own
    local parks = seen(mock, "/park")
    local get = one(spans, "GET")
    assert.are.equal(run.spanId, get.parentSpanId)
    assert.are.equal(get.spanId, parent_in(parks[#parks].traceparent))
  end)

  it("drops spans and counts them when the queue is full and the receiver is down", function()
    local down = start_receiver()
    down.stop() -- its port: nobody listens there now
    local dconf = config(mock, down.url, "interval = 0.1, batch = 1, queue = 2")
    local dsrv = H.start_server({ "--config", dconf, "--scripts", dir }, { CHORUS_SECRET_API_KEY = SECRET })
    finally(function() H.clean(dsrv, dconf) end)
    local r = post(dsrv)
    assert.are.equal(200, r.status, r.body)
    -- the run ends with 6 spans (its own and 5 effects') for a queue of 2:
    -- at least 4 dropped, at once
    assert.is_true(metric(dsrv, "chorus_otlp_spans_dropped_total") >= 4)
    -- the two queued are sent and refused (nobody listens)
    assert.truthy(H.eventually(function() return metric(dsrv, "chorus_otlp_spans_failed_total") >= 2 end, 20))
    assert.are.equal(0, metric(dsrv, "chorus_otlp_spans_exported_total"))
    assert.truthy(H.read(dsrv.log):find("the OTLP receiver did not take a batch of spans", 1, true))
  end)
end)
