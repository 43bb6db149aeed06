-- chorus.errors — one shape for every error a caller sees.
--
-- Workflows raise strings, structured tables ({ kind =, message = }) or
-- anything else; callers (the CLI, the HTTP server, run records) get a plain
-- table { kind =, message =, ... } that JSON can carry.
local errors = {}

--- The one metatable of the errors chorus raises: `kind: message`.
errors.MT = {
  __name = "chorus.error",
  __tostring = function(e) return ("%s: %s"):format(e.kind, e.message) end,
}

-- Errors made in C (runtime/scheduler.c: limits, "cannot wait here") get
-- the same metatable, found in the registry under its name.
require("debug").getregistry()["chorus.error"] = errors.MT

--- A chorus error: { kind =, message =, ...fields } with errors.MT.
function errors.new(kind, message, fields)
  local e = {}
  for k, v in pairs(fields or {}) do
    e[k] = v
  end
  e.kind, e.message = kind, message
  return setmetatable(e, errors.MT)
end

local function plain(value, depth)
  local t = type(value)
  if t == "string" or t == "number" or t == "boolean" then
    return value
  end
  if t == "table" and depth < 4 then
    local out = {}
    for k, v in pairs(value) do
      if type(k) == "string" or type(k) == "number" then
        out[k] = plain(v, depth + 1)
      end
    end
    return out
  end
  return nil
end

--- s cut to max bytes, its start and its end (a traceback's stack), saying
--- how long it was; s itself when not longer (or not a string).
function errors.cut(s, max)
  if type(s) ~= "string" or #s <= max then
    return s
  end
  local half = max // 2
  return ("%s ...(%d bytes)... %s"):format(s:sub(1, half), #s, s:sub(-half))
end

--- A normalized error (errors.normalize) as the server's own lines and
--- entries keep it: itself when it is at most max bytes as JSON, else its
--- kind and the start of its message. A run's error is up to its memory
--- cap: one raising a 20 MB message wrote a 40 MB line to the log every
--- workflow shares (its record, capped, keeps it whole).
function errors.brief(err, max)
  local ok, text = pcall(require("chorus.core").json.encode, err)
  if ok and #text <= max then
    return err
  end
  return { kind = type(err) == "table" and err.kind or "error",
    message = errors.cut(type(err) == "table" and tostring(err.message) or tostring(err), max - 100) }
end

--- Returns a JSON-safe table { kind, message, ... } describing err.
function errors.normalize(err)
  if type(err) == "table" then
    local out = plain(err, 0)
    out.kind = type(err.kind) == "string" and err.kind or "error"
    out.message = err.message ~= nil and tostring(err.message) or tostring(err)
    return out
  end
  if err == nil then
    return { kind = "error", message = "error with no message (nil)" }
  end
  return { kind = "error", message = tostring(err) }
end

-- ---- values that leave a run -------------------------------------------
--
-- A run's result and error are read by the server after the run has ended,
-- outside its budget: there, one looping __index, __pairs or __tostring
-- would stop the whole process. So they leave the run as plain data, copied
-- inside the run (under its budget and memory cap) without calling any
-- metamethod; only chorus.json.array's marker survives, so that an empty
-- array still encodes as [].

local getraw = require("debug").getmetatable
local ARRAY_MT = getraw(require("chorus.core").json.array({}))
local MAX_DEPTH = 200

local function raw_copy(value, depth, seen)
  if type(value) ~= "table" then
    return value
  end
  if seen[value] then
    error({ kind = "script", message = "the run's result or error refers to itself (a cycle)" }, 0)
  end
  if depth > MAX_DEPTH then
    error({ kind = "script", message = ("the run's result or error is nested deeper than %d"):format(MAX_DEPTH) }, 0)
  end
  seen[value] = true
  local out = {}
  for k, v in next, value do -- (scalars copied in place: no call for each)
    if type(k) == "table" then
      k = raw_copy(k, depth + 1, seen)
    end
    if type(v) == "table" then
      v = raw_copy(v, depth + 1, seen)
    end
    out[k] = v
  end
  seen[value] = nil
  if getraw(value) == ARRAY_MT then
    setmetatable(out, ARRAY_MT)
  end
  return out
end

--- value as plain data: tables copied raw, metatables dropped. Raises a
--- {kind="script"} error for a cycle.
local seen_tables = {} -- raw_copy's: empty again after a copy that did not raise
function errors.plain(value)
  if type(value) ~= "table" then
    return value
  end
  if next(seen_tables) ~= nil then -- a copy raised (a cycle, the run's limits) midway
    seen_tables = {}
  end
  return raw_copy(value, 0, seen_tables)
end

--- value as JSON data, copied in the current run (under its budget and
--- memory cap): what another workflow's run gets from this one (ctx.call's
--- and ctx.later's input), as a request body or a run resumed after a
--- restart gets it. Handed over as it was, a table was shared by two
--- workflows' runs (one wrote into the other's tables) and the sender's
--- metamethods ran in the receiver's run. The child's result ctx.call
--- hands its parent is copied so too, in the parent's run. Raises "<who>:
--- <what> must be JSON data (why)" at level (0: no position), what "input"
--- unless given (a limit or a stop of the run as itself).
function errors.json_copy(value, who, level, what)
  local json = require("chorus.core").json
  local ok, copy = pcall(function() return json.decode(json.encode(value)) end)
  if ok then
    return copy
  end
  if require("chorus.core").killed() or require("chorus.runstate").stopped() then
    error(copy, 0)
  end
  local why = type(copy) == "table" and copy.message or copy
  error(("%s: %s must be JSON data (%s)"):format(who, what or "input", tostring(why)), level > 0 and level + 1 or 0)
end

-- The folder of the server's own modules as error positions name it
-- ("lua/chorus/" when embedded, an install path otherwise).
local INTERNAL = require("debug").getinfo(1, "S").source:match("^@(.*/)[^/]*$")

--- err without a leading position inside the server's modules: a module
--- (or the sandbox's wrapper of a library function) that raised for a bad
--- argument put its own file and line ("lua/chorus/sandbox.lua:522: bad
--- argument #1 to 'rawset'") in what the script and the run record show,
--- naming the server's files. Other values are returned as they are.
function errors.strip_internal(err)
  if type(err) == "string" and INTERNAL and err:sub(1, #INTERNAL) == INTERNAL then
    return (err:gsub("^[^\n:]*:%d+: ", "", 1))
  end
  return err
end
local strip_internal = errors.strip_internal

--- A run's error as it leaves the run, inside it: a string loses a position
--- inside the server (errors.strip_internal); a table is normalized and
--- made plain, its __tostring run here, under the run's budget (one that
--- fails or loops is reported as such), and so is its message.
function errors.settle(err)
  if type(err) ~= "table" then -- a string, number, ...: nothing of the script's runs on it
    return strip_internal(err)
  end
  local ok, out = pcall(function() return errors.plain(errors.normalize(err)) end)
  if ok then
    out.message = strip_internal(out.message)
    return out
  end
  local why = type(out) == "string" and out or type(out) == "table" and rawget(out, "message")
  return { kind = "error", message = "the workflow raised an error that cannot be described: "
    .. (type(why) == "string" and strip_internal(why) or "its __tostring or fields failed") }
end

return errors
