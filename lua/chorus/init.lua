-- chorus — the module workflow scripts require: workflow declaration,
-- structured concurrency (all, all_settled, race, any), json, env.
--
-- Concurrency is built on three C primitives of chorus.core: spawn(fn) starts
-- a task in the current run, await(ids) parks until one of them is done, and
-- cancel(id) stops a task and the I/O it waits on. Each helper below waits
-- for its own tasks and cancels the ones it no longer needs, so no task ever
-- outlives the call that started it.
local core = require "chorus.core"
local journal = require "chorus.journal"
local runstate = require "chorus.runstate"

local chorus = { json = core.json, version = core.version }

local WORKFLOW = { __name = "chorus.workflow" }
local HOST_SET = { __name = "chorus.host_set" } -- allow_hosts, once made a set

local KNOWN = {
  name = "string", run = "function", timeout = "number", on_timeout = "function",
  on_cancel = "function",
  idempotency = "table", description = "string", allow_hosts = "table", redact = "table",
  schedule = "table",
}

-- One level of t, read raw: no metamethod of the script's runs here.
local function raw_copy(t)
  local c = {}
  for k, v in next, t do
    c[k] = v
  end
  return c
end

-- Checks a declaration (raw fields only); returns it with its nested tables
-- copied and allow_hosts made a set, or nil and a message.
local function declare(spec)
  for key, value in next, spec do
    local want = KNOWN[key]
    if not want then
      return nil, ("chorus.workflow: unknown field '%s' (known: name, run, timeout, on_timeout, on_cancel, "
        .. "idempotency, allow_hosts, redact, schedule, description)"):format(tostring(key))
    end
    if type(value) ~= want then
      return nil, ("chorus.workflow: field '%s' must be a %s, got %s"):format(key, want, type(value))
    end
  end
  if type(spec.name) ~= "string" or not spec.name:match("^[%w_%-%.]+$") then
    return nil, "chorus.workflow: name must be letters, digits, '_', '-' or '.'"
  end
  if not spec.run then
    return nil, ("chorus.workflow %q: run must be a function(ctx, input)"):format(spec.name)
  end
  if spec.timeout and not (spec.timeout > 0 and spec.timeout < math.huge) then
    return nil, ("chorus.workflow %q: timeout must be a positive number of seconds"):format(spec.name)
  end
  local idem = spec.idempotency and raw_copy(spec.idempotency)
  if idem and ((idem.ttl ~= nil and (type(idem.ttl) ~= "number" or not (idem.ttl > 0 and idem.ttl < math.huge)))
      or (idem.required ~= nil and type(idem.required) ~= "boolean")
      or (idem.on_failure ~= nil and idem.on_failure ~= "replay" and idem.on_failure ~= "redrive")) then
    return nil, ("chorus.workflow %q: idempotency = { required = boolean, ttl = seconds, "
      .. "on_failure = \"replay\" | \"redrive\" }"):format(spec.name)
  end
  if idem then
    for k in next, idem do
      if k ~= "required" and k ~= "ttl" and k ~= "on_failure" then
        return nil, ("chorus.workflow %q: idempotency: unknown field '%s' (known: required, ttl, on_failure)")
          :format(spec.name, tostring(k))
      end
    end
  end
  spec.idempotency = idem
  if spec.redact then
    local rerr = require("chorus.redact").check(spec.redact)
    if rerr then
      return nil, ("chorus.workflow %q: %s"):format(spec.name, rerr)
    end
    spec.redact = raw_copy(spec.redact)
  end
  if spec.schedule then -- chorus.schedule: cron or every, catch_up, overlap
    local sched, serr = require("chorus.schedule").check(spec.schedule)
    if not sched then
      return nil, ("chorus.workflow %q: %s"):format(spec.name, serr)
    end
    spec.schedule = sched
  end
  local hosts = spec.allow_hosts
  if hosts and getmetatable(hosts) ~= HOST_SET then -- a list of host names → a set, checked once
    local set = {}
    for i = 1, rawlen(hosts) do
      local host = rawget(hosts, i)
      if type(host) ~= "string" or host == "" then
        return nil, ("chorus.workflow %q: allow_hosts[%d] must be a host name"):format(spec.name, i)
      end
      set[host:lower()] = true
    end
    spec.allow_hosts = setmetatable(set, HOST_SET)
  elseif hosts then
    spec.allow_hosts = setmetatable(raw_copy(hosts), HOST_SET)
  end
  return setmetatable(spec, WORKFLOW)
end

--- Declares a workflow: the value a script returns. The declaration is
--- copied (raw), so the script's table may change later without effect.
function chorus.workflow(spec)
  if type(spec) ~= "table" then
    error("chorus.workflow expects a table { name = ..., run = function(ctx, input) ... end }", 2)
  end
  local wf, err = declare(raw_copy(spec))
  if not wf then
    error(err, 2)
  end
  return wf
end

function chorus.is_workflow(value)
  return getmetatable(value) == WORKFLOW
end

--- The server's own copy of a declared workflow, checked again: whatever
--- the script still holds (the value it returned) cannot change it.
function chorus.own(wf)
  if not chorus.is_workflow(wf) then
    return nil, "not a workflow"
  end
  return declare(raw_copy(wf))
end

-- Spawns each function as a task; returns their ids.
local function spawn_each(who, ...)
  local n = select("#", ...)
  if n == 0 then
    error(("chorus.%s needs at least one function"):format(who), 3)
  end
  local ids = { ... } -- the functions, each replaced by its task's id once spawned
  for i = 1, n do
    if type(ids[i]) ~= "function" then
      error(("chorus.%s: argument %d is a %s, expected a function"):format(who, i, type(ids[i])), 3)
    end
  end
  for i = 1, n do
    ids[i] = journal.spawn(ids[i])
  end
  return ids
end

local function cancel_pending(pending)
  for id in pairs(pending) do
    core.cancel(id)
  end
end

-- Iterates over tasks in the order they finish: yields index, ok, value,
-- pending (a table id → index of the tasks still running). Each completion
-- costs O(1), so a fan-out of thousands of calls stays linear.
local function finished(ids)
  local pending, remaining = {}, #ids
  for i, id in ipairs(ids) do
    pending[id] = i
  end
  return function()
    while remaining > 0 do
      local id = core.await()
      local i = pending[id]
      if i then
        pending[id] = nil
        remaining = remaining - 1
        local ok, value = core.result(id)
        local stop = not ok and runstate.stopped()
        if stop then -- a control error ends the run: no helper settles it
          cancel_pending(pending)
          error(stop, 0)
        end
        return i, ok, value, pending
      end
    end
    return nil
  end
end


--- Runs the functions concurrently; returns their results in order, or
--- raises the first error after cancelling the others.
function chorus.all(...)
  local ids = spawn_each("all", ...)
  local n = #ids
  -- finished() keeps the ids it waits for in its own table: each slot of
  -- ids takes its task's value as it comes
  for i, ok, value, pending in finished(ids) do
    if not ok then
      cancel_pending(pending)
      error(value, 0)
    end
    ids[i] = value
  end
  return table.unpack(ids, 1, n)
end

--- Runs the functions concurrently; returns { ok =, value =, err = } for each.
function chorus.all_settled(...)
  local ids = spawn_each("all_settled", ...)
  local results = {}
  for i, ok, value in finished(ids) do
    results[i] = ok and { ok = true, value = value } or { ok = false, err = value }
  end
  return results
end

--- Returns (or raises) the outcome of the first function to finish.
function chorus.race(...)
  local ids = spawn_each("race", ...)
  local i, ok, value, pending = finished(ids)()
  cancel_pending(pending)
  if not ok then
    error(value, 0)
  end
  return value, i
end

--- Returns the first success; raises { kind = "all_failed", errors = } when
--- every function failed.
function chorus.any(...)
  local ids = spawn_each("any", ...)
  local errors = {}
  for i, ok, value, pending in finished(ids) do
    if ok then
      cancel_pending(pending)
      return value, i
    end
    errors[i] = value
  end
  error(require("chorus.errors").new("all_failed", "every alternative failed", { errors = errors }), 0)
end

--- An environment variable, or default.
--- Delivers an event to the run waiting on it with ctx.event (chorus.events).
function chorus.emit(name, key, payload)
  return require("chorus.events").emit(name, key, payload)
end

function chorus.env(name, default)
  if type(name) ~= "string" then
    error("chorus.env: name must be a string", 2)
  end
  return core.env(name, default)
end

--- A secret from the environment (CHORUS_SECRET_<NAME> first, then NAME)
--- or a file in the secrets folder; redacted from logs and records.
function chorus.secret(name)
  if type(name) ~= "string" then
    error("chorus.secret: name must be a string", 2)
  end
  local value = require("chorus.secrets").get(name)
  if value == nil then
    error(("chorus.secret: secret '%s' is not set (set CHORUS_SECRET_%s, or put a file %s in the "
      .. "secrets folder)"):format(name, name:upper():gsub("[^%w]", "_"), name), 2)
  end
  return value
end

return chorus
