-- The mock upstream (tests/mock_upstream.c) as the other specs and the
-- benchmarks use it: a real process on loopback, driven with the curl CLI.
-- Every mock started here is bounded by --max-seconds and killed in teardown.
local system = require "system"
local dkjson = require "dkjson"

local MOCK = (os.getenv("CHORUS_BUILD") or "build") .. "/mock-upstream"
local now = system.monotime

local function quote(s)
  return "'" .. tostring(s):gsub("'", "'\\''") .. "'"
end

local function slurp(path)
  local f = io.open(path, "rb")
  if not f then
    return ""
  end
  local s = f:read("a")
  f:close()
  os.remove(path)
  return s
end

--- Runs a shell command; returns its exit code and stdout.
local function sh(cmd)
  local p = assert(io.popen(cmd, "r"))
  local out = p:read("a")
  local _, _, code = p:close()
  return code, out
end

--- Starts a mock; returns { pid, url, pipe }.
local function start_mock(args)
  local p = assert(io.popen(("sh -c 'echo $$; exec %s --max-seconds 60 %s'"):format(
    MOCK, args or ""), "r"))
  local pid = assert(tonumber(p:read("l")), "mock did not start")
  local line = p:read("l") or ""
  local port = line:match("^listening 127%.0%.0%.1:(%d+)$")
  if not port then
    os.execute("kill " .. pid .. " 2>/dev/null")
    p:close()
    error("mock said: " .. line)
  end
  return { pid = pid, url = "http://127.0.0.1:" .. port, pipe = p }
end

local function stop_mock(mock)
  os.execute("kill " .. mock.pid .. " 2>/dev/null")
  mock.pipe:close() -- waits for the process to exit
end

describe("mock upstream", function()
  local mock

  --- One curl request. opts: method, body, headers (list), max_time.
  -- Returns { code = curl exit code, status, body, headers (lowercased), elapsed, ttfb }.
  local function request(path, opts)
    opts = opts or {}
    local hdr, body = os.tmpname(), os.tmpname()
    local parts = { "curl -s", "--max-time", opts.max_time or 5, "-D", hdr, "-o", body,
      "-w", quote("%{http_code} %{time_starttransfer}") }
    if opts.method then
      parts[#parts + 1] = "-X " .. opts.method
    end
    if opts.body then
      parts[#parts + 1] = "--data-binary " .. quote(opts.body)
    end
    for _, h in ipairs(opts.headers or {}) do
      parts[#parts + 1] = "-H " .. quote(h)
    end
    parts[#parts + 1] = quote(mock.url .. path)
    local t0 = now()
    local code, out = sh(table.concat(parts, " "))
    local res = { code = code, elapsed = now() - t0, body = slurp(body), headers = {} }
    local status, ttfb = out:match("^(%d+) ([%d.]+)")
    res.status, res.ttfb = tonumber(status), tonumber(ttfb)
    for name, value in slurp(hdr):gmatch("([%w-]+):%s*([^\r\n]*)") do
      res.headers[name:lower()] = value
    end
    return res
  end

  local function json(path, opts)
    local r = request(path, opts)
    assert.are.equal(0, r.code, "curl failed on " .. path)
    r.json = dkjson.decode(r.body)
    return r
  end

  local function stats()
    return json("/__stats").json
  end

  --- Polls /__stats until pred(stats) holds or a second has passed.
  local function stats_until(pred)
    local deadline = now() + 1
    local s
    repeat
      s = stats()
    until pred(s) or now() > deadline
    return s
  end

  setup(function()
    mock = start_mock()
  end)

  teardown(function()
    if mock then
      stop_mock(mock)
    end
  end)

  before_each(function()
    assert.are.equal(0, request("/__reset", { method = "POST" }).code)
  end)

  it("echoes the request as JSON", function()
    local r = json("/echo/me?a=1&b=two%20words", {
      method = "PUT", body = '{"x":[1,2]}',
      headers = { "Content-Type: application/json", "X-Trace-Id: abc" } })
    assert.are.equal(200, r.status)
    assert.are.equal("application/json", r.headers["content-type"])
    local e = r.json
    assert.are.equal("PUT", e.method)
    assert.are.equal("/echo/me", e.path)
    assert.are.same({ a = "1", b = "two words" }, e.query)
    assert.are.equal("abc", e.headers["x-trace-id"])
    assert.are.equal('{"x":[1,2]}', e.body)
    assert.are.same({ x = { 1, 2 } }, e.json)
    assert.are.equal(1, e.n)
    assert.are.equal(2, json("/echo/me").json.n)
  end)

  it("gives a non-JSON body as a string and json = null", function()
    local e = json("/plain", { method = "POST", body = "hello" }).json
    assert.are.equal("hello", e.body)
    assert.is_nil(e.json)
  end)

  it("answers body= verbatim as text/plain", function()
    local r = request("/b?body=hi%20there")
    assert.are.equal(200, r.status)
    assert.are.equal("text/plain", r.headers["content-type"])
    assert.are.equal("hi there", r.body)
  end)

  it("answers status= with retry_after= as a Retry-After header", function()
    local r = request("/busy?status=503&retry_after=7")
    assert.are.equal(503, r.status)
    assert.are.equal("7", r.headers["retry-after"])
    assert.are.equal(418, request("/tea?status=418").status)
  end)

  it("refuses a malformed parameter with 400", function()
    assert.are.equal(400, request("/x?delay=soon").status)
    assert.are.equal(400, request("/x?fault=melt").status)
  end)

  it("walks a seq= status sequence per path and repeats its last status", function()
    local got = {}
    for i = 1, 4 do
      got[i] = request("/flaky?seq=503,429,200").status
    end
    assert.are.same({ 503, 429, 200, 200 }, got)
    assert.are.equal(503, request("/other?seq=503,429,200").status)
    assert.are.equal(500, request("/flaky?seq=500,201").status)
  end)

  it("waits delay= milliseconds before answering", function()
    local r = request("/slow?delay=200")
    assert.are.equal(200, r.status)
    assert.is_true(r.ttfb >= 0.2, ("answered after %.3f s"):format(r.ttfb))
  end)

  it("counts concurrent requests in max_in_flight", function()
    local u = quote(mock.url .. "/par?delay=300")
    local code = sh(("curl -s -o /dev/null %s & curl -s -o /dev/null %s & "
      .. "curl -s -o /dev/null %s & wait"):format(u, u, u))
    assert.are.equal(0, code)
    local s = stats_until(function(s) return s.completed == 3 end)
    assert.are.equal(3, s.max_in_flight)
    assert.are.equal(0, s.in_flight)
    assert.are.equal(3, s.by_path["/par"])
  end)

  it("closes the connection without a response on fault=reset", function()
    local r = request("/boom?fault=reset")
    assert.are_not.equal(0, r.code)
    assert.are.equal("", r.body)
    local s = stats()
    assert.are.equal(1, s.requests)
    assert.are.equal(0, s.completed)
    assert.are.equal(0, s.aborted)
  end)

  it("notices at once when a client leaves a fault=hang request", function()
    local r = request("/hang?fault=hang", { max_time = 0.3 })
    assert.are.equal(28, r.code) -- curl: operation timed out
    -- noticed while the request still hangs (it never ends by itself)
    local s = stats_until(function(s) return s.aborted == 1 end)
    assert.are.equal(1, s.aborted)
    assert.are.equal(0, s.in_flight)
    assert.are.equal(0, s.completed)
  end)

  it("stops a delayed request whose client left", function()
    local r = request("/long?delay=3000", { max_time = 0.2 })
    assert.are.equal(28, r.code)
    local s = stats_until(function(s) return s.aborted == 1 end)
    assert.are.equal(1, s.aborted)
    assert.are.equal(0, s.in_flight)
  end)

  it("sends headers at once and the body slowly on fault=slow_body", function()
    local r = request("/drip?fault=slow_body&body_bytes=30")
    assert.are.equal(200, r.status)
    assert.are.equal(("x"):rep(30), r.body)
    -- the headers came at once, the body after them, slowly
    assert.is_true(r.elapsed - r.ttfb >= 0.15, ("headers after %.3f s, body after %.3f s"):format(r.ttfb, r.elapsed))
    assert.are.equal(1, stats_until(function(s) return s.completed == 1 end).completed)
  end)

  it("counts every request with an Idempotency-Key as an effect", function()
    for _ = 1, 2 do
      json("/charge", { method = "POST", headers = { "Idempotency-Key: k1" } })
    end
    json("/charge", { method = "POST", headers = { "Idempotency-Key: k2" } })
    local s = stats()
    assert.are.same({ k1 = 2, k2 = 1 }, s.effects)
    assert.are.equal(0, s.replayed)
  end)

  it("replays the first response for a repeated key with idempotent=1", function()
    local h = { "Idempotency-Key: order-7" }
    local first = request("/pay?idempotent=1&seq=201,500", { method = "POST", body = "a", headers = h })
    local again = request("/pay?idempotent=1&seq=201,500", { method = "POST", body = "b", headers = h })
    assert.are.equal(201, first.status)
    assert.are.equal(201, again.status)
    assert.are.equal(first.body, again.body)
    assert.are.equal("a", dkjson.decode(again.body).body)
    local other = request("/pay?idempotent=1&seq=201,500",
      { method = "POST", headers = { "Idempotency-Key: order-8" } })
    assert.are.equal(500, other.status)
    local s = stats()
    assert.are.same({ ["order-7"] = 1, ["order-8"] = 1 }, s.effects)
    assert.are.equal(1, s.replayed)
    assert.are.equal(3, s.requests)
  end)

  it("zeroes counters and sequences on POST /__reset", function()
    assert.are.equal(503, request("/r?seq=503,200").status)
    json("/r", { headers = { "Idempotency-Key: z" } })
    local s = stats()
    assert.are.equal(2, s.requests)
    assert.is_true(s.connections >= 2)
    assert.are.equal(200, request("/__reset", { method = "POST" }).status)
    s = stats()
    assert.are.same({}, s.by_path)
    assert.are.same({}, s.effects)
    assert.are.equal(0, s.requests)
    assert.are.equal(0, s.completed)
    assert.are.equal(0, s.aborted)
    assert.are.equal(0, s.replayed)
    assert.are.equal(0, s.max_in_flight)
    assert.are.equal(503, request("/r?seq=503,200").status) -- the sequence restarted
    assert.are.equal(2, json("/r").json.n) -- so did the path count
  end)

  it("does not count control requests", function()
    stats()
    stats()
    assert.are.equal(0, stats().requests)
  end)
end)

describe("mock upstream process", function()
  it("refuses to listen anywhere but loopback", function()
    local code = sh(("timeout -s KILL 5 %s --listen 0.0.0.0:0 --max-seconds 1 2>&1"):format(MOCK))
    assert.are.equal(2, code)
    local _, out = sh(("timeout -s KILL 5 %s --listen 10.1.2.3:8080 --max-seconds 1 2>&1"):format(MOCK))
    assert.matches("loopback only", out)
  end)

  it("listens on localhost with --listen", function()
    local m = start_mock("--listen localhost:0")
    finally(function() stop_mock(m) end)
    assert.matches("^http://127%.0%.0%.1:%d+$", m.url)
  end)

  it("exits 0 on SIGTERM", function()
    local script = ("%s --max-seconds 30 > %s & pid=$!; "
      .. "for i in $(seq 50); do grep -q listening %s && break; sleep 0.05; done; "
      .. "kill -TERM $pid; wait $pid; echo $?")
    local out_file = os.tmpname()
    local _, out = sh(("timeout -s KILL 10 sh -c %s"):format(quote(script:format(MOCK, out_file, out_file))))
    os.remove(out_file)
    assert.are.equal("0", out:match("%d+"))
  end)

  it("exits by itself after --max-seconds", function()
    local t0 = now()
    local code = sh(("timeout -s KILL 5 %s --max-seconds 1 >/dev/null"):format(MOCK))
    assert.are.equal(0, code)
    local took = now() - t0
    assert.is_true(took >= 0.9 and took < 2, ("exited after %.2f s"):format(took))
  end)
end)
