-- chorus.config — the config file: a Lua script returning a table.
--
--   return {
--     listen = "127.0.0.1:8080", scripts = "./examples", data = "./.chorus-data",
--     admin_token = chorus.env("CHORUS_ADMIN_TOKEN"),
--     limits = { run_memory_mb = 64, run_instructions = 1e8, max_body_bytes = 1048576,
--                max_header_bytes = 16384, max_connections = 10000, client_timeout = 30,
--                drain_timeout = 10 },
--     upstreams = { crm = { base_url = "http://127.0.0.1:9101", timeout = 5 } },
--     storage = { durable = true, sync = true, map_size_mb = 1024, runs_retention = 604800 },
--     outbox = { attempts = 8, base = 1, cap = 300, concurrency = 64, poll = 0.1 },
--     alerts = { outbox_depth = 1000, outbox_age = 300, dlq_depth = 1 },
--     webhook_secret = chorus.secret("webhook"),
--     egress = { allow = { "10.0.0.0/8" } },  -- non-public addresses callbacks may reach
--   }
--
-- It runs sandboxed like a workflow script (chorus.env and chorus.secret are
-- there for values that must not live in the file).
local core = require "chorus.core"
local errors = require "chorus.errors"
local sandbox = require "chorus.sandbox"

local config = {}

local FIELDS = {
  listen = "string", scripts = "string", data = "string", admin_token = "string",
  limits = "table", upstreams = "table", access_log = "boolean",
  storage = "table", outbox = "table", alerts = "table", webhook_secret = "string",
  secrets_dir = "string", auth = "table", egress = "table",
}

-- The numeric settings of the tables storage, outbox and alerts.
local SECTIONS = {
  storage = { map_size_mb = true, runs_retention = true },
  outbox = { attempts = true, base = true, cap = true, concurrency = true, poll = true },
  alerts = { outbox_depth = true, outbox_age = true, dlq_depth = true },
}

local UPSTREAM_KEYS = {
  base_url = true, headers = true, timeout = true, connect_timeout = true, retry = true,
  breaker = true, bulkhead = true, rate_limit = true, hedge = true, tls_verify = true,
  follow_redirects = true,
}

local LIMITS = {
  run_memory_mb = true, run_instructions = true, max_body_bytes = true, max_header_bytes = true,
  max_connections = true, client_timeout = true, drain_timeout = true, max_inflight_runs = true,
}

local function validate(conf, path)
  for k, v in pairs(conf) do
    if not FIELDS[k] then
      return nil, ("%s: unknown setting '%s'"):format(path, tostring(k))
    end
    if type(v) ~= FIELDS[k] then
      return nil, ("%s: '%s' must be a %s"):format(path, k, FIELDS[k])
    end
  end
  for k, v in pairs(conf.limits or {}) do
    if not LIMITS[k] then
      return nil, ("%s: unknown limit '%s'"):format(path, tostring(k))
    end
    if type(v) ~= "number" or v < 0 then
      return nil, ("%s: limits.%s must be a non-negative number"):format(path, k)
    end
  end
  for section, keys in pairs(SECTIONS) do
    for k, v in pairs(conf[section] or {}) do
      if section == "storage" and (k == "sync" or k == "durable") then
        if type(v) ~= "boolean" then
          return nil, ("%s: storage.%s must be a boolean"):format(path, k)
        end
      elseif not keys[k] then
        return nil, ("%s: unknown setting %s.%s"):format(path, section, tostring(k))
      elseif type(v) ~= "number" or v < 0 then
        return nil, ("%s: %s.%s must be a non-negative number"):format(path, section, k)
      end
    end
  end
  for name, rule in pairs(conf.auth or {}) do
    if type(rule) ~= "table" or (rule.token == nil and rule.hmac_secret == nil) then
      return nil, ("%s: auth.%s must be { token = ... } and/or { hmac_secret = ... }"):format(path, tostring(name))
    end
    for k, v in pairs(rule) do
      if (k ~= "token" and k ~= "hmac_secret") or type(v) ~= "string" or v == "" then
        return nil, ("%s: auth.%s.%s: only token and hmac_secret, non-empty strings"):format(path, name, tostring(k))
      end
    end
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
    if up.retry ~= nil then
      local ok, err = pcall(require("chorus.retry").policy, up.retry)
      if not ok then
        return nil, ("%s: upstreams.%s.%s"):format(path, tostring(name), tostring(err))
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
  local chunk, cerr = load(src, "@" .. path, "t", sandbox.env())
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
  return validate(value, path)
end

--- Applies limits and upstreams to the runtime.
function config.apply(conf)
  local limits = conf.limits or {}
  core.set_limits({
    memory = limits.run_memory_mb and math.floor(limits.run_memory_mb * 1024 * 1024) or nil,
    instructions = limits.run_instructions and math.floor(limits.run_instructions) or nil,
  })
  require("chorus.http").configure(conf.upstreams)
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
