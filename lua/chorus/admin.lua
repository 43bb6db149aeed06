-- chorus.admin — the admin endpoints of `chorus serve` (bearer token
-- required, compared in constant time): reload, breakers, schedules, and the outbox
-- and DLQ of the data folder. server.dispatch routes /admin/WHAT here.
local core = require "chorus.core"
local webhook = require "chorus.webhook"

local admin = {}

local function problem(...)
  return require("chorus.server").problem(...)
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

function admin.handle(server, req, what)
  local ok, denied = authorized(server, req)
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
  if what == "schedules" then -- each schedule's next slot and last run (chorus.scheduler)
    return json_response(200, { schedules = require("chorus.scheduler").list() })
  end
  local run_id = what:match("^runs/([^/]+)/redrive$")
  if run_id then
    if req.method ~= "POST" then
      return problem(405, "Method Not Allowed", "redrive with POST")
    end
    return server.redrive(run_id)
  end
  local st = server.state.store
  if not st and (what == "outbox" or what:match("^dlq")) then
    return problem(501, "Not Implemented", "this server keeps no data folder (storage.durable = false)")
  end
  if what == "outbox" and req.method == "GET" then
    return json_response(200, { entries = st:list_outbox(1000), depth = st:count("outbox") })
  end
  if what == "dlq" and req.method == "GET" then
    return json_response(200, { entries = st:list_dlq(1000), depth = st:count("dlq") })
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
    if not st:get_dlq(id) then
      return problem(404, "Not Found", ("no DLQ entry with id '%s'"):format(id))
    end
    st:del_dlq(id)
    st:commit()
    return json_response(200, { dropped = id })
  end
  if what == "outbox" or what == "dlq" or what:match("^dlq/") then
    return problem(405, "Method Not Allowed", ("wrong method for /admin/%s"):format(what))
  end
  return problem(404, "Not Found", ("no admin endpoint /admin/%s"):format(what))
end

return admin
