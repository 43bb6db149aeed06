-- chorus.workflow_requests — POST /workflows/NAME: the checks a request
-- passes, each a small guard that answers or lets it through (the workflow
-- exists, POST, auth, load shedding, the Idempotency-Key, the body, the
-- callback URL, what the key already has), then the run: synchronous (the
-- run's answer) or with `Prefer: respond-async` (202 once it is durable).
-- Also the redrive of a failed run (admin, CLI, on_failure = "redrive").
local core = require "chorus.core"
local idempotency = require "chorus.idempotency"
local log = require("chorus.log").event
local checks = require "chorus.request_checks"
local responses = require "chorus.responses"
local state = require "chorus.server_state"
local tracing = require "chorus.tracing"
local webhook = require "chorus.webhook"

local workflow_requests = {}

local EMPTY = {} -- read-only: for `x or EMPTY` on the request path
local problem, json_response = responses.problem, responses.json
local run_response, storage_problem = responses.run, responses.storage_problem


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
function workflow_requests.authenticate(req, name)
  local rule = (state.config.auth or EMPTY)[name]
  if not rule then
    return true, nil
  end
  local identity = checks.credentials(rule, req)
  return identity ~= nil, identity
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

local authenticate = workflow_requests.authenticate

-- ---- the guards ---------------------------------------------------------------
--
-- Each takes the request's context { req, name, entry, ... }, may add what
-- it learnt (identity, key, input, callback, fp, scope), and returns a
-- response to end the request there, or nothing.

local function known_workflow(c)
  c.entry = state.workflows[c.name]
  if not c.entry then
    return problem(404, "Not Found", ("no workflow named '%s'"):format(c.name))
  end
end

local function post_only(c)
  return checks.post_only(c.req, "workflows are started with POST")
end

local function authorized(c)
  local authed, identity = authenticate(c.req, c.name)
  if not authed then
    return checks.unauthorized(("workflow '%s' requires a bearer token or a signed body (%s)")
      :format(c.name, webhook.HEADER))
  end
  c.identity = identity
  -- keys are per workflow and, when callers authenticate, per caller: one
  -- client never reads another's stored response
  c.scope = identity and (c.name .. "@" .. identity) or c.name
end

-- Load shedding: past the server's cap or the workflow's share of it
-- (chorus.runs caps), 503 and nothing stored; the client retries.
local function shed(detail)
  local r = problem(503, "Service Unavailable", detail)
  r.headers["Retry-After"] = "1"
  return r
end

local function under_load_limit(c)
  local svc = state.runs
  local full = svc:at_capacity(c.name)
  if full == "server" then
    return shed(("%d runs are in flight, the most this server takes"):format(svc.max_inflight))
  elseif full then
    return shed(("workflow '%s' has %d runs in flight, the most one workflow may have "
      .. "(limits.inflight_runs_per_workflow = %d)"):format(c.name, svc.charged[c.name], svc.share))
  end
end

-- A workflow holding its share of the data folder (storage.workflow_share_mb)
-- starts no run: 507, as when the folder is full, but for it alone.
local function under_storage_share(c)
  local st = state.store
  if st and st:over_share(c.name) then
    return problem(507, "Insufficient Storage", ("workflow '%s' holds %d bytes of the data folder, its share "
      .. "(storage.workflow_share_mb = %d); its runs are refused until its records are swept or its outbox "
      .. "entries delivered"):format(c.name, st:held(c.name), st.share // (1024 * 1024)))
  end
end

local function valid_key(c)
  local key, bad = checks.idempotency_key(c.req)
  if bad then
    return bad
  end
  c.idem = c.entry.workflow.idempotency or EMPTY
  if not key and c.idem.required then
    return problem(400, "Bad Request", ("workflow '%s' requires an Idempotency-Key header"):format(c.name))
  end
  c.key = key
end

local function valid_body(c)
  local bad
  c.input, bad = checks.json_body(c.req)
  return bad
end

local function valid_callback(c)
  local callback, cerr = callback_url(c.req)
  if cerr then
    return problem(400, "Bad Request", cerr)
  end
  c.callback = callback
end

-- What the key already has: in flight (409), used with another request
-- (422), finished (its stored response, or with on_failure = "redrive" a
-- failed run finished by a redrive), or nothing yet.
local function key_verdict(c)
  if not c.key then
    return
  end
  local legacy
  c.fp, legacy = idempotency.fingerprint(c.req)
  local verdict, stored, key_rec = idempotency.check(state.store, c.scope, c.key, c.fp, legacy)
  if verdict == "conflict" then
    return problem(409, "Conflict", "a request with this Idempotency-Key is still in flight; retry later")
  elseif verdict == "mismatch" then
    return problem(422, "Unprocessable Content",
      "this Idempotency-Key was used with a different request (method, path, query, Callback-URL or body)")
  elseif verdict == "replay" and c.idem.on_failure == "redrive" and key_rec and key_rec.run_id
      and key_rec.response and key_rec.response.status == 500 then
    -- the key's run failed: finish it (redrive) rather than replay its 500
    local resp, _, refused = workflow_requests.redrive(key_rec.run_id, "idempotency", true)
    if not refused then
      return resp
    end
  end
  if verdict == "replay" then
    if type(stored) ~= "table" or math.type(stored.status) ~= "integer" or type(stored.headers) ~= "table"
        or type(stored.body) ~= "string" then
      log("error", "a stored idempotent response is unreadable", { workflow = c.name, key = c.key })
      return problem(500, "Internal Server Error", "the stored response of this Idempotency-Key is unreadable")
    end
    stored.headers["Idempotent-Replayed"] = "true"
    return stored
  end
end

-- The share of the data folder is checked after the key: a retry of a key
-- whose answer is stored writes nothing, and gets that answer even when its
-- workflow holds its whole share.
local GUARDS = { known_workflow, post_only, authorized, under_load_limit, valid_key,
  valid_body, valid_callback, key_verdict, under_storage_share }

-- ---- the run ------------------------------------------------------------------

-- The answer of a run that ended with ok, value: made of the run's output,
-- as its record is (chorus.runs, Service:conclude), so it counts against
-- no run's cap: a result the record cap lets through is answered, however
-- small the handler's memory cap.
local function answer(rec, ok, value)
  local was = core.uncharged(true)
  local aok, resp = pcall(run_response, rec, ok, value)
  core.uncharged(was)
  if not aok then
    error(resp, 0)
  end
  return resp
end

-- Starts the run of a request that passed every guard; returns its answer.
local function start_run(c)
  local req, key, scope, fp, idem, entry = c.req, c.key, c.scope, c.fp, c.idem, c.entry
  local wf = entry.workflow
  local svc = state.runs
  -- the caller's trace context (W3C): its trace, its span as the run's
  -- parent, its sampled flag and tracestate; a malformed one starts a trace
  local tp = tracing.parse(req.headers.traceparent)
  local rec = svc:new_record(core.uuid7(), c.name, tp and tp.trace_id, {
    deadline_at = wf.timeout and core.now() + wf.timeout, callback_url = c.callback,
    request = request_facts(req, key), parent_span_id = tp and tp.parent_id, trace_flags = tp and tp.flags,
    tracestate = tp and tracing.parse_state(req.headers.tracestate) })
  c.trace_id = rec.trace_id
  local prefer = req.headers.prefer
  local async = prefer and prefer:lower():find("respond%-async")
  if key then
    idempotency.begin(state.store, scope, key, fp, rec.id, idem.ttl)
    if not async then -- the run's end stores the response
      rec.key, rec.fp, rec.ttl, rec.key_scope = key, fp, idem.ttl, scope
    end
  end
  if state.store then
    -- a run the client waits for, without a key, holds its first records
    -- back (Service:begin): an async one is answered once they are durable
    local bok, berr = pcall(svc.begin, svc, rec, entry, c.input, false, not async and not key)
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
    -- the run counts from now: the requests that come during the commit
    -- below see it (else a burst of them all passed under_load_limit)
    local counted = svc:count_in(c.name)
    if state.store then -- acknowledged only once the run is durable
      local cok, serr = pcall(state.store.commit, state.store)
      if not cok then
        core.release(counted)
        log("error", "could not store a new run", { run_id = rec.id, error = tostring(serr) })
        svc:abandon(rec, scope, key, serr)
        return storage_problem(serr, rec.id)
      end
    end
    if key then
      idempotency.release(scope, key)
    end
    core.start(nil, function() svc:execute(entry, rec, c.input, nil, counted) end)
    return resp
  end
  local ok, value, stored, serr = svc:execute(entry, rec, c.input)
  if not stored then
    svc:abandon(rec, scope, key, serr)
    return storage_problem(serr, rec.id)
  end
  return answer(rec, ok, value)
end

--- POST /workflows/NAME (any method: a guard answers 405).
function workflow_requests.start(req, name)
  -- sized for what the guards add: no rehash as they fill it in
  local c = { req = req, name = name, entry = nil, identity = nil, scope = nil, idem = nil, key = nil,
    input = nil, callback = nil, fp = nil, trace_id = nil }
  for _, guard in ipairs(GUARDS) do
    local resp = guard(c)
    if resp then
      return resp
    end
  end
  local resp = start_run(c)
  resp.trace_id = c.trace_id -- for the access log (lua_server.c reads status, headers, body only)
  return resp
end

-- ---- redrive ------------------------------------------------------------------

local REFUSED = { disabled = 501, conflict = 409, not_found = 404 }

--- Runs a failed run again (chorus.runs prepare_redrive says how). via says
--- who asked (admin, cli, idempotency); with wait the redrive runs to its
--- end here and the run's response comes back with its record's text, else
--- a 202 at once. Returns the response, the record text (wait), and true
--- when the run cannot be redriven (the response is then a problem).
function workflow_requests.redrive(id, via, wait)
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
    return answer(rec, ok, value), svc.finished:get(id)
  end
  core.start(nil, function() svc:execute({ workflow = wf }, rec, rec.input, kept) end)
  return json_response(202, { run_id = id, status = "running", redrives = #rec.redrives },
    { Location = "/runs/" .. id })
end

return workflow_requests
