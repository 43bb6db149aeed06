-- chorus.responses — the HTTP answers `chorus serve` makes: problem+json
-- errors (RFC 9457), JSON and text bodies, a workflow's return value as a
-- response, a finished run's answer, and the answer to a run that could
-- not be stored.
local core = require "chorus.core"
local secrets = require "chorus.secrets"
local store = require "chorus.store"
local json = core.json

local responses = {}

local function problem(status, title, detail, extra)
  local body = { type = "about:blank", title = title, status = status, detail = detail }
  for k, v in pairs(extra or {}) do
    body[k] = v
  end
  return { status = status, headers = { ["Content-Type"] = "application/problem+json" },
    body = json.encode(body) }
end
responses.problem = problem

local EMPTY = {} -- read-only

function responses.json(status, value, headers)
  -- sized for the X-Run-Id a run's answer adds (responses.run): no rehash
  local h = { ["Content-Type"] = "application/json", ["X-Run-Id"] = nil }
  for k, v in pairs(headers or EMPTY) do
    h[k] = v
  end
  return { status = status, headers = h, body = json.encode(value) }
end
local json_response = responses.json

--- The token of an `Authorization: Bearer TOKEN` header, or nil.
function responses.bearer(req)
  return (req.headers.authorization or ""):match("^[Bb]earer%s+(.+)$")
end

function responses.text(status, text, content_type)
  return { status = status, headers = { ["Content-Type"] = content_type or "text/plain; charset=utf-8" },
    body = text }
end

-- At most this many headers, of this many bytes together, in a workflow's
-- response: the server builds it after the run, outside its budget, and
-- 300,000 headers held the server's thread 1.3 s (600,000 ran the request
-- handler out of memory, its run's end half recorded).
local MAX_HEADERS, MAX_HEADER_BYTES = 100, 65536
responses.MAX_HEADERS = MAX_HEADERS

-- What a body or header may be: tostring of anything else answered its
-- address ("function: 0x...": the server's memory layout) to the client.
local TEXT = { string = true, number = true }

-- A workflow's return value as an HTTP response (README, HTTP surface: {status=,
-- headers=, json=} or {status=, body=}, anything else 200 JSON).
function responses.workflow(value)
  if type(value) == "table" and math.type(value.status) == "integer"
      and (value.json ~= nil or value.body ~= nil or value.headers ~= nil) then
    if value.status < 200 or value.status > 599 then -- (a 1xx as the final answer left its client waiting)
      error(("status %d is not a final HTTP status (200 to 599)"):format(value.status), 0)
    end
    local headers, n, bytes = {}, 0, 0
    for k, v in pairs(type(value.headers) == "table" and value.headers or {}) do
      if not (TEXT[type(k)] and TEXT[type(v)]) then
        error(("header %s is a %s: header names and values must be strings or numbers"):format(
          TEXT[type(k)] and ("'" .. tostring(k):sub(1, 100) .. "'") or "name", TEXT[type(k)] and type(v) or type(k)), 0)
      end
      k, v = tostring(k), tostring(v)
      n, bytes = n + 1, bytes + #k + #v
      if n > MAX_HEADERS or bytes > MAX_HEADER_BYTES then
        error(("more than %d headers or %d bytes of them"):format(MAX_HEADERS, MAX_HEADER_BYTES), 0)
      end
      headers[k] = v
    end
    if value.json ~= nil then
      headers["Content-Type"] = headers["Content-Type"] or "application/json"
      return { status = value.status, headers = headers, body = json.encode(value.json) }
    end
    if value.body ~= nil and not TEXT[type(value.body)] then
      error(("the body is a %s: it must be a string (or json = a value)"):format(type(value.body)), 0)
    end
    headers["Content-Type"] = headers["Content-Type"] or "text/plain; charset=utf-8"
    return { status = value.status, headers = headers, body = tostring(value.body or "") }
  end
  return json_response(200, value)
end

-- The response a finished run gives its caller (and replays under its
-- idempotency key).
function responses.run(rec, ok, value)
  if not ok and rec.status == "timed_out" then
    return problem(504, "Gateway Timeout", "the workflow's run passed its deadline (its timeout); see the run record",
      { run_id = rec.id, kind = rec.error.kind })
  end
  if not ok and rec.status == "cancelled" then
    return problem(409, "Conflict", "the run was cancelled (DELETE /runs/ID); see the run record",
      { run_id = rec.id, kind = rec.error.kind })
  end
  if not ok then
    return problem(500, "Internal Server Error", "the workflow failed; see the run record",
      { run_id = rec.id, kind = rec.error.kind })
  end
  local rok, resp = pcall(responses.workflow, value)
  if not rok then
    return problem(500, "Internal Server Error", "the workflow's result cannot be answered: " .. tostring(resp),
      { run_id = rec.id, kind = "bad_response" })
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
function responses.storage_problem(err, run_id)
  if store.is_full(err) then
    return problem(507, "Insufficient Storage",
      "the data folder is full (storage.max_size_mb); the run was not stored", { run_id = run_id })
  end
  return problem(500, "Internal Server Error", "the run could not be stored", { run_id = run_id })
end

return responses
