-- chorus.config — the config file: a Lua script returning a table.
--
--   return {
--     listen = "127.0.0.1:8080", scripts = "./examples", data = "./.chorus-data",
--     admin_token = chorus.secret("CHORUS_ADMIN_TOKEN"),
--     limits = { run_memory_mb = 64, workflow_memory_mb = 256, run_instructions = 1e8, run_cpu_seconds = 5,
--                run_record_bytes = 8388608, max_body_bytes = 1048576,
--                max_header_bytes = 16384, max_connections = 10000, client_timeout = 30,
--                drain_timeout = 10, max_inflight_runs = 10000, inflight_runs_per_workflow = 5000 },
--     upstreams = { crm = { base_url = "http://127.0.0.1:9101", timeout = 5 } },
--     storage = { durable = true, sync = true, map_size_mb = 1024, max_size_mb = 8192,
--                 runs_retention = 604800, recovery_batch = 200,
--                 workflow_share_mb = 4096 },  -- one workflow's share of max_size_mb
--     outbox = { attempts = 8, base = 1, cap = 300, concurrency = 64, poll = 0.1 },
--     alerts = { outbox_depth = 1000, outbox_age = 300, dlq_depth = 1 },
--     webhook_secret = chorus.secret("webhook"),
--     egress = { allow = { "10.0.0.0/8" } },  -- non-public addresses callbacks may reach
--     events = { ttl = 604800, processed = { auth = { token = chorus.secret("events") } } },
--     telemetry = { otlp_endpoint = "http://127.0.0.1:4318", batch = 512, queue = 4096, interval = 2,
--                   service_name = "chorus" },  -- spans over OTLP/HTTP (chorus.otlp)
--   }
--
-- It runs sandboxed like a workflow script (chorus.env and chorus.secret are
-- there for values that must not live in the file).
local core = require "chorus.core"
local errors = require "chorus.errors"
local sandbox = require "chorus.sandbox"

local config = {}

--- One workflow's share of a cap (runs in flight, bytes of the folder): share
--- as configured, by default half the cap rounded up, so one flooded workflow
--- leaves the other half to the rest; nil when a workflow has no share of its
--- own (0, or at least the cap).
function config.share(cap, share)
  share = share or (cap + 1) // 2
  if share == 0 or share >= cap then
    return nil
  end
  return share
end

local FIELDS = {
  listen = "string", scripts = "string", data = "string", admin_token = "string",
  limits = "table", upstreams = "table", access_log = "boolean",
  storage = "table", outbox = "table", alerts = "table", webhook_secret = "string",
  secrets_dir = "string", auth = "table", egress = "table", request_headers = "table",
  log_level = "string", events = "table", telemetry = "table",
}

-- Every number in the config has a range, checked at load with a message
-- naming the key: { int = true when it must be an integer, min, max, off =
-- true when 0 is also allowed (it means "none" / "no limit"), above = true
-- when min itself is not (a rate or duration the breaker needs above 0) }. A server
-- refuses to start on a value outside it rather than misbehave later (a
-- run cap no run fits in, a 1e300-byte body limit, a NaN timeout).
local DAY, YEAR = 86400, 365 * 86400
local GiB = 1 << 30

-- The smallest run_memory_mb accepted (besides 0, no cap). A trivial
-- workflow's run needs about 10 KiB and one that calls an upstream and
-- decodes JSON a few tens; the request handler runs under the same cap and a
-- body or result of any size needs more. Below a few KiB no request could be
-- answered at all.
config.RUN_MEMORY_FLOOR_MB = 1
-- The smallest run_instructions (besides 0, no budget): a trivial request
-- takes a few thousand.
config.RUN_INSTRUCTIONS_FLOOR = 100000
-- The smallest run_cpu_seconds (besides 0, no limit): the CPU is charged in
-- the watchdog's ticks of 10 ms, so a short run may be charged a whole tick;
-- ten of them leave room for that.
config.RUN_CPU_FLOOR_SECONDS = 0.1
-- The smallest run_record_bytes (besides 0, no cap): a finished record's
-- frame (ids, times, status, an error) takes about a kilobyte, its input
-- what the request sent.
config.RUN_RECORD_FLOOR_BYTES = 4096

local LIMITS = {
  run_memory_mb = { min = config.RUN_MEMORY_FLOOR_MB, max = 1 << 20, off = true },
  -- what one workflow's ended runs may leave alive in its script's state
  -- (alloc.h); by default 4 x run_memory_mb
  workflow_memory_mb = { min = config.RUN_MEMORY_FLOOR_MB, max = 1 << 20, off = true },
  run_instructions = { int = true, min = config.RUN_INSTRUCTIONS_FLOOR, max = 1e15, off = true },
  run_cpu_seconds = { min = config.RUN_CPU_FLOOR_SECONDS, max = 1e6, off = true },
  max_body_bytes = { int = true, min = 1, max = GiB },
  max_header_bytes = { int = true, min = 4096, max = 1 << 20 },
  max_connections = { int = true, min = 1, max = 1000000 },
  client_timeout = { int = true, min = 0, max = DAY },
  drain_timeout = { min = 0, max = 3600 },
  max_inflight_runs = { int = true, min = 1, max = 10000000 },
  -- one workflow's share of them (chorus.runs caps); 0 or at least
  -- max_inflight_runs: no share, the server's cap alone
  inflight_runs_per_workflow = { int = true, min = 0, max = 10000000 },
  -- HTTP calls one workflow's runs may have in flight (chorus.http); 0: no cap
  http_calls_per_workflow = { int = true, min = 0, max = 1e9 },
  run_log_lines = { int = true, min = 0, max = 1e9 },
  run_log_bytes = { int = true, min = 0, max = 1 << 40 },
  workflow_log_bytes_per_second = { int = true, min = 0, max = 1 << 40 },
  outbox_pending_per_workflow = { int = true, min = 0, max = 1e9 },
  events_kept_per_workflow = { int = true, min = 0, max = 1e9 },
  events_kept_bytes_per_workflow = { int = true, min = 0, max = 1 << 40 },
  -- one workflow's share of the finished records kept in memory (chorus.runs:
  -- 10000 records, 64 MiB); 0 or at least the ring's: no share of its own
  records_kept_per_workflow = { int = true, min = 0, max = 10000000 },
  records_kept_bytes_per_workflow = { int = true, min = 0, max = 1 << 40 },
  run_record_bytes = { int = true, min = config.RUN_RECORD_FLOOR_BYTES, max = 1 << 40, off = true },
}

-- The numeric settings of the tables storage, outbox and alerts.
local SECTIONS = {
  storage = { map_size_mb = { int = true, min = 1, max = 1 << 24 },
    max_size_mb = { int = true, min = 1, max = 1 << 24 },
    workflow_share_mb = { int = true, min = 0, max = 1 << 24 }, -- 0: no share of its own
    runs_retention = { min = 0, max = 100 * YEAR },
    recovery_batch = { int = true, min = 1, max = 1000000 } },
  outbox = { attempts = { int = true, min = 1, max = 1000 }, base = { min = 0, max = DAY },
    cap = { min = 0, max = 30 * DAY }, concurrency = { int = true, min = 1, max = 100000 },
    poll = { min = 0.001, max = 3600 } },
  alerts = { outbox_depth = { int = true, min = 0, max = 1e12 }, outbox_age = { min = 0, max = 100 * YEAR },
    dlq_depth = { int = true, min = 0, max = 1e12 } },
  telemetry = { batch = { int = true, min = 1, max = 100000 }, queue = { int = true, min = 1, max = 10000000 },
    interval = { min = 0.01, max = 3600 } },
}

-- The settings of the telemetry table that are not numbers.
local TELEMETRY_STRINGS = { otlp_endpoint = true, service_name = true }

local UPSTREAM_KEYS = {
  base_url = true, headers = true, timeout = true, connect_timeout = true, retry = true,
  breaker = true, bulkhead = true, rate_limit = true, hedge = true, tls_verify = true,
  follow_redirects = true, max_response_bytes = true,
}

-- The numbers of an upstream and of its policy tables (retry is checked by
-- retry.policy itself).
local UPSTREAM_NUMBERS = {
  [""] = { timeout = { min = 0, max = 1e6 }, connect_timeout = { min = 0, max = 1e6 },
    max_response_bytes = { int = true, min = 1, max = 1 << 50 } },
  -- the breaker's own checks (runtime/breaker.c), here so that a value it
  -- refuses stops the load instead of failing every call to the upstream
  breaker = { window = { int = true, min = 1, max = 1e6 }, window_seconds = { int = true, min = 1, max = DAY },
    min_calls = { int = true, min = 1, max = 1e6 }, half_open_calls = { int = true, min = 1, max = 1e6 },
    failure_rate = { min = 0, max = 100, above = true }, slow_call_rate = { min = 0, max = 100, above = true },
    slow_call_duration = { min = 0, max = DAY, above = true }, open_for = { min = 0, max = YEAR } },
  bulkhead = { max = { int = true, min = 1, max = 1e6 }, queue = { int = true, min = 0, max = 1e7 },
    wait = { min = 0, max = DAY } },
  rate_limit = { rate = { min = 1e-6, max = 1e9 }, burst = { min = 1, max = 1e9 }, wait = { min = 0, max = DAY } },
  hedge = { after = { min = 0, max = 3600 } },
}

-- The keys and ranges checked above, for the spec that keeps the README's
-- config reference in step with them.
config.KEYS = { fields = FIELDS, limits = LIMITS, sections = SECTIONS, upstream = UPSTREAM_KEYS,
  upstream_numbers = UPSTREAM_NUMBERS }

-- The config's own secrets (the admin token, the webhook secret, auth
-- tokens and HMAC keys), however the file got them, are the server's:
-- redacted everywhere and unreadable to workflow scripts.
local function reserve_secrets(conf)
  local secrets = require "chorus.secrets"
  local function keep(value)
    if type(value) == "string" then
      secrets.reserve(value)
      secrets.remember(value)
    end
  end
  keep(conf.admin_token)
  keep(conf.webhook_secret)
  for _, rule in pairs(conf.auth or {}) do
    keep(rule.token)
    keep(rule.hmac_secret)
  end
  for name, ev in pairs(conf.events or {}) do
    if name ~= "ttl" then
      keep(ev.auth.token)
      keep(ev.auth.hmac_secret)
    end
  end
end

local function show(v)
  local i = math.tointeger(v)
  return i and tostring(i) or ("%.14g"):format(v)
end

-- nil when v fits range r, else the message; name is the key's full name.
local function check_number(name, v, r)
  if type(v) ~= "number" then
    return ("%s must be a number, got %s"):format(name, type(v))
  end
  if v ~= v then
    return ("%s must be a number, got NaN"):format(name)
  end
  if v == math.huge or v == -math.huge then
    return ("%s must be finite, got %s"):format(name, v > 0 and "infinity" or "-infinity")
  end
  if r.above and (v <= r.min or v > r.max) then
    return ("%s must be above %s and at most %s, got %s"):format(name, show(r.min), show(r.max), show(v))
  end
  if (v < r.min or v > r.max) and not (r.off and v == 0) then
    return ("%s must be between %s and %s%s, got %s"):format(name, show(r.min), show(r.max),
      r.off and " (or 0 for none)" or "", show(v))
  end
  if r.int and not math.tointeger(v) then
    return ("%s must be an integer, got %s"):format(name, show(v))
  end
  return nil
end

-- Checks the numbers of t against ranges (other keys are left to the
-- caller); integers given as floats (1e8) become integers. prefix names t.
local function check_numbers(t, ranges, prefix)
  for k, r in pairs(ranges) do
    local v = t[k]
    if v ~= nil then
      local err = check_number(prefix .. k, v, r)
      if err then
        return err
      end
      if r.int then
        t[k] = math.tointeger(v)
      end
    end
  end
  return nil
end

-- nil when rule is an auth rule ({ token =, hmac_secret = }), else why not;
-- what names it (auth.NAME, events.NAME.auth).
-- nil when list is nil or a list of workflow names, else why not.
local function check_names(list, what)
  if list == nil then
    return nil
  end
  if type(list) ~= "table" then
    return ("%s must be a list of workflow names"):format(what)
  end
  for k, v in pairs(list) do
    if math.type(k) ~= "integer" or k < 1 or k > #list or type(v) ~= "string" or v == "" then
      return ("%s must be a list of workflow names"):format(what)
    end
  end
  return nil
end

local function check_auth(rule, what)
  if type(rule) ~= "table" or (rule.token == nil and rule.hmac_secret == nil) then
    return ("%s must be { token = ... } and/or { hmac_secret = ... }"):format(what)
  end
  for k, v in pairs(rule) do
    if k == "callers" then
      local err = check_names(v, what .. ".callers")
      if err then
        return err
      end
    elseif (k ~= "token" and k ~= "hmac_secret") or type(v) ~= "string" or v == "" then
      return ("%s.%s: only token and hmac_secret, non-empty strings, and callers"):format(what, tostring(k))
    end
  end
  return nil
end

-- events = { ttl = S, NAME = { auth = { token =, hmac_secret = } } }
local function check_events(ev)
  for name, v in pairs(ev) do
    if name == "ttl" then
      local err = check_number("events.ttl", v, { min = 1, max = 100 * YEAR })
      if err then
        return err
      end
    elseif type(name) ~= "string" or type(v) ~= "table" then
      return ("events.%s must be a table { auth = { token = ... } }"):format(tostring(name))
    else
      for k in pairs(v) do
        if k ~= "auth" and k ~= "emitters" and k ~= "waiters" then
          return ("events.%s: unknown setting '%s' (auth, emitters, waiters)"):format(name, tostring(k))
        end
      end
      local err = check_names(v.emitters, ("events.%s.emitters"):format(name))
        or check_names(v.waiters, ("events.%s.waiters"):format(name))
        or check_auth(v.auth, ("events.%s.auth"):format(name))
      if not err and v.auth.callers then
        err = ("events.%s.auth: callers is for workflows; an event takes emitters"):format(name)
      end
      if err then
        return err
      end
    end
  end
  return nil
end

-- telemetry = { otlp_endpoint = "http://HOST:4318", batch =, queue =,
-- interval =, service_name = } (numbers checked with SECTIONS).
local function check_telemetry(t)
  if t == nil then
    return nil
  end
  local url = t.otlp_endpoint
  if type(url) ~= "string" or not url:match("^https?://[^/?#%s]+[^?#%s]*$") then
    return "telemetry.otlp_endpoint must be the receiver's http(s) base URL, e.g. \"http://127.0.0.1:4318\""
      .. " (chorus posts to its /v1/traces)"
  end
  if require("chorus.http").has_credentials(url) then
    return "telemetry.otlp_endpoint must not carry user:password@"
  end
  if t.batch and t.queue and t.batch > t.queue then
    return ("telemetry.batch (%d) is above telemetry.queue (%d)"):format(t.batch, t.queue)
  end
  return nil
end

local function validate(conf, path)
  for k, v in pairs(conf) do
    if not FIELDS[k] then
      return nil, ("%s: unknown setting '%s'"):format(path, tostring(k))
    end
    if type(v) ~= FIELDS[k] then
      return nil, ("%s: '%s' must be a %s"):format(path, k, FIELDS[k])
    end
  end
  for k in pairs(conf.limits or {}) do
    if not LIMITS[k] then
      return nil, ("%s: unknown limit '%s'"):format(path, tostring(k))
    end
  end
  local err = check_numbers(conf.limits or {}, LIMITS, "limits.")
  if err then
    return nil, ("%s: %s"):format(path, err)
  end
  for section, keys in pairs(SECTIONS) do
    for k, v in pairs(conf[section] or {}) do
      if section == "storage" and (k == "sync" or k == "durable") then
        if type(v) ~= "boolean" then
          return nil, ("%s: storage.%s must be a boolean"):format(path, k)
        end
      elseif section == "telemetry" and TELEMETRY_STRINGS[k] then
        if type(v) ~= "string" or v == "" then
          return nil, ("%s: telemetry.%s must be a non-empty string"):format(path, k)
        end
      elseif not keys[k] then
        return nil, ("%s: unknown setting %s.%s"):format(path, section, tostring(k))
      end
    end
    err = check_numbers(conf[section] or {}, keys, section .. ".")
    if err then
      return nil, ("%s: %s"):format(path, err)
    end
  end
  err = check_telemetry(conf.telemetry)
  if err then
    return nil, ("%s: %s"):format(path, err)
  end
  -- the LMDB map: starts at map_size_mb, grows on demand up to max_size_mb
  local storage = conf.storage or {}
  if storage.map_size_mb and storage.max_size_mb and storage.map_size_mb > storage.max_size_mb then
    return nil, ("%s: storage.map_size_mb (%d) is above storage.max_size_mb (%d)"):format(path,
      storage.map_size_mb, storage.max_size_mb)
  end
  for name, rule in pairs(conf.auth or {}) do
    err = check_auth(rule, ("auth.%s"):format(tostring(name)))
    if err then
      return nil, ("%s: %s"):format(path, err)
    end
  end
  err = check_events(conf.events or {})
  if err then
    return nil, ("%s: %s"):format(path, err)
  end
  if conf.log_level ~= nil and not require("chorus.log").LEVELS[conf.log_level] then
    return nil, ("%s: log_level must be one of debug, info, warn, error (got %q)"):format(path, conf.log_level)
  end
  -- request_headers: the inbound headers ctx.request shows (and the run
  -- record keeps), named in lower case; any other header stays out of runs
  local rh = conf.request_headers or {}
  for k, v in pairs(rh) do
    if math.type(k) ~= "integer" or k < 1 or k > #rh or type(v) ~= "string"
        or not v:match("^[%w!#$%%&'*+.^_`|~-]+$") then
      return nil, ("%s: request_headers must be a list of header names, e.g. { \"x-tenant\" }"):format(path)
    end
    rh[k] = v:lower()
  end
  for k, v in pairs(conf.egress or {}) do
    if k ~= "allow" or type(v) ~= "table" then
      return nil, ("%s: egress: only allow = { \"ADDRESS\", \"NETWORK/BITS\", ... }"):format(path)
    end
    for i, entry in ipairs(v) do
      if type(entry) ~= "string" or not core.egress_parse(entry) then
        return nil, ("%s: egress.allow[%d] must be an IP address or network (\"10.0.0.0/8\", \"::1\"), got %s")
          :format(path, i, tostring(entry))
      end
    end
  end
  for name, up in pairs(conf.upstreams or {}) do
    if type(up) ~= "table" or type(up.base_url) ~= "string" or not up.base_url:match("^https?://") then
      return nil, ("%s: upstreams.%s.base_url must be an http(s) URL"):format(path, tostring(name))
    end
    for k in pairs(up) do
      if not UPSTREAM_KEYS[k] then
        return nil, ("%s: upstreams.%s: unknown setting '%s'"):format(path, tostring(name), tostring(k))
      end
    end
    for sub, ranges in pairs(UPSTREAM_NUMBERS) do
      local t = sub == "" and up or up[sub]
      if t ~= nil and type(t) ~= "table" then
        return nil, ("%s: upstreams.%s.%s must be a table"):format(path, tostring(name), sub)
      end
      local prefix = ("upstreams.%s.%s"):format(tostring(name), sub == "" and "" or sub .. ".")
      err = t and check_numbers(t, ranges, prefix)
      if err then
        return nil, ("%s: %s"):format(path, err)
      end
    end
    if up.retry ~= nil then
      local ok, perr = pcall(require("chorus.retry").policy, up.retry)
      if not ok then
        return nil, ("%s: upstreams.%s.%s"):format(path, tostring(name), tostring(perr))
      end
    end
  end
  return conf
end

--- Loads and validates a config file: returns the table or nil, message.
function config.load(path)
  local script = require "chorus.script"
  local src, err = script.read_file(path, "config")
  if not src then
    return nil, err
  end
  local chunk, cerr = load(src, "@" .. path, "t", sandbox.env({ config = true }))
  if not chunk then
    return nil, ("config syntax error: %s"):format(cerr)
  end
  local ok, value = script.run_isolated({ io = false }, chunk)
  if not ok then
    return nil, ("%s: %s"):format(path, errors.normalize(value).message)
  end
  if type(value) ~= "table" then
    return nil, ("%s: the config file must return a table"):format(path)
  end
  local conf, verr = validate(value, path)
  if conf then
    reserve_secrets(conf)
  end
  return conf, verr
end

--- Applies limits and upstreams to the runtime.
function config.apply(conf)
  require("chorus.log").set_level(conf.log_level or "info")
  local limits = conf.limits or {}
  local kept_mb = limits.workflow_memory_mb or (limits.run_memory_mb and 4 * limits.run_memory_mb)
  core.set_limits({
    memory = limits.run_memory_mb and math.floor(limits.run_memory_mb * 1024 * 1024) or nil,
    workflow_memory = kept_mb and math.floor(kept_mb * 1024 * 1024) or nil,
    instructions = limits.run_instructions and math.floor(limits.run_instructions) or nil,
    cpu_ms = limits.run_cpu_seconds and math.floor(limits.run_cpu_seconds * 1000) or nil,
  })
  require("chorus.context").run_log_lines = limits.run_log_lines or 10000
  require("chorus.context").run_log_bytes = limits.run_log_bytes or 4 * 1024 * 1024
  require("chorus.context").workflow_log_rate = limits.workflow_log_bytes_per_second or 4 * 1024 * 1024
  require("chorus.outbox").pending_cap = limits.outbox_pending_per_workflow or 10000
  local events = require "chorus.events"
  events.kept_cap = limits.events_kept_per_workflow or 10000
  events.kept_bytes_cap = limits.events_kept_bytes_per_workflow or 64 * 1024 * 1024
  events.max_payload = limits.max_body_bytes or 1048576
  require("chorus.http").configure(conf.upstreams)
  require("chorus.http").set_calls_cap(limits.http_calls_per_workflow)
  core.egress({ allow = (conf.egress or {}).allow })
  require("chorus.secrets").dir = conf.secrets_dir
  for name, up in pairs(conf.upstreams or {}) do
    if up.tls_verify == false then
      core.write_log(core.json.encode({ ts = core.now(), level = "warn", upstream = name,
        msg = "TLS verification is off for this upstream (tls_verify = false)" }))
    end
  end
end

return config
