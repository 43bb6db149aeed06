-- chorus.tracing: W3C trace context (traceparent, tracestate), what an
-- outbox entry keeps of it, and a run's spans, on the real C core.
local core = require "chorus.core"
local tracing = require "chorus.tracing"
local secrets = require "chorus.secrets"
local testing = require "chorus.testing"
local chorus = require "chorus"
local http = require "chorus.http"

local TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"

describe("tracing.parse (traceparent)", function()
  it("reads the trace, the parent span and the sampled flag", function()
    assert.are.same({ trace_id = TRACE, parent_id = "00f067aa0ba902b7", flags = "01" },
      tracing.parse("00-" .. TRACE .. "-00f067aa0ba902b7-01"))
    assert.are.equal("00", tracing.parse("00-" .. TRACE .. "-00f067aa0ba902b7-00").flags)
    -- flag bits other than sampled are not passed on
    assert.are.equal("01", tracing.parse("00-" .. TRACE .. "-00f067aa0ba902b7-03").flags)
    assert.are.equal("00", tracing.parse("00-" .. TRACE .. "-00f067aa0ba902b7-02").flags)
    -- upper-case hex is read as lower case
    assert.are.equal(TRACE, tracing.parse("00-" .. TRACE:upper() .. "-00F067AA0BA902B7-01").trace_id)
  end)

  it("reads a later version's first four fields", function()
    assert.are.equal(TRACE, tracing.parse("01-" .. TRACE .. "-00f067aa0ba902b7-01-future").trace_id)
  end)

  it("refuses malformed headers", function()
    for _, bad in ipairs({
      "", "garbage", "00-" .. TRACE .. "-00f067aa0ba902b7",              -- no flags
      "00-" .. ("0"):rep(32) .. "-00f067aa0ba902b7-01",                   -- zero trace
      "00-" .. TRACE .. "-0000000000000000-01",                           -- zero parent
      "00-" .. TRACE:sub(2) .. "-00f067aa0ba902b7-01",                    -- short trace
      "00-" .. TRACE .. "-00f067aa0ba902b-01",                            -- short parent
      "ff-" .. TRACE .. "-00f067aa0ba902b7-01",                           -- version ff
      "00-" .. TRACE .. "-00f067aa0ba902b7-01-extra",                     -- 00 has four fields
      "01-" .. TRACE .. "-00f067aa0ba902b7-01extra",
      "00-" .. TRACE:sub(1, 31) .. "g-00f067aa0ba902b7-01",
    }) do
      assert.is_nil(tracing.parse(bad), bad)
    end
    assert.is_nil(tracing.parse(nil))
  end)

  it("keeps a tracestate as it came, trimmed; refuses an empty, long or binary one", function()
    local state = "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"
    assert.are.equal(state, tracing.parse_state(" " .. state .. " "))
    assert.is_nil(tracing.parse_state(""))
    assert.is_nil(tracing.parse_state(("a=b,"):rep(200)))
    assert.is_nil(tracing.parse_state("a=b\1"))
    assert.is_nil(tracing.parse_state(nil))
  end)
end)

describe("a record's trace and span ids", function()
  it("are kept when they are lower-case hex of their length, else replaced by new ones", function()
    assert.are.equal(TRACE, tracing.valid_trace_id(TRACE))
    assert.are.equal("00f067aa0ba902b7", tracing.valid_span_id("00f067aa0ba902b7"))
    for _, bad in ipairs({ TRACE:upper(), TRACE:sub(2), TRACE .. "0", TRACE:sub(1, 31) .. "g",
      TRACE:sub(1, 31) .. "\0", ("0"):rep(32), "", 42, {}, true }) do
      local id = tracing.valid_trace_id(bad)
      assert.are_not.equal(bad, id)
      assert.truthy(id:find("^[0-9a-f]+$") and #id == 32)
    end
    for _, bad in ipairs({ "00F067AA0BA902B7", "00f067aa0ba902b", " 0f067aa0ba902b7", ("0"):rep(16), 7 }) do
      local id = tracing.valid_span_id(bad)
      assert.are_not.equal(bad, id)
      assert.truthy(id:find("^[0-9a-f]+$") and #id == 16)
    end
  end)
end)

describe("an outbox entry's trace context", function()
  it("is used only when well formed (it was read back from the data folder)", function()
    local good = { id = TRACE, parent = "00f067aa0ba902b7", flags = "00", state = "k=v" }
    assert.are.same(good, tracing.entry_trace({ trace = good }))
    assert.are.same({ id = TRACE, flags = "01" }, tracing.entry_trace({ trace = { id = TRACE, parent = 5,
      flags = {}, state = "\n" } }))
    assert.is_nil(tracing.entry_trace({ trace = { id = {} } }))
    assert.is_nil(tracing.entry_trace({ trace = "x" }))
    assert.is_nil(tracing.entry_trace({}))
  end)

  it("sends each delivery's span id, and no traceparent for a malformed one", function()
    local outbox = require "chorus.outbox"
    local seen = {}
    local function transport(o)
      seen[#seen + 1] = o.headers
      return 200, {}, "", 0
    end
    local backend = outbox.memory()
    for _, trace in ipairs({ { id = TRACE, parent = "00f067aa0ba902b7", state = "k=v" }, { id = { 1 } } }) do
      local e = outbox.new_entry("http", { request = { method = "POST", url = "http://127.0.0.1:9/x" }, trace = trace })
      backend:add(e)
      core.run(nil, function() outbox.deliver(backend, e, { transport = transport }, "aaaaaaaaaaaaaaaa") end)
    end
    assert.are.equal("00-" .. TRACE .. "-aaaaaaaaaaaaaaaa-01", seen[1].traceparent)
    assert.are.equal("k=v", seen[1].tracestate)
    assert.is_nil(seen[2].traceparent)
  end)
end)

describe("a run's spans", function()
  before_each(testing.reset)

  local function record(r, extra)
    local rec = { id = r.run_id, workflow = "spans", status = r.ok and "succeeded" or "failed", started = 1000,
      finished = 1000 + r.elapsed, trace_id = TRACE, span_id = "1111111111111111", parent_span_id = "2222222222222222",
      trace_flags = "01", tracestate = "k=v", timeline = r.timeline, request = {}, error = r.error }
    for k, v in pairs(extra or {}) do
      rec[k] = v
    end
    return rec
  end

  it("are the run's and one per effect, each a child of the run's; HTTP attempts keep the span they sent", function()
    testing.mock("api", { { status = 503 }, { status = 200 } })
    local r = testing.run(chorus.workflow { name = "spans", run = function(ctx)
      local s = http.upstream("api"):get("/x", { retry = { attempts = 2, base = 0.1 } }).status
      ctx.sleep(1)
      ctx.lock("acct", function() end)
      return s
    end })
    assert.is_true(r.ok, r.error and r.error.message)
    local spans = tracing.run_spans(record(r))
    assert.are.equal(5, #spans) -- run, 2 attempts, sleep, lock
    local run = spans[1]
    assert.are.same({ "1111111111111111", "2222222222222222", "spans", tracing.KIND.server, "k=v", "ok" },
      { run.span_id, run.parent_id, run.name, run.kind, run.trace_state, run.status })
    for i = 2, 5 do
      assert.are.equal(run.span_id, spans[i].parent_id)
      assert.are.equal(TRACE, spans[i].trace_id)
      assert.are.equal(16, #spans[i].span_id)
    end
    for i = 1, 2 do -- each attempt sent its own span id
      local sent = r.calls[i].headers.traceparent:match("^00%-%x+%-(%x+)%-01$")
      assert.are.equal(sent, spans[i + 1].span_id)
      assert.are.equal("GET", spans[i + 1].name)
    end
    assert.are_not.equal(spans[2].span_id, spans[3].span_id)
    assert.are.equal("error", spans[2].status) -- the 503
    assert.are.equal(503, spans[2].attrs["http.response.status_code"])
    assert.are.equal("sleep", spans[4].name)
    assert.are.equal(1, spans[4].finish - spans[4].start)
    assert.are.equal("lock acct", spans[5].name)
  end)

  it("are none when the trace is not sampled", function()
    local r = testing.run(chorus.workflow { name = "spans", run = function(ctx) ctx.sleep(1) end })
    assert.are.same({}, tracing.run_spans(record(r, { trace_flags = "00" })))
  end)

  it("show a failed run's error kind, and secrets only redacted", function()
    secrets.remember("sekret-in-url-99")
    testing.mock("api", { status = 200 })
    local r = testing.run(chorus.workflow { name = "spans", run = function()
      http.upstream("api"):get("/x?k=sekret-in-url-99")
      error({ kind = "boom", message = "it broke with sekret-in-url-99" })
    end })
    local spans = tracing.run_spans(record(r))
    assert.are.equal("error", spans[1].status)
    assert.are.equal("boom", spans[1].attrs["error.type"])
    assert.is_nil(spans[1].message:find("sekret", 1, true))
    assert.truthy(spans[2].attrs["url.full"]:find("k=[REDACTED]", 1, true))
  end)

  it("of a child call: the call's span id is the child's parent, made of the child's run id", function()
    assert.are.equal(tracing.call_span_id("abc"), tracing.call_span_id("abc"))
    assert.are_not.equal(tracing.call_span_id("abc"), tracing.call_span_id("abd"))
    local spans = tracing.run_spans({ id = "p", workflow = "p", status = "succeeded", started = 1, finished = 3,
      trace_id = TRACE, span_id = "1111111111111111", timeline = {
        { kind = "child", workflow = "c", run_id = "child-1", start = 1, duration = 1, status = "succeeded" } } })
    assert.are.equal("call c", spans[2].name)
    assert.are.equal(tracing.call_span_id("child-1"), spans[2].span_id)
  end)
end)
