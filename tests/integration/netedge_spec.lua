-- The network edges through real processes: the egress policy of webhooks
-- and redirects, slow clients, malformed (smuggling-shaped) requests, and
-- the idempotency fingerprint's query string. Raw requests go through
-- raw_client.py (curl cannot send malformed or slow requests).
local H = require "tests.integration.helpers"

local RAW = "python3 tests/integration/raw_client.py"

local function hex(s)
  return (s:gsub(".", function(c) return ("%02x"):format(c:byte()) end))
end

local function host_port(url)
  local host, port = url:match("^http://([%d%.]+):(%d+)")
  return host, port
end

-- Sends bytes on one raw connection; returns status, headers text, body.
local function raw(url, bytes)
  local host, port = host_port(url)
  local r = H.exec(("%s send %s %s %s"):format(RAW, host, port, hex(bytes)), nil, 20)
  local status = tonumber(r.stdout:match("^HTTP/1%.%d (%d%d%d)"))
  local head, body = r.stdout:match("^(.-)\r\n\r\n(.*)$")
  return status, head or r.stdout, body or ""
end

describe("network edges", function()
  local mock, dir, conf, srv

  local function post(path, body, headers)
    return H.request(srv.url .. path, { method = "POST", body = body, headers = headers })
  end

  setup(function()
    mock = H.start_mock(300)
    dir = H.temp_dir({
      ["echo.lua"] = H.read("tests/integration/fixtures/serve/echo.lua"),
      ["hook.lua"] = H.read("tests/integration/fixtures/durable/hook.lua"),
    })
    conf = H.write_temp(([[
return {
  admin_token = "s3cret",
  outbox = { base = 0.05, cap = 0.2, poll = 0.02, attempts = 2 },
  upstreams = { mock = { base_url = %q } },
}
]]):format(mock.url))
    srv = H.start_server({ "--config", conf, "--scripts", dir })
  end)

  teardown(function()
    srv.stop()
    mock.stop()
    os.execute("rm -rf " .. H.quote(dir))
    os.remove(conf)
  end)

  describe("idempotency", function()
    it("a key reused with another query string is a different request: 422", function()
      local key = { ["Idempotency-Key"] = "q-" .. H.now() }
      local first = post("/workflows/echo?callback_url=http://example.test/a", '{"a":1}', key)
      assert.are.equal(200, first.status)
      local again = post("/workflows/echo?callback_url=http://example.test/a", '{"a":1}', key)
      assert.are.equal("true", again.headers["idempotent-replayed"])
      local other = post("/workflows/echo?callback_url=http://example.test/b", '{"a":1}', key)
      assert.are.equal(422, other.status)
      assert.are.equal("application/problem+json", other.headers["content-type"])
    end)

    it("two Idempotency-Key headers in one request get 400 problem+json", function()
      local status, head, body = raw(srv.url, "POST /workflows/echo HTTP/1.1\r\nHost: x\r\n"
        .. "Idempotency-Key: one\r\nIdempotency-Key: two\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}")
      assert.are.equal(400, status)
      assert.matches("application/problem%+json", head)
      assert.matches("more than one Idempotency%-Key", body)
    end)
  end)
end)
