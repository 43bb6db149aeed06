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

--- Sends one HTTP request with curl; returns { status, headers, body, json }.
--- opts: method, body, headers (table), max_time.
function H.request(url, opts)
  opts = opts or {}
  local hfile, bfile = os.tmpname(), os.tmpname()
  local parts = { "curl -s -o", bfile, "-D", hfile, "-w '%{http_code}'", "--max-time", tostring(opts.max_time or 10) }
  if opts.method then
    parts[#parts + 1] = "-X " .. H.quote(opts.method)
  end
  for k, v in pairs(opts.headers or {}) do
    parts[#parts + 1] = "-H " .. H.quote(k .. ": " .. v)
  end
  local dfile
  if opts.body then
    dfile = H.write_temp(opts.body, ".body")
    parts[#parts + 1] = "--data-binary @" .. dfile
  end
  parts[#parts + 1] = H.quote(url)
  local r = H.exec(table.concat(parts, " "), nil, (opts.max_time or 10) + 5)
  local res = { status = tonumber(r.stdout) or 0, body = slurp(bfile), headers = {} }
  for line in slurp(hfile):gmatch("[^\r\n]+") do
    local k, v = line:match("^([^:]+):%s*(.*)$")
    if k then
      res.headers[k:lower()] = v
    end
  end
  res.json = H.decode(res.body)
  os.remove(hfile)
  os.remove(bfile)
  if dfile then
    os.remove(dfile)
  end
  return res
end

--- POSTs body (default "{}") as JSON to url, with headers (a table the
--- call may add Content-Type to): H.request's answer.
function H.post_json(url, body, headers)
  headers = headers or {}
  headers["Content-Type"] = "application/json"
  return H.request(url, { method = "POST", body = body or "{}", headers = headers })
end

--- Starts H.request(url, opts) in a background process; returns a handle
--- whose wait() returns the response (status 0 if it never finished).
function H.request_async(url, opts)
  local out = os.tmpname()
  local script = H.write_temp(([[
package.path = %q
local H = require "tests.integration.helpers"
local r = H.request(%q, H.decode(%q))
local f = io.open(%q .. ".tmp", "wb")
f:write(H.encode({ status = r.status, headers = r.headers, body = r.body }))
f:close()
os.rename(%q .. ".tmp", %q)
]]):format(package.path, url, H.encode(opts or {}), out, out, out), ".lua")
  os.remove(out)
  os.execute(("lua5.4 %s >/dev/null 2>&1 &"):format(H.quote(script)))
  local handle = {}
  function handle.wait(max)
    local deadline = H.now() + (max or 20)
    while H.now() < deadline do
      local text = slurp(out)
      if text and text ~= "" then
        os.remove(out)
        os.remove(script)
        local r = H.decode(text)
        r.json = H.decode(r.body)
        return r
      end
      H.sleep(0.05)
    end
    return { status = 0, headers = {} }
  end
  return handle
end

function H.sleep(seconds)
  system.sleep(seconds)
end

--- Polls fn every 50 ms until it returns a true value or max seconds pass;
--- returns that value (or nil).
function H.eventually(fn, max)
  local deadline = H.now() + (max or 10)
  repeat
    local v = fn()
    if v then
      return v
    end
    H.sleep(0.05)
  until H.now() > deadline
  return nil
end

--- HMAC-SHA256 of body under secret, in hex, computed by the openssl CLI
--- (independent of chorus's own libcrypto binding).
function H.hmac_sha256(secret, body)
  local f = H.write_temp(body, ".body")
  local r = H.exec(("openssl dgst -sha256 -hmac %s -r %s"):format(H.quote(secret), H.quote(f)))
  os.remove(f)
  return r.stdout:match("^(%x+)")
end

--- Copies files into a new temporary folder; returns its path.
function H.temp_dir(files)
  local dir = os.tmpname()
  os.remove(dir)
  assert(os.execute("mkdir -p " .. H.quote(dir)))
  for name, text in pairs(files or {}) do
    local f = assert(io.open(dir .. "/" .. name, "wb"))
    f:write(text)
    f:close()
  end
  return dir
end

--- The record GET /runs/ID answers on srv (headers: the credentials), decoded.
function H.run_record(srv, id, headers)
  return H.request(srv.url .. "/runs/" .. id, { headers = headers }).json
end

--- Waits, at most seconds, until the run has ended; returns its record.
function H.finished(srv, id, headers, seconds)
  return H.eventually(function()
    local rec = H.run_record(srv, id, headers)
    return rec and rec.status ~= "running" and rec
  end, seconds)
end

--- Teardown in one call: stops every server or mock given (what has a
--- stop method; nil ones, never started, are skipped) and removes every
--- path given (temp folders and files).
function H.clean(...)
  for i = 1, select("#", ...) do
    local v = select(i, ...)
    if type(v) == "table" and v.stop then
      pcall(v.stop)
    elseif type(v) == "string" then
      os.execute("rm -rf " .. H.quote(v))
    end
  end
end

function H.read(path)
  return slurp(path)
end

--- Starts `chorus serve` on a free port; returns { url, pid, log, stop(sig), wait() }.
function H.start_server(args, env)
  local log = os.tmpname()
  local prefix = ""
  for k, v in pairs(env or {}) do
    prefix = prefix .. k .. "=" .. H.quote(v) .. " "
  end
  args = args or {}
  local data
  for i, a in ipairs(args) do
    if a == "--data" then
      data = args[i + 1]
    end
  end
  local own_data = not data
  if own_data then -- every server gets its own data folder
    data = H.temp_dir()
    args = table.move(args, 1, #args, 1, {})
    args[#args + 1] = "--data"
    args[#args + 1] = data
  end
  local quoted = {}
  for i, a in ipairs(args) do
    quoted[i] = H.quote(a)
  end
  local cmd = ("sh -c 'echo $$; %sexec timeout -s KILL 300 %s serve --listen 127.0.0.1:0 %s 2>%s'"):format(
    prefix:gsub("'", "'\\''"), H.chorus, table.concat(quoted, " "):gsub("'", "'\\''"), log)
  local p = assert(io.popen(cmd, "r"))
  local pid = assert(tonumber(p:read("l")), "server did not start")
  local line = p:read("l") or ""
  local address = line:match("listening on (http://[%d%.:]+)")
  assert(address, "server did not listen: " .. line .. "\n" .. slurp(log))
  local srv = { url = address, pid = pid, log = log, pipe = p, data = data }
  function srv.kill(sig)
    -- pid is `timeout`, which forwards TERM and INT to chorus but cannot
    -- forward KILL: that one goes to chorus itself
    if sig == "KILL" then
      local child = tonumber(H.exec(("pgrep -P %d"):format(pid)).stdout:match("%d+"))
      if child then
        os.execute(("kill -KILL %d 2>/dev/null"):format(child))
        H.eventually(function() return not io.open(("/proc/%d/stat"):format(child)) end, 5)
      end
    end
    os.execute(("kill -%s %d 2>/dev/null"):format(sig or "TERM", pid))
  end
  function srv.wait()
    local _, _, code = p:close()
    return code
  end
  function srv.stop()
    srv.kill("TERM")
    srv.wait()
    os.remove(log)
    if own_data then
      os.execute("rm -rf " .. H.quote(data))
    end
  end
  return srv
end

return H
