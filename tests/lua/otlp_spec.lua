-- chorus.otlp: the bounded export queue, the OTLP JSON mapping, sending
-- in batches, and the config's telemetry table, on the real C core.
local core = require "chorus.core"
local otlp = require "chorus.otlp"
local metrics = require "chorus.metrics"

local TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"

local function metric(name)
  return tonumber(metrics.render():match("\n" .. name .. " (%S+)")) or 0
end

describe("the OTLP exporter", function()
  local function span(i)
    return { trace_id = TRACE, span_id = ("%016x"):format(i), name = "s" .. i, kind = 1, start = 1700000000.123456,
      finish = 1700000001.5, attrs = { n = i, f = 0.5, b = true, s = "x" }, status = "ok" }
  end

  it("encodes the OTLP JSON mapping: hex ids, times as strings of nanoseconds, typed attributes", function()
    local ex = otlp.new({ otlp_endpoint = "http://127.0.0.1:4318/", service_name = "svc" })
    assert.are.equal("http://127.0.0.1:4318/v1/traces", ex.url)
    local doc = core.json.decode(ex:encode({ span(1) }))
    local rs = doc.resourceSpans[1]
    assert.are.same({ key = "service.name", value = { stringValue = "svc" } }, rs.resource.attributes[1])
    local s = rs.scopeSpans[1].spans[1]
    assert.are.equal(TRACE, s.traceId)
    assert.are.equal("0000000000000001", s.spanId)
    assert.are.equal("1700000000123456000", s.startTimeUnixNano)
    assert.are.equal("1700000001500000000", s.endTimeUnixNano)
    table.sort(s.attributes, function(x, y) return x.key < y.key end) -- sent in no particular order
    assert.are.same({ { key = "b", value = { boolValue = true } }, { key = "f", value = { doubleValue = 0.5 } },
      { key = "n", value = { intValue = "1" } }, { key = "s", value = { stringValue = "x" } } }, s.attributes)
    assert.are.same({ code = 1 }, s.status)
    assert.are.equal("chorus", rs.scopeSpans[1].scope.name)
  end)

  it("escapes what it sends as JSON strings, and sends events, a parent and a status message", function()
    local ex = otlp.new({ otlp_endpoint = "http://127.0.0.1:4318", service_name = 'a "quoted" name' })
    local s = span(2)
    s.name, s.parent_id, s.trace_state = 'say "hi"\n', "00f067aa0ba902b7", "k=v"
    s.status, s.message = "error", "broke\1"
    s.events = { { name = "resumed", time = 1700000000.5, attrs = { ["chorus.replayed"] = 3 } } }
    local doc = core.json.decode(ex:encode({ s, span(3) }))
    local rs = doc.resourceSpans[1]
    assert.are.equal('a "quoted" name', rs.resource.attributes[1].value.stringValue)
    local got = rs.scopeSpans[1].spans
    assert.are.equal(2, #got)
    assert.are.equal('say "hi"\n', got[1].name)
    assert.are.equal("00f067aa0ba902b7", got[1].parentSpanId)
    assert.are.equal("k=v", got[1].traceState)
    assert.are.same({ code = 2, message = "broke\1" }, got[1].status)
    assert.are.same({ { timeUnixNano = "1700000000500000000", name = "resumed",
      attributes = { { key = "chorus.replayed", value = { intValue = "3" } } } } }, got[1].events)
    assert.is_nil(got[2].parentSpanId)
  end)

  it("queues without waiting, drops and counts what does not fit, and sends in batches", function()
    local sent = {}
    local ex = otlp.new({ otlp_endpoint = "http://127.0.0.1:1", batch = 2, queue = 3 }, {
      transport = function(o)
        assert.are.equal("POST", o.method)
        assert.are.equal("http://127.0.0.1:1/v1/traces", o.url)
        assert.are.equal("application/json", o.headers["Content-Type"])
        sent[#sent + 1] = #core.json.decode(o.body).resourceSpans[1].scopeSpans[1].spans
        return 200, {}, "{}", 0
      end, log = function() end })
    local dropped, exported = metric("chorus_otlp_spans_dropped_total"), metric("chorus_otlp_spans_exported_total")
    ex:push({ span(1), span(2), span(3), span(4), span(5) })
    assert.are.equal(3, ex:queued())
    assert.are.equal(dropped + 2, metric("chorus_otlp_spans_dropped_total"))
    core.run(nil, function() ex:flush() end)
    assert.are.same({ 2, 1 }, sent)
    assert.are.equal(0, ex:queued())
    assert.are.equal(exported + 3, metric("chorus_otlp_spans_exported_total"))
  end)

  it("sends a full batch at once, the rest when the interval passes or it stops", function()
    local sent = {}
    local ex = otlp.new({ otlp_endpoint = "http://127.0.0.1:1", batch = 3, interval = 3600 }, {
      transport = function(o)
        sent[#sent + 1] = #core.json.decode(o.body).resourceSpans[1].scopeSpans[1].spans
        return 200, {}, "{}", 0
      end, log = function() end })
    core.run(nil, function()
      local loop = core.spawn(function() ex:run() end)
      ex:push({ span(1), span(2) })
      for _ = 1, 5 do core.sleep(0) end
      assert.are.same({}, sent) -- not a batch yet, and the interval is far
      ex:push({ span(3), span(4) })
      for _ = 1, 5 do core.sleep(0) end
      assert.are.same({ 3 }, sent)
      assert.are.equal(1, ex:queued())
      ex:stop()
      core.await(loop)
    end)
    assert.are.same({ 3, 1 }, sent)
    assert.is_true(ex.done)
  end)

  it("counts a span it cannot encode as failed, and queues the others", function()
    local sent
    local ex = otlp.new({ otlp_endpoint = "http://127.0.0.1:1" }, {
      transport = function(o)
        sent = #core.json.decode(o.body).resourceSpans[1].scopeSpans[1].spans
        return 200, {}, "{}", 0
      end, log = function() end })
    local failed = metric("chorus_otlp_spans_failed_total")
    local bad = span(1)
    bad.attrs.nan = 0 / 0
    ex:push({ bad, span(2) })
    assert.are.equal(failed + 1, metric("chorus_otlp_spans_failed_total"))
    assert.are.equal(1, ex:queued())
    core.run(nil, function() ex:flush() end)
    assert.are.equal(1, sent)
  end)

  it("counts a batch the receiver refuses as failed, and does not send it again", function()
    local calls, lines = 0, {}
    local ex = otlp.new({ otlp_endpoint = "http://127.0.0.1:1", batch = 10 }, {
      transport = function()
        calls = calls + 1
        return nil, "connect", "connection refused", 0
      end, log = function(level, msg) lines[#lines + 1] = level .. " " .. msg end })
    local failed = metric("chorus_otlp_spans_failed_total")
    ex:push({ span(1), span(2) })
    core.run(nil, function() ex:flush() end)
    ex:push({ span(3) })
    core.run(nil, function() ex:flush() end)
    assert.are.equal(2, calls)
    assert.are.equal(failed + 3, metric("chorus_otlp_spans_failed_total"))
    assert.are.same({ "warn the OTLP receiver did not take a batch of spans" }, lines) -- once, not per batch
  end)
end)

describe("the telemetry config", function()
  local config = require "chorus.config"

  local function load(text)
    local path = os.tmpname()
    local f = assert(io.open(path, "w"))
    f:write(text)
    f:close()
    local conf, err = config.load(path)
    os.remove(path)
    return conf, err
  end

  it("takes the endpoint and range-checked numbers", function()
    local conf, err = load([[return { telemetry = { otlp_endpoint = "http://127.0.0.1:4318", batch = 512,
      queue = 4096, interval = 2, service_name = "chorus" } }]])
    assert.is_nil(err)
    assert.are.equal(512, conf.telemetry.batch)
  end)

  it("refuses bad values, naming the key", function()
    for text, want in pairs({
      ["{ otlp_endpoint = 'ftp://x' }"] = "telemetry.otlp_endpoint must be the receiver's http(s) base URL",
      ["{ batch = 1 }"] = "telemetry.otlp_endpoint must be",
      ["{ otlp_endpoint = 'http://u:p@x:4318' }"] = "telemetry.otlp_endpoint must not carry user:password@",
      ["{ otlp_endpoint = 'http://x', batch = 0 }"] = "telemetry.batch must be between 1 and 100000, got 0",
      ["{ otlp_endpoint = 'http://x', batch = 1.5 }"] = "telemetry.batch must be an integer, got 1.5",
      ["{ otlp_endpoint = 'http://x', queue = 0/0 }"] = "telemetry.queue must be a number, got NaN",
      ["{ otlp_endpoint = 'http://x', interval = 0 }"] = "telemetry.interval must be between 0.01 and 3600, got 0",
      ["{ otlp_endpoint = 'http://x', batch = 10, queue = 5 }"] = "telemetry.batch (10) is above telemetry.queue (5)",
      ["{ otlp_endpoint = 'http://x', service_name = '' }"] = "telemetry.service_name must be a non-empty string",
      ["{ otlp_endpoint = 'http://x', color = 1 }"] = "unknown setting telemetry.color",
    }) do
      local conf, err = load("return { telemetry = " .. text .. " }")
      assert.is_nil(conf, text)
      assert.truthy(err:find(want, 1, true), text .. ": " .. tostring(err))
    end
  end)
end)
