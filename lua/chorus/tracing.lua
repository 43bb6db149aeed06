-- chorus.tracing — W3C trace context (traceparent, tracestate) and the
-- spans of a run.
--
-- A run belongs to a trace: the inbound request's (its traceparent) or a
-- new one. Its record keeps the trace id, the run's own span id, the parent
-- span id (the caller's span, the ctx.call effect of a parent run, or the
-- outbox delivery that started it), the sampled flag and the tracestate, so
-- a run resumed after a restart stays the same span of the same trace.
--
-- Each outbound HTTP attempt gets a span id of its own, sent as the parent
-- id in its traceparent and kept in its timeline entry (span_id); a ctx.call
-- effect's span id is made of the child's run id, so the child (which may be
-- resumed on its own after a restart) and its parent agree on it without
-- storing anything more. At the run's end, run_spans turns the record and
-- its timeline into spans: the run's, and one per effect, children of it.
-- Spans are plain tables (seconds since the epoch for times), encoded by
-- chorus.otlp.
local core = require "chorus.core"
local secrets = require "chorus.secrets"

local tracing = {}

local ZERO_TRACE, ZERO_SPAN = ("0"):rep(32), ("0"):rep(16)
local MAX_TRACESTATE = 512

--- A new random span id: 16 hex digits.
function tracing.span_id()
  return core.random_hex(8)
end

--- A new random trace id: 32 hex digits.
function tracing.trace_id()
  return core.random_hex(16)
end

--- The span id of the ctx.call effect that made child run child_id (the
--- child run's parent span), the same every time it is asked.
function tracing.call_span_id(child_id)
  return core.sha256(child_id .. "/call"):sub(1, 16)
end

-- (in C: each run checks two ids, and the anchored pattern over 32 digits
-- was most of a microsecond)
local is_hex = core.is_hex
local function hex_of(s, n, zero)
  return is_hex(s, n) and s ~= zero
end

--- The fields of an inbound traceparent header: trace_id, parent_id and
--- flags ("01" sampled, "00" not: the other flag bits are not passed on),
--- or nil when it is missing or malformed (the run then starts a trace).
--- Version 00 must have exactly four fields; a later version may have more
--- (read as 00); version ff is invalid.
function tracing.parse(header)
  if type(header) ~= "string" then
    return nil
  end
  local version, trace, parent, flags, rest = header:match("^(%x%x)%-(%x+)%-(%x+)%-(%x%x)(.*)$")
  if not version or version:lower() == "ff" or (version == "00" and rest ~= "")
      or (rest ~= "" and rest:sub(1, 1) ~= "-") then
    return nil
  end
  trace, parent = trace:lower(), parent:lower()
  if not hex_of(trace, 32, ZERO_TRACE) or not hex_of(parent, 16, ZERO_SPAN) then
    return nil
  end
  return { trace_id = trace, parent_id = parent, flags = (tonumber(flags, 16) & 1) == 1 and "01" or "00" }
end

--- An inbound tracestate header kept as it came (trimmed), or nil when it
--- is missing, empty, over 512 bytes or not printable ASCII.
function tracing.parse_state(value)
  if type(value) ~= "string" then
    return nil
  end
  value = value:match("^[ \t]*(.-)[ \t]*$")
  if value == "" or #value > MAX_TRACESTATE or value:find("[^\32-\126]") then
    return nil
  end
  return value
end

--- The trace context an outbox entry keeps (e.trace: { id, parent, flags,
--- state }, from the run that enqueued it), checked, since it was read
--- back from the data folder; nil when it has none or it is malformed.
function tracing.entry_trace(e)
  local t = type(e) == "table" and e.trace
  if type(t) ~= "table" or not hex_of(t.id, 32, ZERO_TRACE) then
    return nil
  end
  return { id = t.id, parent = hex_of(t.parent, 16, ZERO_SPAN) and t.parent or nil,
    flags = t.flags == "00" and "00" or "01", state = tracing.parse_state(t.state) }
end

--- A trace id as kept in a record: id when it is one, else a new one.
function tracing.valid_trace_id(id)
  return hex_of(id, 32, ZERO_TRACE) and id or tracing.trace_id()
end

--- A span id as kept in a record: id when it is one, else a new one.
function tracing.valid_span_id(id)
  return hex_of(id, 16, ZERO_SPAN) and id or tracing.span_id()
end

--- The traceparent header of span span_id in trace trace_id.
function tracing.header(trace_id, span_id, flags)
  return "00-" .. trace_id .. "-" .. span_id .. "-" .. (flags or "01")
end

--- Whether a trace's flags say it is sampled (spans are exported only
--- then, as a parent-based sampler does).
function tracing.sampled(flags)
  return flags ~= "00"
end

-- ---- a run's spans ------------------------------------------------------------

local KIND = { internal = 1, server = 2, client = 3 }
tracing.KIND = KIND

local function redacted(v)
  return type(v) == "string" and secrets.redact(v) or v
end

-- A span of rec's trace; id: its span id (nil: a new one).
local function new_span(rec, id, parent, name, kind, start, finish)
  return { trace_id = rec.trace_id, span_id = id or tracing.span_id(), parent_id = parent, name = name,
    kind = kind or KIND.internal, start = start, finish = math.max(finish or start, start),
    trace_state = rec.trace_state, attrs = {}, status = nil, message = nil, events = nil }
end

local function http_span(rec, parent, e)
  -- the id the attempt sent in its traceparent (kept in the journal)
  local id = hex_of(e.span_id, 16, ZERO_SPAN) and e.span_id or nil
  local s = new_span(rec, id, parent, e.method or "HTTP", KIND.client, e.start, e.start + (e.duration or 0))
  local a = s.attrs
  a["http.request.method"] = e.method
  a["url.full"] = redacted(e.url)
  a["chorus.upstream"] = e.target ~= e.url and redacted(e.target) or nil
  if math.type(e.status) == "integer" then
    a["http.response.status_code"] = e.status
    if e.status >= 500 then
      s.status = "error"
    end
  elseif e.status ~= nil then
    a["error.type"] = tostring(e.status)
    s.status = "error"
  end
  return s
end

local function entry_span(rec, parent, e)
  if e.method then -- an HTTP attempt (runstate.call_entry)
    return http_span(rec, parent, e)
  elseif e.step then -- ctx.step
    local s = new_span(rec, nil, parent, "step " .. tostring(e.step), KIND.internal, e.start,
      e.start + (e.duration or 0))
    s.status = e.status == "error" and "error" or nil
    return s
  elseif e.kind == "sleep" then
    local s = new_span(rec, nil, parent, "sleep", KIND.internal, e.start, e.start + (e.duration or 0))
    s.attrs["chorus.poll"] = e.poll
    return s
  elseif e.kind == "lock" and e.start then
    local s = new_span(rec, nil, parent, "lock " .. tostring(e.lock), KIND.internal, e.start,
      e.start + (e.waited or 0) + (e.held or 0))
    s.attrs["chorus.lock.waited_seconds"] = e.waited
    s.attrs["chorus.lock.held_seconds"] = e.held
    return s
  elseif e.kind == "event" then
    local s = new_span(rec, nil, parent, "event " .. tostring(e.event), KIND.internal, e.start,
      e.start + (e.waited or 0))
    s.attrs["chorus.event.key"] = redacted(e.key)
    s.attrs["chorus.event.outcome"] = e.outcome
    s.status = e.outcome == "timeout" and "error" or nil
    return s
  elseif e.kind == "child" then
    local s = new_span(rec, tracing.call_span_id(tostring(e.run_id)), parent, "call " .. tostring(e.workflow),
      KIND.internal, e.start, e.start + (e.duration or 0))
    s.attrs["chorus.child.run_id"] = e.run_id
    s.attrs["chorus.child.status"] = e.status
    s.status = e.status ~= "succeeded" and "error" or nil
    return s
  end
  return nil -- resumed marks become events of the run's span
end

--- The spans of a finished run (rec: its record, still a table, with its
--- timeline): the run's span first, then one per effect, each a child of
--- it. Nothing when the trace is not sampled.
function tracing.run_spans(rec)
  if not tracing.sampled(rec.trace_flags) or not hex_of(rec.span_id, 16, ZERO_SPAN)
      or not hex_of(rec.trace_id, 32, ZERO_TRACE) then -- none, or not one chorus made
    return {}
  end
  -- what the spans share, checked (a resumed run's record was read back from disk)
  local trace = { trace_id = rec.trace_id, trace_state = tracing.parse_state(rec.tracestate) }
  local parent = hex_of(rec.parent_span_id, 16, ZERO_SPAN) and rec.parent_span_id or nil
  local run = new_span(trace, rec.span_id, parent, tostring(rec.workflow),
    rec.request and KIND.server or KIND.internal, rec.started, rec.finished)
  local a = run.attrs
  a["chorus.run_id"] = rec.id
  a["chorus.workflow"] = rec.workflow
  a["chorus.status"] = rec.status
  a["chorus.parent_run_id"] = rec.parent
  a["chorus.outbox_id"] = rec.outbox and rec.outbox.id or nil
  if rec.status ~= "succeeded" then
    run.status = "error"
    local err = type(rec.error) == "table" and rec.error or nil
    a["error.type"] = err and redacted(err.kind) or rec.status
    run.message = err and redacted(type(err.message) == "string" and err.message or nil)
  else
    run.status = "ok"
  end
  local spans, events = { run }, {}
  for _, e in ipairs(rec.timeline or {}) do
    if type(e) == "table" and type(e.start) == "number" then
      spans[#spans + 1] = entry_span(trace, rec.span_id, e)
    elseif type(e) == "table" and e.kind == "resumed" and type(e.at) == "number" then
      events[#events + 1] = { name = "resumed", time = e.at, attrs = { ["chorus.replayed"] = e.replayed } }
    end
  end
  run.events = events[1] and events or nil
  -- an attempt's duration is curl's and the run's end the loop's clock:
  -- the run's span is stretched to hold its children
  for i = 2, #spans do
    run.finish = math.max(run.finish, spans[i].finish)
  end
  return spans
end

--- The span of one outbox delivery of entry e (its trace: e.trace, from
--- the run that enqueued it), started now; nil when e has no sampled trace.
--- finish it with tracing.finish.
function tracing.delivery_span(e, span_id)
  local t = tracing.entry_trace(e)
  if not t or not tracing.sampled(t.flags) then
    return nil
  end
  local target = e.workflow or (e.request and (e.request.upstream or e.request.url)) or e.name
  local s = { trace_id = t.id, span_id = span_id, parent_id = t.parent, trace_state = t.state,
    name = "outbox " .. tostring(e.kind) .. " " .. redacted(tostring(target)),
    kind = e.kind == "workflow" and KIND.internal or KIND.client, start = core.now(), finish = nil,
    attrs = { ["chorus.outbox_id"] = e.id, ["chorus.outbox.kind"] = e.kind,
      ["chorus.outbox.attempt"] = (e.attempts or 0) + 1, ["chorus.run_id"] = e.from_run } }
  if e.request then
    s.attrs["http.request.method"] = e.request.method
    s.attrs["url.full"] = redacted(e.request.url)
  end
  return s
end

--- Ends span s now with the delivery's outcome: "delivered", "started"
--- (a workflow entry's run ran), "retry", "dead", or "error" and why.
function tracing.finish(s, outcome, message)
  s.finish = math.max(core.now(), s.start)
  s.attrs["chorus.outbox.outcome"] = outcome
  s.status = (outcome == "delivered" or outcome == "started") and "ok" or "error"
  s.message = message and redacted(tostring(message)) or nil
  return s
end

return tracing
