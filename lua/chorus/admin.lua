-- chorus.admin — the admin endpoints of `chorus serve` (bearer token
-- required, compared in constant time): reload, breakers, schedules, the
-- runs by filter and bulk actions on them (chorus.runs_api), and the outbox
-- and DLQ of the data folder. server.dispatch routes /admin/WHAT here.
local core = require "chorus.core"
local runs_api = require "chorus.runs_api"
local webhook = require "chorus.webhook"
local json = core.json

local admin = {}

local function problem(...)
  return require("chorus.server").problem(...)
end

-- A 405 says which method the endpoint takes (RFC 9110 15.5.6: Allow).
local function not_allowed(allow, detail)
  local r = problem(405, "Method Not Allowed", detail)
  r.headers.Allow = allow
  return r
end

local function json_response(...)
  return require("chorus.server").json_response(...)
end

local function authorized(server, req)
  local token = server.state.config.admin_token
  if not token or token == "" then
    return false, problem(403, "Forbidden", "admin endpoints are disabled: set admin_token in the config file")
  end
  local given = server.bearer(req)
  if not given or not webhook.equal(given, token) then
    local r = problem(401, "Unauthorized", "a valid bearer token is required")
    r.headers["WWW-Authenticate"] = "Bearer"
    return false, r
  end
  return true
end
admin.authorized = authorized

-- The parameters of req: its query, and for a POST its JSON body's fields
-- too. nil and a problem when the body is not a JSON object.
local function params_of(req)
  local params = {}
  for k, v in pairs(req.query or {}) do
    params[k] = v
  end
  local body = req.body
  if req.method == "POST" and body and body:find("%S") then
    local ok, value = pcall(json.decode, body)
    if not ok or type(value) ~= "table" or json.is_null(value) then
      return nil, problem(400, "Bad Request", "the body must be a JSON object of filters")
    end
    for k, v in pairs(value) do
      params[k] = v
    end
  end
  return params
end

-- The filter of req (chorus.runs_api), or nil and a 400 naming the parameter.
local function filter_of(req, allowed)
  local params, bad = params_of(req)
  if not params then
    return nil, bad
  end
  local f, name, why = runs_api.parse(params, allowed)
  if not f then
    return nil, problem(400, "Bad Request", ("parameter %s %s"):format(name, why), { parameter = name })
  end
  return f
end

-- The DLQ entry id back in the outbox, due now: true, or false and why.
local function replay_dlq(st, id)
  if not st:replay_dlq(id, core.now()) then
    return false, ("no DLQ entry with id '%s'"):format(id)
  end
  return true
end

local function drop_dlq(st, id)
  local e = st:get_dlq(id)
  if not e then
    return false, ("no DLQ entry with id '%s'"):format(id)
  end
  st:del_dlq(id, e)
  return true
end

-- Why a problem response refused: its detail.
local function refusal(resp)
  local ok, body = pcall(json.decode, resp.body or "")
  return ok and type(body) == "table" and body.detail or ("refused with status %d"):format(resp.status)
end

-- POST /admin/runs/redrive and /admin/runs/cancel: each run the filter
-- finds (failed runs for a redrive, running ones for a cancel, unless the
-- filter names a status), through the one-run paths.
local BULK_RUNS = {
  redrive = { status = "failed", act = function(server, id)
    local resp, _, refused = server.redrive(id)
    if refused or resp.status >= 400 then
      return false, refusal(resp)
    end
    return true
  end },
  cancel = { status = "running", act = function(server, id)
    local done, _, why = server.state.runs:cancel(id, "admin")
    return done ~= nil, why
  end },
}

local function bulk_runs(server, req, action, st)
  if req.method ~= "POST" then
    return not_allowed("POST", ("%s runs with POST"):format(action))
  end
  local f, bad = filter_of(req, runs_api.BULK_FILTERS)
  if not f then
    return bad
  end
  local how = BULK_RUNS[action]
  f.status = f.status or how.status
  local rok, out = pcall(runs_api.bulk, st, f, function(id) return how.act(server, id) end)
  if not rok then
    return problem(500, "Internal Server Error", tostring(out))
  end
  return json_response(200, out)
end

-- POST /admin/dlq/replay and /admin/dlq/drop: every entry the filter finds.
local function bulk_dlq(req, action, st)
  if req.method ~= "POST" then
    return not_allowed("POST", ("%s DLQ entries with POST"):format(action))
  end
  local f, bad = filter_of(req, runs_api.DLQ_FILTERS)
  if not f then
    return bad
  end
  local rows, more = runs_api.dlq_rows(st, f)
  local act = action == "replay" and replay_dlq or drop_dlq
  local out = runs_api.apply(rows, f.dry_run, nil, function(id) return act(st, id) end)
  out.more, out.next_cursor = more, nil -- the same request again takes the next ones
  if not f.dry_run then
    st:commit()
  end
  return json_response(200, out)
end

function admin.handle(server, req, what)
  local ok, denied = authorized(server, req)
  if not ok then
    return denied
  end
  if what == "reload" then
    if req.method ~= "POST" then
      return not_allowed("POST", "reload with POST")
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
  if what == "schedules" then -- each schedule's next slot and last run (chorus.scheduler)
    return json_response(200, { schedules = require("chorus.scheduler").list() })
  end
  local st = server.state.store
  local bulk = what:match("^runs/(%a+)$")
  if what == "runs" or (bulk and BULK_RUNS[bulk]) then
    if not st then
      return problem(501, "Not Implemented", "this server keeps no data folder (storage.durable = false)")
    end
    if bulk then
      return bulk_runs(server, req, bulk, st)
    end
    if req.method ~= "GET" then
      return not_allowed("GET", "list runs with GET")
    end
    local f, bad = filter_of(req)
    if not f then
      return bad
    end
    local lok, body = pcall(runs_api.list, st, f)
    if not lok then -- a corrupt record: said, never skipped
      return problem(500, "Internal Server Error", tostring(body))
    end
    return json_response(200, body)
  end
  local run_id = what:match("^runs/([^/]+)/redrive$")
  if run_id then
    if req.method ~= "POST" then
      return not_allowed("POST", "redrive with POST")
    end
    return server.redrive(run_id)
  end
  if not st and (what == "outbox" or what:match("^dlq")) then
    return problem(501, "Not Implemented", "this server keeps no data folder (storage.durable = false)")
  end
  if what == "outbox" and req.method == "GET" then
    return json_response(200, { entries = st:list_outbox(1000), depth = st:count("outbox") })
  end
  if what == "dlq" and req.method == "GET" then
    return json_response(200, { entries = st:list_dlq(1000), depth = st:count("dlq") })
  end
  if what == "dlq/replay" or what == "dlq/drop" then
    return bulk_dlq(req, what:sub(5), st)
  end
  local id = what:match("^dlq/([^/]+)/replay$")
  if id and req.method == "POST" then
    local e = st:replay_dlq(id, core.now())
    if not e then
      return problem(404, "Not Found", ("no DLQ entry with id '%s'"):format(id))
    end
    st:commit()
    return json_response(200, { replayed = id, entry = e })
  end
  id = what:match("^dlq/([^/]+)$")
  if id and req.method == "DELETE" then
    local dropped, why = drop_dlq(st, id)
    if not dropped then
      return problem(404, "Not Found", why)
    end
    st:commit()
    return json_response(200, { dropped = id })
  end
  if what == "outbox" or what == "dlq" or what:match("^dlq/") then
    local allow = (what == "outbox" or what == "dlq") and "GET" or what:match("/replay$") and "POST" or "DELETE"
    return not_allowed(allow, ("wrong method for /admin/%s"):format(what))
  end
  return problem(404, "Not Found", ("no admin endpoint /admin/%s"):format(what))
end

return admin
