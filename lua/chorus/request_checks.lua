-- chorus.request_checks — the checks POST /workflows/NAME and POST
-- /events/NAME/KEY share: the method, the caller's credentials against an
-- auth rule, the Idempotency-Key header and the JSON body. Each returns
-- what it read, or nil and the problem+json answer to send.
local core = require "chorus.core"
local idempotency = require "chorus.idempotency"
local responses = require "chorus.responses"
local webhook = require "chorus.webhook"
local json = core.json

local request_checks = {}

local problem = responses.problem

--- nil for a POST, else the 405 (detail: "workflows are started with POST").
function request_checks.post_only(req, detail)
  if req.method ~= "POST" then
    local r = problem(405, "Method Not Allowed", detail)
    r.headers.Allow = "POST"
    return r
  end
end

--- The 401 that asks for a bearer token.
function request_checks.unauthorized(detail)
  local r = problem(401, "Unauthorized", detail)
  r.headers["WWW-Authenticate"] = "Bearer"
  return r
end

--- The caller's identity when req carries rule's bearer token or a valid
--- HMAC signature of its body under rule's secret ({ token =, hmac_secret =
--- }, chorus.webhook); nil otherwise.
function request_checks.credentials(rule, req)
  local given = responses.bearer(req)
  if rule.token and given and webhook.equal(given, rule.token) then
    return "token:" .. core.sha256(rule.token):sub(1, 16)
  end
  local sig = req.headers[webhook.HEADER:lower()]
  if rule.hmac_secret and sig and webhook.verify(rule.hmac_secret, req.body, sig) then
    return "hmac:" .. core.sha256(rule.hmac_secret):sub(1, 16)
  end
  return nil
end

--- The Idempotency-Key (nil when there is none), or nil and a 400.
function request_checks.idempotency_key(req)
  if req.repeated and req.repeated["idempotency-key"] then -- which one would the client mean?
    return nil, problem(400, "Bad Request", "the request has more than one Idempotency-Key header")
  end
  local key, kerr = idempotency.parse(req.headers["idempotency-key"])
  if kerr then
    return nil, problem(400, "Bad Request", kerr)
  end
  return key
end

--- The decoded body ({} when it is empty), or nil and a 400.
function request_checks.json_body(req)
  -- only JSON's own whitespace makes an empty body: "\f" is invalid JSON
  if not req.body:match("[^ \t\r\n]") then
    return {}
  end
  local ok, value = pcall(json.decode, req.body)
  if not ok then
    return nil, problem(400, "Bad Request",
      "the body is not valid JSON: " .. tostring(value):gsub("^json%.decode: ", ""))
  end
  return value
end

return request_checks
