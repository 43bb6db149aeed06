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
local idempotency = require "chorus.idempotency"
local metrics = require "chorus.metrics"
local outbox = require "chorus.outbox"
local runs = require "chorus.runs"
local script = require "chorus.script"
local secrets = require "chorus.secrets"
local store = require "chorus.store"
local webhook = require "chorus.webhook"
local json = core.json

local server = {}

local state = {
  config = nil, workflows = {}, sources = {},
  draining = false, srv = nil, reload_pending = false,
  store = nil,     -- chorus.store of the data folder
  backend = nil,   -- its outbox
  relay = nil,     -- the outbox relay
  runs = nil,      -- the run service (chorus.runs): records, runs in flight, versions
}
server.state = state
local EMPTY = {} -- read-only: for `x or EMPTY` on the request path

local m = {
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

local log = require("chorus.log").event
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
    state.runs:keep_version(entry)
    entry.source = nil
  end
  table.sort(names)
  m.reloads.inc({ "ok" })
  m.workflows.set(nil, #names)
  log("info", "scripts loaded", { reason = reason, workflows = names })
  return true, names, dirs
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

-- The answer to a request whose run could not be stored: 507 when the
-- data folder is full (storage.max_size_mb), else 500. Never a 2xx.
local function storage_problem(err, run_id)
  if store.is_full(err) then
    return problem(507, "Insufficient Storage",
      "the data folder is full (storage.max_size_mb); the run was not stored", { run_id = run_id })
  end
  return problem(500, "Internal Server Error", "the run could not be stored", { run_id = run_id })
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

-- The run service over the server's store and outbox: it starts, records,
-- resumes and finishes every run (chorus.runs). max_records: how many
-- finished records it keeps in memory (10000).
function server.service(st, backend, max_records)
  return runs.service({
    store = st, backend = backend, config = state.config, log = log, max_records = max_records,
    respond = function(rec, ok, value) return run_response(rec, ok, value) end,
    workflow = function(name) return state.workflows[name] end,
  })
end

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
  if state.runs.inflight >= max then -- load shedding: nothing stored, the client retries
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
  local svc = state.runs
  local rec = svc:new_record(core.uuid(), name, parse_traceparent(req.headers.traceparent), {
    deadline_at = wf.timeout and core.now() + wf.timeout, callback_url = callback,
    request = request_facts(req, key) })
  local prefer = req.headers.prefer
  local async = prefer and prefer:lower():find("respond%-async")
  if key then
    idempotency.begin(state.store, scope, key, fp, rec.id, idem.ttl)
    if not async then -- the run's end stores the response
      rec.key, rec.fp, rec.ttl, rec.key_scope = key, fp, idem.ttl, scope
    end
  end
  if state.store then
    local bok, berr = pcall(svc.begin, svc, rec, entry, input)
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
        svc:abandon(rec, scope, key, serr)
        return storage_problem(serr, rec.id)
      end
    end
    if key then
      idempotency.release(scope, key)
    end
    core.start(nil, function() svc:execute(entry, rec, input) end)
    return resp
  end
  local ok, value, stored, serr = svc:execute(entry, rec, input)
  if not stored then
    svc:abandon(rec, scope, key, serr)
    return storage_problem(serr, rec.id)
  end
  return run_response(rec, ok, value)
end

-- ---- durable state: redrive, the relay, the sweep ------------------------------

local REFUSED = { disabled = 501, conflict = 409, not_found = 404 }

--- Runs a failed run again (chorus.runs prepare_redrive says how). via says
--- who asked (admin, cli, idempotency); with wait the redrive runs to its
--- end here and the run's response comes back with its record's text, else
--- a 202 at once. Returns the response, the record text (wait), and true
--- when the run cannot be redriven (the response is then a problem).
redrive = function(id, via, wait)
  local svc = state.runs
  local rec, wf, kept = svc:prepare_redrive(id, via)
  if not rec then
    local why, detail = wf, kept
    if why == "storage" then
      return storage_problem(detail, id), nil, true
    elseif why == "conflict" then
      return problem(409, "Conflict", "this run cannot be redriven: " .. detail, { run_id = id }), nil, true
    end
    return problem(REFUSED[why] or 500, why == "not_found" and "Not Found" or "Not Implemented", detail), nil, true
  end
  if wait then
    local ok, value, stored, serr = svc:execute({ workflow = wf }, rec, rec.input, kept)
    if not stored then
      return storage_problem(serr, id)
    end
    return run_response(rec, ok, value), svc.finished:get(id)
  end
  core.start(nil, function() svc:execute({ workflow = wf }, rec, rec.input, kept) end)
  return json_response(202, { run_id = id, status = "running", redrives = #rec.redrives },
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
  state.runs = server.service(st, state.backend)
  return redrive(id, "cli", true)
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
    local keys, old_runs
    keys, keys_from = st:sweep("idempotency", keys_from, SWEEP_BATCH, function(rec)
      return rec.state ~= "running" and rec.expires_at ~= nil and rec.expires_at <= now
    end)
    old_runs, runs_from = st:sweep("runs", runs_from, SWEEP_BATCH, function(rec)
      local old = rec.status ~= "running" and rec.finished ~= nil and rec.finished < now - retention
      if old and rec.status == "failed" and type(rec.id) == "string" then
        st:drop_journal(rec.id) -- the journal kept for a redrive goes with the record
      end
      if old and type(rec.id) == "string" then
        st:drop_deliveries(rec.id)
      end
      return old
    end)
    if keys + old_runs > 0 then
      st:commit()
      log("info", "swept the data folder", { expired_keys = keys, old_runs = old_runs })
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
  else
    local st, err = store.open(conf.data, { sync = storage.sync ~= false, map_size_mb = storage.map_size_mb,
      max_size_mb = storage.max_size_mb })
    if not st then
      return nil, err
    end
    local lok, lerr = st:lock(5)
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
  state.runs = server.service(state.store, state.backend)
  state.relay = state.runs:relay({ alerts = conf.alerts })
  return true
end

local function start_background()
  core.start({ instructions = 0, cpu_ms = 0, memory = 0 }, function() state.relay:run() end)
  if state.store then
    local storage = state.config.storage or EMPTY
    state.runs:recover({ background = true, batch = storage.recovery_batch,
      -- test-only: a pause between batches, so a spec sees recovery under way
      pause = tonumber(core.env("CHORUS_TEST_RECOVERY_PAUSE") or ""),
      stopping = function() return state.draining end })
    core.start({ instructions = 0, cpu_ms = 0, memory = 0 }, sweep_loop)
  end
end

-- ---- dispatch -------------------------------------------------------------

-- GET /runs/ID: the record, to the admin token or to the credentials the
-- run's workflow asks for in auth.NAME; a run of an open workflow is read
-- with its id alone (122 random bits: the id is the capability, as in the
-- Location header of an async start). An unknown id and a refused one get
-- the same 404, so ids cannot be probed.
local function run_record(req, id)
  local gok, rec = pcall(state.runs.lookup, state.runs, id)
  if not gok then -- a corrupt record: said, never passed off as missing
    log("error", "cannot read a run record", { run_id = id, error = tostring(rec) })
    return problem(500, "Internal Server Error", tostring(rec))
  end
  local text = rec and (type(rec) == "string" and rec or runs.record_text(rec))
  local name = type(rec) == "table" and rec.workflow
  if text and not name then
    local ok, decoded = pcall(json.decode, text)
    name = ok and type(decoded) == "table" and decoded.workflow
  end
  if not text or not (admin.authorized(server, req) or authenticate(req, tostring(name))) then
    return problem(404, "Not Found", ("no run with id '%s' that these credentials can read (runs of a "
      .. "workflow with auth need its token or the admin token)"):format(id))
  end
  -- the outbox entries the run enqueued: their delivery goes on after the
  -- record is written, so their state is read now
  text = require("chorus.deliveries").add_to_record(text, state.backend and state.backend:deliveries(id))
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
    m.inflight.set(nil, state.runs.inflight)
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
    local rec = state.runs and state.runs.recovery
    if rec and rec.active then -- not every unfinished run has started again
      return json_response(503, { status = "recovering", resumed = rec.resumed, total = rec.total })
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
    log("info", "draining", { signal = signal, pending = state.srv:pending(), inflight = state.runs.inflight })
    state.srv:quiesce()
    state.relay:stop()
    local deadline = core.monotime() + (state.config.drain_timeout or 10)
    while (state.srv:pending() > 0 or state.runs.inflight > 0 or state.relay.n_inflight > 0)
        and core.monotime() < deadline do
      core.sleep(0.05)
    end
    log("info", "stopped", { pending = state.srv:pending(), inflight = state.runs.inflight })
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
