-- helpers.lua — shared by the integration specs: run ./chorus as a real
-- process, start and stop the mock upstream on loopback, time things.
-- Every process started here is bounded (--max-seconds, timeout) and
-- stopped in teardown.
local system = require "system"
local dkjson = require "dkjson"

local H = {}

H.build = os.getenv("CHORUS_BUILD") or "build"
H.chorus = H.build .. "/chorus"
H.mock = "build/mock-upstream"
H.now = system.monotime
H.decode = function(s) return (dkjson.decode(s)) end
H.encode = dkjson.encode

local function slurp(path)
  local f = io.open(path, "rb")
  if not f then
    return ""
  end
  local s = f:read("a")
  f:close()
  return s
end

function H.quote(s)
  return "'" .. tostring(s):gsub("'", "'\\''") .. "'"
end

--- Runs a shell command with a time bound; returns { code, stdout, stderr, elapsed }.
function H.exec(cmd, env, timeout)
  local out, err = os.tmpname(), os.tmpname()
  local prefix = ""
  for k, v in pairs(env or {}) do
    prefix = prefix .. k .. "=" .. H.quote(v) .. " "
  end
  local t0 = H.now()
  local ok, _, code = os.execute(("%stimeout -s KILL %d %s >%s 2>%s"):format(
    prefix, timeout or 30, cmd, out, err))
  local res = { code = ok and 0 or code, stdout = slurp(out), stderr = slurp(err),
    elapsed = H.now() - t0 }
  os.remove(out)
  os.remove(err)
  return res
end

--- Runs ./chorus with the given arguments (a list, quoted for the shell).
function H.chorus_run(args, env, timeout)
  local parts = {}
  for i, a in ipairs(args) do
    parts[i] = H.quote(a)
  end
  return H.exec(H.chorus .. " " .. table.concat(parts, " "), env, timeout)
end

--- Writes text to a new temporary file and returns its path.
function H.write_temp(text, suffix)
  local path = os.tmpname() .. (suffix or ".lua")
  local f = assert(io.open(path, "wb"))
  f:write(text)
  f:close()
  return path
end

--- Starts the mock upstream; returns { url, port, pid, stats(), reset(), stop() }.
function H.start_mock(max_seconds)
  local p = assert(io.popen(("sh -c 'echo $$; exec %s --max-seconds %d'"):format(
    H.mock, max_seconds or 120), "r"))
  local pid = assert(tonumber(p:read("l")), "mock did not start")
  local line = p:read("l") or ""
  local port = assert(tonumber(line:match("listening 127%.0%.0%.1:(%d+)")), "mock said: " .. line)
  local mock = { pid = pid, port = port, url = "http://127.0.0.1:" .. port, pipe = p }
  function mock.get(path)
    local r = H.exec(("curl -s --max-time 5 %s"):format(H.quote(mock.url .. path)))
    return H.decode(r.stdout)
  end
  function mock.stats()
    return mock.get("/__stats")
  end
  function mock.reset()
    H.exec(("curl -s --max-time 5 -X POST %s"):format(H.quote(mock.url .. "/__reset")))
  end
  function mock.stop()
    os.execute("kill " .. pid .. " 2>/dev/null")
    p:close()
  end
  return mock
end

return H
