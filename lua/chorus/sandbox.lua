-- chorus.sandbox — the environment workflow scripts run in.
--
-- Scripts get the pure parts of the standard library and the chorus
-- modules; no io, os.execute, package, debug, dofile or bytecode. pcall,
-- xpcall and coroutine.resume re-raise the error of a run the runtime has
-- stopped (instruction budget, memory cap), so a script cannot catch its way
-- past a limit.
local core = require "chorus.core"

local sandbox = {}

local ALLOWED_MODULES = {
  chorus = true, ["chorus.http"] = true, ["chorus.retry"] = true, ["chorus.breaker"] = true,
  ["chorus.saga"] = true, ["chorus.webhook"] = true,
}

local function copy(t, without)
  local c = {}
  for k, v in pairs(t) do
    if not (without and without[k]) then
      c[k] = v
    end
  end
  return c
end

local function rethrow_if_stopped(ok, ...)
  if not ok and core.killed() then
    error((...), 0)
  end
  return ok, ...
end

-- coroutine.wrap's contract on top of resume: values through, an error
-- raised in the caller (with its position, as wrap does for strings); a
-- coroutine that died of it is closed, and an error of its __close
-- handlers replaces the first (a running one, resumed again, is left alone).
local function wrap_results(co, ok, ...)
  if ok then
    return ...
  end
  local err = ...
  if coroutine.status(co) == "dead" then
    local cok, cerr = coroutine.close(co)
    if not cok then
      err = cerr
    end
  end
  if not core.killed() and type(err) == "string" then
    error(err, 2)
  end
  error(err, 0)
end

local BASE = {
  "assert", "error", "ipairs", "next", "pairs", "rawequal", "rawget", "rawlen", "rawset",
  "select", "setmetatable", "tonumber", "tostring", "type", "_VERSION",
}

function sandbox.env()
  local env = {}
  for _, name in ipairs(BASE) do
    env[name] = _G[name]
  end
  env.string = copy(string, { dump = true })
  -- matching charged to the run's instruction budget (runtime/lua_pattern.h)
  for name, fn in pairs(core.pattern) do env.string[name] = fn end
  env.table = copy(table)
  env.math = copy(math)
  env.utf8 = copy(utf8)
  env.os = { time = os.time, clock = os.clock, date = os.date, difftime = os.difftime }
  env.coroutine = copy(coroutine)
  env.coroutine.resume = function(co, ...)
    return rethrow_if_stopped(coroutine.resume(co, ...))
  end
  -- the run's instruction budget follows into coroutines the script makes
  -- (the watchdog only watches the run's own tasks: chorus.watchdog.h)
  env.coroutine.create = function(f)
    return core.budget_coroutine(coroutine.create(f))
  end
  env.coroutine.wrap = function(f)
    local co = env.coroutine.create(f)
    return function(...)
      return wrap_results(co, coroutine.resume(co, ...))
    end
  end
  env.pcall = function(f, ...)
    return rethrow_if_stopped(pcall(f, ...))
  end
  env.xpcall = function(f, handler, ...)
    return rethrow_if_stopped(xpcall(f, handler, ...))
  end
  -- The string metatable is shared by the whole process: keep it out of reach.
  env.getmetatable = function(v)
    if type(v) == "string" then
      return nil
    end
    return getmetatable(v)
  end
  env.collectgarbage = function(opt)
    if opt == "count" then
      return collectgarbage("count")
    end
    error("collectgarbage: only 'count' is available in workflow scripts", 2)
  end
  env.load = function(chunk, name, _, chunk_env)
    return load(chunk, name, "t", chunk_env or env)
  end
  env.require = function(name)
    if not ALLOWED_MODULES[name] then
      error(("require: module '%s' is not available in workflow scripts (available: chorus, "
        .. "chorus.http, chorus.retry, chorus.breaker, chorus.saga, chorus.webhook)"):format(tostring(name)), 2)
    end
    return require(name)
  end
  env.print = function(...)
    local parts = table.pack(...)
    for i = 1, parts.n do
      parts[i] = tostring(parts[i])
    end
    require("chorus.secrets").write_log(core.json.encode({ level = "info", msg = table.concat(parts, "\t"),
      run_id = core.run_id() }))
  end
  env._G = env
  return env
end

return sandbox
