-- chorus.sandbox — the environment workflow scripts (and the config file)
-- run in.
--
-- The security model: scripts are isolated from each other and from the
-- server. A script can fail, slow or exhaust only its own runs, within their
-- budget and memory cap. So:
--   * Scripts get the pure parts of the standard library and the chorus
--     modules; no io, os.execute, package, debug, dofile, bytecode or
--     string.dump.
--   * Every library and module a script reaches is its own read-only view:
--     a copy of the functions meant for scripts (http.set_transport,
--     http.configure and the like are not in it), so no script can change
--     what the server or another workflow calls.
--   * Metatables the runtime set (on ctx, errors, upstream handles, breakers,
--     JSON arrays, ...) are invisible to getmetatable and cannot be replaced
--     with setmetatable or bypassed with rawset; a script sees and changes
--     only the metatables it set itself.
--   * A metatable with __gc is refused: a finalizer runs at some later
--     collection, outside any run and its budget. So is __mode, now or
--     later (see "weak tables" below).
--   * coroutine.resume and coroutine.close take only coroutines the script
--     made: a task's own coroutine is parked in C and must be woken by C.
--   * pcall, xpcall and coroutine.resume re-raise the error of a run the
--     runtime has stopped (instruction budget, CPU time, memory cap) or a control
--     error ended (crash, nondeterminism, deadline: chorus.runstate), so a
--     script cannot catch its way past a limit or a stop.
--   * After the script's top level has run, its globals are sealed: reading
--     works, assigning a global during a run raises (globals would otherwise
--     carry state from one run, or one caller, to the next).
local core = require "chorus.core"
local runstate = require "chorus.runstate"

local getraw = require("debug").getmetatable
local setraw = require("debug").setmetatable

local sandbox = {}

-- What each module shows scripts. A nested list is a table of its own.
local API = {
  chorus = {
    "workflow", "all", "all_settled", "race", "any", "env", "secret", "version", "emit",
    json = { "encode", "decode", "array", "is_null", "null" },
  },
  ["chorus.http"] = { "request", "get", "post", "put", "delete", "patch", "head", "upstream" },
  ["chorus.retry"] = { "policy", "run" },
  ["chorus.breaker"] = { "new" },
  ["chorus.saga"] = { "new" },
  ["chorus.webhook"] = { "HEADER", "sign", "verify", "equal" },
}

local MODULE_NAMES = "chorus, chorus.http, chorus.retry, chorus.breaker, chorus.saga, chorus.webhook"

local function copy(t, without)
  local c = {}
  for k, v in pairs(t) do
    if not (without and without[k]) then
      c[k] = v
    end
  end
  return c
end

-- pairs over t without handing t out: `next, t` would give the caller t as
-- pairs' second value, writable behind the view or the sealed globals.
local function pairs_of(t)
  local function step(_, k) return next(t, k) end
  return function(self) return step, self, nil end
end

-- A read-only view of t (which nobody else holds): reads, pairs, # and
-- ipairs work; writes raise; the metatable is protected.
local function readonly(t, what)
  return setmetatable({}, {
    __index = t,
    __newindex = function(_, k)
      error(("%s is read-only in workflow scripts (cannot set '%s')"):format(what, tostring(k)), 2)
    end,
    __pairs = pairs_of(t),
    __len = function() return #t end,
    __metatable = false,
  })
end
sandbox.readonly = readonly

-- The script's view of a module: the names API lists, copied.
local function view(name, module, names)
  local t = {}
  for k, v in pairs(names) do
    if type(k) == "number" then
      t[v] = module[v]
    else
      t[k] = view(name .. "." .. k, module[k], v)
    end
  end
  return readonly(t, name)
end

-- The control error that stopped the current run (runstate.stop), if any.
local function stop_error()
  return runstate.stopped()
end

-- err without a leading position inside the server's modules: a wrapper
-- here that called a library function with a bad argument put its own
-- file and line in what the script sees (chorus.errors.strip_internal)
local strip_internal = require("chorus.errors").strip_internal
sandbox.strip_internal = strip_internal

-- A run stopped by a limit (core.killed) or a control error (a crash, a
-- nondeterministic replay, the deadline) re-raises: the control error
-- itself, whatever a handler made of it. Else the error, without a
-- position inside the server.
local function rethrow_if_stopped(ok, ...)
  if not ok then
    if core.killed() then
      error((...), 0)
    end
    local stop = stop_error()
    if stop then
      error(stop, 0)
    end
    return false, strip_internal((...))
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
  local stop = stop_error()
  if stop then
    error(stop, 0)
  end
  if not core.killed() and type(err) == "string" then
    error(strip_internal(err), 2)
  end
  error(err, 0)
end

-- ---- loops inside one C call ----------------------------------------------
--
-- table.move, insert and remove copy element by element inside one C call,
-- where the count hook never fires, and moving nils allocates nothing, so
-- neither the budget nor the memory cap stopped table.move({}, 1,
-- math.maxinteger - 1, 1), or an insert/remove on a table whose length is
-- huge (a __len, or a border # finds far out in a sparse table): each held
-- the server's only thread for good. The script's versions move in blocks
-- and charge every element to the run's instruction budget; what they do
-- (the order of the reads and writes, the results, the errors) is the C
-- functions'. string.rep of an empty string and separator looped n times
-- too, writing nothing: the charged rep (core.charged, runtime/lua_charged.h)
-- returns "" at once.

local BLOCK = 1024
local tointeger, maxinteger, ult = math.tointeger, math.maxinteger, math.ult
local move, insert, remove = table.move, table.insert, table.remove

local function charged_move(a1, f, e, t, a2)
  local fi, ei, ti = tointeger(f), tointeger(e), tointeger(t)
  local n = fi and ei and ti and ei - fi -- wraps below 0 past maxinteger
  if not n or n < BLOCK or not (fi > 0 or ei < maxinteger + fi) or ti > maxinteger - n then
    return move(a1, f, e, t, a2) -- a short move, or one move refuses
  end
  local dst = a2
  if dst == nil then
    dst = a1
  end
  move(a1, fi, fi - 1, ti, dst) -- checks the tables, moves nothing
  if ti > fi and ti <= ei and rawequal(a1, dst) then -- overlapping, upwards: from the end
    local i = n
    while true do
      local first = i < BLOCK and 0 or i - BLOCK + 1
      core.charge(i - first + 1)
      move(a1, fi + first, fi + i, ti + first, dst)
      if first == 0 then
        break
      end
      i = first - 1
    end
  else
    local i = 0
    while true do
      local last = n - i < BLOCK and n or i + BLOCK - 1
      core.charge(last - i + 1)
      move(a1, fi + i, fi + last, ti + i, dst)
      if last == n then
        break
      end
      i = last + 1
    end
  end
  return dst
end

-- #t once (as the C functions take it): an integer, or the error they raise
local function length(t, what)
  local n = #t
  if math.type(n) ~= "integer" then
    error(("bad argument #1 to '%s' (object length is not an integer)"):format(what), 3)
  end
  return n
end

local function charged_insert(t, ...)
  if select("#", ...) ~= 2 or type(t) ~= "table" then
    return insert(t, ...) -- appending, or an error
  end
  local pos, v = ...
  local p = tointeger(pos)
  if not p then
    return insert(t, pos, v) -- refuses pos
  end
  local e = length(t, "insert") + 1 -- wraps as in C
  if not ult(p - 1, e) then
    error("bad argument #2 to 'insert' (position out of bounds)", 2)
  end
  if e > p then
    charged_move(t, p, e - 1, p + 1)
  end
  t[p] = v
end

local function charged_remove(t, ...)
  local pos = ...
  if pos == nil or type(t) ~= "table" then
    return remove(t, ...) -- the last element (no loop), or an error
  end
  local p = tointeger(pos)
  if not p then
    return remove(t, pos) -- refuses pos
  end
  local size = length(t, "remove")
  if p ~= size and ult(size, p - 1) then
    error("bad argument #2 to 'remove' (position out of bounds)", 2)
  end
  local v = t[p]
  if p < size then
    charged_move(t, p + 1, size, p)
    p = size
  end
  t[p] = nil
  return v
end

-- table.sort on a table with a metatable reads and writes it through
-- __index/__newindex inside the C sort: with C functions there (__index =
-- type, __newindex = rawequal) and a __len near 2^31 it sorted two billion
-- elements without a hook or an allocation. Such a table is copied to a
-- plain one in Lua loops (charged as usual), sorted there and copied back.
--
-- The C sort's own comparisons (no comparator, or a C function such as
-- rawequal) run no instruction either, and comparing two long strings reads
-- them through: 20,000 references to two strings of a megabyte held the
-- server's thread 10 s under a CPU limit of 0.5 s. So every comparison is
-- a call of a Lua function, where the count hook (budget, CPU limit) fires.
local sort = table.sort
local getinfo = require("debug").getinfo
local INT_MAX = 2147483647
-- named as the sort, not as this file: its errors ("attempt to compare
-- number with string") show no server path
local less = load("local a, b = ... return a < b", "=table.sort")

local function lua_comparator(comp)
  if comp == nil then
    return less
  end
  if type(comp) == "function" and getinfo(comp, "S").what == "C" then
    return function(a, b) return comp(a, b) end
  end
  return comp -- a Lua function (or what sort refuses)
end

local function charged_sort(t, comp)
  comp = lua_comparator(comp)
  if type(t) ~= "table" or getraw(t) == nil then
    return sort(t, comp) -- plain: # is met by elements (a nil fails the first compare)
  end
  local n = length(t, "sort")
  if n >= INT_MAX then
    error("bad argument #1 to 'sort' (array too big)", 2)
  end
  local plain = {}
  for i = 1, n do
    plain[i] = t[i]
  end
  -- # of the copy is n even where t had nils, as it was for the C sort
  sort(setmetatable(plain, { __len = function() return n end }), comp)
  for i = 1, n do
    t[i] = plain[i]
  end
end

-- table.concat and table.unpack read the table element by element inside
-- one C call, each read through the table's __index when it has one, and
-- no hook fires in between: with a C function there (__index =
-- table.concat, __len = rawlen: each read an empty string)
-- table.concat(t, "", 1, 1e12) held the server's thread for good, and with
-- a chain of 2,000 tables, each the __index of the next, every read walked
-- all of them (table.unpack of a million: 27 s). So a table with a
-- metatable is read here, one charged read at a time, into a plain table
-- the C function then reads; a plain table's reads stop at its first nil,
-- within its elements.
local unpack = table.unpack
local concat = core.charged.concat
local NO_ELEMENTS = {}

local function charged_concat(t, sep, i, j)
  if type(t) ~= "table" or getraw(t) == nil then
    return concat(t, sep, i, j)
  end
  local n = length(t, "concat") -- as the C function: # first
  local first, last = tointeger(i == nil and 1 or i), tointeger(j == nil and n or j)
  local ts = type(sep)
  if not first or not last or (sep ~= nil and ts ~= "string" and ts ~= "number") then
    return concat(NO_ELEMENTS, sep, i, j) -- raises as concat does for these arguments
  end
  local plain = {}
  for k = first, last do
    local v = t[k]
    plain[k] = v
    local tv = type(v)
    if tv ~= "string" and tv ~= "number" then
      break -- concat raises there, with the index
    end
  end
  return concat(plain, sep, first, last)
end

local function charged_unpack(t, i, j)
  if type(t) ~= "table" or getraw(t) == nil then
    return unpack(t, i, j)
  end
  local first = tointeger(i == nil and 1 or i)
  local last = first and tointeger(j == nil and length(t, "unpack") or j)
  if not first or not last then
    return unpack(NO_ELEMENTS, i, j) -- raises as unpack does for these bounds
  end
  if first > last then
    return
  end
  unpack(NO_ELEMENTS, first, last) -- "too many results to unpack" before any read
  local plain = {}
  for k = first, last do
    plain[k] = t[k]
  end
  return unpack(plain, first, last)
end

-- load compiles inside one C call, and Lua's parser is quadratic in places:
-- each label is checked against every goto still pending in its function
-- (32,767 of each at most, but per function): a chunk of 3.7 MB held the
-- server's thread 5.7 s, past a CPU limit of 0.5 s, and the memory cap
-- allowed a chunk twenty times bigger. So the chunk is read through a Lua
-- reader, a kilobyte at a time: the count hook fires in it between pieces,
-- and the budget and CPU limit stop the compile there.
local PIECE = 1024
local sub = string.sub

local function pieces(chunk)
  if type(chunk) == "string" then
    local pos = 1
    return function()
      local piece = sub(chunk, pos, pos + PIECE - 1)
      pos = pos + PIECE
      return piece
    end
  end
  if type(chunk) ~= "function" then
    return chunk -- load refuses it (a number is a string to load: a short one)
  end
  local buf, pos = "", 1
  return function()
    while pos > #buf do
      local piece = chunk()
      if type(piece) ~= "string" or piece == "" then
        return piece -- the end, or what load refuses (or reads as a string: a number)
      end
      buf, pos = piece, 1
    end
    local piece = sub(buf, pos, pos + PIECE - 1)
    pos = pos + PIECE
    return piece
  end
end

local BASE = {
  "assert", "error", "ipairs", "next", "pairs", "rawequal", "rawget", "rawlen",
  "select", "tonumber", "tostring", "type", "_VERSION",
}

-- Names the server keeps for itself: chorus.env never reads them (nor any
-- value the config file read with chorus.secret, under whatever name).
local SERVER_ENV = { CHORUS_ADMIN_TOKEN = true, CHORUS_WEBHOOK_SECRET = true }

local function secret_name(name)
  return SERVER_ENV[name] or name:match("^CHORUS_SECRET_") ~= nil
end

-- The script's coroutine library: only coroutines it made can be resumed
-- or closed, and they carry the run's instruction budget.
local function coroutines(mine)
  local co = copy(coroutine)
  local function check(c, what)
    if not mine[c] then
      error(("coroutine.%s: only coroutines the script created can be %s"):format(what,
        what == "resume" and "resumed" or "closed"), 3)
    end
  end
  co.create = function(f)
    local c = core.budget_coroutine(coroutine.create(f))
    mine[c] = true
    return c
  end
  co.resume = function(c, ...)
    check(c, "resume")
    return rethrow_if_stopped(coroutine.resume(c, ...))
  end
  co.close = function(c)
    check(c, "close")
    return rethrow_if_stopped(coroutine.close(c)) -- a __close handler's control error too
  end
  co.wrap = function(f)
    local c = co.create(f)
    return function(...)
      return wrap_results(c, coroutine.resume(c, ...))
    end
  end
  return co
end

-- ---- weak tables ----------------------------------------------------------
--
-- The collector clears weak tables in its atomic phase, one C call that no
-- hook, budget or CPU limit reaches, under whichever run (or the server)
-- allocates at that moment. With weak keys whose values are the next keys
-- (an ephemeron chain) that phase is quadratic: 40,000 keys held the whole
-- server for 19 s, and a run's memory cap allows ten times more. So no
-- script table is weak: a metatable with __mode is refused, and a table
-- once used as a metatable is *locked* so that it cannot gain __mode later
-- (the collector reads it at each collection): its own metatable becomes
-- one of the runtime's, whose __newindex refuses __mode. A locked table
-- that the script gave a metatable X of its own gets a copy of X (as it is
-- then) with that __newindex around X's; getmetatable still shows X.

local MODE_ERR = "__mode is not allowed in workflow scripts (the collector clears a weak table outside "
  .. "any run and its budget, and one with weak keys chained through each other held the server for "
  .. "seconds)"

-- the key, in a lock metatable, of the script's metatable it stands for
-- (false: none)
local SHOWN = setmetatable({}, { __name = "chorus.lock" })

local function locked_newindex(inner)
  return function(t, k, v)
    if k == "__mode" then
      error(MODE_ERR, 2)
    end
    if inner == nil then
      rawset(t, k, v)
    elseif type(inner) == "function" then
      inner(t, k, v)
    else
      inner[k] = v
    end
  end
end

local LOCK = { __newindex = locked_newindex(nil), [SHOWN] = false }

-- The lock metatable over the script's metatable x (nil: none).
local function lock_over(x)
  if x == nil then
    return LOCK
  end
  local m = {}
  for k, v in next, x do
    if k ~= "__mode" and k ~= "__gc" then
      m[k] = v
    end
  end
  m.__newindex = locked_newindex(rawget(x, "__newindex"))
  m[SHOWN] = x
  return m
end

local function is_lock(mt)
  return mt ~= nil and rawget(mt, SHOWN) ~= nil
end

-- json.array for scripts: only on a table without a metatable (or one
-- already an array): it replaced any, a lock's too (or the runtime's).
local core_array = core.json.array
local ARRAY_MT = getraw(core_array({}))
local function json_array(t)
  local mt = type(t) == "table" and getraw(t)
  if mt and mt ~= ARRAY_MT then
    error("json.array: the table has a metatable already", 2)
  end
  return core_array(t)
end

-- getmetatable, setmetatable and rawset that keep the runtime's metatables
-- out of reach: `mts` holds the metatables this script set.
local function metatables(env, mts)
  local function foreign(v)
    local mt = getraw(v)
    return mt ~= nil and not mts[mt] and not is_lock(mt)
  end
  -- mt, about to be a metatable, locked (see "weak tables" above)
  local function lock(mt)
    local cur = getraw(mt)
    if cur == nil then
      setraw(mt, LOCK)
    elseif not is_lock(cur) then
      if not mts[cur] then
        error("setmetatable: this table belongs to the runtime; it cannot be a metatable", 3)
      end
      setraw(mt, lock_over(cur))
    end
  end
  env.getmetatable = function(v)
    local mt = getraw(v)
    if is_lock(mt) then -- the script's own, as it set it
      local shown = rawget(mt, SHOWN)
      if shown == false then
        return nil
      end
      local protected = rawget(mt, "__metatable")
      if protected ~= nil then
        return protected
      end
      return shown
    end
    if foreign(v) then -- strings too: their metatable is the process's
      return nil
    end
    return getmetatable(v)
  end
  env.setmetatable = function(t, mt)
    if type(t) == "table" and foreign(t) then
      error("setmetatable: this table belongs to the runtime; its metatable cannot change", 2)
    end
    if type(mt) == "table" then
      if rawget(mt, "__gc") ~= nil then
        error("setmetatable: __gc is not allowed in workflow scripts (a finalizer would run "
          .. "outside any run and its budget); use a to-be-closed variable (__close)", 2)
      end
      if rawget(mt, "__mode") ~= nil then
        error("setmetatable: " .. MODE_ERR, 2)
      end
      lock(mt)
      mts[mt] = true
    end
    local cur = type(t) == "table" and getraw(t)
    if cur and is_lock(cur) then -- t is a metatable itself: it stays locked, over mt
      if rawget(cur, "__metatable") ~= nil then
        error("cannot change a protected metatable", 2)
      end
      if mt ~= nil and type(mt) ~= "table" then
        return setmetatable(t, mt) -- raises as setmetatable does
      end
      setraw(t, lock_over(mt))
      return t
    end
    return setmetatable(t, mt)
  end
  env.rawset = function(t, k, v)
    if type(t) == "table" and foreign(t) then
      error("rawset: this table belongs to the runtime and cannot be written", 2)
    end
    if k == "__mode" and type(t) == "table" and is_lock(getraw(t)) then
      error("rawset: " .. MODE_ERR, 2)
    end
    return rawset(t, k, v)
  end
end

--- A fresh environment. opts.config: the config file's (chorus.secret may
--- read the server's own secrets there, and marks what it reads as the
--- server's).
function sandbox.env(opts)
  local for_config = opts and opts.config
  local env = {}
  for _, name in ipairs(BASE) do
    env[name] = _G[name]
  end
  local mts = setmetatable({}, { __mode = "k" })
  metatables(env, mts)
  env.string = copy(string, { dump = true })
  -- matching charged to the run's instruction budget (runtime/lua_pattern.h)
  for name, fn in pairs(core.pattern) do env.string[name] = fn end
  -- C work charged by the byte (runtime/lua_charged.h), as strings' methods are
  for name, fn in pairs(core.charged) do
    if env.string[name] then -- (not concat, utf8_char, os_date)
      env.string[name] = fn
    end
  end
  env.table = copy(table)
  env.table.concat, env.table.unpack = charged_concat, charged_unpack
  env.table.move, env.table.insert, env.table.remove = charged_move, charged_insert, charged_remove
  env.table.sort = charged_sort
  env.math = copy(math)
  env.utf8 = copy(utf8)
  env.utf8.char = core.charged.utf8_char or utf8.char
  env.os = { time = os.time, clock = os.clock, date = core.charged.os_date or os.date, difftime = os.difftime }
  if not for_config then -- the config file may read the real clock
    sandbox.deterministic(env.os, env.math)
  end
  env.coroutine = coroutines(setmetatable({}, { __mode = "k" }))
  for _, lib in ipairs({ "string", "table", "math", "utf8", "os", "coroutine" }) do
    env[lib] = readonly(env[lib], lib)
  end
  env.pcall = function(f, ...)
    return rethrow_if_stopped(pcall(f, ...))
  end
  -- The message handler is not called for a run the runtime has stopped:
  -- the stop is raised from the count hook, and Lua calls the handler
  -- there, with hooks off (xpcall(loop, loop) held the server for good).
  env.xpcall = function(f, handler, ...)
    return rethrow_if_stopped(xpcall(f, function(e)
      if core.killed() then
        return e
      end
      return handler(strip_internal(e))
    end, ...))
  end
  env.collectgarbage = function(opt)
    if opt == "count" then
      return collectgarbage("count")
    end
    error("collectgarbage: only 'count' is available in workflow scripts", 2)
  end
  env.load = function(chunk, name, _, chunk_env)
    if type(chunk) == "string" and name == nil then
      name = chunk -- load's own default name for a string chunk
    end
    local f, err = load(pieces(chunk), name, "t", chunk_env or env)
    if f == nil and (core.killed() or stop_error()) then -- stopped inside the reader
      error(err, 0)
    end
    return f, err
  end
  local modules = {}
  env.require = function(name)
    local names = API[name]
    if not names then
      error(("require: module '%s' is not available in workflow scripts (available: %s)")
        :format(tostring(name), MODULE_NAMES), 2)
    end
    if not modules[name] then
      local module = require(name)
      if name == "chorus" then -- env and secret: with the server's names held back
        module = copy(module)
        module.env = sandbox.env_reader(module.env)
        module.secret = for_config and sandbox.secret_recorder(module.secret)
          or sandbox.secret_reader(module.secret)
        module.json = copy(module.json)
        module.json.array = json_array
      elseif name == "chorus.breaker" then -- a script's breakers are its workflow's own
        module = { new = module.scoped }
      end
      modules[name] = view(name, module, names)
    end
    return modules[name]
  end
  env.print = function(...)
    if not require("chorus.context").line_allowed() then -- limits.run_log_lines, as ctx.log
      return
    end
    local parts = table.pack(...)
    for i = 1, parts.n do
      parts[i] = tostring(parts[i])
    end
    local text = core.json.encode({ level = "info", msg = table.concat(parts, "\t"), run_id = core.run_id() })
    if require("chorus.context").bytes_allowed(#text) then -- limits.run_log_bytes, as ctx.log
      require("chorus.secrets").write_log(text)
    end
  end
  env._G = env
  return env
end

-- ---- determinism ---------------------------------------------------------
--
-- A durable run is replayed after a crash from its journal, so whatever it
-- learns from the outside must come back the same. os.time(), os.date()
-- without a time, os.clock() and math.random are therefore journaled like
-- ctx.now and ctx.random (chorus.journal effects "now", "clock", "random"):
-- a replay gets the values the first execution saw. Outside a run (the
-- script's top level, run once per load) they raise instead: a value read
-- there differs on every load and restart, and every run would share it.
-- math.randomseed always raises: the generator is the server's, shared by
-- every run. Pure conversions (os.time(t), os.date(fmt, t), os.difftime)
-- are untouched.

-- level: where the caller's caller is (the script's line in the message)
local function in_run(name, instead, level)
  if not runstate.current() then
    error(("%s: not available at the top level of a workflow script (a value read when the script "
      .. "loads differs on each load and restart); call it inside the run, or use %s"):format(name, instead), level)
  end
  return require "chorus.journal"
end

local function now_seconds(name)
  local journal = in_run(name, "ctx.now()", 4)
  return math.floor(journal.effect("now", nil, core.now))
end

--- Replaces the clock and random functions of a script's os and math
--- copies with journaled ones (see above).
function sandbox.deterministic(env_os, env_math)
  local time, date = os.time, core.charged.os_date or os.date
  env_os.time = function(t)
    if t ~= nil then
      return time(t)
    end
    local now = now_seconds("os.time") -- not a tail call: the error names the script's line
    return now
  end
  env_os.date = function(fmt, t)
    if t == nil then
      t = now_seconds("os.date")
    end
    return date(fmt, t)
  end
  env_os.clock = function()
    local journal = in_run("os.clock", "ctx.now()", 3)
    return journal.effect("clock", nil, os.clock)
  end
  local random = math.random
  env_math.random = function(m, n)
    if m ~= nil and (math.type(m) ~= "integer" or (n ~= nil and math.type(n) ~= "integer")) then
      error("math.random([m [, n]]): bounds must be integers", 2)
    end
    local journal = in_run("math.random", "ctx.random()", 3)
    return journal.effect("random", nil, function()
      if m == nil then
        return random()
      elseif n == nil then
        return random(m)
      end
      return random(m, n)
    end)
  end
  env_math.randomseed = function()
    error("math.randomseed: not available in workflow scripts (the generator is the server's, shared by "
      .. "every run); math.random and ctx.random are journaled, so a replay gets the same values", 2)
  end
end

--- chorus.env for scripts and the config: never a secret.
function sandbox.env_reader(read)
  local secrets = require "chorus.secrets"
  return function(name, default)
    local value = read(name, default)
    if type(name) == "string" and (secret_name(name) or (value ~= default and secrets.reserved(value))) then
      error(("chorus.env: '%s' holds a secret: read it with chorus.secret (in the config file: "
        .. "workflows cannot read the server's own secrets)"):format(name), 2)
    end
    return value
  end
end

--- chorus.secret for workflows: never a secret the config file read (the
--- admin token, the webhook secret, auth tokens), under whatever name.
function sandbox.secret_reader(read)
  local secrets = require "chorus.secrets"
  return function(name)
    if SERVER_ENV[name] then
      error(("chorus.secret: '%s' is one of the server's own secrets; workflow scripts cannot "
        .. "read it"):format(name), 2)
    end
    local value = read(name)
    if secrets.reserved(value) then
      error(("chorus.secret: '%s' is one of the server's own secrets (the config file reads it); "
        .. "workflow scripts cannot read it"):format(tostring(name)), 2)
    end
    return value
  end
end

--- chorus.secret for the config file: what it reads becomes the server's.
function sandbox.secret_recorder(read)
  local secrets = require "chorus.secrets"
  return function(name)
    local value = read(name)
    secrets.reserve(value)
    return value
  end
end

--- Seals a script's globals once its top level has run: reads still work,
--- an assignment raises, so no run leaves state in a global for the next.
function sandbox.seal(env)
  local globals = {}
  for k, v in next, env do
    globals[k] = v
  end
  for k in pairs(globals) do
    env[k] = nil
  end
  return setmetatable(env, {
    __index = globals,
    __newindex = function(_, k)
      error(("cannot assign the global '%s' in a run: a workflow's globals are shared by all "
        .. "its runs; use a local variable (or ctx) instead"):format(tostring(k)), 2)
    end,
    __pairs = pairs_of(globals),
    __metatable = false,
  })
end

return sandbox
