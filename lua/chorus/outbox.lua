-- chorus.outbox — work a run hands over to be done after it, durably:
-- ctx.later(workflow, input), HTTP calls made with later = true, saga
-- compensations and commits, and run-end webhooks.
--
-- An entry is written in the same group commit as the run's journal entry
-- for it, so it exists exactly when the run reached that point. The relay
-- delivers due entries in due order, each in its own run: a workflow start
-- (a durable run whose id is the entry id, so its ctx.key values and hence
-- its outbound idempotency keys are the same on every attempt), an HTTP
-- request (sent with the entry's Idempotency-Key), or a chain of HTTP
-- requests delivered one after the other (saga compensations, in order).
-- A failed delivery is retried with backoff, its attempts and next due time
-- persisted; permanent failures (4xx other than 408, 425, 429) and
-- exhausted attempts move the entry to the DLQ with the last error.
--
-- Two backends hold entries: the data folder (chorus.outbox_durable) when
-- there is one, else memory (chorus.outbox_memory); the relay
-- (chorus.outbox_relay) delivers them; chorus.deliveries keeps what became
-- of each entry for its run's record.
--
-- Isolation: each entry belongs to a lane, the workflow whose run enqueued
-- it (e.owner; "" for entries made outside a run). Both backends hand out
-- due entries round-robin across lanes, so one workflow's backlog delays
-- another's due entry by at most one delivery per lane, and a workflow has
-- at most limits.outbox_pending_per_workflow entries pending: past it the
-- enqueue stops its run with { kind = "outbox_full" }.
local core = require "chorus.core"
local errors = require "chorus.errors"
local journal = require "chorus.journal"
local metrics = require "chorus.metrics"
local runstate = require "chorus.runstate"

local outbox = {}

-- Pending entries a workflow may have (config limits.outbox_pending_per_workflow;
-- 0: no cap). Only the memory cap bounded them: one run enqueued 20,000
-- and every other workflow's deliveries queued behind them.
outbox.pending_cap = 10000

-- The most bytes (as JSON) of an entry's last_error: beyond, its kind and
-- the start of its message (errors.brief).
outbox.LAST_ERROR_BYTES = 4096

outbox.defaults = { attempts = 8, base = 1, cap = 300, concurrency = 64, poll = 0.1 }

local m = {
  delivered = metrics.counter("chorus_outbox_delivered_total", "Outbox entries delivered", { "kind" }),
  retried = metrics.counter("chorus_outbox_retries_total", "Outbox deliveries that failed and will retry",
    { "kind" }),
  dead = metrics.counter("chorus_outbox_dead_total", "Outbox entries moved to the DLQ", { "kind" }),
}

--- The outbox of a data folder (a chorus.store).
outbox.durable = require("chorus.outbox_durable").new
--- An outbox in memory (see chorus.outbox_memory).
outbox.memory = require("chorus.outbox_memory").new

-- The backend entries go to when a run has no journal; chorus run and
-- chorus.testing set it.
outbox.backend = outbox.memory(true)

-- ---- enqueueing ---------------------------------------------------------

local seq = 0

-- A new entry: kind "workflow" | "http" | "chain"; opts: delay, attempts,
-- base, cap (seconds).
local function new_entry(kind, fields, opts)
  opts = opts or {}
  seq = seq + 1
  local now = core.now()
  local e = { id = core.uuid7(), kind = kind, due = now + (opts.delay or 0), created = now,
    attempts = 0, max_attempts = opts.attempts or outbox.defaults.attempts,
    base = opts.base or outbox.defaults.base, cap = opts.cap or outbox.defaults.cap, seq = seq }
  for k, v in pairs(fields) do
    e[k] = v
  end
  local run = runstate.current()
  if run then
    e.from_run = run.run_id
    e.owner = e.owner or run.workflow -- its lane (see the top of this file)
    e.redact = run.redact -- listings mask these fields; delivery uses the real ones
    -- the trace crosses the outbox: each delivery is a span under the run's
    -- (chorus.tracing), and what it sends or starts is under the delivery
    e.trace = e.trace or { id = run.trace_id, parent = run.span_id, flags = run.trace_flags,
      state = run.tracestate }
  end
  return e
end
outbox.new_entry = new_entry

--- The lane of entry e: the workflow whose run enqueued it ("" when none).
function outbox.lane(e)
  return e.owner or ""
end

-- Stops the current run with { kind = "outbox_full" } when its workflow
-- has outbox.pending_cap entries pending in backend. A limit, like the
-- memory cap: the run ends failed whatever the script catches.
local function check_cap(backend, e, who)
  local st = backend.st -- a data folder: the workflow's share of it (storage.workflow_share_mb)
  if e.owner and st and st.share and st:over_share(e.owner) then
    error(runstate.stop(journal.over_share(st, e.owner, who .. "'s outbox entry")), 0)
  end
  local cap = outbox.pending_cap
  if not e.owner or cap == 0 or backend:pending(e.owner) < cap then
    return
  end
  error(runstate.stop(errors.new("outbox_full", ("%s: workflow '%s' has %d outbox entries pending, the most "
    .. "limits.outbox_pending_per_workflow allows; they must be delivered before it enqueues more")
    :format(who, e.owner, cap))), 0)
end

-- Writes e where the current run keeps its state, journaled so a replay
-- does not enqueue it twice. Returns the entry id. who: the API that asked.
local function enqueue(e, target, who)
  return journal.effect("later", target, function()
    local run = runstate.current()
    local j = run and run.journal
    local backend
    if run and run.env and run.env.backend then -- the run service's outbox (chorus.runs)
      backend = run.env.backend
    elseif j and j.store.put_outbox then -- a data folder
      backend = outbox.durable(j.store)
    else
      backend = outbox.backend
    end
    check_cap(backend, e, who)
    backend:add(e)
    if run then
      run.outbox = run.outbox or {}
      run.outbox[#run.outbox + 1] = e
    end
    return e.id
  end)
end

local LATER_OPTS = { delay = true, attempts = true, base = true, cap = true }

--- The most seconds delay, base and cap may be (100 years): an entry's due
--- time is a key of the data folder, in milliseconds. A base of 1e308 was
--- taken, and the due time of the entry's first retry could not be made
--- into one: the relay failed to settle it after the run, and it stayed.
outbox.MAX_SECONDS = 100 * 365 * 86400

-- Returns a copy of the options made of what was checked: the entry keeps
-- the numbers the relay compares after the run, outside it. Read raw, as
-- checked: opts' __pairs showed nothing while its __index handed the entry
-- a table whose __lt looped in the relay (the memory outbox keeps the
-- entry's values as they are) and held the server for good; and saga:abort
-- and commit pass a policy the script could replace after saga.new checked it.
local function check_opts(who, opts)
  if opts == nil then
    return {}
  end
  if type(opts) ~= "table" then
    error(("%s: opts must be a table { delay =, attempts =, base =, cap = }"):format(who), 3)
  end
  local out = {}
  for k, v in next, opts do
    if not LATER_OPTS[k] then
      error(("%s: unknown option '%s' (known: delay, attempts, base, cap)"):format(who, tostring(k)), 3)
    end
    if type(v) ~= "number" or v < 0 or v ~= v or (k == "attempts" and (math.type(v) ~= "integer" or v < 1))
      or (k ~= "attempts" and v > outbox.MAX_SECONDS) then
      error(("%s: option '%s' must be a %s"):format(who, k,
        k == "attempts" and "positive integer" or "number of seconds from 0 to 100 years"), 3)
    end
    out[k] = v
  end
  return out
end

--- ctx.later: a workflow start after this run. Returns the entry id.
function outbox.later(workflow, input, opts)
  if type(workflow) ~= "string" or workflow == "" then
    error("ctx.later(workflow, input, opts): workflow must be a workflow name", 2)
  end
  opts = check_opts("ctx.later", opts)
  local run = runstate.current()
  local svc = run and run.env and run.env.service
  if svc then
    svc:check_start(run.workflow, workflow, "ctx.later")
  end
  -- a copy as JSON: the durable outbox stores it so, the in-memory one
  -- (storage.durable = false) kept the caller's table for the other run
  if input ~= nil then
    input = errors.json_copy(input, "ctx.later", 2)
  end
  return enqueue(new_entry("workflow", { workflow = workflow, input = input }, opts), workflow, "ctx.later")
end

--- An HTTP request (prepared by chorus.http: method, url, headers, body)
--- sent after this run. Returns the entry id.
function outbox.request(req, opts)
  opts = check_opts("later", opts)
  local e = new_entry("http", { request = { method = req.method, url = req.url, headers = req.headers,
    body = req.body, timeout = req.timeout, upstream = req.path and req.upstream, path = req.path },
    upstream = req.upstream }, opts)
  return enqueue(e, req.method .. " " .. req.url, "later")
end

--- A chain of HTTP requests delivered in order (saga compensations).
function outbox.chain(name, requests, opts)
  opts = check_opts("saga", opts) -- the saga's policy: the script may have replaced it since saga.new
  local e = new_entry("chain", { name = name, steps = requests, next = 1 }, opts)
  return enqueue(e, "chain " .. name, "saga")
end

-- ---- delivery -----------------------------------------------------------


-- Classifies an HTTP outcome: nil when delivered, else a failure.
local function http_failure(status, headers, body)
  if not status then -- an address the egress policy refuses will not change: no retry
    return { error = { kind = headers, message = body }, permanent = headers == "egress_denied" }
  end
  if status < 400 then
    return nil
  end
  local f = { error = { kind = "http", status = status, message = ("HTTP %d"):format(status),
    body = #body <= 512 and body or body:sub(1, 512) } }
  f.permanent = not core.retryable_status(status) -- a 4xx other than 408, 425, 429
  local ra = headers["retry-after"]
  if ra then
    f.retry_after = core.retry_after(ra, core.now())
  end
  return f
end

-- trace: the entry's trace context ({ id, flags, state }); span_id: the
-- delivery's span, the parent id the receiver sees in traceparent.
local function send(req, key, transport, trace, span_id)
  local headers = {}
  for k, v in pairs(req.headers or {}) do
    headers[k] = v
  end
  if not headers["Idempotency-Key"] then
    headers["Idempotency-Key"] = key
  end
  if trace and trace.id and not headers.traceparent then
    headers.traceparent = "00-" .. trace.id .. "-" .. span_id .. "-" .. (trace.flags or "01")
    if trace.state and not headers.tracestate then
      headers.tracestate = trace.state
    end
  end
  local http = require "chorus.http"
  -- a call to a named upstream goes where the config points now (a fixed
  -- base_url applies to queued and replayed entries too); url is the
  -- address at queueing, used when the upstream is gone
  local url = req.upstream and req.path and http.resolve(req.upstream, req.path) or req.url
  -- restricted: the URL came from a request (callback_url), so the egress
  -- policy refuses non-public addresses
  local status, h, body = (transport or http.transport())({ method = req.method, url = url, headers = headers,
    body = req.body, connect_timeout = 10, timeout = req.timeout or 30, restricted = req.restricted == true })
  return http_failure(status, h, body)
end

-- The retry engine's equal jitter (runtime/retry.c): between half and all of
-- min(cap, base * 2^(attempts-1)), so entries failing together spread out.
-- A base above cap waits cap, as min(cap, ...) says. A Retry-After is
-- honoured whole: a delivery after the run can afford the wait.
local function backoff(e, failure)
  local wait = core.retry_delay({ backoff = "equal_jitter", base = math.min(e.base, e.cap), cap = e.cap },
    e.attempts, 0, math.random(1, 0x7fffffff))
  if failure and failure.retry_after then
    wait = math.max(wait, failure.retry_after)
  end
  return wait
end

-- Where the outbox's own lines go when its backend has no log_sink of
-- its own (a backend's log_sink: chorus.testing collects them there).
outbox.log_sink = nil

function outbox.log(backend, level, msg, fields)
  return require("chorus.log").event(level, msg, fields, backend and backend.log_sink or outbox.log_sink)
end

-- settle's work: "delivered", "retry" or "dead".
local function settle_entry(backend, e, failure)
  if not failure then
    backend:remove(e)
    m.delivered.inc({ e.kind })
    return "delivered"
  end
  e.attempts = e.attempts + 1
  -- (brief: the entry is written again at each attempt, and the DLQ line
  -- shows it)
  e.last_error = errors.brief(errors.normalize(failure.error), outbox.LAST_ERROR_BYTES)
  e.state = nil
  if failure.permanent or e.attempts >= e.max_attempts then
    e.failed_at = core.now()
    backend:bury(e)
    m.dead.inc({ e.kind })
    outbox.log(backend, "error", "outbox entry moved to the DLQ", { id = e.id, kind = e.kind, attempts = e.attempts,
      target = e.workflow or (e.request and e.request.url) or e.name, error = e.last_error })
    return "dead"
  end
  local old_due = e.due
  e.due = core.now() + backoff(e, failure)
  backend:move(old_due, e)
  m.retried.inc({ e.kind })
  return "retry"
end

--- Records the outcome of one delivery of e: removed when delivered,
--- rescheduled when it may retry, else moved to the DLQ. Returns
--- "delivered", "retry" or "dead", and updates the entry's delivery row.
--- The caller commits.
function outbox.settle(backend, e, failure)
  local outcome = settle_entry(backend, e, failure)
  if backend.track then
    backend:track(e, outcome == "retry" and "pending" or outcome)
  end
  return outcome
end

-- Delivers e once (inside its own run). opts: the relay's start_workflow
-- (starts a workflow entry's run: "started" when the run settles e itself,
-- "deferred" when the server has no room for a run now, else ok, err; a run
-- service's, chorus.runs) and transport. span_id: the delivery's span
-- (chorus.tracing; a new one when nil). Returns the outcome: "delivered",
-- "retry", "dead", "started" or "deferred" (e untouched: due as it was).
local function deliver(backend, e, opts, span_id)
  opts = opts or {}
  span_id = span_id or core.random_hex(8)
  local trace = require("chorus.tracing").entry_trace(e)
  local outcome
  if e.kind == "http" then
    outcome = outbox.settle(backend, e, send(e.request, e.id, opts.transport, trace, span_id))
  elseif e.kind == "chain" then
    while e.next <= #e.steps do
      local failure = send(e.steps[e.next], e.id .. ":" .. e.next, opts.transport, trace, span_id)
      if failure then
        outcome = outbox.settle(backend, e, failure)
        backend:commit()
        return outcome
      end
      e.next = e.next + 1
      if e.next <= #e.steps then
        backend:update(e)
      end
    end
    outcome = outbox.settle(backend, e, nil)
  elseif e.kind == "workflow" then
    if not opts.start_workflow then
      outcome = outbox.settle(backend, e, { permanent = true, error = { kind = "unknown_workflow",
        message = "no workflow runner in this process" } })
    else
      local ok, err = opts.start_workflow(backend, e, span_id)
      if ok == "started" or ok == "deferred" then -- deferred: no room for a run now; still pending, no attempt
        return ok
      end
      outcome = outbox.settle(backend, e, not ok and err or nil)
    end
  else
    outcome = outbox.settle(backend, e, { permanent = true, error = { kind = "bad_entry",
      message = "unknown outbox entry kind " .. tostring(e.kind) } })
  end
  backend:commit()
  return outcome
end
outbox.deliver = deliver

--- A relay over backend (chorus.outbox_relay).
function outbox.relay(backend, opts)
  return require("chorus.outbox_relay").new(backend, opts)
end

--- Delivers everything in a memory outbox now and as it comes due, until it
--- is empty (chorus.outbox_relay).
function outbox.drain(backend, opts)
  return require("chorus.outbox_relay").drain(backend, opts)
end

return outbox
