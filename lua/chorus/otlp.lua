-- chorus.otlp — exports spans (chorus.tracing) to an OpenTelemetry
-- receiver over OTLP/HTTP with the JSON encoding: POST ENDPOINT/v1/traces,
-- Content-Type application/json, an ExportTraceServiceRequest in the OTLP
-- JSON mapping (trace and span ids as lowercase hex, times as decimal
-- strings of nanoseconds since the epoch, enums as integers).
--
-- Runs never wait for it: a run's end hands its spans to push(), which
-- puts them in a bounded queue (telemetry.queue spans) and returns; a
-- span that finds the queue full is dropped and counted
-- (chorus_otlp_spans_dropped_total). One background task (run()) takes
-- them out in batches of telemetry.batch, at least every telemetry.interval
-- seconds (at once when a batch is full), and sends each with chorus's own
-- HTTP client (core.http). A batch the receiver does not take (no answer, a
-- non-2xx) is counted in chorus_otlp_spans_failed_total and not sent again:
-- the queue must keep room for the spans that come meanwhile.
--
-- An exporter is made from the config's telemetry table by the server and
-- handed to the run service (env.telemetry) and the outbox relay; nothing
-- of it is module state.
local core = require "chorus.core"
local metrics = require "chorus.metrics"
local json = core.json
local floor = math.floor
local EMPTY = {}

local otlp = { defaults = { batch = 512, queue = 4096, interval = 2, service_name = "chorus" } }

local m = {
  exported = metrics.counter("chorus_otlp_spans_exported_total", "Spans the OTLP receiver accepted"),
  failed = metrics.counter("chorus_otlp_spans_failed_total",
    "Spans sent to the OTLP receiver that it did not accept (no answer or a non-2xx)"),
  dropped = metrics.counter("chorus_otlp_spans_dropped_total",
    "Spans dropped because the export queue was full"),
}

local SEND_CONNECT_TIMEOUT, SEND_TIMEOUT = 5, 10
local MAX_ANSWER = 1 << 20

local Exporter = {}
Exporter.__index = Exporter

--- An exporter for conf (the config's telemetry table: otlp_endpoint,
--- batch, queue, interval, service_name). opts: transport (core.http's
--- contract: one options table; default core.http), log (function(level,
--- msg, fields)).
function otlp.new(conf, opts)
  opts = opts or {}
  local d = otlp.defaults
  local endpoint = conf.otlp_endpoint:gsub("/+$", "")
  return setmetatable({
    url = endpoint .. "/v1/traces",
    batch = conf.batch or d.batch, limit = conf.queue or d.queue, interval = conf.interval or d.interval,
    -- the request up to its spans: the resource and the scope
    head_json = '{"resourceSpans":[{"resource":{"attributes":[{"key":"service.name","value":{"stringValue":'
      .. json.encode(conf.service_name or d.service_name) .. '}}]},"scopeSpans":[{"scope":{"name":"chorus"'
      .. (core.version and ',"version":' .. json.encode(core.version) or "") .. '},"spans":[',
    q = {}, head = 1, tail = 0, -- the queue: q[head..tail]
    transport = opts.transport or core.http, log = opts.log or require("chorus.log").event,
    stopped = false, waiting = nil, sending = false, failing = false,
  }, Exporter)
end

--- Spans waiting in the queue.
function Exporter:queued()
  return self.tail - self.head + 1
end

local span_json -- below

--- Queues spans (a list) for export without waiting; those that do not fit
--- are dropped and counted. Wakes the sender when a batch is ready. Each
--- span is queued as its JSON text: one string per span, where its tables
--- would live on in the queue until sent and be promoted to the collector's
--- old generation (freed only by major collections). A span JSON cannot
--- carry (a NaN) is counted failed.
function Exporter:push(spans)
  local room = self.limit - self:queued()
  local n = #spans
  local take = math.min(n, room)
  for i = 1, take do
    local ok, text = pcall(span_json, spans[i])
    if ok then
      self.tail = self.tail + 1
      self.q[self.tail] = text
    else
      m.failed.inc()
      self.log("error", "cannot encode a span", { span = tostring(spans[i].name), error = tostring(text) })
    end
  end
  if take < n then
    m.dropped.inc(nil, n - take)
  end
  if self.waiting and self:queued() >= self.batch then
    core.notify(self.waiting, true)
  end
end

-- Takes up to n spans from the front of the queue.
function Exporter:take(n)
  local out = {}
  for i = 1, math.min(n, self:queued()) do
    out[i] = self.q[self.head]
    self.q[self.head] = nil
    self.head = self.head + 1
  end
  if self.head > self.tail then -- empty: start the indices over
    self.head, self.tail = 1, 0
  end
  return out
end

-- ---- the OTLP JSON mapping --------------------------------------------------

-- Seconds since the epoch (a float kept to the microsecond) as an integer
-- of microseconds: its decimal digits and "000" are the nanoseconds the
-- JSON mapping wants, as a string.
local function nanos(t)
  return floor(t * 1e6 + 0.5)
end

-- The JSON text is written directly, a span at a time: building the OTLP
-- document as Lua tables for json.encode made each span a dozen tables and
-- cost as much again as the run's own end. Strings go through json.encode
-- (quoted and escaped); ids are hex already (chorus.tracing checks them).
local enc = json.encode
local concat = table.concat

-- Strings as JSON, remembered: attribute keys, span names, methods,
-- statuses and URLs come back run after run. The cache starts over when it
-- has grown to 4096 strings.
local quoted, n_quoted = {}, 0

local function q(v)
  local j = quoted[v]
  if not j then
    j = enc(v)
    if n_quoted >= 4096 then
      quoted, n_quoted = {}, 0
    end
    quoted[v] = j
    n_quoted = n_quoted + 1
  end
  return j
end

-- Appends an attribute list (',"attributes":[...]', in no particular
-- order) to buffer b after its n-th piece; returns the new count. Nothing
-- when attrs has none. A value JSON cannot carry (NaN) raises.
local function attributes(b, n, attrs)
  local first = true
  for k, v in pairs(attrs or EMPTY) do
    b[n + 1] = first and ',"attributes":[{"key":' or ',{"key":'
    b[n + 2] = q(k)
    first = false
    local t = math.type(v)
    if t == "integer" then
      b[n + 3], b[n + 4], b[n + 5] = ',"value":{"intValue":"', v, '"}}'
    elseif t == "float" then
      b[n + 3], b[n + 4], b[n + 5] = ',"value":{"doubleValue":', enc(v), "}}"
    elseif type(v) == "boolean" then
      b[n + 3], b[n + 4], b[n + 5] = ',"value":{"boolValue":', v and "true" or "false", "}}"
    else
      b[n + 3], b[n + 4], b[n + 5] = ',"value":{"stringValue":', q(tostring(v)), "}}"
    end
    n = n + 5
  end
  if not first then
    n = n + 1
    b[n] = "]"
  end
  return n
end

local STATUS = { ok = 1, error = 2 }

-- Appends span s as JSON to buffer b after its n-th piece; returns the new
-- count. Every piece is a constant, a remembered string or a number: the
-- batch is one table.concat.
local function encode_span(b, n, s)
  b[n + 1], b[n + 2], b[n + 3], b[n + 4] = '{"traceId":"', s.trace_id, '","spanId":"', s.span_id
  n = n + 4
  if s.parent_id then
    b[n + 1], b[n + 2] = '","parentSpanId":"', s.parent_id
    n = n + 2
  end
  b[n + 1] = '"'
  n = n + 1
  if s.trace_state then
    b[n + 1], b[n + 2] = ',"traceState":', q(s.trace_state)
    n = n + 2
  end
  b[n + 1], b[n + 2], b[n + 3], b[n + 4] = ',"name":', q(s.name), ',"kind":', math.tointeger(s.kind)
  b[n + 5], b[n + 6], b[n + 7], b[n + 8] = ',"startTimeUnixNano":"', nanos(s.start), '000","endTimeUnixNano":"',
    nanos(s.finish or s.start)
  b[n + 9] = '000"'
  n = attributes(b, n + 9, s.attrs)
  if s.events then
    for i, e in ipairs(s.events) do
      b[n + 1], b[n + 2], b[n + 3], b[n + 4] = i == 1 and ',"events":[{"timeUnixNano":"' or ',{"timeUnixNano":"',
        nanos(e.time), '000","name":', q(e.name)
      n = attributes(b, n + 4, e.attrs) + 1
      b[n] = "}"
    end
    n = n + 1
    b[n] = "]"
  end
  if s.status then
    b[n + 1], b[n + 2] = ',"status":{"code":', STATUS[s.status] or 0
    n = n + 2
    if s.message then
      b[n + 1], b[n + 2] = ',"message":', enc(s.message)
      n = n + 2
    end
    n = n + 1
    b[n] = "}"
  end
  n = n + 1
  b[n] = "}"
  return n
end

-- A span as JSON text.
function span_json(s)
  local b = {}
  return concat(b, "", 1, encode_span(b, 0, s))
end

-- The ExportTraceServiceRequest of spans queued as JSON texts.
function Exporter:body(texts)
  return self.head_json .. concat(texts, ",") .. "]}]}]}"
end

--- The ExportTraceServiceRequest of spans (span tables), as JSON text.
function Exporter:encode(spans)
  local texts = {}
  for i, s in ipairs(spans) do
    texts[i] = span_json(s)
  end
  return self:body(texts)
end

-- ---- sending ----------------------------------------------------------------

-- Sends one batch (spans as JSON texts); counts it exported or failed. A
-- failure is logged when the receiver starts failing and when it takes
-- batches again, not per batch.
function Exporter:send(spans)
  local status, a, b = self.transport({ method = "POST", url = self.url,
    headers = { ["Content-Type"] = "application/json" }, body = self:body(spans),
    connect_timeout = SEND_CONNECT_TIMEOUT, timeout = SEND_TIMEOUT, max_response_bytes = MAX_ANSWER })
  if status and status >= 200 and status < 300 then
    m.exported.inc(nil, #spans)
    if self.failing then
      self.failing = false
      self.log("info", "the OTLP receiver takes spans again", { url = self.url })
    end
    return true
  end
  m.failed.inc(nil, #spans)
  if not self.failing then
    self.failing = true
    self.log("warn", "the OTLP receiver did not take a batch of spans", { url = self.url, spans = #spans,
      status = status, error = not status and a or nil, message = not status and b or nil })
  end
  return false
end

--- Sends what is queued, a batch at a time, until the queue is empty.
function Exporter:flush()
  self:send_upto(self:queued())
end

-- Sends the first n queued spans, in batches.
function Exporter:send_upto(n)
  self.sending = true
  while n > 0 and self:queued() > 0 do
    local b = self:take(math.min(n, self.batch))
    n = n - #b
    self:send(b)
  end
  self.sending = false
end

--- The sender's loop (a background task). A full batch goes at once; what
--- is queued when an interval has passed since the last such look goes
--- then, full or not. Spans queued while a batch is on its way wait for
--- the next full batch or the next interval: sending whatever has come
--- meanwhile made a stream of small requests under load (and, with the
--- receiver down, a connection attempt every few spans). stop() sends what
--- is queued and ends the loop.
function Exporter:run()
  local runstate = require "chorus.runstate"
  local last = core.monotime()
  while true do
    local due = self.stopped or core.monotime() - last >= self.interval
    if self:queued() < self.batch and not due then
      self.waiting = core.wait_token()
      runstate.wait(self.waiting, self.interval - (core.monotime() - last))
      self.waiting = nil
      due = self.stopped or core.monotime() - last >= self.interval
    end
    local n = due and self:queued() or self.batch * (self:queued() // self.batch)
    local ok, err = pcall(self.send_upto, self, n) -- nothing a batch holds may end the loop
    if not ok then
      self.sending = false
      self.log("error", "the OTLP export failed", { error = tostring(err) })
    end
    if due then
      last = core.monotime()
    end
    if self.stopped and self:queued() == 0 then
      self.done = true
      return
    end
  end
end

--- Asks the loop to send what is queued and end (the server's drain).
function Exporter:stop()
  self.stopped = true
  if self.waiting then
    core.notify(self.waiting, true)
  end
end

return otlp
