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
      ["hop.lua"] = [[
local chorus = require "chorus"
local http = require "chorus.http"
return chorus.workflow {
  name = "hop",
  allow_hosts = { "127.0.0.1" },
  run = function(_, input)
    local ok, res = pcall(http.request, { url = input.url, follow_redirects = true })
    if ok then
      return { status = res.status }
    end
    return { kind = res.kind, message = res.message }
  end,
}
]],
    })
    conf = H.write_temp(([[
return {
  admin_token = "s3cret",
  egress = { allow = { "127.0.0.1" } },
  outbox = { base = 0.05, cap = 0.2, poll = 0.02, attempts = 2 },
  upstreams = { mock = { base_url = %q } },
}
]]):format(mock.url))
    srv = H.start_server({ "--config", conf, "--scripts", dir })
  end)

  teardown(function() H.clean(srv, mock, dir, conf) end)

  local function escape(s)
    return (s:gsub("[^%w%-%._~]", function(c) return ("%%%02X"):format(c:byte()) end))
  end

  local function dlq_entry(id)
    return H.eventually(function()
      local r = H.request(srv.url .. "/admin/dlq", { headers = { Authorization = "Bearer s3cret" } })
      for _, e in ipairs(r.json and r.json.entries or {}) do
        if e.run_id == id then
          return e
        end
      end
    end, 10)
  end

  describe("egress", function()
    local async = { Prefer = "respond-async" }

    it("delivers a callback to an address egress.allow lists", function()
      mock.reset()
      local r = post("/workflows/hook?callback_url=" .. escape(mock.url .. "/allowed"), "{}", async)
      assert.are.equal(202, r.status)
      assert.is_truthy(H.eventually(function()
        for _, e in ipairs(mock.stats().log) do
          if e.path == "/allowed" then
            return e
          end
        end
      end, 10))
    end)

    it("refuses a callback to the server's own /admin/reload at submit time: 400", function()
      local r = post("/workflows/hook?callback_url=" .. escape(srv.url .. "/admin/reload"), "{}", async)
      assert.are.equal(400, r.status)
      assert.are.equal("application/problem+json", r.headers["content-type"])
      assert.matches("own listen address", r.json.detail)
    end)

    it("refuses loopback not in egress.allow, and user:password URLs: 400", function()
      local _, port = host_port(mock.url)
      local r = post("/workflows/hook?callback_url=" .. escape("http://127.0.0.2:" .. port .. "/x"), "{}", async)
      assert.are.equal(400, r.status)
      assert.matches("loopback", r.json.detail)
      r = post("/workflows/hook?callback_url=" .. escape("http://[::1]:" .. port .. "/x"), "{}", async)
      assert.are.equal(400, r.status)
      r = post("/workflows/hook?callback_url=" .. escape("http://u:p@" .. mock.url:sub(8) .. "/x"), "{}", async)
      assert.are.equal(400, r.status)
      assert.matches("user:password", r.json.detail)
    end)

    it("a host name resolving to the server itself is refused when the webhook connects: DLQ, never POSTed",
      function()
        local _, port = host_port(srv.url)
        local r = post("/workflows/hook?callback_url=" .. escape("http://localhost:" .. port .. "/admin/reload"),
          "{}", async)
        assert.are.equal(202, r.status)
        local e = dlq_entry(r.json.run_id)
        assert.is_truthy(e, "the webhook did not reach the DLQ")
        assert.are.equal("egress_denied", e.last_error.kind)
        assert.are.equal(1, e.attempts) -- permanent: not retried
        H.sleep(0.2)
        assert.is_nil(H.read(srv.log):find('"path":"/admin/reload"', 1, true), "the webhook reached /admin/reload")
      end)

    it("checks every redirect hop against the workflow's allow_hosts", function()
      local _, port = host_port(mock.url)
      local function via(target)
        return mock.url .. "/first?status=302&location=" .. escape(target)
      end
      local ok = post("/workflows/hop", H.encode({ url = via(mock.url .. "/second") }))
      assert.are.equal(200, ok.json.status)
      local r = post("/workflows/hop", H.encode({ url = via("http://localhost:" .. port .. "/second") }))
      assert.are.equal("forbidden_host", r.json.kind)
      assert.matches("localhost", r.json.message)
    end)
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

  describe("slow clients", function()
    it("max_connections slow-loris connections are closed after client_timeout; others get served", function()
      local dir2 = H.temp_dir({ ["echo.lua"] = H.read("tests/integration/fixtures/serve/echo.lua") })
      local conf2 = H.write_temp("return { limits = { max_connections = 4, client_timeout = 2 } }")
      local small = H.start_server({ "--config", conf2, "--scripts", dir2 })
      local host, port = host_port(small.url)
      local out = os.tmpname()
      -- four connections, each sending a header line every 0.5 s: never idle,
      -- never done; the helper gives up after 15 s
      os.execute(("%s loris %s %s 4 15 >%s 2>&1 &"):format(RAW, host, port, out))
      assert.is_truthy(H.eventually(function() return H.read(out):find("opened 4", 1, true) end, 10))
      -- a normal client retries until it gets in (the slots free after 2 s)
      local served = H.eventually(function()
        return H.request(small.url .. "/healthz", { max_time = 2 }).status == 200
      end, 12)
      local report = H.eventually(function() return H.read(out):match("closed (%d+) of 4") end, 15)
      small.stop()
      os.remove(out)
      os.remove(conf2)
      os.execute("rm -rf " .. H.quote(dir2))
      assert.is_true(served, "a normal client was never served")
      assert.are.equal("4", report)
    end)
  end)

  describe("request framing", function()
    local function refused(bytes, detail)
      local status, head, body = raw(srv.url, bytes)
      assert.are.equal(400, status)
      assert.matches("application/problem%+json", head)
      assert.matches(detail, body)
    end

    it("refuses two different Content-Lengths: 400 problem+json", function()
      refused("POST /workflows/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 5\r\n"
        .. "Connection: close\r\n\r\n{}abc", "different values")
    end)

    it("refuses Transfer-Encoding with Content-Length: 400 problem+json", function()
      refused("POST /workflows/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n"
        .. "Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
        "both Transfer%-Encoding and Content%-Length")
    end)

    it("refuses a Transfer-Encoding other than chunked: 400 problem+json", function()
      refused("POST /workflows/echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n"
        .. "Connection: close\r\n\r\n2\r\n{}\r\n0\r\n\r\n", "only Transfer%-Encoding accepted")
    end)

    it("still takes a repeated Content-Length with one value (RFC 9110 8.6)", function()
      local status = raw(srv.url, "POST /workflows/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n"
        .. "Content-Length: 2\r\nConnection: close\r\n\r\n{}")
      assert.are.equal(200, status)
    end)

    -- libmicrohttpd 0.9.75 (Debian 12) accepts these and hands chorus only
    -- the parsed headers, with no hook to the raw bytes: see README
    pending("bare-LF line ends get 400 (libmicrohttpd 0.9.75 accepts them)")
    pending("obs-fold continuation lines get 400 (libmicrohttpd 0.9.75 joins them)")
    pending("a NUL in a header gets 400 (libmicrohttpd 0.9.75 cuts the value there)")

    it("answers headers or a target over max_header_bytes with 431 / 414 problem+json", function()
      local big = ("a"):rep(18000) -- over the default 16384, within libmicrohttpd's margin
      local status, head, body = raw(srv.url, "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " .. big
        .. "\r\nConnection: close\r\n\r\n")
      assert.are.equal(431, status)
      assert.matches("application/problem%+json", head)
      assert.matches("header fields exceeds max_header_bytes %(16384 bytes%)", body)
      -- split over many lines, each small
      local lines = {}
      for i = 1, 34 do lines[i] = ("X-H%d: %s\r\n"):format(i, ("b"):rep(500)) end
      status, head = raw(srv.url, "GET /healthz HTTP/1.1\r\nHost: x\r\n" .. table.concat(lines)
        .. "Connection: close\r\n\r\n")
      assert.are.equal(431, status)
      assert.matches("application/problem%+json", head)
      status, head, body = raw(srv.url, "GET /healthz?q=" .. big .. " HTTP/1.1\r\nHost: x\r\n"
        .. "Connection: close\r\n\r\n")
      assert.are.equal(414, status)
      assert.matches("application/problem%+json", head)
      assert.matches("target exceeds max_header_bytes", body)
      status = raw(srv.url, "GET /" .. big .. " HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
      assert.are.equal(414, status)
      -- just under the limit is served
      status = raw(srv.url, "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " .. ("a"):rep(15000)
        .. "\r\nConnection: close\r\n\r\n")
      assert.are.equal(200, status)
    end)

    it("errors libmicrohttpd answers itself keep their status (431 past its margin, 505, 400)", function()
      local big = ("a"):rep(40000)
      assert.are.equal(431, (raw(srv.url, "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " .. big
        .. "\r\nConnection: close\r\n\r\n")))
      assert.are.equal(505, (raw(srv.url, "GET /healthz HTTP/2.0\r\nHost: x\r\nConnection: close\r\n\r\n")))
      assert.are.equal(400, (raw(srv.url, "GET /healthz HTTP/1.1\r\nHost: x\r\nBad Header\r\n"
        .. "Connection: close\r\n\r\n")))
    end)
  end)
end)
