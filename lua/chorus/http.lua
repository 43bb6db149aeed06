-- chorus.http — outbound HTTP for workflows.
--
-- Every call yields its task until the response arrives (chorus.core.http),
-- so calls in chorus.all run concurrently on the one event loop. Responses
-- come back whatever their status; transport failures raise a structured
-- error { kind, message, upstream, attempts, method, url }.
local core = require "chorus.core"
local journal = require "chorus.journal"
local metrics = require "chorus.metrics"
local outbox = require "chorus.outbox"
local runstate = require "chorus.runstate"

local json = core.json
local http = {}
local EMPTY = {}

-- status: the HTTP status, or "" when the call got none; error: the error
-- kind (timeout, connect, ...) or "". upstream: the upstream's name, else
-- the host (never a whole URL).
local calls_total = metrics.counter("chorus_http_calls_total",
  "Outbound HTTP calls by upstream, status and error kind", { "upstream", "status", "error" })
local call_seconds = metrics.histogram("chorus_http_call_duration_seconds", "Outbound HTTP call latency",
  { "upstream" })

-- The call metrics' series keys by workflow, target and outcome (a status
-- or an error kind), so a call builds no label tables. A workflow's new
-- targets are its own series (metrics.PER_WORKFLOW; a child run's, those
-- of the workflow it is charged to, as its calls are): past its share, and
-- for targets longer than a label may be (a script's URL with a host of
-- megabytes), the keys are looked up each time and land in the "_other"
-- series; only keys of real series are cached, at most PER_WORKFLOW
-- targets per workflow (the cache lives as long as the process, outside
-- any run's memory cap).
local call_keys = {}

local function call_series(target, outcome, owner)
  local mine = call_keys[owner or ""]
  if not mine then
    mine = { n = 0, targets = {} }
    call_keys[owner or ""] = mine
  end
  local t = mine.targets[target]
  if not t then
    local latency = call_seconds.key({ target }, owner)
    t = { latency = latency }
    if latency ~= call_seconds.other() and mine.n < metrics.PER_WORKFLOW then
      mine.targets[target], mine.n = t, mine.n + 1
    end
  end
  local k = t[outcome]
  if not k then
    if math.type(outcome) == "integer" then
      k = calls_total.key({ target, outcome, "" }, owner)
    else
      k = calls_total.key({ target, "", tostring(outcome) }, owner)
    end
    if k ~= calls_total.other() then
      t[outcome] = k
    end
  end
  return k, t.latency
end

-- max_response_bytes: a longer body (or one whose Content-Length says so)
-- ends the call with kind "too_large"; the body also counts against the
-- run's memory cap as it arrives (past it, the run ends with kind "memory").
http.defaults = { connect_timeout = 10, timeout = 30, max_response_bytes = 16 * 1024 * 1024 }
local MAX_RESPONSE_LIMIT = 1 << 50
local CORE_MAX_RESPONSE = 16 * 1024 * 1024 -- core.http's own default

-- A per-call or per-upstream max_response_bytes: a positive integer.
local function check_max_response(v, level)
  if v == nil then
    return nil
  end
  local n = type(v) == "number" and math.tointeger(v)
  if not n or n < 1 or n > MAX_RESPONSE_LIMIT then
    error(("http.request: max_response_bytes must be an integer between 1 and 2^50, got %s")
      :format(tostring(v)), level + 1)
  end
  return n
end

local ERROR_MT = require("chorus.errors").MT

local function raise(kind, message, req)
  error(setmetatable({
    kind = kind, message = message, upstream = req.upstream, attempts = 1,
    method = req.method, url = req.url,
  }, ERROR_MT), 0)
end
http.error_mt = ERROR_MT

--- Whether url has a user:password@ (or user@) part: refused, such URLs
--- end up in logs, run records and the Referer of redirects.
function http.has_credentials(url)
  return url:match("^%a+://[^/?#]*@") ~= nil
end

local function is_json(headers)
  local ct = headers["content-type"]
  return ct and (ct:find("application/json", 1, true) or ct:find("+json", 1, true))
end

-- resp.json is decoded on first use: many workflows look only at status,
-- and decoding every body would be most of a call's CPU.
local RESPONSE_MT = {
  __name = "chorus.http.response",
  __index = function(resp, key)
    if key ~= "json" then
      return nil
    end
    local value
    if is_json(resp.headers) and #resp.body > 0 then
      local ok, decoded = pcall(json.decode, resp.body)
      if ok then
        value = decoded
      end
    end
    rawset(resp, "json", value)
    return value
  end,
}

local function check_number(req, field)
  local v = req[field]
  if v ~= nil and (type(v) ~= "number" or v < 0 or v ~= v) then -- (NaN too: it escaped the deadline's cap)
    error(("http.request: %s must be a non-negative number of seconds"):format(field), 3)
  end
end

-- The usual method names, upper-cased once each ("get" → "GET"). Only
-- these: the table lives as long as the process, and caching every name a
-- script passed kept each one (megabytes, a new one per run) for good.
local METHODS = {}
for _, m in ipairs({ "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS" }) do
  METHODS[m], METHODS[m:lower()] = m, m
end

-- The method name m upper-cased; raises at level (a name that is not a
-- string; core.http refuses one that is not A-Z).
local function method_name(m, level)
  local up = METHODS[m]
  if up then
    return up
  end
  if type(m) ~= "string" then
    error(("http.request: method must be a string, got a %s"):format(type(m)), level + 1)
  end
  return m:upper()
end

-- The part of preparing a request both paths share: body or json, the
-- idempotency key and trace headers, the run. headers: the table to send
-- (values already strings).
local function finish_prepare(out, req, headers)
  -- each option read once (an __index may answer a second read otherwise)
  local value, body, key = req.json, req.body, req.idempotency_key
  if value ~= nil and body ~= nil then
    error("http.request: give json or body, not both", 4)
  end
  if value ~= nil then
    local ok, text = pcall(json.encode, value)
    if not ok then
      error("http.request: json body " .. tostring(text), 4)
    end
    out.body = text
    if not headers["Content-Type"] and not headers["content-type"] then
      headers["Content-Type"] = "application/json"
    end
  elseif body ~= nil then
    if type(body) ~= "string" then
      error("http.request: body must be a string (use json = for tables)", 4)
    end
    out.body = body
  end
  if key ~= nil then
    key = tostring(key)
    headers["Idempotency-Key"] = key
  end
  out.idempotency_key = key
  local run = runstate.current()
  -- each attempt sends its own span id (send_once), unless the script
  -- gave a traceparent of its own; the run's tracestate goes along as it came
  if run and not headers.traceparent then
    out.traced = true
    if run.tracestate and not headers.tracestate then
      headers.tracestate = run.tracestate
    end
  end
  out.headers = headers
  out.run = run -- looked up once: allow_hosts, capture, the deadline and the outbox read it
  return out
end

-- Normalizes a request table: method, url, headers, body.
local function prepare(req)
  if type(req) ~= "table" then
    error("http.request expects a table { method =, url =, headers =, json = | body = }", 3)
  end
  local url = req.url -- read once, as every option (an __index may answer a second read otherwise)
  if type(url) ~= "string" or not url:match("^https?://") then
    error(("http.request: url must be an http:// or https:// URL, got %s"):format(tostring(url)), 3)
  end
  if http.has_credentials(url) then
    error("http.request: the url carries user:password@; send credentials in a header instead", 3)
  end
  -- (a queued call kept a table as its timeout: checked, then read again)
  local opts = { timeout = req.timeout, connect_timeout = req.connect_timeout }
  check_number(opts, "timeout")
  check_number(opts, "connect_timeout")
  -- (no upstream: a plain URL's call is counted under its host; a script's
  -- value there went into the process-wide metrics caches and the timeline
  -- the server reads after the run)
  local out = {
    method = method_name(req.method or "GET", 3), url = url,
    timeout = opts.timeout or http.defaults.timeout,
    connect_timeout = opts.connect_timeout or http.defaults.connect_timeout,
    tls_verify = req.tls_verify ~= false, follow_redirects = req.follow_redirects and true or false,
    max_response_bytes = check_max_response(req.max_response_bytes, 3) or http.defaults.max_response_bytes,
  }
  local headers = {}
  for k, v in pairs(req.headers or EMPTY) do
    if type(k) ~= "string" then -- (a queued call kept the script's table for the relay)
      error(("http.request: header names must be strings, got a %s"):format(type(k)), 3)
    end
    headers[k] = tostring(v)
  end
  return finish_prepare(out, req, headers)
end

-- The transport: core.http, or chorus.testing's mock while a spec runs.
local transport = core.http

--- Replaces the transport (fn has core.http's contract); nil restores it.
function http.set_transport(fn)
  transport = fn or core.http
end

--- The transport in use (the outbox relay sends through it too).
function http.transport()
  return transport
end

-- core.http's options for r. The options that keep core.http's default are
-- left out: the table is built for every call, and six fields fit its
-- first size.
local function transport_options(r, timeout, run)
  local o = { method = r.method, url = r.url, headers = r.headers, body = r.body,
    connect_timeout = r.connect_timeout, timeout = timeout }
  if not r.tls_verify then
    o.tls_verify = false
  end
  if r.follow_redirects then
    o.follow_redirects = true
  end
  if r.max_response_bytes ~= CORE_MAX_RESPONSE then
    o.max_response_bytes = r.max_response_bytes
  end
  if run and run.allow_hosts then
    o.allow_hosts = run.allow_hosts
  end
  return o
end

-- The HTTP calls in flight of each workflow's runs: workflow → count. Each
-- call holds a socket, a file descriptor of the process: one workflow's
-- runs holding 20,000 calls to an address that never answered used every
-- descriptor, and the server accepted no request of any workflow. So a
-- workflow has at most calls_cap calls in flight (limits.http_calls_per_workflow;
-- by default half the process's open-file limit; nil: no cap); a call past
-- it raises kind "calls_full". Released in C (core.uncount), as the call's
-- to-be-closed value: also when its task is cancelled or its run stopped.
-- Lua closes each such value once, so one closer per workflow serves all
-- of its calls (core.uncount): no table per call.
local calls_in_flight = {}
local UNCOUNT = { __close = core.uncount }
local closers = setmetatable({}, { __mode = "v" }) -- workflow → its closer, while a call holds it

local function default_calls_cap()
  local fds = core.stats().max_fds
  return fds and (fds + 1) // 2 or nil
end
http.calls_cap = default_calls_cap()

--- Sets limits.http_calls_per_workflow (nil: the default; 0: no cap).
function http.set_calls_cap(n)
  if n == nil then
    http.calls_cap = default_calls_cap()
  else
    http.calls_cap = n > 0 and n or nil
  end
end

-- The call's place in its workflow's count (wf: the workflow the call's
-- run is charged to), or nil for a call of no run.
-- A child run's (ctx.call) calls count in the workflow its runs are
-- charged to (chorus.runs, Service:charge): a workflow calling another
-- cannot use up that one's share.
local function count_call(wf, r)
  if not wf then
    return nil
  end
  local n, cap = calls_in_flight[wf] or 0, http.calls_cap
  if cap and n >= cap then
    raise("calls_full", ("workflow '%s' has %d HTTP calls in flight, the most one workflow may have "
      .. "(limits.http_calls_per_workflow)"):format(wf, n), r)
  end
  local closer = closers[wf]
  if not closer then
    closer = setmetatable({ calls_in_flight, wf }, UNCOUNT)
    closers[wf] = closer
  end
  calls_in_flight[wf] = n + 1
  return closer
end

-- Sends one prepared request (no journal): { status, headers, body, json }.
local function send_once(r)
  local run = r.run
  if run then -- a stopped (cancelled) run sends nothing more
    runstate.check_stop(run)
  end
  -- the run's deadline caps every call inside it
  local left = run and runstate.remaining(run) or math.huge
  if left <= 0 then
    error(runstate.deadline_error(("before %s %s"):format(r.method, r.url)), 2)
  end
  local timeout = r.timeout
  local capped = timeout == 0 or left < timeout
  if capped then
    timeout = left
  end
  if run and run.allow_hosts then -- the workflow's allow-list of upstream hosts
    local host = r.url:match("^https?://([^/?#]+)"):gsub("^.*@", ""):gsub(":%d+$", ""):lower()
    if not run.allow_hosts[host] then
      raise("forbidden_host", ("workflow '%s' may not call %s (not in its allow_hosts)"):format(run.workflow, host), r)
    end
  end
  local started = core.now()
  local span_id
  if r.traced then -- this attempt's span: the parent id the upstream sees (chorus.tracing)
    span_id = core.random_hex(8)
    r.headers.traceparent = "00-" .. run.trace_id .. "-" .. span_id .. "-" .. run.trace_flags
  end
  -- allow_hosts goes along: every redirect hop is checked against it too
  -- the run service's transport (chorus.runs env.transport), else the module's
  local send = run and run.env and run.env.transport or transport
  local owner = run and (run.charged_to or run.workflow) -- whose calls and series these are
  local _ <close> = count_call(owner, r)
  local status, headers, body, duration = send(transport_options(r, timeout, run))
  if run then
    journal.note(run, runstate.call_entry(r, started, duration, status or headers, span_id))
  end
  local target = r.upstream or r.url:match("^https?://([^/?#]+)") or "?"
  local count_key, latency_key = call_series(target, status or headers, owner)
  calls_total.inc_key(count_key)
  call_seconds.observe_key(latency_key, duration)
  if not status then
    if headers == "timeout" and capped then
      error(runstate.deadline_error(("during %s %s"):format(r.method, r.url)), 2)
    end
    raise(headers, ("%s (%s %s)"):format(body, r.method, r.url), r)
  end
  return setmetatable({ status = status, headers = headers, body = body }, RESPONSE_MT)
end

-- HTTP's safe methods (RFC 9110 9.2.1): a call with one changes nothing
-- upstream, so a durable run need not wait for its first records to be on
-- disk before sending it (chorus.journal).
local SAFE = { GET = true, HEAD = true, OPTIONS = true, TRACE = true }
-- Methods a retry may repeat without an idempotency key.
local IDEMPOTENT = { GET = true, HEAD = true, PUT = true, DELETE = true, OPTIONS = true }

-- A recorded response or error, as the call first returned or raised it.
local function restore(value, ok)
  return setmetatable(value, ok and RESPONSE_MT or ERROR_MT)
end

-- `later = true` (or { delay =, attempts =, ... }): the request goes to the
-- outbox, to be sent after the run, retried, DLQ at the end. While a saga
-- captures (run.capture), it joins the saga's chain instead.
local function queue_later(r, later)
  local run = r.run
  if run and run.capture then
    run.capture[#run.capture + 1] = { method = r.method, url = r.url, headers = r.headers, body = r.body,
      timeout = r.timeout, upstream = r.path and r.upstream, path = r.path }
    return setmetatable({ status = 202, headers = {}, body = "", queued = true }, RESPONSE_MT)
  end
  local id = outbox.request(r, type(later) == "table" and later or nil)
  return setmetatable({ status = 202, headers = {}, body = "", queued = true, outbox_id = id },
    RESPONSE_MT)
end

local function capturing(r)
  return r.run ~= nil and r.run.capture ~= nil
end

--- Sends one request; returns { status, headers, body, json }. In a durable
--- run the call is an effect: journaled, and replayed from the journal.
function http.request(req)
  local r = prepare(req)
  local later = req.later
  if later or capturing(r) then
    return queue_later(r, later)
  end
  if not (r.run and r.run.journal) then -- nothing to record: skip building the step's target
    return send_once(r)
  end
  return journal.effect("http", r.method .. " " .. r.url, function() return send_once(r) end, restore,
    SAFE[r.method])
end

local function verb(method)
  return function(url, opts)
    local req = {}
    for k, v in pairs(opts or EMPTY) do
      req[k] = v
    end
    req.method, req.url = method, url
    return http.request(req)
  end
end

http.get, http.post, http.put = verb "GET", verb "POST", verb "PUT"
http.delete, http.patch, http.head = verb "DELETE", verb "PATCH", verb "HEAD"

-- Named upstreams: base_url and defaults from the config file, or from the
-- environment variable CHORUS_UPSTREAM_<NAME> (a base URL) when no config
-- names them.
local upstreams = {}
local handles = {} -- name → the Upstream object http.upstream returns

function http.configure(config)
  upstreams = {}
  handles = {}
  for name, up in pairs(config or {}) do
    upstreams[name] = up
  end
end

--- Declares (or replaces) one upstream's config.
function http.configure_upstream(name, config)
  upstreams[name] = config
  handles[name] = nil
end

-- An upstream handle shows scripts its name and methods; its config (base
-- URL, credentials in headers) stays in `private`, out of their reach, and
-- the handle cannot be written: handles are shared by every workflow.
local Upstream = {}
local private = setmetatable({}, { __mode = "k" }) -- handle → { name =, config = }
local UPSTREAM_MT = {
  __name = "chorus.upstream",
  __index = function(handle, k)
    if k == "name" then
      return private[handle].name
    end
    return Upstream[k]
  end,
  __newindex = function(_, k)
    error(("an upstream handle is read-only (cannot set '%s')"):format(tostring(k)), 2)
  end,
  __metatable = false,
}

-- base_url may carry a query string; the path goes before it.
local function join(base, path)
  local head, query = base:match("^([^?]*)(.*)$")
  head = head:gsub("/+$", "")
  if path:sub(1, 1) ~= "/" then
    path = "/" .. path
  end
  local pq = path:find("?", 1, true)
  if pq and query ~= "" then
    return head .. path .. "&" .. query:sub(2)
  end
  return head .. path .. query
end

-- Whether err says something of the calling run rather than of the
-- upstream: the run stopped (deadline, cancel, memory), the call was
-- refused before it left (allow_hosts, the upstream's own rate limit or
-- bulkhead, the workflow's calls in flight), or it failed under a limit the script set below the
-- upstream's (max_response_bytes = 1, a timeout of a millisecond). The
-- upstream's breaker is every workflow's: counted as failures, such errors
-- let one workflow's script open it for all of them.
local REFUSED_HERE = { forbidden_host = true, rate_limited = true, bulkhead_full = true, memory = true,
  calls_full = true }

local function callers_own(cfg, r, err)
  if r.run and runstate.stopped(r.run) then
    return true
  end
  local kind = type(err) == "table" and rawget(err, "kind")
  if REFUSED_HERE[kind] then
    return true
  end
  local defaults = http.defaults
  if kind == "too_large" then
    return r.max_response_bytes < (cfg.max_response_bytes or defaults.max_response_bytes)
  end
  if kind == "timeout" then
    return r.timeout < (cfg.timeout or defaults.timeout)
      or r.connect_timeout < (cfg.connect_timeout or defaults.connect_timeout)
  end
  return false
end

-- Wraps send in the upstream's rate limit, bulkhead, hedge, breaker and
-- retry policy (config keys `rate_limit`, `bulkhead`, `hedge`, `breaker` and
-- `retry`, in that order from the inside; a call may pass retry = false or
-- its own policy).
-- POST and PATCH are retried only when the call carries an idempotency key.
local function resilient(self, r, req)
  local cfg = self.config -- self: the handle's private part
  if not (cfg.rate_limit or cfg.bulkhead or cfg.hedge or cfg.breaker or cfg.retry or req.retry) then
    return send_once(r) -- no policy: no closures to build
  end
  local function send()
    return send_once(r)
  end
  if cfg.rate_limit then -- token bucket { rate =, burst =, wait = }: per attempt
    local rl = cfg.rate_limit
    local bucket = core.rate_limit(self.name, rl.rate, rl.burst or 1)
    local inner = send
    send = function()
      -- the wait for a token never passes the run's deadline
      local max_wait, left = rl.wait or 0, runstate.remaining(r.run)
      local by_deadline = left < max_wait
      local wait = bucket:reserve(by_deadline and math.max(left, 0) or max_wait)
      if wait < 0 then
        if by_deadline then -- no token before the deadline: wait for it, then end the run
          core.sleep(math.max(left, 0))
          error(runstate.deadline_error(("waiting for upstream '%s''s rate limit"):format(self.name)), 0)
        end
        error(setmetatable({ kind = "rate_limited", upstream = self.name, attempts = 0,
          message = ("upstream '%s' is over its rate limit of %g/s"):format(self.name, rl.rate) },
          ERROR_MT), 0)
      end
      if wait > 0 then
        core.sleep(wait)
      end
      return inner()
    end
  end
  if cfg.bulkhead then -- innermost: a slot per attempt, not per retry loop
    local b = require("chorus.bulkhead").get(self.name, cfg.bulkhead)
    local inner = send
    send = function() return b:call(inner) end
  end
  if cfg.hedge and (r.method == "GET" or r.method == "HEAD") then
    -- a second attempt after `after` seconds; the first answer wins and the
    -- other transfer is cancelled
    local after, inner = cfg.hedge.after or 0.1, send
    send = function()
      local chorus = require "chorus"
      local ok, res = pcall(chorus.any, inner, function()
        core.sleep(after)
        return inner()
      end)
      if ok then
        return res
      end
      error(type(res) == "table" and res.errors and res.errors[1] or res, 0)
    end
  end
  if cfg.breaker then
    local opts = { name = self.name }
    for k, v in pairs(cfg.breaker) do
      opts[k] = v
    end
    local b = require("chorus.breaker").new(opts)
    b.unjudged = function(err) return callers_own(cfg, r, err) end
    local inner = send
    send = function() return b:call(inner) end
  end
  local policy = req.retry
  if policy == nil then
    policy = cfg.retry
  end
  if policy and (IDEMPOTENT[r.method] or r.idempotency_key ~= nil) then
    local retry = require "chorus.retry"
    policy = retry.policy(policy)
    -- the upstream's retry budget (policy.budget, a fraction of calls) is
    -- shared by every run, so a failing upstream never sees a retry storm
    local budget = policy.budget and core.retry_budget(self.name, policy.budget)
    return retry.run_budgeted(policy, budget, send)
  end
  return send()
end

-- base_url .. path, joined once per upstream config and path (a weak cache:
-- a reload's new config tables start empty). At most JOINED_MAX paths of up
-- to JOINED_PATH_BYTES each per config: the paths come from scripts, and a
-- path made per run (an id in it, or megabytes) was kept until the reload.
local joined = setmetatable({}, { __mode = "k" })
local JOINED_MAX, JOINED_PATH_BYTES = 1000, 1024

local function upstream_url(config, path)
  local cache = joined[config]
  if not cache then
    cache = { urls = {}, n = 0 }
    joined[config] = cache
  end
  local urls = cache.urls
  local url = urls[path]
  if not url then
    url = join(config.base_url, path)
    if not url:match("^https?://") then
      error(("http.request: url must be an http:// or https:// URL, got %s"):format(url), 3)
    end
    if http.has_credentials(url) then
      error("http.request: the upstream's base_url carries user:password@; use its headers instead", 3)
    end
    if cache.n < JOINED_MAX and #path <= JOINED_PATH_BYTES then
      urls[path] = url
      cache.n = cache.n + 1
    end
  end
  return url
end

local function copy_headers(into, from)
  for k, v in pairs(from) do
    if type(k) ~= "string" then -- (a queued call kept the script's table for the relay)
      error(("http: header names must be strings, got a %s"):format(type(k)), 3)
    end
    into[k] = tostring(v)
  end
end

-- handle:request(req), and the verbs' handle:get(path, opts) & co. with
-- method and path given apart: opts is read as it is, not copied into a
-- request table per call.
local function upstream_request(handle, req, method, path)
  local self = private[handle]
  local cfg = self.config
  path = path or req.path or "/"
  if type(path) ~= "string" then
    error(("http: the path must be a string, got a %s"):format(type(path)), 2)
  end
  method = method_name(method or req.method or "GET", 2)
  local url = upstream_url(cfg, path)
  local timeout = req.timeout or cfg.timeout
  local connect_timeout = req.connect_timeout or cfg.connect_timeout
  -- built with every field it will get, so it is sized once
  local r = { timeout = timeout, connect_timeout = connect_timeout, method = method, url = url,
    upstream = self.name, tls_verify = true, follow_redirects = false, body = nil, headers = nil, run = nil,
    idempotency_key = nil, traced = nil,
    max_response_bytes = check_max_response(req.max_response_bytes or cfg.max_response_bytes, 2)
      or http.defaults.max_response_bytes }
  if timeout ~= nil then
    check_number(r, "timeout")
  end
  if connect_timeout ~= nil then
    check_number(r, "connect_timeout")
  end
  local headers = { traceparent = nil } -- sized for the traceparent send_once adds
  if cfg.headers then
    copy_headers(headers, cfg.headers)
  end
  if req.headers then
    copy_headers(headers, req.headers)
  end
  r.timeout = timeout or http.defaults.timeout
  r.connect_timeout = connect_timeout or http.defaults.connect_timeout
  r.tls_verify = not (cfg.tls_verify == false or req.tls_verify == false)
  r.follow_redirects = (cfg.follow_redirects or req.follow_redirects) and true or false
  local prepared = finish_prepare(r, req, headers)
  prepared.path = path -- a queued call resolves the upstream's base_url again when delivered
  local run = prepared.run
  local later = req.later
  if later or (run and run.capture) then
    return queue_later(prepared, later)
  end
  if not (run and run.journal) then -- nothing to record: skip building the step's target
    return resilient(self, prepared, req)
  end
  return journal.effect("http", method .. " " .. self.name .. ":" .. path, function()
    return resilient(self, prepared, req)
  end, restore, SAFE[method])
end

--- The URL of path on the named upstream as configured now, or nil when
--- the upstream is no longer known (the outbox delivers a queued call to
--- the address the config gives at delivery, not at queueing).
function http.resolve(name, path)
  local config = upstreams[name]
  if not config then
    local url = core.env("CHORUS_UPSTREAM_" .. name:upper():gsub("[^%w]", "_"))
    config = url and { base_url = url }
  end
  if not config or type(config.base_url) ~= "string" then
    return nil
  end
  local ok, url = pcall(upstream_url, config, path)
  return ok and url or nil
end

-- (tail calls, as request's own: an error's level names the same caller)
function Upstream:request(req)
  return upstream_request(self, req)
end

local function upstream_verb(method)
  return function(self, path, opts)
    if opts ~= nil and type(opts) ~= "table" then
      error(("http: the options of %s must be a table, got a %s"):format(method, type(opts)), 2)
    end
    return upstream_request(self, opts or EMPTY, method, path or "/")
  end
end

Upstream.get, Upstream.post, Upstream.put = upstream_verb "GET", upstream_verb "POST", upstream_verb "PUT"
Upstream.delete, Upstream.patch = upstream_verb "DELETE", upstream_verb "PATCH"

-- How to declare an unknown upstream: the run service's
-- env.unknown_upstream_hint(name) when it has one (chorus.testing: "declare
-- a mock"), else the config's way.
local function unknown_upstream_hint(name)
  local run = runstate.current()
  local hint = run and run.env and run.env.unknown_upstream_hint
  return hint and hint(name)
    or ("define upstreams.%s.base_url in the config file or set CHORUS_UPSTREAM_%s")
      :format(name, name:upper():gsub("[^%w]", "_"))
end

function http.upstream(name)
  if type(name) ~= "string" then
    error("http.upstream: name must be a string", 2)
  end
  local handle = handles[name]
  if handle then
    return handle
  end
  local config = upstreams[name]
  if not config then
    local url = core.env("CHORUS_UPSTREAM_" .. name:upper():gsub("[^%w]", "_"))
    if url then
      config = { base_url = url }
    end
  end
  if not config or type(config.base_url) ~= "string" then
    -- a structured error like every other failure a script sees
    local how = unknown_upstream_hint(name)
    error(setmetatable({ kind = "unknown_upstream", upstream = name, attempts = 0,
      message = ("http.upstream: unknown upstream '%s' (%s)"):format(name, how) }, ERROR_MT), 0)
  end
  handle = setmetatable({}, UPSTREAM_MT)
  private[handle] = { name = name, config = config }
  if upstreams[name] == config then -- configured ones are kept; the environment is read each time
    handles[name] = handle
  end
  return handle
end

return http
