-- chorus.routes — what `chorus serve` answers at each path: POST
-- /workflows/NAME (chorus.workflow_requests), POST /events/NAME/KEY
-- (chorus.event_requests), GET /runs/ID, /metrics,
-- /healthz, /readyz, /admin/... (chorus.admin) and the web console at /ui
-- (chorus.ui); dispatch is the request
-- handler lua_server.c runs, a run per request, and always answers.
local admin = require "chorus.admin"
local core = require "chorus.core"
local log = require("chorus.log").event
local metrics = require "chorus.metrics"
local responses = require "chorus.responses"
local runs = require "chorus.runs"
local state = require "chorus.server_state"
local workflow_requests = require "chorus.workflow_requests"

local routes = {}

local problem, json_response, text_response = responses.problem, responses.json, responses.text
local EMPTY = {} -- read-only
local authenticate = workflow_requests.authenticate

local m = {
  inflight = metrics.gauge("chorus_runs_in_flight", "Workflow runs in flight"),
  charged = metrics.gauge("chorus_workflow_runs_in_flight",
    "Runs in flight charged to each workflow (its own, and their child runs)", { "workflow" }),
  held = metrics.gauge("chorus_workflow_storage_bytes", "Bytes each workflow holds in the data folder "
    .. "(its runs' records and journals, its outbox and DLQ entries; storage.workflow_share_mb)", { "workflow" }),
  kept = metrics.gauge("chorus_workflow_kept_bytes", "Bytes each loaded workflow's runs left alive in its "
    .. "script's state (blocks over 1 KiB; limits.workflow_memory_mb)", { "workflow" }),
  requests = metrics.counter("chorus_http_requests_total", "Inbound HTTP requests by status",
    { "code" }),
  memory = metrics.gauge("chorus_lua_memory_bytes", "Lua heap size"),
  commits = metrics.counter("chorus_store_commits_total", "Group commits of the data folder (each fsync'd)"),
  store_failures = metrics.counter("chorus_store_commit_failures_total", "Group commits that failed"),
  breakers = metrics.gauge("chorus_breaker_state", "Circuit breaker state (1 for the current one)",
    { "breaker", "state" }),
  latency = metrics.histogram("chorus_http_request_duration_seconds", "Inbound HTTP request latency by route",
    { "route" }),
  build = metrics.gauge("chorus_build_info", "The running chorus (always 1)", { "version" }),
  rss = metrics.gauge("process_resident_memory_bytes", "Resident memory of the process"),
  fds = metrics.gauge("process_open_fds", "Open file descriptors of the process"),
  cpu = metrics.counter("process_cpu_seconds_total", "CPU time of the process, user and system"),
}
m.build.set({ core.version }, 1)

-- The route label of a path: a few fixed names, never the path itself (a
-- label per workflow name or run id would grow without bound).
local ROUTES = { workflows = "workflow", runs = "run", metrics = "metrics", healthz = "healthz",
  readyz = "readyz", admin = "admin", ui = "ui" }
-- (found by plain searches: every request takes this and the route's
-- match, and a pattern match cost about 1,500 instructions each)
local find, sub, byte = string.find, string.sub, string.byte
local function route_of(path)
  if byte(path, 1) ~= 47 then -- "/"
    return "other"
  end
  local slash = find(path, "/", 2, true)
  return ROUTES[sub(path, 2, (slash or 0) - 1)] or "other"
end

-- NAME of "/workflows/NAME" (not empty, no further "/"), else nil.
local function workflow_name(path)
  if find(path, "/workflows/", 1, true) == 1 and #path > 11 and not find(path, "/", 12, true) then
    return sub(path, 12)
  end
end

-- The series keys of the per-request metrics, looked up once per status
-- and route (both sets are small and fixed) instead of a label table per
-- request.
local function key_cache(metric)
  return setmetatable({}, { __index = function(t, v)
    local key = metric.key({ v })
    if v ~= nil and v == v then -- (a nil or NaN key cannot be stored)
      t[v] = key
    end
    return key
  end })
end
local request_keys, latency_keys = key_cache(m.requests), key_cache(m.latency)

local cpu_seen = 0

local BREAKER_STATES = { "closed", "open", "half_open" }

-- Every served workflow has a series (0 when idle), and so does any other
-- with runs charged to it (a reload removed it while they run); the
-- service keeps a workflow's count once it had one, so a series that was
-- shown goes back to 0 rather than vanishing.
local function export_charged()
  local charged = state.runs.charged
  for name in pairs(state.workflows or EMPTY) do
    m.charged.set({ name }, charged[name] or 0)
  end
  for name, n in pairs(charged) do
    m.charged.set({ name }, n)
  end
end

-- What each loaded workflow keeps between its runs (its version's account).
local function export_kept()
  for name, entry in pairs(state.workflows or EMPTY) do
    local account = entry.workflow.memory_account
    if account then
      m.kept.set({ name }, core.workflow_kept(account))
    end
  end
end

-- The same for what each workflow holds in the data folder: a series once
-- shown goes back to 0 when its bytes are given back.
local function export_held(st)
  local held, shown = st:held_all(), state.held_shown or {}
  for name in pairs(state.workflows or EMPTY) do
    shown[name] = true
  end
  for name in pairs(held) do
    shown[name] = true
  end
  for name in pairs(shown) do
    m.held.set({ name }, held[name] or 0)
  end
  state.held_shown = shown
end

-- A breaker a script made ("WORKFLOW/NAME", chorus.breaker.scoped) is its
-- workflow's series (metrics.PER_WORKFLOW): a workflow naming 334 breakers
-- filled the metric's 1,000 series, every other breaker "_other".
local function export_breakers()
  for name, current in pairs(core.breakers()) do
    local owner = name:match("^([^/]+)/")
    for _, st in ipairs(BREAKER_STATES) do
      m.breakers.set({ name, st }, st == current and 1 or 0, owner)
    end
  end
end

-- GET /runs/ID: the record, to the admin token or to the credentials the
-- run's workflow asks for in auth.NAME; a run of an open workflow is read
-- with its id alone (122 random bits: the id is the capability, as in the
-- Location header of an async start). An unknown id and a refused one get
-- the same 404, so ids cannot be probed.
--
-- Who may read it is decided by the run's workflow, read from its index
-- row (Service:facts), not from its record; the record itself, up to
-- limits.run_record_bytes, is read and answered as the server's work
-- (core.uncharged): a request's handler runs under the memory cap of a
-- run, and a record at the record cap must be served whatever that is.
local function run_record(req, id)
  local gok, name = pcall(state.runs.facts, state.runs, id)
  if not gok then -- a corrupt record: said, never passed off as missing
    log("error", "cannot read a run record", { run_id = id, error = tostring(name) })
    return problem(500, "Internal Server Error", tostring(name))
  end
  if not name or not (admin.authorized(require("chorus.server"), req) or authenticate(req, tostring(name))) then
    return problem(404, "Not Found", ("no run with id '%s' that these credentials can read (runs of a "
      .. "workflow with auth need its token or the admin token)"):format(id))
  end
  local was = core.uncharged(true)
  local rok, text = pcall(function()
    local rec = state.runs:lookup(id)
    local t = rec and (type(rec) == "string" and rec or runs.record_text(rec))
    -- the outbox entries the run enqueued: their delivery goes on after the
    -- record is written, so their state is read now
    return t and require("chorus.deliveries").add_to_record(t, state.backend and state.backend:deliveries(id))
  end)
  core.uncharged(was)
  if not rok then
    log("error", "cannot read a run record", { run_id = id, error = tostring(text) })
    return problem(500, "Internal Server Error", tostring(text))
  end
  if not text then -- gone since (the sweep)
    return problem(404, "Not Found", ("no run with id '%s' that these credentials can read"):format(id))
  end
  return { status = 200, headers = { ["Content-Type"] = "application/json" }, body = text }
end

-- DELETE /runs/ID: cancels the run (chorus.runs, Service:cancel), for the
-- credentials that may read it; 202 while it winds down (GET /runs/ID says
-- when it is "cancelled"), 409 when it has finished.
local function cancel_run(req, id)
  local gok, name = pcall(state.runs.facts, state.runs, id)
  if not gok then -- a corrupt record: said, as GET does
    return problem(500, "Internal Server Error", tostring(name))
  end
  if not name or not (admin.authorized(require("chorus.server"), req) or authenticate(req, tostring(name))) then
    return problem(404, "Not Found", ("no run with id '%s' that these credentials can cancel (runs of a "
      .. "workflow with auth need its token or the admin token)"):format(id))
  end
  local done, refusal, why = state.runs:cancel(id, "api")
  if not done then
    local status = ({ not_found = 404, conflict = 409 })[refusal] or 500
    return problem(status, status == 409 and "Conflict" or status == 404 and "Not Found"
      or "Internal Server Error", why, { run_id = id })
  end
  return json_response(202, { run_id = id, status = "cancelling", cancel = done.cancel })
end

-- The response to req (any route); raises on a bug, which dispatch answers.
local function route(req)
  local path = req.path
  local name = workflow_name(path)
  if name then
    return workflow_requests.start(req, name)
  end
  local ev, key = path:match("^/events/([^/]+)/([^/]+)$")
  if ev then -- durable events (chorus.event_requests)
    return require("chorus.event_requests").handle(req, ev, key)
  end
  local id = path:match("^/runs/([^/]+)$")
  if id then
    if req.method == "DELETE" then
      return cancel_run(req, id)
    end
    if req.method ~= "GET" and req.method ~= "HEAD" then -- (a POST read the record)
      local r = problem(405, "Method Not Allowed", "a run is read with GET and cancelled with DELETE")
      r.headers.Allow = "GET, HEAD, DELETE"
      return r
    end
    return run_record(req, id)
  end
  if path == "/metrics" then
    m.memory.set(nil, core.stats().lua_bytes)
    m.inflight.set(nil, state.runs.inflight)
    export_charged()
    export_kept()
    if state.store then
      -- the store counts; the counters catch up with it
      local ss, seen = state.store:stats(), state.store_seen or { commits = 0, failures = 0 }
      m.commits.inc(nil, ss.commits - seen.commits)
      m.store_failures.inc(nil, ss.failures - seen.failures)
      state.store_seen = ss
      export_held(state.store)
    end
    export_breakers()
    local stats = core.stats()
    m.rss.set(nil, stats.rss_bytes)
    m.fds.set(nil, stats.open_fds)
    if stats.cpu_seconds and stats.cpu_seconds > cpu_seen then -- the counter catches up
      m.cpu.inc(nil, stats.cpu_seconds - cpu_seen)
      cpu_seen = stats.cpu_seconds
    end
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
  if path == "/ui" or path:sub(1, 4) == "/ui/" then
    return require("chorus.ui").handle(req)
  end
  local what = path:match("^/admin/(.+)$")
  if what then
    return admin.handle(require("chorus.server"), req, what)
  end
  return problem(404, "Not Found", ("nothing at %s"):format(path))
end

--- The request handler (a run per request): always returns a response.
function routes.dispatch(req)
  local t0 = core.now()
  local ok, resp = pcall(route, req)
  if ok and type(resp) ~= "table" then
    ok, resp = false, "the route gave no response"
  end
  if not ok then
    log("error", "request handler failed", { path = req.path, error = tostring(resp) })
    resp = problem(500, "Internal Server Error", "the server could not handle this request")
  end
  m.requests.inc_key(request_keys[resp.status])
  m.latency.observe_key(latency_keys[route_of(req.path)], core.now() - t0)
  if state.config.access_log == false then
    return resp
  end
  log("info", "request", { method = req.method, path = req.path, status = resp.status,
    duration_ms = math.floor((core.now() - t0) * 1e6) / 1e3, run_id = resp.headers["X-Run-Id"],
    trace_id = resp.trace_id })
  return resp
end

return routes
