-- core.http, the binding lua/chorus/http.lua sends through: one named
-- options table, checked key by key, against a server on 127.0.0.1 that
-- the spec starts itself (core.serve).
local core = require "chorus.core"
local json = core.json

-- Runs fn(base_url) as a run while an echo server listens; returns what
-- core.run returned.
local function with_echo(fn)
  local srv = core.serve({ host = "127.0.0.1", port = 0 }, function(req)
    return { status = 201, headers = { ["Content-Type"] = "application/json", ["X-Echo"] = "yes" },
      body = json.encode({ method = req.method, path = req.path, body = req.body,
        token = req.headers["x-token"] }) }
  end)
  local ok, value = core.run(nil, function()
    return fn(("http://127.0.0.1:%d"):format(srv:port()))
  end)
  srv:close()
  return ok, value
end

local function message(err)
  return type(err) == "table" and tostring(err.message) or tostring(err)
end

describe("core.http", function()
  it("sends the method, headers and body of its options and returns status, headers, body, duration", function()
    local ok, r = with_echo(function(base)
      local status, headers, body, duration = core.http({ method = "POST", url = base .. "/echo",
        headers = { ["X-Token"] = "abc" }, body = "hello", timeout = 5, connect_timeout = 5 })
      return { status = status, headers = headers, body = json.decode(body), duration = duration }
    end)
    assert.is_true(ok, message(r))
    assert.are.equal(201, r.status)
    assert.are.equal("yes", r.headers["x-echo"])
    assert.are.same({ method = "POST", path = "/echo", body = "hello", token = "abc" }, r.body)
    assert.is_true(r.duration >= 0)
  end)

  it("names response headers in lower case and joins a repeated one with \", \"", function()
    local function headers_of(answer)
      local srv = core.serve({ host = "127.0.0.1", port = 0 }, function()
        return { status = 200, headers = answer, body = "" }
      end)
      local ok, h = core.run(nil, function()
        local _, headers = core.http({ method = "GET", url = ("http://127.0.0.1:%d/"):format(srv:port()) })
        return headers
      end)
      srv:close()
      assert.is_true(ok, message(h))
      return h
    end
    -- the same name twice, in two cases: one header, both values
    local h = headers_of({ ["X-Dup"] = "a", ["x-dup"] = "b", ["X-One"] = "1" })
    assert.is_true(h["x-dup"] == "a, b" or h["x-dup"] == "b, a", tostring(h["x-dup"]))
    assert.are.equal("1", h["x-one"])
    assert.is_nil(h["X-Dup"])
    -- many headers (past the few compared in C), one of them repeated
    local many = { ["x-rep"] = "c", ["X-REP"] = "d" }
    for i = 1, 40 do
      many["X-Many-" .. i] = tostring(i)
    end
    h = headers_of(many)
    assert.is_true(h["x-rep"] == "c, d" or h["x-rep"] == "d, c", tostring(h["x-rep"]))
    assert.are.equal("40", h["x-many-40"])
  end)

  it("needs only method and url", function()
    local ok, status = with_echo(function(base)
      return (core.http({ method = "GET", url = base .. "/" }))
    end)
    assert.is_true(ok, message(status))
    assert.are.equal(201, status)
  end)

  it("ends the call with kind too_large past max_response_bytes", function()
    local ok, r = with_echo(function(base)
      return { core.http({ method = "GET", url = base .. "/", max_response_bytes = 4 }) }
    end)
    assert.is_true(ok, message(r))
    assert.is_nil(r[1])
    assert.are.equal("too_large", r[2])
  end)

  it("refuses a restricted call to an address the egress policy does not allow", function()
    local ok, r = with_echo(function(base)
      return { core.http({ method = "GET", url = base .. "/", restricted = true }) }
    end)
    assert.is_true(ok, message(r))
    assert.is_nil(r[1])
    assert.are.equal("egress_denied", r[2])
  end)

  -- Each bad options table, and the words its error must carry.
  local bad = {
    { "an unknown key", { method = "GET", url = "http://127.0.0.1:1/", timout = 5 }, "unknown option 'timout'" },
    { "a non-string key", { "GET", method = "GET", url = "http://127.0.0.1:1/" }, "unknown option '1'" },
    { "a mistyped timeout", { method = "GET", url = "http://127.0.0.1:1/", timeout = "5" },
      "option 'timeout' must be a number, got string" },
    { "a mistyped flag", { method = "GET", url = "http://127.0.0.1:1/", tls_verify = 0 },
      "option 'tls_verify' must be a boolean, got number" },
    { "a mistyped headers", { method = "GET", url = "http://127.0.0.1:1/", headers = "X: y" },
      "option 'headers' must be a table, got string" },
    { "no url", { method = "GET" }, "method and url are required" },
    { "no method", { url = "http://127.0.0.1:1/" }, "method and url are required" },
    { "a negative timeout", { method = "GET", url = "http://127.0.0.1:1/", timeout = -1 },
      "timeout must be seconds between 0 and 1e7" },
    { "a fractional max_response_bytes", { method = "GET", url = "http://127.0.0.1:1/", max_response_bytes = 1.5 },
      "max_response_bytes must be an integer" },
    { "a header with CR LF", { method = "GET", url = "http://127.0.0.1:1/", headers = { X = "a\r\nB: c" } },
      "must not contain CR, LF" },
    { "allow_hosts with a non-string", { method = "GET", url = "http://127.0.0.1:1/", allow_hosts = { [1] = true } },
      "allow_hosts" },
  }
  for _, case in ipairs(bad) do
    it("refuses " .. case[1] .. " with an error that names it", function()
      local ok, err = core.run(nil, function() return core.http(case[2]) end)
      assert.is_false(ok)
      assert.truthy(message(err):find(case[3], 1, true), message(err))
      assert.truthy(message(err):find("bad argument #1", 1, true), message(err))
    end)
  end

  it("refuses positional arguments", function()
    local ok, err = core.run(nil, function() return core.http("GET", "http://127.0.0.1:1/") end)
    assert.is_false(ok)
    assert.truthy(message(err):find("table expected", 1, true), message(err))
  end)
end)
