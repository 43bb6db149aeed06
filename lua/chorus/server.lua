-- chorus.server — `chorus serve`: routes inbound requests to workflows, keeps
-- run records, metrics and logs, reloads scripts, shuts down gracefully.
--
-- Every request is a run of server.dispatch (lua_server.c). A workflow runs
-- as a separate run started with core.execute, so a workflow that fails or
-- hits a limit never takes the request handler down: the handler always
-- answers, with the workflow's response or a problem+json error.
--
-- Invariant: `workflows` is replaced as a whole by a successful reload and
-- never modified in place, so a run keeps the workflow object it started
-- with while new requests see the new set.
local admin = require "chorus.admin"
local core = require "chorus.core"
local context = require "chorus.context"
local errors = require "chorus.errors"
local idempotency = require "chorus.idempotency"
local metrics = require "chorus.metrics"
local outbox = require "chorus.outbox"
local runner = require "chorus.runner"
local runstate = require "chorus.runstate"
local script = require "chorus.script"
local secrets = require "chorus.secrets"
local redact = require "chorus.redact"
local store = require "chorus.store"
local webhook = require "chorus.webhook"
local json = core.json

local server = {}

local MAX_RECORDS = 10000

local state = {
  config = nil, workflows = {}, sources = {},
  running = {},    -- run id → record of each run in flight
  finished = core.record_ring(MAX_RECORDS), -- the last finished records, as JSON
  draining = false, inflight = 0, srv = nil, reload_pending = false,
  store = nil,     -- chorus.store of the data folder
  backend = nil,   -- its outbox
  relay = nil,     -- the outbox relay
  versions = {},   -- script hash → workflow, for runs resumed on old code
}
server.state = state
local EMPTY = {} -- read-only: for `x or EMPTY` on the request path

local m = {
  runs = metrics.counter("chorus_runs_total", "Workflow runs by outcome", { "workflow", "outcome" }),
  duration = metrics.histogram("chorus_run_duration_seconds", "Workflow run duration", { "workflow" }),
  inflight = metrics.gauge("chorus_runs_in_flight", "Workflow runs in flight"),
  requests = metrics.counter("chorus_http_requests_total", "Inbound HTTP requests by status",
    { "code" }),
  reloads = metrics.counter("chorus_reloads_total", "Script reloads by result", { "result" }),
  memory = metrics.gauge("chorus_lua_memory_bytes", "Lua heap size"),
  workflows = metrics.gauge("chorus_workflows", "Workflows loaded"),
  commits = metrics.counter("chorus_store_commits_total", "Group commits of the data folder (each fsync'd)"),
  store_failures = metrics.counter("chorus_store_commit_failures_total", "Group commits that failed"),
  breakers = metrics.gauge("chorus_breaker_state", "Circuit breaker state (1 for the current one)",
    { "breaker", "state" }),
}

local BREAKER_STATES = { "closed", "open", "half_open" }

local function export_breakers()
  for name, current in pairs(core.breakers()) do
    for _, st in ipairs(BREAKER_STATES) do
      m.breakers.set({ name, st }, st == current and 1 or 0)
    end
  end
end

-- ---- logging ------------------------------------------------------------

local function log(level, msg, fields)
  local line = { ts = core.now(), level = level, msg = msg }
  for k, v in pairs(fields or {}) do
    line[k] = v
  end
  local ok, text = pcall(json.encode, line)
  secrets.write_log(ok and text or json.encode({ ts = line.ts, level = level, msg = msg }))
end
server.log = log

-- ---- responses ----------------------------------------------------------

local function problem(status, title, detail, extra)
  local body = { type = "about:blank", title = title, status = status, detail = detail }
  for k, v in pairs(extra or {}) do
    body[k] = v
  end
  return { status = status, headers = { ["Content-Type"] = "application/problem+json" },
    body = json.encode(body) }
end
server.problem = problem

function server.json_response(status, value, headers)
  local h = { ["Content-Type"] = "application/json" }
  for k, v in pairs(headers or EMPTY) do
    h[k] = v
  end
  return { status = status, headers = h, body = json.encode(value) }
end
local json_response = server.json_response

--- The token of an `Authorization: Bearer TOKEN` header, or nil.
function server.bearer(req)
  return (req.headers.authorization or ""):match("^[Bb]earer%s+(.+)$")
end

local function text_response(status, text, content_type)
  return { status = status, headers = { ["Content-Type"] = content_type or "text/plain; charset=utf-8" },
    body = text }
end

-- A workflow's return value as an HTTP response (README, HTTP surface: {status=,
-- headers=, json=} or {status=, body=}, anything else 200 JSON).
local function workflow_response(value)
  if type(value) == "table" and math.type(value.status) == "integer"
      and (value.json ~= nil or value.body ~= nil or value.headers ~= nil) then
    local headers = {}
    for k, v in pairs(type(value.headers) == "table" and value.headers or {}) do
      headers[tostring(k)] = tostring(v)
    end
    if value.json ~= nil then
      headers["Content-Type"] = headers["Content-Type"] or "application/json"
      return { status = value.status, headers = headers, body = json.encode(value.json) }
    end
    headers["Content-Type"] = headers["Content-Type"] or "text/plain; charset=utf-8"
    return { status = value.status, headers = headers, body = tostring(value.body or "") }
  end
  return json_response(200, value)
end

-- ---- scripts ------------------------------------------------------------

local function walk(dir, out)
  local entries, err = core.scandir(dir)
  if not entries then
    return nil, err
  end
  table.sort(entries, function(a, b) return a.name < b.name end)
  for _, e in ipairs(entries) do
    local path = dir .. "/" .. e.name
    if e.dir then
      out.dirs[#out.dirs + 1] = path
      local ok, werr = walk(path, out)
      if not ok then
        return nil, werr
      end
    elseif e.name:match("%.lua$") and not e.name:match("_spec%.lua$") and not e.name:match("%.conf%.lua$") then
      out.files[#out.files + 1] = path
    end
  end
  return true
end

-- Compiles every script of dir in fresh sandboxes; returns the new set or
-- nil and every error.
local function compile_all(dir)
  local found = { files = {}, dirs = { dir } }
  local ok, err = walk(dir, found)
  if not ok then
    return nil, { err }
  end
  local set, errs = {}, {}
  for _, path in ipairs(found.files) do
    local wf, werr = script.load(path)
    if not wf then
      errs[#errs + 1] = werr
    elseif set[wf.name] then
      errs[#errs + 1] = ("%s: workflow name '%s' is also used by %s"):format(path, wf.name, set[wf.name].path)
    else
      set[wf.name] = { workflow = wf, path = path, source = werr, hash = core.sha256(werr) }
    end
  end
  if #errs > 0 then
    return nil, errs
  end
  return set, nil, found.dirs
end

--- Reloads the scripts folder; the running set stays when any script fails.
function server.reload(reason)
  local set, errs, dirs = compile_all(state.config.scripts)
  if not set then
    m.reloads.inc({ "error" })
    log("error", "reload failed; keeping the running scripts", { reason = reason, errors = errs })
    return false, errs
  end
  state.workflows = set
  local names = {}
  for name, entry in pairs(set) do
    names[#names + 1] = name
    -- every version is kept by hash, so a run resumed after a restart
    -- replays on the code it started with
    if not state.versions[entry.hash] then
      state.versions[entry.hash] = entry.workflow
      if state.store then
        state.store:put_script(entry.hash, entry.source)
      end
    end
    entry.source = nil
  end
  table.sort(names)
  m.reloads.inc({ "ok" })
  m.workflows.set(nil, #names)
  log("info", "scripts loaded", { reason = reason, workflows = names })
  return true, names, dirs
end

-- ---- run records ----------------------------------------------------------

-- A run's record is a table while it runs; when it ends its JSON text goes
-- to the ring of finished ones (the data folder keeps them all).
local function remember(rec)
  state.running[rec.id] = rec
  return rec
end

local function new_record(id, name, trace_id)
  -- the nil fields only size the table for what the run's end adds: no rehash
  return remember({ id = id, workflow = name, status = "running", started = runstate.micro(core.now()),
    trace_id = trace_id, timeline = {}, deadline_at = nil, finished = nil, duration = nil, result = nil,
    error = nil })
end

-- What a record shows of the run's data: masked by its workflow's redact
-- paths (chorus.redact) wherever the record is shown or kept finished.
local RECORD_DATA = { "input", "result", "error", "on_timeout" }

-- A run record as the JSON GET /runs/ID returns, secrets redacted. A
-- result or error JSON cannot carry is replaced in the record by an error
-- saying so (the record, and the webhook made of it, must stay readable).
local function record_text(rec)
  rec = redact.fields(rec, rec.redact, RECORD_DATA)
  local eok, text = pcall(json.encode, rec)
  if not eok then -- keep what JSON can carry
    local kind = rec.error and type(rec.error.kind) == "string" and rec.error.kind or "result"
    rec.result = nil
    rec.error = { kind = kind, message = ("the run's %s is not JSON: %s"):format(
      rec.status == "succeeded" and "result" or "error", tostring(text)) }
    eok, text = pcall(json.encode, rec)
    if not eok then -- e.g. a timeline entry: the record's frame alone
      text = json.encode({ id = rec.id, workflow = rec.workflow, status = rec.status, started = rec.started,
        finished = rec.finished, duration = rec.duration, trace_id = rec.trace_id, error = rec.error })
    end
  end
  return secrets.redact(text)
end

-- record → the run's state while it runs (weak: gone with the record)
local rec_state = setmetatable({}, { __mode = "k" })

local function finish_record(rec, ok, value, info)
  rec.finished = runstate.micro(core.now())
  rec.duration = runstate.micro(rec.finished - rec.started)
  -- a run whose saga rolled back reports it, whatever it returned
  local compensated = rec_state[rec] and rec_state[rec].compensated
  -- a timed-out run's on_timeout outcome { ok =, value | error } (chorus.runner)
  rec.on_timeout = not ok and rec_state[rec] and rec_state[rec].on_timeout or nil
  rec_state[rec] = nil
  if ok then
    rec.status = compensated and "compensated" or "succeeded"
    rec.result = value
  else
    local err = errors.normalize(value)
    rec.status = err.kind == "deadline" and "timed_out" or compensated and "compensated" or "failed"
    rec.error = err
    log("error", "run failed", { run_id = rec.id, workflow = rec.workflow, trace_id = rec.trace_id,
      error = redact.value(err, rec.redact), traceback = info and info.traceback })
  end
  m.runs.inc({ rec.workflow, rec.status })
  m.duration.observe({ rec.workflow }, rec.duration)
  -- A finished record never changes: keep it as its JSON text, outside the
  -- Lua heap (kept as Lua values, ten thousand records became old objects
  -- freed only by major collections, each marking and sweeping them all:
  -- the serve benchmark's p99).
  local text = record_text(rec)
  state.running[rec.id] = nil
  state.finished:put(rec.id, text)
  return text
end

-- ---- workflows ----------------------------------------------------------

local function parse_traceparent(value)
  if type(value) ~= "string" then
    return nil
  end
  local trace = value:match("^%x%x%-(%x+)%-%x+%-%x%x$")
  if trace and #trace == 32 and trace ~= ("0"):rep(32) then
    return trace:lower()
  end
  return nil
end

-- The response a finished run gives its caller (and replays under its
-- idempotency key).
local function run_response(rec, ok, value)
  if not ok and rec.status == "timed_out" then
    return problem(504, "Gateway Timeout", "the workflow's run passed its deadline (its timeout); see the run record",
      { run_id = rec.id, kind = rec.error.kind })
  end
  if not ok then
    return problem(500, "Internal Server Error", "the workflow failed; see the run record",
      { run_id = rec.id, kind = rec.error.kind })
  end
  local rok, resp = pcall(workflow_response, value)
  if not rok then
    return problem(500, "Internal Server Error", "the workflow's result is not JSON: " .. tostring(resp),
      { run_id = rec.id })
  end
  -- a secret the run read never leaves in its answer, as in its record
  resp.body = secrets.redact(resp.body)
  for k, v in pairs(resp.headers) do
    resp.headers[k] = secrets.redact(v)
  end
  resp.headers["X-Run-Id"] = rec.id
  return resp
end

-- The run-end webhook to rec.callback_url, through the outbox, signed with
-- HMAC-SHA256 of the body under the configured webhook secret.
local function queue_webhook(rec)
  local body = json.encode({ run_id = rec.id, workflow = rec.workflow, status = rec.status,
    result = rec.result, error = rec.error, on_timeout = rec.on_timeout })
  local headers = { ["Content-Type"] = "application/json", ["X-Chorus-Run-Id"] = rec.id }
  local secret = state.config.webhook_secret or core.env("CHORUS_WEBHOOK_SECRET")
  if secret and secret ~= "" then
    headers[webhook.HEADER] = webhook.sign(secret, body)
  end
  -- restricted: the URL came from the request, so the egress policy keeps
  -- it off loopback, private networks and this server (egress.allow)
  state.backend:add(outbox.new_entry("http", { request = { method = "POST", url = rec.callback_url,
    headers = headers, body = body, restricted = true }, run_id = rec.id }))
end

-- Writes the first records of a durable run: the run (running), its timer
-- and, with an idempotency key, the key (running). They land in one group
-- commit with the run's first journal entries.
local function durable_begin(rec, entry, input)
  local st = state.store
  rec.input = input -- kept whole while the run runs: recovery replays it
  rec.redact = entry.workflow.redact
  rec.script_hash = entry.hash
  rec.script = entry.path
  st:put_run(rec)
  st:put_timer(rec.id, rec.deadline_at)
end

-- The answer to a request whose run could not be stored: 507 when the
-- data folder is full (storage.max_size_mb), else 500. Never a 2xx.
local function storage_problem(err, run_id)
  if store.is_full(err) then
    return problem(507, "Insufficient Storage",
      "the data folder is full (storage.max_size_mb); the run was not stored", { run_id = run_id })
  end
  return problem(500, "Internal Server Error", "the run could not be stored", { run_id = run_id })
end

-- A run whose records did not reach the disk, though the client will hear
-- it failed: its in-memory record says so, its key is free again (the client
-- retries it), and the records of it that did land earlier (the key, the
-- timer that would resume it after a restart) are dropped if the store
-- takes the writes now.
local function abandon_run(rec, scope, key, err)
  rec.status = "failed"
  rec.result = nil
  rec.error = { kind = "storage", message = tostring(err) }
  state.running[rec.id] = nil
  state.finished:put(rec.id, record_text(rec))
  local st = state.store
  if key then
    idempotency.abandon(st, scope, key, rec.id)
  end
  if st then
    st:del_timer(rec.id)
    st:drop_journal(rec.id)
    st.st:del("runs", rec.id)
    pcall(st.commit, st)
  end
end

-- A failed run keeps its journal for a redrive (POST /admin/runs/ID/redrive);
-- one the outbox started does not: the outbox retries it under the same id
-- with a fresh journal, and its DLQ entry is how it runs again.
local function redrivable(rec)
  return rec.status == "failed" and not rec.outbox and rec.input ~= nil
end

-- The end of a run: its record, the key's stored response, the outbox
-- entry the run delivered, the webhook; in the data folder these commit
-- together, and the timer and journal go. Returns whether they were
-- stored, and why not.
local function run_end(rec, text, ok, value)
  local st = state.store
  if st then
    st.st:put("runs", rec.id, text)
    st:del_timer(rec.id)
    if redrivable(rec) then -- kept for a redrive, with what its record masks
      st:put_redrive(rec.id, { input = rec.input, request = rec.request })
    else
      st:drop_journal(rec.id)
    end
  end
  if rec.key then
    idempotency.finish(st, rec.key_scope or rec.workflow, rec.key, rec.fp, rec.id, rec.ttl,
      run_response(rec, ok, value))
  end
  if rec.outbox then
    local failure = not ok and { error = rec.error, permanent = rec.error.permanent == true } or nil
    outbox.settle(state.backend, rec.outbox, failure)
  end
  if rec.callback_url then
    queue_webhook(rec)
  end
  context.drop_reservations(rec.id)
  local cok, cerr = true, nil
  if st then
    cok, cerr = pcall(st.commit, st)
  end
  if not cok then
    log("error", "could not store the end of a run", { run_id = rec.id, error = tostring(cerr) })
  elseif rec.key then
    idempotency.release(rec.key_scope or rec.workflow, rec.key)
  end
  return cok, cerr
end

-- Runs a workflow as its own run and records it; returns ok, value, and
-- whether its end was stored (and why not). recorded: the journal of a run
-- resumed after a restart.
local function execute(entry, rec, input, recorded)
  rec.redact = entry.workflow.redact
  state.inflight = state.inflight + 1 -- the gauge reads it when /metrics is scraped
  local opts = { trace_id = rec.trace_id, deadline = rec.deadline_at,
    on_state = function(s)
      rec.timeline = s.timeline
      rec_state[rec] = s
    end }
  if state.store then
    opts.journal = { store = state.store, recorded = recorded }
  end
  opts.request = rec.request
  local ok, value, info = core.execute({ id = rec.id }, runner.execute, entry.workflow, input, opts)
  state.inflight = state.inflight - 1
  local stored, serr = run_end(rec, finish_record(rec, ok, value, info), ok, value)
  if not stored and rec.key then -- a key must not stay in flight for good
    idempotency.release(rec.key_scope or rec.workflow, rec.key)
  end
  return ok, value, stored, serr
end

-- The callback URL of a request, or nil; nil and why when it is refused.
-- A numeric host is checked against the egress policy here (a 400 now
-- rather than a DLQ entry later); a host name when the webhook connects.
local function callback_url(req)
  local url = req.query.callback_url or req.headers["callback-url"]
  if url == nil then
    return nil
  end
  if not url:match("^https?://[^%s]+$") then
    return nil, "callback_url must be an http:// or https:// URL"
  end
  if require("chorus.http").has_credentials(url) then
    return nil, "callback_url must not carry user:password@"
  end
  local authority = url:match("^https?://([^/?#]*)")
  local host, port = authority:match("^%[([^%]]+)%]:?(%d*)$")
  if not host then
    host, port = authority:match("^([^:]*):?(%d*)$")
  end
  if host and (host:match("^[%d%.]+$") or host:find(":", 1, true)) then
    port = tonumber(port) or (url:match("^https") and 443 or 80)
    local why = core.egress_check(host, port)
    if why then
      return nil, ("callback_url may not reach %s: %s (the config's egress.allow lists the addresses "
        .. "callbacks may reach)"):format(host, why)
    end
  end
  return url
end

-- Checks config auth.NAME: a bearer token, or an HMAC signature of the body
-- (chorus.webhook). Returns true and the caller's identity (nil when the
-- workflow is open), or false.
local function authenticate(req, name)
  local rule = (state.config.auth or EMPTY)[name]
  if not rule then
    return true, nil
  end
  local given = server.bearer(req)
  if rule.token and given and webhook.equal(given, rule.token) then
    return true, "token:" .. core.sha256(rule.token):sub(1, 16)
  end
  local sig = req.headers[webhook.HEADER:lower()]
  if rule.hmac_secret and sig and webhook.verify(rule.hmac_secret, req.body, sig) then
    return true, "hmac:" .. core.sha256(rule.hmac_secret):sub(1, 16)
  end
  return false
end

-- What ctx.request shows of the inbound request: method, path, query, the
-- Idempotency-Key and the headers config request_headers lists. Kept in the
-- run's record, so a run resumed or redriven sees the same.
local function request_facts(req, key)
  local headers, query = {}, {}
  for _, h in ipairs(state.config.request_headers or EMPTY) do
    headers[h] = req.headers[h]
  end
  for k, v in pairs(req.query or EMPTY) do
    query[k] = v
  end
  return { method = req.method, path = req.path, query = query, headers = headers, idempotency_key = key }
end

local redrive -- defined with the durable state below

local function start_workflow(req, name)
  local entry = state.workflows[name]
  if not entry then
    return problem(404, "Not Found", ("no workflow named '%s'"):format(name))
  end
  if req.method ~= "POST" then
    local r = problem(405, "Method Not Allowed", "workflows are started with POST")
    r.headers.Allow = "POST"
    return r
  end
  local authed, identity = authenticate(req, name)
  if not authed then
    local r = problem(401, "Unauthorized", ("workflow '%s' requires a bearer token or a signed body (%s)")
      :format(name, webhook.HEADER))
    r.headers["WWW-Authenticate"] = "Bearer"
    return r
  end
  local max = (state.config.limits or EMPTY).max_inflight_runs or 10000
  if state.inflight >= max then -- load shedding: nothing stored, the client retries
    local r = problem(503, "Service Unavailable", ("%d runs are in flight, the most this server takes"):format(max))
    r.headers["Retry-After"] = "1"
    return r
  end
  local wf = entry.workflow
  if req.repeated and req.repeated["idempotency-key"] then -- which one would the client mean?
    return problem(400, "Bad Request", "the request has more than one Idempotency-Key header")
  end
  local key, kerr = idempotency.parse(req.headers["idempotency-key"])
  if kerr then
    return problem(400, "Bad Request", kerr)
  end
  local idem = wf.idempotency or EMPTY
  if not key and idem.required then
    return problem(400, "Bad Request", ("workflow '%s' requires an Idempotency-Key header"):format(name))
  end
  local input = {}
  -- only JSON's own whitespace makes an empty body: "\f" is invalid JSON
  if req.body:match("[^ \t\r\n]") then
    local ok, value = pcall(json.decode, req.body)
    if not ok then
      return problem(400, "Bad Request", "the body is not valid JSON: " .. tostring(value):gsub("^json%.decode: ", ""))
    end
    input = value
  end
  local callback, cerr = callback_url(req)
  if cerr then
    return problem(400, "Bad Request", cerr)
  end
  local fp
  -- keys are per workflow and, when callers authenticate, per caller: one
  -- client never reads another's stored response
  local scope = identity and (name .. "@" .. identity) or name
  if key then
    local legacy
    fp, legacy = idempotency.fingerprint(req)
    local verdict, stored, key_rec = idempotency.check(state.store, scope, key, fp, legacy)
    if verdict == "conflict" then
      return problem(409, "Conflict", "a request with this Idempotency-Key is still in flight; retry later")
    elseif verdict == "mismatch" then
      return problem(422, "Unprocessable Content",
        "this Idempotency-Key was used with a different request (method, path, query, Callback-URL or body)")
    elseif verdict == "replay" and idem.on_failure == "redrive" and key_rec and key_rec.run_id
        and key_rec.response and key_rec.response.status == 500 then
      -- the key's run failed: finish it (redrive) rather than replay its 500
      local resp, _, refused = redrive(key_rec.run_id, "idempotency", true)
      if not refused then
        return resp
      end
    end
    if verdict == "replay" then
      if type(stored) ~= "table" or math.type(stored.status) ~= "integer" or type(stored.headers) ~= "table"
          or type(stored.body) ~= "string" then
        log("error", "a stored idempotent response is unreadable", { workflow = name, key = key })
        return problem(500, "Internal Server Error", "the stored response of this Idempotency-Key is unreadable")
      end
      stored.headers["Idempotent-Replayed"] = "true"
      return stored
    end
  end
  local trace_id = parse_traceparent(req.headers.traceparent) or core.random_hex(16)
  local rec = new_record(core.uuid(), name, trace_id)
  rec.deadline_at = wf.timeout and core.now() + wf.timeout
  rec.callback_url = callback
  rec.request = request_facts(req, key)
  local prefer = req.headers.prefer
  local async = prefer and prefer:lower():find("respond%-async")
  if key then
    idempotency.begin(state.store, scope, key, fp, rec.id, idem.ttl)
    if not async then -- the run's end stores the response
      rec.key, rec.fp, rec.ttl, rec.key_scope = key, fp, idem.ttl, scope
    end
  end
  if state.store then
    local bok, berr = pcall(durable_begin, rec, entry, input)
    if not bok then
      if key then
        idempotency.release(scope, key)
      end
      log("error", "could not store a new run", { run_id = rec.id, error = tostring(berr) })
      return problem(500, "Internal Server Error", "the run could not be stored")
    end
  end
  if async then
    local resp = json_response(202, { run_id = rec.id }, { Location = "/runs/" .. rec.id,
      ["Preference-Applied"] = "respond-async" })
    if key then
      idempotency.finish(state.store, scope, key, fp, rec.id, idem.ttl, resp)
    end
    if state.store then -- acknowledged only once the run is durable
      local cok, serr = pcall(state.store.commit, state.store)
      if not cok then
        log("error", "could not store a new run", { run_id = rec.id, error = tostring(serr) })
        abandon_run(rec, scope, key, serr)
        return storage_problem(serr, rec.id)
      end
    end
    if key then
      idempotency.release(scope, key)
    end
    core.start(nil, function() execute(entry, rec, input) end)
    return resp
  end
  local ok, value, stored, serr = execute(entry, rec, input)
  if not stored then
    abandon_run(rec, scope, key, serr)
    return storage_problem(serr, rec.id)
  end
  return run_response(rec, ok, value)
end

-- ---- durable state: recovery, the relay, the sweep --------------------------

-- The workflow of a stored script version (compiled once per hash).
local function version(hash, path)
  local wf = state.versions[hash]
  if wf then
    return wf
  end
  local source = state.store:get_script(hash)
  if not source then
    return nil, ("the script version %s is not in the data folder"):format(tostring(hash))
  end
  local err
  wf, err = script.compile(source, path or "?")
  if wf then
    state.versions[hash] = wf
  end
  return wf, err
end

-- Statuses whose outcome is unknown or worth another try (as chorus.retry).
local function retryable_status(status)
  return math.type(status) == "integer" and (status >= 500 or status == 408 or status == 425 or status == 429)
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

--- Runs a failed run again (a redrive): from its journal, on its script
--- version, under its id. The effects it recorded replay; the failed ones
--- (see settled) are dropped from the journal, so the code that made them sends them again
--- with the same step and the same ctx.key keys (an upstream that honours
--- Idempotency-Key sees one operation). Its record lists each redrive. via
--- says who asked (admin, cli, idempotency); with wait the redrive runs to
--- its end here and the run's response comes back with its record's text,
--- else a 202 at once. Returns the response, the record text (wait), and
--- true when the run cannot be redriven (the response is then a problem).
redrive = function(id, via, wait)
  local st = state.store
  if not st then
    return problem(501, "Not Implemented", "this server keeps no data folder (storage.durable = false); "
      .. "runs cannot be redriven"), nil, true
  end
  local function refuse(why)
    return problem(409, "Conflict", "this run cannot be redriven: " .. why, { run_id = id }), nil, true
  end
  if state.running[id] then
    return refuse("it is running")
  end
  local gok, rec = pcall(st.get_run, st, id)
  if not gok then
    log("error", "cannot read a run record", { run_id = id, error = tostring(rec) })
    return problem(500, "Internal Server Error", tostring(rec)), nil, true
  end
  if type(rec) ~= "table" then
    return problem(404, "Not Found", ("no run with id '%s'"):format(id)), nil, true
  end
  if rec.status ~= "failed" then
    return refuse(("only a failed run is redriven, and this one is %s"):format(tostring(rec.status)))
  end
  if rec.outbox then
    return refuse("the outbox started it; it retries by itself, and a dead one runs again with "
      .. "POST /admin/dlq/ID/replay")
  end
  local saved = st:get_redrive(id)
  if type(saved) ~= "table" then
    return refuse("its journal was not kept (it failed before this version of chorus)")
  end
  local wf, err = version(rec.script_hash, rec.script)
  if not wf then
    return refuse(tostring(err))
  end
  local kept, failed = {}, 0
  for _, e in ipairs(st:journal(id)) do
    if settled(e) then
      kept[#kept + 1] = e
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
  redrives[#redrives + 1] = { at = runstate.micro(core.now()), via = via, replayed = #kept,
    failed_effects = failed, previous_error = rec.error }
  rec.redrives = redrives
  rec.input, rec.request = saved.input, saved.request
  rec.status, rec.result, rec.error, rec.finished, rec.duration = "running", nil, nil, nil, nil
  rec.timeline = {}
  rec.deadline_at = wf.timeout and core.now() + wf.timeout
  remember(rec)
  local scope = rec.key and (rec.key_scope or rec.workflow)
  if rec.key then -- the same key gets 409 while the redrive runs
    idempotency.begin(st, scope, rec.key, rec.fp, id, rec.ttl)
  end
  st:put_run(rec)
  st:put_timer(id, rec.deadline_at) -- a crash during the redrive resumes it
  local cok, cerr = pcall(st.commit, st)
  if not cok then
    state.running[id] = nil
    if rec.key then
      idempotency.release(scope, rec.key)
    end
    log("error", "could not store a redrive", { run_id = id, error = tostring(cerr) })
    return storage_problem(cerr, id), nil, true
  end
  log("info", "redriving a failed run", { run_id = id, workflow = rec.workflow, via = via,
    replayed = #kept, failed_effects = failed })
  if wait then
    local ok, value, stored, serr = execute({ workflow = wf }, rec, rec.input, kept)
    if not stored then
      return storage_problem(serr, id)
    end
    return run_response(rec, ok, value), state.finished:get(id)
  end
  core.start(nil, function() execute({ workflow = wf }, rec, rec.input, kept) end)
  return json_response(202, { run_id = id, status = "running", redrives = #redrives },
    { Location = "/runs/" .. id })
end

--- POST /admin/runs/ID/redrive.
function server.redrive(id)
  return (redrive(id, "admin", false))
end

--- `chorus runs redrive ID`: the redrive in this process, on the data
--- folder st (whose lock the caller holds: no server uses it), to its end.
--- Returns the run's response, its record's text, and whether it was refused.
function server.redrive_local(config, st, id)
  state.config, state.store = config, st
  state.backend = outbox.durable(st)
  outbox.backend = state.backend
  return redrive(id, "cli", true)
end

-- Runs recovery starts again per loop turn (storage.recovery_batch): between
-- batches the loop serves requests, so /healthz answers at once whatever
-- the number of runs to resume.
local RECOVERY_BATCH = 200
local RECOVERY_LOG_EVERY = 1 -- seconds between progress lines

-- Resumes one unfinished run: replayed from the start against its journal,
-- on its script version. Returns whether it had a record to resume.
local function resume(st, id)
  local rec = st:get_run(id)
  if not rec then
    st:del_timer(id)
    return false
  end
  remember(rec)
  rec.status = "running"
  if rec.key then
    idempotency.begin(nil, rec.key_scope or rec.workflow, rec.key, rec.fp)
  end
  local wf, err = version(rec.script_hash, rec.script)
  local recorded = st:journal(rec.id)
  for _, name in ipairs(context.held_locks(recorded)) do
    context.reserve_lock(name, rec.id)
  end
  core.start(nil, function()
    if not wf then
      state.inflight = state.inflight + 1
      local text = finish_record(rec, false, { kind = "script", message = err })
      state.inflight = state.inflight - 1
      run_end(rec, text, false)
      return
    end
    execute({ workflow = wf }, rec, rec.input, recorded)
  end)
  return true
end

--- Resumes every run that had not finished when the process stopped. The
--- list of them is read here, before the loop runs (a run a request starts
--- later is not among them); the runs start in a task, a batch per loop
--- turn, while the server already answers: /readyz says 503 "recovering"
--- until the last one has started.
local function recover()
  local st = state.store
  local unfinished = st:unfinished()
  -- a workflow entry marked started whose run never got going is due again
  -- (its run, if it has a timer, is among those resumed)
  local live = {}
  for _, u in ipairs(unfinished) do
    live[u.id] = true
  end
  for _, e in ipairs(st:started_outbox()) do
    if not live[e.id] then
      e.state = nil
      st:put_outbox(e)
    end
  end
  local total = #unfinished
  state.recovery = { resumed = 0, total = total }
  if total == 0 then
    return
  end
  state.recovering = true
  local batch = (state.config.storage or EMPTY).recovery_batch or RECOVERY_BATCH
  -- test-only: a pause between batches, so a spec sees recovery under way
  local pause = tonumber(core.env("CHORUS_TEST_RECOVERY_PAUSE") or "") or 0
  log("info", "resuming runs after a restart", { runs = total })
  core.start({ instructions = 0, memory = 0 }, function()
    local t0 = core.monotime()
    local last_log, resumed, failed = t0, 0, 0
    for i, u in ipairs(unfinished) do
      if state.draining then -- the rest resume at the next start
        break
      end
      -- a record that cannot be read is said and left alone, never acted
      -- on (`chorus data verify` names it); the other runs go on
      local ok, res = pcall(resume, st, u.id)
      if not ok then
        failed = failed + 1
        log("error", "cannot resume a run", { run_id = u.id, error = tostring(res) })
      elseif res then
        resumed = resumed + 1
      end
      state.recovery.resumed = i
      if i % batch == 0 and i < total then
        core.sleep(pause)
        if core.monotime() - last_log >= RECOVERY_LOG_EVERY then
          last_log = core.monotime()
          log("info", "resuming runs", { resumed = i, total = total })
        end
      end
    end
    state.recovering = false
    log("info", "resumed runs after a restart", { runs = resumed, failed = failed,
      seconds = math.floor((core.monotime() - t0) * 1000) / 1000 })
  end)
end

-- A workflow entry of the outbox runs as a durable run whose id is the
-- entry's; the run's end settles the entry (outbox.settle).
local function start_outbox_workflow(backend, e)
  local entry = state.workflows[e.workflow]
  if not entry then
    return false, { permanent = true, error = { kind = "unknown_workflow",
      message = ("no workflow named '%s'"):format(e.workflow) } }
  end
  e.state = "started"
  backend:update(e)
  local rec = remember({ id = e.id, workflow = e.workflow, status = "running",
    started = runstate.micro(core.now()), trace_id = core.random_hex(16), timeline = {},
    outbox = e, attempt = e.attempts + 1 })
  rec.deadline_at = entry.workflow.timeout and core.now() + entry.workflow.timeout
  if state.store then
    durable_begin(rec, entry, e.input)
  end
  execute(entry, rec, e.input)
  return "started"
end

local SWEEP_EVERY = 60
local SWEEP_BATCH = 5000
local DEFAULT_RETENTION = 7 * 24 * 3600

-- Every minute, a step through the idempotency keys (expired ones go) and
-- the run records (finished ones older than storage.runs_retention go), so
-- the data folder does not grow forever.
local function sweep_loop()
  local st = state.store
  local retention = (state.config.storage or {}).runs_retention or DEFAULT_RETENTION
  local keys_from, runs_from
  while not state.draining do
    core.sleep(SWEEP_EVERY)
    local now = core.now()
    local keys, runs
    keys, keys_from = st:sweep("idempotency", keys_from, SWEEP_BATCH, function(rec)
      return rec.state ~= "running" and rec.expires_at ~= nil and rec.expires_at <= now
    end)
    runs, runs_from = st:sweep("runs", runs_from, SWEEP_BATCH, function(rec)
      local old = rec.status ~= "running" and rec.finished ~= nil and rec.finished < now - retention
      if old and rec.status == "failed" and type(rec.id) == "string" then
        st:drop_journal(rec.id) -- the journal kept for a redrive goes with the record
      end
      return old
    end)
    if keys + runs > 0 then
      st:commit()
      log("info", "swept the data folder", { expired_keys = keys, old_runs = runs })
    end
  end
end

-- Opens the data folder, or with storage.durable = false keeps the
-- outbox in memory (nothing survives a restart: for benchmarks and
-- throwaway setups).
local function start_durable()
  local conf = state.config
  local storage = conf.storage or {}
  if storage.durable == false then
    state.backend = outbox.memory()
    outbox.backend = state.backend
  else
    local st, err = store.open(conf.data, { sync = storage.sync ~= false, map_size_mb = storage.map_size_mb,
      max_size_mb = storage.max_size_mb })
    if not st then
      return nil, err
    end
    local lok, lerr = st.st:lock(5)
    if not lok then
      st:close()
      return nil, lerr
    end
    -- A corrupt record refuses the start: recovery and the relay would
    -- otherwise act on a data folder they cannot fully read.
    local vok, report = pcall(st.verify, st)
    local bad = vok and report.bad or { { message = tostring(report) } }
    if #bad > 0 then
      st:close()
      return nil, ("the data folder %s has %d corrupt record%s (first: %s); `chorus data verify --data %s` "
        .. "lists them; restore the folder from a backup, or move it away to start with an empty one")
        :format(conf.data, #bad, #bad == 1 and "" or "s", bad[1].message, conf.data)
    end
    state.store = st
    state.backend = outbox.durable(st)
  end
  local oc = conf.outbox or {}
  for k in pairs(outbox.defaults) do
    if oc[k] ~= nil then
      outbox.defaults[k] = oc[k]
    end
  end
  state.relay = outbox.relay(state.backend, { alerts = conf.alerts })
  outbox.start_workflow = start_outbox_workflow
  return true
end

local function start_background()
  core.start({ instructions = 0, memory = 0 }, function() state.relay:run() end)
  if state.store then
    recover()
    core.start({ instructions = 0, memory = 0 }, sweep_loop)
  end
end

-- ---- dispatch -------------------------------------------------------------

-- GET /runs/ID: the record, to the admin token or to the credentials the
-- run's workflow asks for in auth.NAME; a run of an open workflow is read
-- with its id alone (122 random bits: the id is the capability, as in the
-- Location header of an async start). An unknown id and a refused one get
-- the same 404, so ids cannot be probed.
local function run_record(req, id)
  local rec = state.running[id] or state.finished:get(id)
  if not rec and state.store then
    local gok, text = pcall(state.store.st.get, state.store.st, "runs", id)
    if not gok then -- a corrupt record: said, never passed off as missing
      log("error", "cannot read a run record", { run_id = id, error = tostring(text) })
      return problem(500, "Internal Server Error", tostring(text))
    end
    rec = text
  end
  local text = rec and (type(rec) == "string" and rec or record_text(rec))
  local name = type(rec) == "table" and rec.workflow
  if text and not name then
    local ok, decoded = pcall(json.decode, text)
    name = ok and type(decoded) == "table" and decoded.workflow
  end
  if not text or not (admin.authorized(server, req) or authenticate(req, tostring(name))) then
    return problem(404, "Not Found", ("no run with id '%s' that these credentials can read (runs of a "
      .. "workflow with auth need its token or the admin token)"):format(id))
  end
  return { status = 200, headers = { ["Content-Type"] = "application/json" }, body = text }
end

local function route(req)
  local path = req.path
  local name = path:match("^/workflows/([^/]+)$")
  if name then
    return start_workflow(req, name)
  end
  local id = path:match("^/runs/([^/]+)$")
  if id then
    return run_record(req, id)
  end
  if path == "/metrics" then
    m.memory.set(nil, core.stats().lua_bytes)
    m.inflight.set(nil, state.inflight)
    if state.store then
      -- the store counts; the counters catch up with it
      local ss, seen = state.store:stats(), state.store_seen or { commits = 0, failures = 0 }
      m.commits.inc(nil, ss.commits - seen.commits)
      m.store_failures.inc(nil, ss.failures - seen.failures)
      state.store_seen = ss
    end
    export_breakers()
    return text_response(200, metrics.render(), "text/plain; version=0.0.4")
  end
  if path == "/healthz" then
    return json_response(200, { status = "ok" })
  end
  if path == "/readyz" then
    if state.draining then
      return json_response(503, { status = "draining" })
    end
    if state.recovering then -- not every unfinished run has started again
      return json_response(503, { status = "recovering", resumed = state.recovery.resumed,
        total = state.recovery.total })
    end
    return json_response(200, { status = "ready" })
  end
  local what = path:match("^/admin/(.+)$")
  if what then
    return admin.handle(server, req, what)
  end
  return problem(404, "Not Found", ("nothing at %s"):format(path))
end

--- The request handler (a run per request): always returns a response.
function server.dispatch(req)
  local t0 = core.now()
  local ok, resp = pcall(route, req)
  if ok and type(resp) ~= "table" then
    ok, resp = false, "the route gave no response"
  end
  if not ok then
    log("error", "request handler failed", { path = req.path, error = tostring(resp) })
    resp = problem(500, "Internal Server Error", "the server could not handle this request")
  end
  m.requests.inc({ resp.status })
  if state.config.access_log == false then
    return resp
  end
  log("info", "request", { method = req.method, path = req.path, status = resp.status,
    duration_ms = math.floor((core.now() - t0) * 1e6) / 1e3, run_id = resp.headers["X-Run-Id"] })
  return resp
end

-- ---- lifecycle --------------------------------------------------------------

-- A reload waits until the scripts folder has been quiet this long: an
-- editor's save can be several writes (truncate, write, write), and a half
-- written file must not count as a failed reload.
local RELOAD_QUIET = 0.5

local function watch_scripts(dirs)
  local last_change = 0
  for _, dir in ipairs(dirs or {}) do
    core.watch(dir, function()
      last_change = core.monotime()
      if state.reload_pending then
        return
      end
      state.reload_pending = true
      repeat -- every change meanwhile pushes the reload back
        core.sleep(RELOAD_QUIET - (core.monotime() - last_change))
      until core.monotime() - last_change >= RELOAD_QUIET
      state.reload_pending = false
      server.reload("file change")
    end)
  end
end

local function drain(signal)
  if state.draining then
    return
  end
  state.draining = true
  -- Whatever happens while waiting, the loop stops: an error here must not
  -- leave a server that has stopped accepting but never exits.
  local ok, err = pcall(function()
    log("info", "draining", { signal = signal, pending = state.srv:pending(), inflight = state.inflight })
    state.srv:quiesce()
    state.relay:stop()
    local deadline = core.monotime() + (state.config.drain_timeout or 10)
    while (state.srv:pending() > 0 or state.inflight > 0 or state.relay.n_inflight > 0)
        and core.monotime() < deadline do
      core.sleep(0.05)
    end
    log("info", "stopped", { pending = state.srv:pending(), inflight = state.inflight })
  end)
  core.stop()
  if not ok then
    pcall(log, "error", "drain failed; stopping now", { error = tostring(err) })
  end
end

--- Starts serving: loads scripts, listens, runs the loop until drained.
--- Returns the exit status.
function server.serve(config, on_listening)
  state.config = config
  local dok, derr = start_durable()
  if not dok then
    return nil, derr
  end
  local ok, result, dirs = server.reload("start")
  if not ok then
    return nil, "cannot load scripts: " .. table.concat(result, "; ")
  end
  local limits = config.limits or {}
  local host, port = config.listen:match("^(.+):(%d+)$")
  local sok, srv = pcall(core.serve, {
    host = host, port = tonumber(port), max_body = limits.max_body_bytes,
    max_header = limits.max_header_bytes, max_connections = limits.max_connections,
    idle_timeout = limits.client_timeout, client_timeout = limits.client_timeout,
  }, server.dispatch)
  if not sok then
    return nil, tostring(srv)
  end
  state.srv = srv
  state.config.drain_timeout = limits.drain_timeout
  -- callbacks never reach this server itself, whatever egress.allow says
  core.egress({ allow = (config.egress or EMPTY).allow, self = ("%s:%d"):format(host, srv:port()) })
  core.on_signal("SIGHUP", function() server.reload("SIGHUP") end)
  core.on_signal("SIGTERM", drain)
  core.on_signal("SIGINT", drain)
  watch_scripts(dirs)
  start_background()
  local address = ("%s:%d"):format(host, srv:port())
  log("info", "listening", { address = address, scripts = config.scripts })
  if on_listening then
    on_listening(address)
  end
  core.loop()
  srv:close()
  if state.store then
    state.store:close()
  end
  return true
end

return server
