-- chorus.idempotency — the Idempotency-Key header of POST /workflows/NAME
-- (IETF httpapi draft semantics, Stripe-compatible).
--
-- A key is looked up per workflow: first among the requests in flight in
-- this process (memory), then in the data folder. Same key and fingerprint:
-- 409 while the first is in flight, its stored response (with
-- Idempotent-Replayed: true) once it finished; same key, other fingerprint:
-- 422. The fingerprint is the SHA-256 of method, path, the query arguments
-- (sorted), the Callback-URL header and the body: its bytes, or with a JSON
-- content type its canonical JSON (keys sorted, no whitespace). A retry that
-- names another callback_url is another request, not a replay.
-- The key record is written with the run's first records and rewritten
-- with the response in the same commit as the run's final state.
local core = require "chorus.core"
local store = require "chorus.store"

local idempotency = { DEFAULT_TTL = 24 * 3600, MAX_LENGTH = 255 }

-- workflow \0 key → fingerprint, for requests in flight in this process
local inflight = {}

-- workflow \0 key → run id whose records could not be stored: a stored
-- "running" record of that run (written by an earlier commit) does not
-- hold the key, so the client's retry goes ahead
local abandoned = {}

--- Parses the header value: an RFC 8941 sf-string ("abc", as the draft
--- says) or a bare token (as Stripe's clients send). Returns the key, or
--- nil and why.
function idempotency.parse(value)
  if value == nil then
    return nil
  end
  local key = value
  if value:sub(1, 1) == '"' then
    local inner = value:match('^"(.*)"$')
    if not inner or inner:find('[^\\]"') or inner:find('^"') then
      return nil, "Idempotency-Key must be a quoted string (\"...\") or a bare token"
    end
    key = inner:gsub("\\([\\\"])", "%1")
  end
  if key == "" then
    return nil, "Idempotency-Key must not be empty"
  end
  if #key > idempotency.MAX_LENGTH then
    return nil, ("Idempotency-Key is %d characters; at most %d are allowed"):format(#key, idempotency.MAX_LENGTH)
  end
  if key:find("[^\33-\126 ]") then
    return nil, "Idempotency-Key must be printable ASCII"
  end
  return key
end

-- "?k=v&..." of the query arguments, sorted, each length-prefixed (no two
-- different queries give the same text); "" without any, so a request
-- without a query keeps the fingerprint it had before queries counted.
local function query_text(req)
  local names = {}
  for k in pairs(req.query or {}) do
    names[#names + 1] = k
  end
  local cb = req.headers and req.headers["callback-url"]
  if #names == 0 and not cb then
    return ""
  end
  table.sort(names)
  local parts = {}
  for i, k in ipairs(names) do
    local v = req.query[k]
    parts[i] = ("%d:%s=%d:%s"):format(#k, k, #v, v)
  end
  if cb then
    parts[#parts + 1] = ("callback-url:%d:%s"):format(#cb, cb)
  end
  return "?" .. table.concat(parts, "&")
end

local json = core.json
local ARRAY_MT = getmetatable(json.decode("[]"))

-- The canonical text of a decoded JSON value: object keys sorted, no
-- whitespace, each string and number as the encoder writes it.
local function canonical(v, out)
  if type(v) ~= "table" or v == json.null then
    out[#out + 1] = json.encode(v)
  elseif getmetatable(v) == ARRAY_MT then
    out[#out + 1] = "["
    for i = 1, #v do
      if i > 1 then
        out[#out + 1] = ","
      end
      canonical(v[i], out)
    end
    out[#out + 1] = "]"
  else
    local keys = {}
    for k in pairs(v) do
      keys[#keys + 1] = k
    end
    table.sort(keys)
    out[#out + 1] = "{"
    for i, k in ipairs(keys) do
      out[#out + 1] = (i > 1 and "," or "") .. json.encode(k) .. ":"
      canonical(v[k], out)
    end
    out[#out + 1] = "}"
  end
  return out
end

-- The body as the fingerprint sees it: with a JSON content type (and a body
-- that parses), its canonical text, so a retry whose serializer orders keys
-- or spaces differently is the same request; otherwise its bytes.
local function body_text(req)
  local ct = req.headers and req.headers["content-type"] or ""
  local media = ct:lower():match("^%s*([^;%s]+)")
  if media and (media == "application/json" or media:match("^application/[^/]+%+json$")) then
    local ok, value = pcall(json.decode, req.body)
    local cok, parts = ok, nil
    if ok then -- whatever the encoder refuses leaves the bytes to compare
      cok, parts = pcall(canonical, value, {})
    end
    if cok then
      return "json:" .. table.concat(parts)
    end
  end
  return req.body
end
idempotency.canonical_body = body_text

--- The request's fingerprint and, for a canonicalized JSON body, the one
--- of its bytes that keys stored before bodies were canonical carry (so a
--- retry across the upgrade still replays rather than getting 422).
function idempotency.fingerprint(req)
  local head = req.method .. " " .. req.path .. query_text(req) .. "\n"
  local body = body_text(req)
  return core.sha256(head .. body), body ~= req.body and core.sha256(head .. req.body) or nil
end

--- Decides what a request with key gets. Returns one of:
---   "new"                 go ahead (the caller then calls begin)
---   "conflict"            409: the first request is still in flight
---   "mismatch"            422: the key was used with another request
---   "replay", response    the stored response of the finished run
function idempotency.check(st, workflow, key, fp, legacy)
  local live = inflight[store.idem_key(workflow, key)]
  if live then
    return (live == fp or live == legacy) and "conflict" or "mismatch"
  end
  local rec = st and st:get_idempotency(workflow, key)
  if not rec or (rec.expires_at and rec.expires_at <= core.now()) then
    return "new"
  end
  if rec.fp ~= fp and (legacy == nil or rec.fp ~= legacy) then
    return "mismatch"
  end
  if rec.state == "running" then -- resumed after a restart, still running
    return abandoned[store.idem_key(workflow, key)] == rec.run_id and "new" or "conflict"
  end
  return "replay", rec.response, rec
end

--- Marks key in flight and queues its record (state running, run id).
function idempotency.begin(st, workflow, key, fp, run_id, ttl)
  inflight[store.idem_key(workflow, key)] = fp
  abandoned[store.idem_key(workflow, key)] = nil
  if st then
    st:put_idempotency(workflow, key, { fp = fp, state = "running", run_id = run_id,
      expires_at = core.now() + (ttl or idempotency.DEFAULT_TTL) })
  end
end

--- Queues the finished record with the response to replay.
function idempotency.finish(st, workflow, key, fp, run_id, ttl, response)
  if st then
    st:put_idempotency(workflow, key, { fp = fp, state = "done", run_id = run_id, response = response,
      expires_at = core.now() + (ttl or idempotency.DEFAULT_TTL) })
  end
end

--- Forgets the in-flight mark (after the finished record is durable).
function idempotency.release(workflow, key)
  inflight[store.idem_key(workflow, key)] = nil
end

--- The run of key failed to store its records and the client was told so:
--- frees the key for a retry and queues the deletion of its record (the
--- caller commits).
function idempotency.abandon(st, workflow, key, run_id)
  local k = store.idem_key(workflow, key)
  inflight[k] = nil
  abandoned[k] = run_id
  if st then
    st:del_idempotency(workflow, key)
  end
end

return idempotency
