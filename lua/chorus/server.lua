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
local core = require "chorus.core"
local errors = require "chorus.errors"
local metrics = require "chorus.metrics"
local runner = require "chorus.runner"
local runstate = require "chorus.runstate"
local script = require "chorus.script"
local json = core.json

local server = {}

local state = {
  config = nil, workflows = {}, sources = {}, records = {}, record_order = {},
  draining = false, inflight = 0, srv = nil, reload_pending = false,
}
server.state = state

local MAX_RECORDS = 10000

local m = {
  runs = metrics.counter("chorus_runs_total", "Workflow runs by outcome", { "workflow", "outcome" }),
  duration = metrics.histogram("chorus_run_duration_seconds", "Workflow run duration", { "workflow" }),
  inflight = metrics.gauge("chorus_runs_in_flight", "Workflow runs in flight"),
  requests = metrics.counter("chorus_http_requests_total", "Inbound HTTP requests by status",
    { "code" }),
  reloads = metrics.counter("chorus_reloads_total", "Script reloads by result", { "result" }),
  memory = metrics.gauge("chorus_lua_memory_bytes", "Lua heap size"),
  workflows = metrics.gauge("chorus_workflows", "Workflows loaded"),
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
  core.write_log(ok and text or json.encode({ ts = line.ts, level = level, msg = msg }))
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

local function json_response(status, value, headers)
  local h = { ["Content-Type"] = "application/json" }
  for k, v in pairs(headers or {}) do
    h[k] = v
  end
  return { status = status, headers = h, body = json.encode(value) }
end

local function text_response(status, text, content_type)
  return { status = status, headers = { ["Content-Type"] = content_type or "text/plain; charset=utf-8" },
    body = text }
end

-- A workflow's return value as an HTTP response (DESIGN.md: {status=,
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
      set[wf.name] = { workflow = wf, path = path }
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
  for name in pairs(set) do
    names[#names + 1] = name
  end
  table.sort(names)
  m.reloads.inc({ "ok" })
  m.workflows.set(nil, #names)
  log("info", "scripts loaded", { reason = reason, workflows = names })
  return true, names, dirs
end

-- ---- run records ----------------------------------------------------------

-- Records are kept in a ring of MAX_RECORDS ids: the oldest finished one is
-- forgotten when its slot is reused.
local function new_record(id, name, trace_id)
  local rec = { id = id, workflow = name, status = "running", started = runstate.micro(core.now()),
    trace_id = trace_id, timeline = {} }
  state.records[id] = rec
  local slot = state.record_next or 1
  local old = state.record_order[slot]
  if old and type(state.records[old]) == "string" then -- finished
    state.records[old] = nil
  end
  state.record_order[slot] = id
  state.record_next = slot % MAX_RECORDS + 1
  return rec
end

local function finish_record(rec, ok, value, info)
  rec.finished = runstate.micro(core.now())
  rec.duration = runstate.micro(rec.finished - rec.started)
  if ok then
    rec.status = "succeeded"
    rec.result = value
  else
    local err = errors.normalize(value)
    rec.status = err.kind == "deadline" and "timed_out" or "failed"
    rec.error = err
    log("error", "run failed", { run_id = rec.id, workflow = rec.workflow, trace_id = rec.trace_id,
      error = err, traceback = info and info.traceback })
  end
  m.runs.inc({ rec.workflow, rec.status })
  m.duration.observe({ rec.workflow }, rec.duration)
  -- A finished record never changes: keep it as its JSON text, one string
  -- the collector never has to traverse, instead of a tree of tables.
  local eok, text = pcall(json.encode, rec)
  if not eok then
    rec.result = nil
    rec.error = rec.error or { kind = "result", message = "the result is not JSON: " .. tostring(text) }
    text = json.encode(rec)
  end
  state.records[rec.id] = text
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

-- Runs a workflow as its own run and records it; returns ok, value.
local function execute(entry, rec, input, trace_id)
  state.inflight = state.inflight + 1
  m.inflight.set(nil, state.inflight)
  local opts = { trace_id = trace_id, on_state = function(s) rec.timeline = s.timeline end }
  local ok, value, info = core.execute({ id = rec.id }, runner.execute, entry.workflow, input, opts)
  state.inflight = state.inflight - 1
  m.inflight.set(nil, state.inflight)
  finish_record(rec, ok, value, info)
  return ok, value
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
  local input = {}
  if req.body:match("%S") then
    local ok, value = pcall(json.decode, req.body)
    if not ok then
      return problem(400, "Bad Request", "the body is not valid JSON: " .. tostring(value):gsub("^json%.decode: ", ""))
    end
    input = value
  end
  local trace_id = parse_traceparent(req.headers.traceparent) or (core.uuid():gsub("-", ""))
  local rec = new_record(core.uuid(), name, trace_id)
  local prefer = req.headers.prefer or ""
  if prefer:lower():find("respond%-async") then
    core.start(nil, function() execute(entry, rec, input, trace_id) end)
    return json_response(202, { run_id = rec.id }, { Location = "/runs/" .. rec.id,
      ["Preference-Applied"] = "respond-async" })
  end
  local ok, value = execute(entry, rec, input, trace_id)
  if not ok then
    return problem(500, "Internal Server Error", "the workflow failed; see the run record",
      { run_id = rec.id, kind = rec.error.kind })
  end
  local rok, resp = pcall(workflow_response, value)
  if not rok then
    return problem(500, "Internal Server Error", "the workflow's result is not JSON: " .. tostring(resp),
      { run_id = rec.id })
  end
  resp.headers["X-Run-Id"] = rec.id
  return resp
end

-- ---- admin ----------------------------------------------------------------

local function constant_time_equal(a, b)
  if #a ~= #b then
    return false
  end
  local diff = 0
  for i = 1, #a do
    diff = diff | (a:byte(i) ~ b:byte(i))
  end
  return diff == 0
end

local function authorized(req)
  local token = state.config.admin_token
  if not token or token == "" then
    return false, problem(403, "Forbidden", "admin endpoints are disabled: set admin_token in the config file")
  end
  local given = (req.headers.authorization or ""):match("^[Bb]earer%s+(.+)$")
  if not given or not constant_time_equal(given, token) then
    local r = problem(401, "Unauthorized", "a valid bearer token is required")
    r.headers["WWW-Authenticate"] = "Bearer"
    return false, r
  end
  return true
end

local function admin(req, what)
  local ok, denied = authorized(req)
  if not ok then
    return denied
  end
  if what == "reload" then
    if req.method ~= "POST" then
      return problem(405, "Method Not Allowed", "reload with POST")
    end
    local rok, result = server.reload("admin")
    if rok then
      return json_response(200, { ok = true, workflows = result })
    end
    return json_response(422, { ok = false, errors = result })
  end
  if what == "breakers" then
    return json_response(200, { breakers = core.breakers() })
  end
  return problem(501, "Not Implemented", ("/admin/%s arrives with the durable store"):format(what))
end

-- ---- dispatch -------------------------------------------------------------

local function route(req)
  local path = req.path
  local name = path:match("^/workflows/([^/]+)$")
  if name then
    return start_workflow(req, name)
  end
  local id = path:match("^/runs/([^/]+)$")
  if id then
    local rec = state.records[id]
    if not rec then
      return problem(404, "Not Found", ("no run with id '%s'"):format(id))
    end
    if type(rec) == "string" then
      return { status = 200, headers = { ["Content-Type"] = "application/json" }, body = rec }
    end
    return json_response(200, rec)
  end
  if path == "/metrics" then
    m.memory.set(nil, core.stats().lua_bytes)
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
    return json_response(200, { status = "ready" })
  end
  local what = path:match("^/admin/(.+)$")
  if what then
    return admin(req, what)
  end
  return problem(404, "Not Found", ("nothing at %s"):format(path))
end

--- The request handler (a run per request): always returns a response.
function server.dispatch(req)
  local t0 = core.now()
  local ok, resp = pcall(route, req)
  if not ok then
    log("error", "request handler failed", { path = req.path, error = tostring(resp) })
    resp = problem(500, "Internal Server Error", "the server could not handle this request")
  end
  m.requests.inc({ tostring(resp.status) })
  if state.config.access_log == false then
    return resp
  end
  log("info", "request", { method = req.method, path = req.path, status = resp.status,
    duration_ms = math.floor((core.now() - t0) * 1e6) / 1e3, run_id = resp.headers["X-Run-Id"] })
  return resp
end

-- ---- lifecycle --------------------------------------------------------------

local function watch_scripts(dirs)
  for _, dir in ipairs(dirs or {}) do
    core.watch(dir, function()
      if state.reload_pending then
        return
      end
      state.reload_pending = true
      core.sleep(0.2) -- one reload for a burst of editor writes
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
  log("info", "draining", { signal = signal, pending = state.srv:pending(), inflight = state.inflight })
  state.srv:quiesce()
  local deadline = core.monotime() + (state.config.drain_timeout or 10)
  while (state.srv:pending() > 0 or state.inflight > 0) and core.monotime() < deadline do
    core.sleep(0.05)
  end
  log("info", "stopped", { pending = state.srv:pending(), inflight = state.inflight })
  core.stop()
end

--- Starts serving: loads scripts, listens, runs the loop until drained.
--- Returns the exit status.
function server.serve(config, on_listening)
  state.config = config
  local ok, result, dirs = server.reload("start")
  if not ok then
    return nil, "cannot load scripts: " .. table.concat(result, "; ")
  end
  local limits = config.limits or {}
  local host, port = config.listen:match("^(.+):(%d+)$")
  local sok, srv = pcall(core.serve, {
    host = host, port = tonumber(port), max_body = limits.max_body_bytes,
    max_header = limits.max_header_bytes, max_connections = limits.max_connections,
    idle_timeout = limits.client_timeout,
  }, server.dispatch)
  if not sok then
    return nil, tostring(srv)
  end
  state.srv = srv
  state.config.drain_timeout = limits.drain_timeout
  core.on_signal("SIGHUP", function() server.reload("SIGHUP") end)
  core.on_signal("SIGTERM", drain)
  core.on_signal("SIGINT", drain)
  watch_scripts(dirs)
  local address = ("%s:%d"):format(host, srv:port())
  log("info", "listening", { address = address, scripts = config.scripts })
  if on_listening then
    on_listening(address)
  end
  core.loop()
  srv:close()
  return true
end

return server
