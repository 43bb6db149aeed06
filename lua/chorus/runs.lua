-- chorus.runs — the run service: the one place where runs start, journal,
-- resume, get recorded and finish. `chorus serve` (request runs, outbox
-- workflow entries, runs resumed after a restart, redrives), `chorus run`
-- and chorus.testing all go through a service, so a workflow behaves the
-- same under each, and testing's simulated crash replays through exactly
-- the path a restarted server takes (Service:recover).
--
-- A service is made over an environment, handed down to every run it
-- starts (runner.execute puts it on the run's state), instead of module
-- fields each caller swaps:
--   store      chorus.store of the data folder, store.memory(), or nil
--              (nothing durable: no journal, no record kept on disk)
--   backend    the outbox the runs' later calls, chains and webhooks go to
--   config     the server's config (webhook_secret); {} when none
--   log        function(level, msg, fields) for the service's own lines
--   log_sink   where ctx.log lines go (nil: the process log)
--   transport  the outbound HTTP function (nil: core.http)
--   workflow   function(name) → entry, for outbox workflow entries
--   respond    function(rec, ok, value) → the HTTP response a run's
--              idempotency key stores (the server's)
--   limits     { instructions =, cpu_ms =, memory = } for each run (nil: the defaults)
--   crash_after  chorus.testing: the process "dies" after that many effects
--   on_state   function(rec, state) when a run's state is made (testing)
--   unknown_upstream_hint  function(name) → how to declare that upstream
--   telemetry  chorus.otlp exporter the spans of each finished run go to (nil: none)
-- The clock and the default run limits stay process-wide (core.set_clock,
-- core.set_limits): the C scheduler owns them.
--
-- A record is a table while its run runs (service.running); when it ends its
-- JSON text goes to the ring of finished ones and, with a store, to disk.
local config = require "chorus.config"
local core = require "chorus.core"
local context = require "chorus.context"
local errors = require "chorus.errors"
local idempotency = require "chorus.idempotency"
local journal = require "chorus.journal"
local metrics = require "chorus.metrics"
local outbox = require "chorus.outbox"
local redact = require "chorus.redact"
local runner = require "chorus.runner"
local runstate = require "chorus.runstate"
local script = require "chorus.script"
local secrets = require "chorus.secrets"
local tracing = require "chorus.tracing"
local webhook = require "chorus.webhook"
local json = core.json
local release = core.release

-- The finished records kept in memory: the last MAX_RECORDS, at most
-- MAX_RECORD_BYTES of JSON (a record holds what its run returned, up to its
-- memory cap); older ones are read from the store. Each workflow holds at
-- most its share of them (limits.records_kept_per_workflow and
-- limits.records_kept_bytes_per_workflow, by config.share's rule: half by
-- default), in the count of the workflow its runs are charged to.
local runs = { MAX_RECORDS = 10000, MAX_RECORD_BYTES = 64 * 1024 * 1024,
  MAX_INFLIGHT_RUNS = 10000, -- limits.max_inflight_runs' default
  RUN_RECORD_BYTES = 8 * 1024 * 1024 } -- limits.run_record_bytes' default
local EMPTY = {} -- read-only

--- The caps on runs in flight of config limits: the server's
--- (limits.max_inflight_runs) and one workflow's share of it
--- (limits.inflight_runs_per_workflow, by config.share's rule: half the
--- server's by default), or nil when a workflow has no cap of its own.
function runs.caps(limits)
  limits = limits or EMPTY
  local max = limits.max_inflight_runs or runs.MAX_INFLIGHT_RUNS
  return max, config.share(max, limits.inflight_runs_per_workflow)
end

local m = {
  runs = metrics.counter("chorus_runs_total", "Workflow runs by outcome", { "workflow", "outcome" }),
  -- runs last from milliseconds to hours (a wait for an event, a long poll)
  duration = metrics.histogram("chorus_run_duration_seconds", "Workflow run duration", { "workflow" },
    { 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 4 * 3600, 24 * 3600 }),
}

-- The series keys of those metrics, by workflow then by status (1: the
-- workflow alone), looked up once rather than a label table per run.
local keys = { [m.runs] = {}, [m.duration] = {} }
local function series_key(metric, workflow, status)
  workflow, status = workflow or "", status or ""
  local by = keys[metric][workflow]
  if not by then
    by = {}
    keys[metric][workflow] = by
  end
  local key = by[status]
  if not key then
    key = metric.key(status == 1 and { workflow } or { workflow, status })
    by[status] = key
  end
  return key
end

local Service = {}
Service.__index = Service

local default_log = require("chorus.log").event

--- A run service over env (see the top of this file).
function runs.service(env)
  env = env or {}
  env.config = env.config or {}
  env.log = env.log or default_log
  env.backend = env.backend or (env.store and not env.store.memory and outbox.durable(env.store))
    or outbox.memory(true)
  local max_inflight, share = runs.caps(env.config.limits)
  local limits = env.config.limits or EMPTY
  local max_records = env.max_records or runs.MAX_RECORDS
  local max_bytes = env.max_record_bytes or runs.MAX_RECORD_BYTES
  local svc = setmetatable({
    env = env, store = env.store, backend = env.backend,
    running = {},  -- run id → record of each run in flight
    -- the last finished, as JSON, each workflow within its share (Service:keep)
    finished = core.record_ring(max_records, max_bytes,
      config.share(max_records, limits.records_kept_per_workflow) or 0,
      config.share(max_bytes, limits.records_kept_bytes_per_workflow) or 0),
    inflight = 0,  -- runs executing now (the gauge and load shedding read it)
    -- runs executing now by the workflow they are charged to (Service:charge):
    -- what limits.inflight_runs_per_workflow caps
    charged = {},
    max_inflight = max_inflight, share = share, -- runs.caps of the config's limits
    -- script hash → workflow, for runs resumed on old code; weak: a version
    -- no script set serves and no run runs any more is collected (with a
    -- store it is compiled again from the stored source when a resumed run
    -- or a redrive needs it), and with it what its top level kept: a
    -- reload left every old version, and all it held, in memory for good
    versions = setmetatable({}, { __mode = "v" }),
    stored = {}, -- script hashes whose source this service has put in the store
    waiters = {},  -- run id → wait tokens of the parents waiting for it (ctx.call)
    states = setmetatable({}, { __mode = "k" }), -- record → its run's state while it runs
    -- record → true while its first records wait (Service:begin)
    unwritten = setmetatable({}, { __mode = "k" }),
    run_opts = { id = nil, instructions = nil, cpu_ms = nil, memory = nil, account = nil }, -- (Service:execute)
  }, Service)
  env.service = svc -- ctx.call starts its child runs here (chorus.children)
  return svc
end

-- ---- records ------------------------------------------------------------------

function Service:remember(rec)
  self.running[rec.id] = rec
  return rec
end

--- A new run's record (in flight). opts: deadline_at, callback_url,
--- request (ctx.request's facts), outbox (the entry that started it), attempt,
--- and its trace context (chorus.tracing): parent_span_id (the caller's
--- span), trace_flags ("01" sampled, the default, or "00"), tracestate.
--- The run's own span id is made here and kept with the record.
function Service:new_record(id, name, trace_id, opts)
  opts = opts or {}
  -- the nil fields only size the table for what the run's end adds: no rehash
  return self:remember({ id = id, workflow = name, status = "running", started = runstate.micro(core.now()),
    trace_id = trace_id or tracing.trace_id(), span_id = tracing.span_id(), parent_span_id = opts.parent_span_id,
    trace_flags = opts.trace_flags or "01", tracestate = opts.tracestate, timeline = {}, deadline_at = opts.deadline_at,
    callback_url = opts.callback_url, request = opts.request, outbox = opts.outbox, attempt = opts.attempt,
    parent = opts.parent, -- the run whose ctx.call started this one
    finished = nil, duration = nil, result = nil, error = nil })
end

-- What a record shows of the run's data: masked by its workflow's redact
-- paths (chorus.redact) wherever the record is shown or kept finished.
local RECORD_DATA = { "input", "result", "error", "on_timeout", "on_cancel" }

-- The most bytes of a failed run's error (as JSON) and of its traceback in
-- its "run failed" line: the record keeps them whole (errors.brief).
local LOG_ERROR_BYTES = 4096

-- The frame of a record whose other fields cannot be kept.
local function record_frame(rec)
  return json.encode({ id = rec.id, workflow = rec.workflow, status = rec.status, started = rec.started,
    finished = rec.finished, duration = rec.duration, trace_id = rec.trace_id, span_id = rec.span_id,
    script_hash = rec.script_hash, error = rec.error, timeline_dropped = rec.timeline_dropped,
    record_dropped = rec.record_dropped })
end

--- Keeps finished record rec's text in memory (rec leaves the runs in
--- flight), in the share of the workflow its run is charged to (a child
--- run's caller's, Service:charge; s: its run's state, when it has one), so
--- one workflow's records push out only its own. A text past that share
--- is not kept: read from the store, or without one kept as the record's
--- frame, saying so.
function Service:keep(rec, text, s)
  local owner = s and s.charged_to or rec.parent and self:charge(rec) or rec.workflow
  self.running[rec.id] = nil
  local ring = self.finished
  if not ring:put(rec.id, text, rec.workflow, rec.status, owner) and not self.store then
    rec.record_dropped = ("its record (%d bytes) is larger than its workflow's share of the records kept in "
      .. "memory (limits.records_kept_bytes_per_workflow): only this frame is kept; give the server a data "
      .. "folder, return less or raise the limit"):format(#text)
    ring:put(rec.id, secrets.redact(record_frame(rec)), rec.workflow, rec.status, owner)
    rec.record_dropped = nil
  end
end

--- A run record as the JSON GET /runs/ID returns, secrets redacted. A
--- result or error JSON cannot carry is replaced in the record by an error
--- saying so (the record, and the webhook made of it, must stay readable).
function runs.record_text(rec)
  rec = redact.fields(rec, rec.redact, RECORD_DATA)
  local eok, text = pcall(json.encode, rec)
  if not eok then -- keep what JSON can carry
    local kind = rec.error and type(rec.error.kind) == "string" and rec.error.kind or "result"
    rec.result = nil
    rec.error = { kind = kind, message = ("the run's %s is not JSON: %s"):format(
      rec.status == "succeeded" and "result" or "error", tostring(text)) }
    eok, text = pcall(json.encode, rec)
    if not eok then -- e.g. a timeline entry: the record's frame alone
      text = record_frame(rec)
    end
  end
  return secrets.redact(text)
end

--- The record of run id: the live table, or the JSON text of a finished
--- one (memory, then the store). Raises when the stored record is corrupt.
function Service:lookup(id)
  local rec = self.running[id] or self.finished:get(id)
  if not rec and self.store then
    rec = self.store:get_run_text(id)
  end
  return rec
end

--- The workflow and status of run id, for who decides by them alone (GET
--- and DELETE /runs/ID: which credentials may read or cancel it) without
--- decoding its record, which may be megabytes: the live record's, the
--- finished record's index row, the ones kept with its text in memory
--- (a server without a data folder: decoded there, a record near the
--- record cap failed under the request handler's memory cap), else its
--- record decoded (a folder whose index is not built yet). A finished
--- record in memory whose end is still on its way to the disk counts as
--- finished. nil when there is no such run; raises when the stored record
--- is corrupt.
function Service:facts(id)
  local rec = self.running[id]
  if rec then
    return rec.workflow, rec.status
  end
  local workflow, status = self.finished:facts(id)
  local summary = self.store and self.store:run_summary(id)
  if summary and type(summary.workflow) == "string" then
    -- (its row says running until the end's commit lands)
    return summary.workflow, workflow and summary.status == "running" and "finished" or summary.status
  end
  if workflow then
    return workflow, status
  end
  local text = self.store and self.store:get_run_text(id)
  if not text then
    return nil
  end
  local ok, decoded = pcall(json.decode, text)
  if not ok or type(decoded) ~= "table" then
    error(("store: corrupt record in database runs, key '%s': not JSON"):format(id), 0)
  end
  return decoded.workflow, decoded.status
end

-- A failed run keeps its journal for a redrive (POST /admin/runs/ID/redrive);
-- one the outbox started does not: the outbox retries it under the same id
-- with a fresh journal, and its DLQ entry is how it runs again.
local function redrivable(rec)
  return rec.status == "failed" and not rec.outbox and rec.input ~= nil
end

-- Ends rec in memory: status, result or error, metrics; returns its text,
-- whether the record cap replaced its outcome (record_too_large), and
-- whether the run wrote journal entries (false: none, nothing to delete;
-- chorus.journal holds a quiet effect's entry back).
function Service:finish_record(rec, ok, value, info)
  rec.finished = runstate.micro(core.now())
  rec.duration = runstate.micro(rec.finished - rec.started)
  local s = self.states[rec]
  -- a run whose saga rolled back reports it, whatever it returned
  local compensated = s and s.compensated
  -- a timed-out run's on_timeout outcome { ok =, value | error } (chorus.runner)
  rec.on_timeout = not ok and s and s.on_timeout or nil
  -- a cancelled run's on_cancel outcome, the same way
  rec.on_cancel = not ok and s and s.on_cancel or nil
  local cancelled = not ok and s and s.cancelled
  -- (its deadline stopped it: a deadline error the script raised or let
  -- through from a child is an ordinary failure; without a state, as the
  -- error says)
  local timed_out = not ok and (s == nil or s.timed_out)
  self.states[rec] = nil
  if ok then
    rec.status = compensated and "compensated" or "succeeded"
    rec.result = value
  else
    local err = errors.normalize(value)
    rec.status = timed_out and err.kind == "deadline" and "timed_out"
      or cancelled and err.kind == "cancelled" and "cancelled" or compensated and "compensated" or "failed"
    rec.error = err
    self.env.log("error", "run failed", { run_id = rec.id, workflow = rec.workflow, trace_id = rec.trace_id,
      error = errors.brief(redact.value(err, rec.redact), LOG_ERROR_BYTES),
      traceback = errors.cut(info and info.traceback, LOG_ERROR_BYTES) })
  end
  -- A finished record never changes: keep it as its JSON text, outside the
  -- Lua heap (kept as Lua values, ten thousand records became old objects
  -- freed only by major collections, each marking and sweeping them all:
  -- the serve benchmark's p99).
  local text = runs.record_text(rec)
  local cap = self.store and self:record_cap() or 0
  local wrote = s and journal.settle(s, redrivable(rec))
  local journaled = s and s.journal and s.journal.bytes or 0
  local replaced = cap > 0 and #text + journaled > cap
  if replaced then
    text = self:record_too_large(rec, cap, #text + journaled)
  end
  m.runs.inc_key(series_key(m.runs, rec.workflow, rec.status))
  m.duration.observe_key(series_key(m.duration, rec.workflow, 1), rec.duration)
  self:keep(rec, text, s)
  return text, replaced, wrote
end

--- limits.run_record_bytes: the most one run may write to the data folder
--- (its journal, result and timeline); 0: no cap.
function Service:record_cap()
  local limits = self.env.config.limits or EMPTY
  return limits.run_record_bytes or runs.RUN_RECORD_BYTES
end

-- A finished record over the cap (size: its record and journal together)
-- ends failed with { kind = "record_too_large" }: its result goes, then its
-- timeline, until it fits; its text.
function Service:record_too_large(rec, cap, size)
  local status, err = rec.status, rec.error
  rec.status, rec.result = "failed", nil
  if not (type(err) == "table" and err.kind == "record_too_large") then -- (a stop during the run says more)
    rec.error = { kind = "record_too_large", message = ("the run %s, but its record (%d bytes with its journal) "
      .. "would pass limits.run_record_bytes (%d bytes): its %s is not kept; return less or raise the limit")
      :format(status, size, cap, status == "succeeded" and "result" or "error") }
  end
  local text = runs.record_text(rec)
  if #text > cap and type(rec.timeline) == "table" then
    rec.timeline_dropped = (tonumber(rec.timeline_dropped) or 0) + #rec.timeline
    rec.timeline = {}
    text = runs.record_text(rec)
  end
  if #text > cap then
    text = secrets.redact(record_frame(rec))
  end
  self.env.log("error", "run record too large", { run_id = rec.id, workflow = rec.workflow, bytes = size,
    limit = cap })
  return text
end

-- The run-end webhook to rec.callback_url, through the outbox, signed with
-- HMAC-SHA256 of the body under the configured webhook secret.
function Service:queue_webhook(rec)
  local body = json.encode({ run_id = rec.id, workflow = rec.workflow, status = rec.status,
    result = rec.result, error = rec.error, on_timeout = rec.on_timeout, on_cancel = rec.on_cancel })
  local headers = { ["Content-Type"] = "application/json", ["X-Chorus-Run-Id"] = rec.id }
  local secret = self.env.config.webhook_secret or core.env("CHORUS_WEBHOOK_SECRET")
  if secret and secret ~= "" then
    headers[webhook.HEADER] = webhook.sign(secret, body)
  end
  -- restricted: the URL came from the request, so the egress policy keeps
  -- it off loopback, private networks and this server (egress.allow)
  self.backend:add(outbox.new_entry("http", { request = { method = "POST", url = rec.callback_url,
    headers = headers, body = body, restricted = true }, run_id = rec.id, owner = rec.workflow, -- its workflow's lane
    trace = { id = rec.trace_id, parent = rec.span_id, flags = rec.trace_flags, state = rec.tracestate } }))
end

-- ---- a run's life -------------------------------------------------------------

--- Writes the first records of a durable run: the run (running) and its
--- timer (recovery resumes exactly the runs with one). They land in one
--- group commit with the run's first journal entries. entry: { workflow,
--- hash, path } (the script version the run replays on after a restart).
--- again: the id may have a record already (an outbox entry's next attempt
--- runs under its id), which the new one replaces. held: a fresh run
--- nobody has been told of yet (a request's that the client waits for,
--- without an idempotency key) holds them back: its journal writes them
--- with its first entries, before its first effect that may change
--- something, or 0.1 s after it began (chorus.journal), and its end writes
--- its finished record alone if it ended first. A crash before then loses
--- a run that changed nothing and answered nobody; its end wrote twice the
--- records, indexes and timer a read-only request's run needs.
function Service:begin(rec, entry, input, again, held)
  local st = self.store
  if not st then -- nothing durable: the record shows no input, as before
    return
  end
  rec.input = input -- kept whole while the run runs: recovery replays it
  rec.redact = entry.workflow.redact
  rec.script_hash = entry.hash
  rec.script = entry.path
  if entry.hash and entry.source then
    self:keep_version(entry)
  end
  if held and not again then
    st:new_run_account(rec.id, rec.workflow) -- (nothing of it in the folder to read)
    self.unwritten[rec] = true
  else
    st:put_run(rec, not again)
    st:put_timer(rec.id, rec.deadline_at)
  end
end

--- Writes run rec's first records (its record, its timer) if they were
--- held back (Service:begin) and are not written yet.
function Service:write_first(rec)
  if self.unwritten[rec] then
    self.store:put_run(rec, true)
    self.store:put_timer(rec.id, rec.deadline_at)
    self.unwritten[rec] = nil
  end
end

--- A run whose records did not reach the disk, though the client will hear
--- it failed: its in-memory record says so, its key is free again (the client
--- retries it), and the records of it that did land earlier (the key, the
--- timer that would resume it after a restart) are dropped if the store
--- takes the writes now.
function Service:abandon(rec, scope, key, err)
  rec.status = "failed"
  rec.result = nil
  rec.error = { kind = "storage", message = tostring(err) }
  self:keep(rec, runs.record_text(rec))
  local st = self.store
  if key then
    idempotency.abandon(st, scope, key, rec.id)
  end
  if st then
    st:del_timer(rec.id)
    st:drop_journal(rec.id)
    st:del_run(rec.id)
    st:run_settled(rec.id)
    pcall(st.commit, st)
  end
end

--- The end of a run: its record, the key's stored response, the outbox
--- entry the run delivered, the webhook; in the data folder these commit
--- together, and the timer and journal go (journaled = false: it wrote no
--- journal). Returns whether they were stored, and why not.
function Service:finish(rec, text, ok, value, journaled)
  local st = self.store
  if st then
    st:put_run_text(rec.id, text, rec)
    if self.unwritten[rec] then -- its first records were never written
      self.unwritten[rec] = nil
    else
      st:del_timer(rec.id)
    end
    if redrivable(rec) then -- kept for a redrive, with what its record masks
      st:put_redrive(rec.id, { input = rec.input, request = rec.request })
    elseif journaled ~= false then
      st:drop_journal(rec.id)
    end
    if rec.parent and rec.redact then -- what the record masks, for the parent (Service:call_child)
      local raw = ok and { result = value } or { error = errors.normalize(value) }
      if not pcall(st.put_outcome, st, rec.id, raw) then
        st:put_outcome(rec.id, { unreadable = true }) -- the parent then reads the record
      end
    end
    st:run_settled(rec.id)
  end
  if rec.key then
    idempotency.finish(st, rec.key_scope or rec.workflow, rec.key, rec.fp, rec.id, rec.ttl,
      self.env.respond(rec, ok, value))
  end
  if rec.outbox then
    -- a cancelled run is not retried: the outbox would start it again under
    -- its id, and that run would replace the cancelled record (the DLQ
    -- keeps the entry: `dlq replay` runs it if the cancel was a mistake)
    local failure = not ok and { error = rec.error,
      permanent = rec.error.permanent == true or rec.status == "cancelled" } or nil
    outbox.settle(self.backend, rec.outbox, failure)
  end
  if rec.callback_url then
    self:queue_webhook(rec)
  end
  context.drop_reservations(rec.id)
  local cok, cerr = true, nil
  if st then
    cok, cerr = pcall(st.commit, st)
  end
  if not cok then
    self.env.log("error", "could not store the end of a run", { run_id = rec.id, error = tostring(cerr) })
  elseif rec.key then
    idempotency.release(rec.key_scope or rec.workflow, rec.key)
  end
  return cok, cerr
end

--- Hands the spans of finished run rec to the exporter (env.telemetry),
--- which queues them without waiting. A record of an older version has no
--- span id: nothing.
function Service:export(rec)
  local tel = self.env.telemetry
  if tel then
    local ok, spans = pcall(tracing.run_spans, rec)
    if ok then
      tel:push(spans)
    else
      self.env.log("error", "cannot make the spans of a run", { run_id = rec.id, error = tostring(spans) })
    end
  end
end

-- A simulated crash (chorus.testing's crash_after): the process is gone.
local function crashed(ok, value)
  return not ok and type(value) == "table" and rawget(value, "kind") == "crash"
end

-- A copy of a run's input, JSON data (no cycles, nested at most 200 deep,
-- json.array's marker kept). Not errors.plain: its cycle check (a table
-- emptied and filled again per copy) made the copy a twelfth of a served
-- request's CPU.
local ARRAY_MT = getmetatable(core.json.array({}))

local function copy_input(v)
  if type(v) ~= "table" then
    return v
  end
  local out = {}
  for k, x in next, v do
    if type(x) == "table" then
      x = copy_input(x)
    end
    out[k] = x
  end
  if getmetatable(v) == ARRAY_MT then
    setmetatable(out, ARRAY_MT)
  end
  return out
end

-- runner.execute's on_state: the run's state s is made (opts: the run's
-- options, with its record and service). One function for every run, not
-- a closure per run.
local function on_state(s, opts)
  local rec, self = opts.record, opts.service
  rec.timeline = s.timeline
  self.states[rec] = s
  if rec.parent then -- a child's HTTP calls count in the share its runs do (chorus.http, count_call)
    s.charged_to = self:charge(rec)
  end
  if rec.cancel then -- asked before a restart (or before the run began): met after its replay
    s.cancel_pending = runstate.cancel_error()
  end
  local env = self.env
  if env.on_state then -- chorus.testing reads the run's state
    env.on_state(rec, s)
  end
end

-- What core.execute runs: the workflow's run (runner.execute), with its
-- place in the counts released when it ends. Released here, in the run, it
-- is released even when the run never returns to Service:execute: the task
-- waiting for it was cancelled (the process frees every run at shutdown),
-- which frees the run and closes its coroutine.
-- Service:execute releases it too (a second release does nothing).
local function counted_run(counted, ...)
  local _ <close> = counted
  return runner.execute(...)
end

--- Runs a workflow as its own run (from inside a task) and records it.
--- Returns ok, value, whether its end was stored (and why not), and the
--- run's info (id, traceback). recorded: the journal of a run resumed after
--- a restart; counted: its place in the counts when the caller took it
--- already (count_in; an async request's, taken before its commit). After
--- a simulated crash nothing of the run's end happens (it stays in flight
--- in the store, as after a real one) and the fifth value is true.
function Service:execute(entry, rec, input, recorded, counted)
  rec.redact = entry.workflow.redact
  counted = counted or self:count_in(rec.parent and self:charge(rec) or rec.workflow)
  -- given back however this ends: core.execute raises when C cannot start
  -- the run (out of memory), before counted_run could close it, and the
  -- place leaked (the workflow's share one run smaller for good)
  local _ <close> = counted
  local env = self.env
  local opts = { trace_id = rec.trace_id, deadline = rec.deadline_at, request = rec.request, env = env,
    span_id = rec.span_id, trace_flags = rec.trace_flags, tracestate = rec.tracestate,
    on_state = on_state, record = rec, service = self, journal = nil }
  if self.store then
    opts.journal = { store = self.store, recorded = recorded, crash_after = env.crash_after,
      record_cap = self:record_cap(), first = self.unwritten[rec] and function() self:write_first(rec) end }
  end
  local limits = env.limits or EMPTY
  -- core.execute reads its options when it starts the run: one table per service
  local run_opts = self.run_opts
  run_opts.id, run_opts.instructions, run_opts.cpu_ms, run_opts.memory, run_opts.account =
    rec.id, limits.instructions, limits.cpu_ms, limits.memory, entry.workflow.memory_account
  -- The run gets a copy of its input when the record keeps it (rec.input,
  -- in the data folder: GET /runs/ID, the finished record, a redrive), all
  -- read by the server outside the run, where what a script put in it (a
  -- key whose __tostring loops, a table shared a billion times over) ran
  -- without a budget. It is JSON data (a request body, a stored record or
  -- entry, a caller's JSON copy): a plain copy. (Without a record that
  -- keeps it nobody reads the table after the run: no copy, which cost
  -- about 2 us per request.)
  if input ~= nil and input == rec.input then
    input = copy_input(input)
  end
  local ok, value, info = core.execute(run_opts, counted_run, counted, entry.workflow, input, opts)
  release(counted) -- when the run's own close could not (see counted_run)
  if crashed(ok, value) then
    self.running[rec.id] = nil
    self.states[rec] = nil
    if self.store and self.store.memory then
      self.store:crash() -- what the last commit did not take is lost
    end
    return ok, value, nil, nil, info, true
  end
  self:leave_children(rec)
  local stored, serr
  stored, serr, ok, value = self:conclude(rec, ok, value, info)
  if not stored and rec.key then -- a key must not stay in flight for good
    idempotency.release(rec.key_scope or rec.workflow, rec.key)
  end
  return ok, value, stored, serr, info
end

-- The end of a run whose code has ended with ok, value: its record, what
-- finish stores, its spans, the parents waiting for it. Returns whether it
-- was stored (and why not) and the outcome the run ends with (the record
-- cap may replace it).
local function conclude(self, rec, ok, value, info)
  local text, replaced, journaled = self:finish_record(rec, ok, value, info)
  if replaced then
    ok, value = false, errors.new(rec.error.kind, rec.error.message)
  end
  local stored, serr = self:finish(rec, text, ok, value, journaled)
  self:export(rec)
  self:wake_waiters(rec.id, ok, value)
  return stored, serr, ok, value
end

-- The end of a run whose record could not be made or stored (err): it ends
-- failed with { kind = "record" } and the frame of its record, which is
-- small and always JSON. Returns what conclude does.
local function conclude_failed(self, rec, err)
  self.states[rec] = nil
  local message = ("the run ended, but its record could not be made or stored: %s"):format(
    tostring(err):sub(1, 500))
  rec.status, rec.result, rec.error = "failed", nil, { kind = "record", message = message }
  rec.finished = rec.finished or runstate.micro(core.now())
  rec.duration = rec.duration or runstate.micro(rec.finished - rec.started)
  self.env.log("error", "could not record the end of a run", { run_id = rec.id, workflow = rec.workflow,
    error = message })
  local text = secrets.redact(record_frame(rec))
  self:keep(rec, text)
  local value = errors.new("record", message)
  local fok, stored, serr = pcall(self.finish, self, rec, text, false, value)
  if not fok then
    stored, serr = false, stored
  end
  self:wake_waiters(rec.id, false, value)
  return stored, serr, false, value
end

--- The end of a run once its code has ended (ok, value: what it returned
--- or raised; info: core.execute's): its record, kept and stored, its
--- spans, the parents waiting for it. This is the server's work on the
--- run's output, done in whatever run called (a request's handler, a
--- detached run): it counts against no run's limits (core.uncharged), so a
--- run whose output its caller's cap could not hold still ends; what it
--- writes is bounded by limits.run_record_bytes instead. Any failure here
--- ends the run failed with { kind = "record" }. Returns whether the end
--- was stored (and why not) and the outcome the run ends with.
function Service:conclude(rec, ok, value, info)
  local was = core.uncharged(true)
  local cok, stored, serr, eok, evalue = pcall(conclude, self, rec, ok, value, info)
  if not cok then
    cok, stored, serr, eok, evalue = pcall(conclude_failed, self, rec, stored)
    if not cok then
      stored, serr, eok, evalue = false, stored, false, errors.new("record", tostring(stored))
    end
  end
  core.uncharged(was)
  return stored, serr, eok, evalue
end

--- Cancels child run id, which its parent no longer waits for (as DELETE
--- /runs/ID does, via "parent"); a failure is logged, never raised.
function Service:cancel_left(id)
  local ok, err = pcall(self.cancel, self, id, "parent")
  if not ok then
    self.env.log("error", "cannot cancel a child run its parent left", { run_id = id, error = tostring(err) })
  end
end

--- Cancels the child runs (ctx.call) rec's run leaves running as it ends,
--- before its end is stored: nobody waits for them any more. Most were
--- cancelled already when its wait for them closed (WAIT_MT); not those of
--- a run a limit killed, which runs no Lua, its closes included. Their
--- cancel marks commit before the parent's end, so no restart finds such a
--- child in flight under an ended parent.
function Service:leave_children(rec)
  local kids = rec.children
  if type(kids) ~= "table" then
    return
  end
  for _, id in ipairs(kids) do
    if self.running[id] then
      self:cancel_left(id)
    end
  end
end

--- Starts a new run of entry ({ workflow, hash, path, source }) with input
--- and runs it to its end (from inside a task): a record, its first durable
--- records, the run, its end. opts as new_record, plus id and trace_id.
--- Returns ok, value, the record, whether its end was stored (and why
--- not), the run's info and whether it crashed (chorus.testing).
function Service:start(entry, input, opts)
  opts = opts or {}
  local rec = self:new_record(opts.id or core.uuid7(), entry.workflow.name, opts.trace_id, opts)
  rec.deadline_at = rec.deadline_at or (entry.workflow.timeout and core.now() + entry.workflow.timeout)
  self:begin(rec, entry, input, opts.id ~= nil and not opts.first)
  local ok, value, stored, serr, info, crash = self:execute(entry, rec, input)
  return ok, value, rec, stored, serr, info, crash
end

--- From inside a task: waits, checking every step seconds for at most
--- seconds, until no run of the service is in flight. A one-shot caller
--- (chorus.testing) calls it after its run ended, so the child
--- runs the run left (cancelled: a chorus.race it lost) end and are
--- recorded before the process goes on. Returns whether none is left.
function Service:settle(seconds, step)
  for _ = 1, math.ceil(seconds / step) do
    if not next(self.running) then
      return true
    end
    core.sleep(step)
  end
  return not next(self.running)
end

-- ---- cancellation -----------------------------------------------------------------

--- Cancels run id (DELETE /runs/ID, `chorus runs cancel`; via says who
--- asked): the request is kept in the run's record (rec.cancel), stored
--- with it, so a run resumed after a restart is cancelled once its replay is
--- done; a run live here is stopped now with { kind = "cancelled" } at the
--- wait it is in (its HTTP transfer is aborted), its sagas compensate,
--- on_cancel runs, and it ends "cancelled". Returns the record (live table
--- or, for a run not live here, the stored one), or nil, a refusal
--- ("not_found", "conflict", "storage") and why.
function Service:cancel(id, via)
  local st = self.store
  local rec = self.running[id]
  local state = rec and self.states[rec]
  local stored_copy = false
  if state and state.ended then
    -- its end is decided and on its way to the record: a cancel mark now
    -- would be stored with a run that never gets to be cancelled
    return nil, "conflict", "the run has finished: its end is being stored"
  end
  if not rec then
    local gok, workflow, status = pcall(self.facts, self, id)
    if not gok then
      return nil, "storage", tostring(workflow)
    end
    if not workflow then
      return nil, "not_found", ("no run with id '%s'"):format(id)
    end
    if status ~= "running" then
      return nil, "conflict", ("the run has finished: it is %s"):format(tostring(status))
    end
    if not st then
      return nil, "not_found", ("no run with id '%s'"):format(id)
    end
    -- running in the data folder but not in this process: the next start
    -- resumes it, and cancels it then
    local rok, stored = pcall(st.get_run, st, id)
    if not rok or type(stored) ~= "table" then
      return nil, "storage", tostring(stored)
    end
    rec, stored_copy = stored, true
  end
  if not rec.cancel then
    rec.cancel = { at = runstate.micro(core.now()), via = via }
    if state and not state.cancelled then
      -- stopped before the mark's commit: the run goes on during that wait,
      -- and could end otherwise with the mark stored in its record
      runstate.cancel(state, runstate.cancel_error())
    end
    if st then
      -- the request outlives a crash: a resumed run is cancelled
      if self.unwritten[rec] then
        self:write_first(rec)
      else
        st:put_run(rec)
      end
      local cok, cerr = pcall(st.commit, st)
      if not cok then
        rec.cancel = nil
        return nil, "storage", tostring(cerr)
      end
    end
    self.env.log("info", "cancelling a run", { run_id = id, workflow = rec.workflow, via = via })
  end
  -- recovery may have resumed the run while the mark was being committed:
  -- from the record as it was before (a read sees only committed writes),
  -- so the live run must get the mark here or it never learns of it
  local live = self.running[id]
  if live and live ~= rec then
    live.cancel = live.cancel or rec.cancel
    rec = live
  elseif not live and stored_copy then
    -- or resumed and ended in that wait: its end came first (and is what
    -- its record says)
    if self.finished:facts(id) then
      local fok, _, status = pcall(self.facts, self, id)
      return nil, "conflict", ("the run has finished: it is %s"):format(tostring(fok and status or "finished"))
    end
  end
  local s = self.states[rec]
  if s and not s.cancelled then
    -- a replay never waits, so a live run is past it: stopped now
    runstate.cancel(s, runstate.cancel_error())
  end
  for _, child in ipairs(type(rec.children) == "table" and rec.children or {}) do
    self:cancel(child, "parent") -- a finished one answers conflict: nothing to do
  end
  return rec
end

-- ---- child runs (ctx.call, chorus.children) -----------------------------------------

--- The outcome of a finished run's record (table or JSON text): true and
--- its result, or false and its error (the child's id added).
-- ---- what one workflow may start of another ------------------------------
--
-- A script can do no more to another workflow than an HTTP client without
-- its credentials could: a workflow the config protects with auth.NAME is
-- started by ctx.call or ctx.later only from the workflows auth.NAME.callers
-- lists, and an event the config protects with events.NAME is emitted with
-- chorus.emit only from those events.NAME.emitters lists (and waited for
-- with ctx.event only from those events.NAME.waiters lists, when it lists
-- them). Without a config
-- (chorus.testing, chorus run without one) nothing is protected.

local function listed(list, name)
  for _, v in ipairs(list or {}) do
    if v == name then
      return true
    end
  end
  return false
end

-- Raises { kind = "forbidden" } unless caller is in list (section.NAME's
-- field, for the `what` named name), its message after who (the API that
-- asked: "ctx.call", ...) saying how to let caller `verb` it.
local function require_listed(list, caller, who, what, name, section, field, verb)
  if not listed(list, caller) then
    error(errors.new("forbidden", ("%s: %s '%s' is protected by %s.%s: list '%s' in %s.%s.%s to let it %s it")
      :format(who, what, name, section, name, caller, section, name, field, verb)), 0)
  end
end

--- Raises { kind = "forbidden" }, its message after who (the API that
--- asked: "ctx.call", ...), unless workflow caller may start workflow target.
function Service:check_start(caller, target, who)
  local rule = (self.env.config.auth or {})[target]
  if rule then
    require_listed(rule.callers, caller, who, "workflow", target, "auth", "callers", "start")
  end
end

--- The same for emitting event name (chorus.emit).
function Service:check_emit(caller, name, who)
  local rule = (self.env.config.events or {})[name]
  if name ~= "ttl" and rule then
    require_listed(rule.emitters, caller, who, "event", name, "events", "emitters", "emit")
  end
end

--- The same for waiting on event name (ctx.event): when events.NAME lists
--- waiters, only they take its events. Each event goes to one wait, so a
--- workflow waiting on another's event (an order's id is no secret) took
--- its payload, and the run it was meant for never got it.
function Service:check_wait(caller, name, who)
  local rule = (self.env.config.events or {})[name]
  if name ~= "ttl" and rule and rule.waiters then
    require_listed(rule.waiters, caller, who, "event", name, "events", "waiters", "wait for")
  end
end

local function with_child_id(err, id)
  err = setmetatable(err, errors.MT)
  err.child_run_id = id
  return err
end

local function outcome(rec)
  if type(rec) == "string" then
    rec = json.decode(rec)
  end
  if rec.error == nil then
    return true, rec.result
  end
  return false, with_child_id(errors.normalize(rec.error), rec.id)
end

-- Wakes the parents waiting for child run id with its outcome as it was
-- (its record may mask it); crash: chorus.testing's process died in it.
function Service:wake_waiters(id, ok, value, crash)
  local tokens = self.waiters[id]
  if not tokens then
    return
  end
  self.waiters[id] = nil
  for _, token in ipairs(tokens) do
    core.notify(token, { ok = ok, value = value, crash = crash })
  end
end

-- Whether a child's record says its parent stopped waiting for it: the
-- cancel that followed (WAIT_MT) ended it, not its own code.
local function left(rec)
  return rec.status == "cancelled" and type(rec.cancel) == "table" and rec.cancel.via == "parent"
end

-- A child run is a detached run of its own, not a part of its parent's
-- task: when the parent stops waiting for it, it is still there to be
-- cancelled, to compensate and to run its on_cancel (under its own budget),
-- and to record its end. Trusted code, as the server's own loops.
local DRIVER = { instructions = 0, cpu_ms = 0, memory = 0 }
local function detached(fn)
  core.start(DRIVER, fn)
end

-- The parent's wait for a child, as a to-be-closed value: closed before
-- the child's outcome came, the parent no longer waits for it (its task
-- was cancelled: a chorus.all whose sibling failed, a race or any it lost,
-- its run stopped by a cancel, its deadline, a nondeterminism), and a
-- child nobody waits for is cancelled, through Service:cancel as DELETE
-- /runs/ID is, so its end is recorded and a restart never resumes it. The
-- cancel runs in a run of its own: this may close inside the task's
-- cancellation, and at a shutdown (the process frees every run) it never
-- runs, so a drain cancels nothing. A (simulated) crash cancels nothing
-- either: the process is gone.
local WAIT_MT = { __close = function(w)
  if w.done then
    return
  end
  local svc, id = w.svc, w.id
  local list = svc.waiters[id]
  for i = #(list or EMPTY), 1, -1 do
    if list[i] == w.token then
      table.remove(list, i)
    end
  end
  if list and #list > 0 then -- another parent (a replay's) still waits for it
    return
  end
  svc.waiters[id] = nil
  local stop = runstate.stopped(w.parent)
  if stop and rawget(stop, "kind") == "crash" then
    svc:die_with(id, stop)
    return
  end
  detached(function()
    svc:cancel_left(id)
  end)
end }

-- chorus.testing's simulated crash stopped a parent while its child ran:
-- the process is gone, so the child dies with it, recording nothing (its
-- own execute sees the crash), and one not started yet never starts; the
-- next service recovers both from the store, as a restarted server does.
function Service:die_with(id, err)
  self.crashed = err
  local rec = self.running[id]
  local s = rec and self.states[rec]
  if s then
    runstate.stop(err, s)
    core.interrupt(s.run_id, err)
  end
end

--- Waits, in the task of run parent (a runstate entry), for the outcome of
--- child run id, which start (when given) starts once the wait is set up:
--- ok, value (its error with child_run_id). The child is cancelled if the
--- wait ends otherwise (WAIT_MT).
function Service:await_child(id, parent, start)
  runstate.check_stop(parent) -- a stopped parent starts no child
  local list = self.waiters[id] or {}
  self.waiters[id] = list
  local token = core.wait_token()
  list[#list + 1] = token
  local w <close> = setmetatable({ svc = self, id = id, token = token, parent = parent, done = false }, WAIT_MT)
  if start then
    start()
  end
  -- bounded by the parent's deadline, as every wait of a run: the child's
  -- own is capped by it, but its on_timeout (and its children's) runs past
  -- it, and the parent waited for that too (a deadline of 5 s ended at 15)
  local wait_left = runstate.remaining(parent)
  local o = runstate.wait(token, wait_left)
  if o == nil and wait_left ~= math.huge then -- the close cancels the child, unless it is ending already
    error(runstate.deadline_error(("waiting for child run %s"):format(id)), 0)
  end
  w.done = true
  if type(o) ~= "table" then
    return outcome(self:lookup(id))
  end
  if o.crash then
    error(runstate.stop(o.value, parent), 0)
  end
  if o.ok then
    -- a JSON copy, as with a data folder the journal's: the child's value
    -- as it was handed another workflow the child's functions and
    -- coroutines (a closure over the state all the child's runs share,
    -- run by the parent as its own code)
    return true, errors.json_copy(o.value, "ctx.call", 0, "the child's result")
  end
  return false, with_child_id(errors.normalize(o.value), id)
end

--- Runs entry with input as the child id of the run parent (a runstate
--- entry), from the parent's task, and returns its outcome: ok, value.
--- A child that exists already (the parent's replay after a restart) is
--- never started again: a finished one gives its record's outcome, a
--- running one is waited for, one unfinished in the data folder and not
--- resumed yet is resumed here.
function Service:call_child(entry, input, id, parent)
  if entry.hash then -- the child resumes on this version after a restart
    self:keep_version(entry)
  end
  local prec = self.running[parent.run_id]
  if prec then -- the link the parent's record shows
    prec.children = prec.children or {}
    local known = false
    for _, c in ipairs(prec.children) do
      known = known or c == id
    end
    if not known then
      prec.children[#prec.children + 1] = id
    end
  end
  if self.running[id] then
    return self:await_child(id, parent)
  end
  local found = self:lookup(id)
  local decoded = found and (type(found) == "string" and json.decode(found) or found)
  if decoded and left(decoded) then
    -- cancelled because this parent once stopped waiting for it, and asked
    -- for again: by the parent's replay after a restart (a chorus.race the
    -- child lost, replayed: the journal holds the winner's effects, not this
    -- call), or its redrive. A run of it afresh under the same id, as the
    -- first was: its outcome would be an error the parent never saw
    found = nil
  end
  if found then
    if decoded.status ~= "running" then
      local raw = decoded.redact and self.store and self.store:get_outcome(id)
      if raw and not raw.unreadable then -- the record masks it: what the child returned
        decoded.result, decoded.error = raw.result, raw.error
      end
      return outcome(decoded)
    end
    -- unfinished in the data folder, not resumed yet: resumed here
    return self:await_child(id, parent, function()
      if not self:resume(id, detached) then -- its record went meanwhile
        self:wake_waiters(id, false, errors.new("storage", "the child run's record is gone"))
      end
    end)
  end
  -- a new child counts in the share of the workflow at the top of its
  -- callers (Service:charge): past that share or the server's cap it is
  -- refused, as that workflow's request would be. Started whatever the
  -- counts, one request's run calling itself put 10,000 runs in flight,
  -- and every other workflow's requests got 503.
  local full = self:at_capacity(prec and self:charge(prec) or parent.workflow)
  if full then
    error(errors.new("runs_full", ("ctx.call: %s; the child run of '%s' was not started"):format(
      full == "server" and ("%d runs are in flight, the most this server takes"):format(self.max_inflight)
        or ("its workflow has %d runs in flight with their children, the most one workflow may have "
          .. "(limits.inflight_runs_per_workflow)"):format(self.share), entry.workflow.name)), 0)
  end
  -- the parent's deadline caps the child's: a child still running then
  -- times out, and the parent with it
  local timeout = entry.workflow.timeout
  local deadline = timeout and core.now() + timeout
  if parent.deadline and (not deadline or parent.deadline < deadline) then
    deadline = parent.deadline
  end
  -- the child is a span of the parent's trace, under the span of the call
  local opts = { id = id, parent = parent.run_id, trace_id = parent.trace_id,
    parent_span_id = tracing.call_span_id(id), trace_flags = parent.trace_flags,
    tracestate = parent.tracestate, deadline_at = deadline }
  return self:await_child(id, parent, function()
    detached(function()
      if self.crashed then -- the process died before the child began (Service:die_with)
        return
      end
      local sok, ok, value, _, _, _, _, crash = pcall(self.start, self, entry, input, opts)
      if not sok then -- its first records could not be written: the parent hears why
        self.running[id] = nil
        self:wake_waiters(id, false, ok)
      elseif crash then -- chorus.testing: the process died in the child, so with the parent in it
        self:wake_waiters(id, false, value, true)
      end
    end)
  end)
end

-- ---- versions, recovery, outbox runs --------------------------------------------

--- Keeps entry's script version (by hash) so a run resumed after a restart
--- replays on the code it started with; with a store, on disk too.
--- The newest compile of a hash is the one kept: a reload gives the same
--- source a fresh state, and the old compile can go.
function Service:keep_version(entry)
  local hash = entry.hash
  self.versions[hash] = entry.workflow
  if self.store and entry.source and not self.stored[hash] then
    self.stored[hash] = true
    self.store:put_script(hash, entry.source)
  end
end

--- The workflow of a stored script version (compiled once per hash).
function Service:version(hash, path)
  local wf = self.versions[hash]
  if wf then
    return wf
  end
  local source = self.store and self.store:get_script(hash)
  if not source then
    return nil, ("the script version %s is not in the data folder"):format(tostring(hash))
  end
  local err
  wf, err = script.compile(source, path or "?")
  if wf then
    self.versions[hash] = wf
  end
  return wf, err
end

-- Runs recovery starts again per loop turn (storage.recovery_batch): between
-- batches the loop serves requests, so /healthz answers at once whatever
-- the number of runs to resume.
runs.RECOVERY_BATCH = 200
local RECOVERY_LOG_EVERY = 1 -- seconds between progress lines

-- Whether rec is a child run (ctx.call) no parent waits for any more, not
-- cancelled yet: its parent has ended (its record is finished, or gone),
-- or is to be cancelled (its record holds a cancel: resumed, it stops at
-- its first live effect, the call that would wait for this child again).
-- A last guard: a parent's end stores its children's cancels first
-- (Service:leave_children), but a record written by an older version, a
-- cancel whose commit failed, or `chorus runs cancel` on the folder of a
-- stopped server (the parent's stored record names no child yet: the list
-- is written with its next record) leaves such a child, which recovery then
-- cancels (replayed, then stopped as a cancelled run, before its first
-- live effect) instead of running it on for nobody.
function Service:orphaned(rec)
  local pid = rec.parent
  if type(pid) ~= "string" or rec.cancel then
    return false
  end
  local p = self.running[pid]
  if p then
    return p.cancel ~= nil
  end
  local ok, stored = pcall(self.store.get_run, self.store, pid)
  return ok and (type(stored) ~= "table" or stored.status ~= "running" or stored.cancel ~= nil)
end

-- Resumes one unfinished run: replayed from the start against its journal,
-- on its script version, by start(fn, rec). Returns whether it had a record
-- to resume.
function Service:resume(id, start)
  if self.running[id] then -- a child its parent's ctx.call resumed already
    return false
  end
  local st = self.store
  -- what the start-up check read of it, or read now
  local rec, recorded = st:take_checked(id)
  rec = rec or st:get_run(id)
  if not rec then
    st:del_timer(id)
    context.drop_reservations(id) -- reserved by recover: nobody takes it back
    return false
  end
  self:remember(rec)
  rec.status = "running"
  if self:orphaned(rec) then -- its parent stopped waiting for it before the process did
    rec.cancel = { at = runstate.micro(core.now()), via = "parent" }
    st:put_run(rec)
  end
  if rec.key then
    idempotency.begin(nil, rec.key_scope or rec.workflow, rec.key, rec.fp)
  end
  local wf, err = self:version(rec.script_hash, rec.script)
  recorded = recorded or st:journal(rec.id)
  for _, name in ipairs(context.held_locks(recorded)) do
    context.reserve_lock(name, rec.id)
  end
  start(function()
    if not wf then
      local counted = self:count_in(self:charge(rec))
      local _, _, ok, value = self:conclude(rec, false, { kind = "script", message = err })
      release(counted)
      return ok, value
    end
    return self:execute({ workflow = wf }, rec, rec.input, recorded)
  end, rec)
  return true
end

-- Seconds between two looks at the guests whose runs wait for their end.
local GUEST_EVERY = 1

--- The runs of list (unfinished ones) a live guest of the folder runs
--- (`chorus run --data`: its lock is held) are left to it (watch_guests
--- resumes them if it dies); returns the others. What the start-up check
--- read of the runs left is dropped: the guest writes them meanwhile.
function Service:leave_to_guests(list)
  local st, out = self.store, {}
  for _, u in ipairs(list) do
    if u.guest and st:guest_alive(u.guest) then
      st:take_checked(u.id)
      st:run_settled(u.id) -- (and what it counted of them: a later write reads the folder again)
    else
      out[#out + 1] = u
    end
  end
  return out
end

--- The server's look, once a second until stopping(), for the guests of
--- its folder (`chorus run --data`) that died: the runs they left
--- unfinished (a timer naming the guest) are resumed, by start (a
--- detached run by default), as a restart would resume them. A guest's
--- runs are its own while it lives, whenever it started.
function Service:watch_guests(start, stopping)
  start = start or function(fn) core.start(nil, fn) end
  local st, log = self.store, self.env.log
  while not (stopping and stopping()) do
    core.sleep(GUEST_EVERY)
    local ok, err = pcall(function()
      local dead = st:dead_guests()
      if not next(dead) then
        return
      end
      for _, u in ipairs(st:unfinished()) do
        if u.guest and dead[u.guest] and not self.running[u.id] then
          log("info", "resuming a run its `chorus run` left unfinished", { run_id = u.id })
          self:resume(u.id, start)
        end
      end
    end)
    if not ok then
      log("error", "cannot resume the runs of a `chorus run` that died", { error = tostring(err) })
    end
  end
end

--- Resumes every run that had not finished when the process stopped. The
--- list of them is read first (a run a request starts later is not among
--- them). opts:
---   start(fn, rec)  runs each resumed run (default: a detached run,
---                   core.start); fn returns what execute does
---   background      resume in a task of its own, batch runs per loop turn,
---                   so the server answers meanwhile (the server's /readyz
---                   reads self.recovery = { resumed =, total =, active = })
---   batch, pause    runs per turn (runs.RECOVERY_BATCH), seconds between
---                   batches (tests)
---   stopping()      true when the process is draining: the rest resume at
---                   the next start
---   done()          called once every unfinished run has started again
---                   (at once when there were none; also after a stop)
--- Returns how many unfinished runs there were.
function Service:recover(opts)
  opts = opts or {}
  local start = opts.start or function(fn) core.start(nil, fn) end
  local st = self.store
  local unfinished = st:checked_unfinished() or st:unfinished()
  -- a workflow entry marked started whose run never got going is due again
  -- (its run, if it has a timer, is among those resumed); the stored
  -- entries, not the listings' masked copies: these are sent
  local live = {}
  for _, u in ipairs(unfinished) do
    live[u.id] = true
  end
  -- the runs of a `chorus run --data` still running are its own: resumed
  -- here only once it is gone (watch_guests), never beside it
  unfinished = self:leave_to_guests(unfinished)
  if st.started_outbox and not st.memory then
    for _, e in ipairs(st:started_outbox()) do
      if not live[e.id] then
        e.state = nil
        st:put_outbox(e)
      end
    end
  end
  -- every lock a journal shows held is reserved for its run now, before
  -- any new run can ask for it: recovery resumes in batches while requests
  -- are served, and a lock left free until its holder's batch came went to
  -- a new run, then the holder took it back too (two in the section; the
  -- second release found no lock)
  for _, u in ipairs(unfinished) do
    for _, name in ipairs(context.held_locks(u.journal or st:journal(u.id))) do
      context.reserve_lock(name, u.id)
    end
  end
  local total = #unfinished
  self.recovery = { resumed = 0, total = total, active = total > 0 }
  local done = opts.done or function() end
  if total == 0 then
    done()
    return 0
  end
  local log = self.env.log
  local batch, pause = opts.batch or runs.RECOVERY_BATCH, opts.pause or 0
  log("info", "resuming runs after a restart", { runs = total })
  local function resume_all()
    local t0 = core.monotime()
    local last_log, resumed, failed = t0, 0, 0
    for i, u in ipairs(unfinished) do
      if opts.stopping and opts.stopping() then
        break
      end
      -- a record that cannot be read is said and left alone, never acted
      -- on (`chorus data verify` names it); the other runs go on
      local ok, res = pcall(self.resume, self, u.id, start)
      if not ok then
        failed = failed + 1
        context.drop_reservations(u.id)
        log("error", "cannot resume a run", { run_id = u.id, error = tostring(res) })
      elseif res then
        resumed = resumed + 1
      end
      self.recovery.resumed = i
      if opts.background and i % batch == 0 and i < total then
        core.sleep(pause)
        if core.monotime() - last_log >= RECOVERY_LOG_EVERY then
          last_log = core.monotime()
          log("info", "resuming runs", { resumed = i, total = total })
        end
      end
    end
    self.recovery.active = false
    log("info", "resumed runs after a restart", { runs = resumed, failed = failed,
      seconds = math.floor((core.monotime() - t0) * 1000) / 1000 })
    done()
  end
  if opts.background then
    core.start({ instructions = 0, memory = 0, cpu_ms = 0 }, resume_all)
  else
    resume_all()
  end
  return total
end

--- Starts the run of a workflow entry of the outbox: a durable run whose id
--- is the entry's; the run's end settles the entry (outbox.settle).
--- Returns "started", or false and the failure when there is no such
--- workflow. The run joins the trace of the run that enqueued the entry,
--- under the delivery's span (span_id).
function Service:start_outbox_workflow(backend, e, span_id)
  local entry = self.env.workflow and self.env.workflow(e.workflow)
  if not entry then
    return false, { permanent = true, error = { kind = "unknown_workflow",
      message = ("no workflow named '%s'"):format(e.workflow) } }
  end
  if self:at_capacity(e.workflow) then -- the entry waits, as a request would get 503
    return "deferred"
  end
  e.state = "started"
  backend:update(e)
  local t = tracing.entry_trace(e) or {}
  -- each attempt gets the input as enqueued: the run may change the table
  -- it is handed, and e (kept in memory, or written back when it retries)
  -- must not carry that into the next attempt
  local input = e.input
  if type(input) == "table" then
    input = json.decode(json.encode(input))
  end
  -- the entry's first attempt: no record under its id yet (a replayed dead
  -- entry has the records of its earlier attempts)
  self:start(entry, input, { id = e.id, outbox = e, attempt = e.attempts + 1,
    first = e.attempts == 0 and not e.replayed, trace_id = t.id,
    parent_span_id = t.id and span_id, trace_flags = t.flags, tracestate = t.state })
  return "started"
end

-- ---- runs in flight ------------------------------------------------------------
--
-- Every run counts while it executes (Service:execute), in the server's
-- count and in the count of the workflow it is charged to. Only the runs a
-- caller asks for are refused or held back at a cap: a request (503), an
-- outbox workflow entry or a scheduled slot (they wait). A run already
-- accepted never is: a child run (ctx.call; its parent holds a slot and
-- waits for it), a run resumed after a restart, a redrive.

--- The workflow run rec is charged to: its own, or for a child run
--- (ctx.call) that of the run at the top of its callers, so a workflow's
--- children count in its share, not in the share of the workflow they run:
--- a workflow calling another cannot take that one's share.
function Service:charge(rec)
  local name, parent = rec.workflow, rec.parent
  local running = self.running
  while parent do
    local p = running[parent]
    if not p then -- its caller is not running here (not resumed yet)
      break
    end
    name, parent = p.workflow, p.parent
  end
  return name
end

-- A run's place in the counts: taken by count_in, given back once by
-- core.release (the server's count and its workflow's), whichever way the
-- run ends; also its to-be-closed value (counted_run).
local COUNTED = { __close = core.release }

--- A run charged to workflow name starts: it counts in the server's runs in
--- flight and in name's; returns its place in the counts, which
--- core.release gives back.
function Service:count_in(name)
  local charged = self.charged
  -- made first: a memory error here leaves the counts as they were
  local counted = setmetatable({ true, self, "inflight", charged, name }, COUNTED) -- [1]: not released yet
  charged[name] = (charged[name] or 0) + 1
  self.inflight = self.inflight + 1
  return counted
end

--- Whether a new run of workflow name must wait or be refused: "server"
--- when limits.max_inflight_runs runs are in flight, "workflow" when name
--- has limits.inflight_runs_per_workflow charged to it, else false. Without
--- a name, the server's cap alone. Requests then get 503; the runs the
--- server starts by itself (outbox workflow entries, schedules) wait.
function Service:at_capacity(name)
  if self.inflight >= self.max_inflight then
    return "server"
  end
  local share = self.share
  if share and name and (self.charged[name] or 0) >= share then
    return "workflow"
  end
  return false
end

--- The relay over the service's outbox: workflow entries start runs of
--- this service, calls go out through its transport.
function Service:relay(opts)
  opts = opts or {}
  opts.start_workflow = function(backend, e, span_id) return self:start_outbox_workflow(backend, e, span_id) end
  opts.can_start = function(name) return not self:at_capacity(name) end
  opts.transport = self.env.transport
  opts.telemetry = self.env.telemetry
  opts.log_sink = self.env.outbox_log_sink
  return outbox.relay(self.backend, opts)
end

-- ---- redrive --------------------------------------------------------------------

-- Statuses whose outcome is unknown or worth another try (as chorus.retry).
local function retryable_status(status)
  return math.type(status) == "integer" and core.retryable_status(status)
end

-- A journal entry a redrive replays: an effect that succeeded. A raised
-- error, or an HTTP call whose (last) response said 5xx, 408, 425 or 429, is
-- sent again instead.
local function settled(e)
  if not e.ok then
    return false
  end
  return not (e.kind == "http" and type(e.value) == "table" and retryable_status(e.value.status))
end

--- Prepares a failed run to run again (a redrive): from its journal, on its
--- script version, under its id. The effects it recorded replay; the failed
--- ones (see settled) are dropped from the journal, so the code that made
--- them sends them again with the same step and the same ctx.key keys (an
--- upstream that honours Idempotency-Key sees one operation). Its record
--- lists each redrive; via says who asked (admin, cli, idempotency).
--- Returns the record, its workflow and the kept journal, ready for
--- execute; or nil, a refusal ("conflict", "not_found", "disabled",
--- "storage") and why.
function Service:prepare_redrive(id, via)
  local st = self.store
  if not st then
    return nil, "disabled", "this server keeps no data folder (storage.durable = false); runs cannot be redriven"
  end
  if self.running[id] then
    return nil, "conflict", "it is running"
  end
  local gok, rec = pcall(st.get_run, st, id)
  if not gok then
    self.env.log("error", "cannot read a run record", { run_id = id, error = tostring(rec) })
    return nil, "storage", tostring(rec)
  end
  if type(rec) ~= "table" then
    return nil, "not_found", ("no run with id '%s'"):format(id)
  end
  if rec.status ~= "failed" then
    return nil, "conflict", ("only a failed run is redriven, and this one is %s"):format(tostring(rec.status))
  end
  if rec.outbox then
    return nil, "conflict", "the outbox started it; it retries by itself, and a dead one runs again with "
      .. "POST /admin/dlq/ID/replay"
  end
  local saved = st:get_redrive(id)
  if type(saved) ~= "table" then
    return nil, "conflict", "its journal was not kept (it failed before this version of chorus)"
  end
  local wf, err = self:version(rec.script_hash, rec.script)
  if not wf then
    return nil, "conflict", tostring(err)
  end
  local kept, failed, marks = {}, 0, 0
  for _, e in ipairs(st:journal(id)) do
    if settled(e) then
      kept[#kept + 1] = e
      marks = marks + (e.kind == "resumed" and 1 or 0) -- a restart's timeline mark, not an effect
    else
      failed = failed + 1
    end
  end
  st:drop_journal(id)
  for i, e in ipairs(kept) do
    st:put_effect(id, i, e)
  end
  st:put_redrive(id, saved)
  local redrives = type(rec.redrives) == "table" and rec.redrives or {}
  redrives[#redrives + 1] = { at = runstate.micro(core.now()), via = via, replayed = #kept - marks,
    failed_effects = failed, previous_error = rec.error }
  rec.redrives = redrives
  rec.input, rec.request = saved.input, saved.request
  rec.status, rec.result, rec.error, rec.finished, rec.duration = "running", nil, nil, nil, nil
  -- a cancel the failed run had stored (a limit stopped it first) is not
  -- this run's: kept, a crash during the redrive resumed it cancelled, and
  -- its children with it (Service:orphaned)
  rec.cancel, rec.on_cancel, rec.on_timeout = nil, nil, nil
  rec.timeline = {}
  rec.deadline_at = wf.timeout and core.now() + wf.timeout
  self:remember(rec)
  local scope = rec.key and (rec.key_scope or rec.workflow)
  if rec.key then -- the same key gets 409 while the redrive runs
    idempotency.begin(st, scope, rec.key, rec.fp, id, rec.ttl)
  end
  st:put_run(rec)
  st:put_timer(id, rec.deadline_at) -- a crash during the redrive resumes it
  local cok, cerr = pcall(st.commit, st)
  if not cok then
    self.running[id] = nil
    if rec.key then
      idempotency.release(scope, rec.key)
    end
    self.env.log("error", "could not store a redrive", { run_id = id, error = tostring(cerr) })
    return nil, "storage", cerr
  end
  self.env.log("info", "redriving a failed run", { run_id = id, workflow = rec.workflow, via = via,
    replayed = #kept - marks, failed_effects = failed })
  return rec, wf, kept
end

return runs
