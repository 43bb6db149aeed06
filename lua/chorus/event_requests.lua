-- chorus.event_requests — POST /events/NAME/KEY: an event for the run
-- waiting on it with ctx.event (chorus.events). Each guard answers or lets
-- the request through: POST, auth, the event id, the body; then the event
-- is kept durably and the answer is 202 { kept = true } (whether a run
-- waits already or not: a later wait gets it, within events.ttl), or 200
-- { duplicate = true } for a redelivery of an id seen already.
local events = require "chorus.events"
local idempotency = require "chorus.idempotency"
local log = require("chorus.log").event
local checks = require "chorus.request_checks"
local responses = require "chorus.responses"
local state = require "chorus.server_state"
local store = require "chorus.store"
local webhook = require "chorus.webhook"

local event_requests = {}

local EMPTY = {}
local problem, json_response = responses.problem, responses.json

-- The caller may send events NAME: with events.NAME.auth, its bearer token
-- or HMAC signature of the body; the admin token always. An event name
-- with no auth rule takes the admin token only (an event wakes runs: it is
-- never open to anyone).
local function allowed(req, name)
  local token = state.config.admin_token
  local given = responses.bearer(req)
  if token and token ~= "" and given and webhook.equal(given, token) then
    return true
  end
  local rule = (((state.config.events or EMPTY)[name]) or EMPTY).auth
  if name == "ttl" or not rule then
    return false
  end
  return checks.credentials(rule, req) ~= nil
end

local function post_only(c)
  return checks.post_only(c.req, "events are sent with POST")
end

local function valid_names(c)
  local err = events.check_name("name", c.name) or events.check_name("key", c.key)
  if err then
    return problem(400, "Bad Request", err)
  end
end

local function authorized(c)
  if not allowed(c.req, c.name) then
    return checks.unauthorized(("events '%s' require the admin token, or the bearer token or a signed "
      .. "body (%s) of events.%s.auth"):format(c.name, webhook.HEADER, c.name))
  end
end

local function valid_body(c)
  local bad
  c.payload, bad = checks.json_body(c.req)
  return bad
end

-- The event id: the Idempotency-Key header, else the payload's id field.
local function event_id(c)
  local key, bad = checks.idempotency_key(c.req)
  if bad then
    return bad
  end
  local id = key
  if not id and type(c.payload) == "table" then
    id = c.payload.id
    if math.type(id) == "integer" then
      id = tostring(id)
    end
    if type(id) ~= "string" or id == "" or #id > idempotency.MAX_LENGTH then
      id = nil
    end
  end
  c.id = id
end

local GUARDS = { post_only, valid_names, authorized, valid_body, event_id }

--- POST /events/NAME/KEY (any method: a guard answers 405).
function event_requests.handle(req, name, key)
  local c = { req = req, name = name, key = key }
  for _, guard in ipairs(GUARDS) do
    local resp = guard(c)
    if resp then
      return resp
    end
  end
  local ok, res = pcall(events.deliver, name, key, c.payload, c.id)
  if not ok then
    log("error", "could not store an event", { event = name, key = key, error = tostring(res) })
    if store.is_full(res) then
      return problem(507, "Insufficient Storage",
        "the data folder is full (storage.max_size_mb); the event was not kept")
    end
    return problem(500, "Internal Server Error", "the event could not be stored")
  end
  if res == "duplicate" then
    return json_response(200, { kept = false, duplicate = true, id = c.id })
  end
  return json_response(202, { kept = true, id = c.id })
end

return event_requests
