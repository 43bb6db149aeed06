-- Hardening through real processes: secrets never reach logs, run records,
-- timelines or errors; per-workflow auth (bearer token or signed body);
-- load shedding; the allow-list of hosts; TLS verification on by default.
local H = require "tests.integration.helpers"

local FIX = "tests/integration/fixtures/hardening/"
local SECRET = "sk_live_9f8e7d6c5b4a"
local FILE_SECRET = "file-secret-0a1b2c3d"

local hmac = H.hmac_sha256

describe("hardening", function()
  local mock, dir, conf, srv, secrets_dir

  local function post(path, body, headers)
    return H.request(srv.url .. path, { method = "POST", body = body, headers = headers })
  end

  setup(function()
    mock = H.start_mock(200)
    local files = {}
    for _, name in ipairs({ "leaky.lua", "guarded.lua", "slowpoke.lua", "fenced.lua" }) do
      files[name] = H.read(FIX .. name)
    end
    dir = H.temp_dir(files)
    secrets_dir = H.temp_dir({ file_key = FILE_SECRET .. "\n" })
    conf = H.write_temp(([[
return {
  limits = { max_inflight_runs = 2, inflight_runs_per_workflow = 0 }, -- the server's cap alone
  auth = { guarded = { token = "t0ken-for-guarded", hmac_secret = "hm4c-for-guarded" } },
  upstreams = { mock = { base_url = %q } },
}
]]):format(mock.url))
    srv = H.start_server({ "--config", conf, "--scripts", dir },
      { CHORUS_SECRET_API_KEY = SECRET, CHORUS_SECRETS_DIR = secrets_dir })
  end)

  teardown(function() H.clean(srv, mock, dir, secrets_dir, conf) end)

  describe("secrets", function()
    for _, case in ipairs({ { name = "api_key", value = SECRET, from = "the environment" },
        { name = "file_key", value = FILE_SECRET, from = "a file in the secrets folder" } }) do
      it(("never appear in logs, run records, timelines or errors (%s)"):format(case.from), function()
        local r = post("/workflows/leaky", ('{"secret":%q}'):format(case.name))
        assert.are.equal(500, r.status)
        local id = r.json.run_id
        -- the secret did reach the upstream: it is a real secret in use
        local seen = false
        for _, e in ipairs(mock.stats().log) do
          seen = seen or e.path == "/pay"
        end
        assert.is_true(seen)
        local record = H.request(srv.url .. "/runs/" .. id).body
        assert.is_nil(record:find(case.value, 1, true), "the run record holds the secret")
        assert.truthy(record:find("[REDACTED]", 1, true))
        local rec = H.decode(record)
        assert.are.equal("failed", rec.status)
        assert.matches("refused key %[REDACTED%]", rec.error.message)
        assert.matches("key=%[REDACTED%]", rec.timeline[1].url)
        H.sleep(0.2)
        local log = H.read(srv.log)
        assert.is_nil(log:find(case.value, 1, true), "the log holds the secret")
        assert.truthy(log:find("calling the API with key [REDACTED]", 1, true))
        local shown = H.exec(H.chorus .. " runs show " .. id .. " --data " .. H.quote(srv.data))
        assert.are.equal(0, shown.code)
        assert.is_nil(shown.stdout:find(case.value, 1, true))
      end)
    end

    it("are redacted from chorus run's error output too", function()
      local conf2 = H.write_temp(('return { upstreams = { mock = { base_url = %q } } }'):format(mock.url))
      local r = H.chorus_run({ "run", FIX .. "leaky.lua", "--config", conf2 }, { CHORUS_SECRET_API_KEY = SECRET })
      os.remove(conf2)
      assert.are.equal(1, r.code)
      assert.is_nil((r.stdout .. r.stderr):find(SECRET, 1, true))
      assert.truthy(r.stderr:find("[REDACTED]", 1, true))
    end)
  end)

  describe("per-workflow auth", function()
    it("answers 401 without the token or with a wrong one, and runs with it", function()
      assert.are.equal(401, post("/workflows/guarded", "{}").status)
      local wrong = post("/workflows/guarded", "{}", { Authorization = "Bearer nope" })
      assert.are.equal(401, wrong.status)
      assert.are.equal("Bearer", wrong.headers["www-authenticate"])
      local ok = post("/workflows/guarded", '{"a":1}', { Authorization = "Bearer t0ken-for-guarded" })
      assert.are.equal(200, ok.status)
      assert.are.same({ got = { a = 1 } }, ok.json)
    end)

    it("accepts a body signed with the workflow's HMAC secret, and nothing else", function()
      local body = '{"signed":true}'
      local good = post("/workflows/guarded", body,
        { ["X-Chorus-Signature"] = "sha256=" .. hmac("hm4c-for-guarded", body) })
      assert.are.equal(200, good.status)
      local tampered = post("/workflows/guarded", '{"signed":false}',
        { ["X-Chorus-Signature"] = "sha256=" .. hmac("hm4c-for-guarded", body) })
      assert.are.equal(401, tampered.status)
    end)

    it("stores nothing for a 401 and keeps each caller's keys apart", function()
      local key = { ["Idempotency-Key"] = "auth-key-1" }
      assert.are.equal(401, post("/workflows/guarded", "{}", key).status)
      local body = "{}"
      local by_token = post("/workflows/guarded", body, { ["Idempotency-Key"] = "auth-key-1",
        Authorization = "Bearer t0ken-for-guarded" })
      assert.are.equal(200, by_token.status)
      assert.is_nil(by_token.headers["idempotent-replayed"])
      -- another caller with the same key: not the first caller's stored response
      local by_hmac = post("/workflows/guarded", body, { ["Idempotency-Key"] = "auth-key-1",
        ["X-Chorus-Signature"] = "sha256=" .. hmac("hm4c-for-guarded", body) })
      assert.are.equal(200, by_hmac.status)
      assert.is_nil(by_hmac.headers["idempotent-replayed"])
      assert.are_not.equal(by_token.headers["x-run-id"], by_hmac.headers["x-run-id"])
    end)
  end)

  it("sheds load with 503 and Retry-After past max_inflight_runs, storing nothing", function()
    local a = H.request_async(srv.url .. "/workflows/slowpoke", { method = "POST", body = "{}" })
    local b = H.request_async(srv.url .. "/workflows/slowpoke", { method = "POST", body = "{}" })
    assert.is_truthy(H.eventually(function() return mock.stats().in_flight >= 2 end, 5))
    local shed = post("/workflows/slowpoke", "{}", { ["Idempotency-Key"] = "shed-1" })
    assert.are.equal(503, shed.status)
    assert.are.equal("1", shed.headers["retry-after"])
    assert.are.equal("application/problem+json", shed.headers["content-type"])
    assert.are.equal(200, a.wait().status)
    assert.are.equal(200, b.wait().status)
    -- the key was not stored: the retry runs
    local retry = post("/workflows/slowpoke", "{}", { ["Idempotency-Key"] = "shed-1" })
    assert.are.equal(200, retry.status)
    assert.is_nil(retry.headers["idempotent-replayed"])
  end)

  it("refuses a call to a host outside the workflow's allow_hosts", function()
    local r = post("/workflows/fenced", "{}")
    assert.are.equal(500, r.status)
    assert.are.equal("forbidden_host", r.json.kind)
  end)

  describe("TLS", function()
    local tls_dir, server_pid, server_pipe, port

    setup(function()
      tls_dir = H.temp_dir()
      H.exec(("openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=localhost -keyout %s/key.pem "
        .. "-out %s/cert.pem"):format(tls_dir, tls_dir), nil, 60)
      -- below Linux's ephemeral range (32768+), where a busy test machine's
      -- own connections could hold the port
      port = 20000 + math.random(12000)
      -- the pipe is kept until teardown: a popen'd file the collector
      -- finalizes is pclose()d, which waits for s_server to exit (a minute,
      -- after which the runs found no one listening)
      server_pipe = io.popen(("sh -c 'echo $$; exec timeout 60 openssl s_server -quiet -www -accept 127.0.0.1:%d "
        .. "-cert %s/cert.pem -key %s/key.pem >/dev/null 2>%s/s_server.log'"):format(port, tls_dir, tls_dir,
        tls_dir))
      server_pid = tonumber(server_pipe:read("l"))
      -- s_server takes a while on a busy machine: wait for its handshake
      assert(H.eventually(function()
        return H.exec(("curl -sk -o /dev/null https://127.0.0.1:%d/"):format(port), nil, 5).code == 0
      end, 30), "openssl s_server did not start")
    end)

    teardown(function()
      os.execute("kill " .. server_pid .. " 2>/dev/null")
      server_pipe:close()
      os.execute("rm -rf " .. H.quote(tls_dir))
    end)

    it("verifies certificates by default and skips only with tls_verify = false", function()
      local function run(extra)
        local c = H.write_temp(
          ('return { upstreams = { tls = { base_url = "https://127.0.0.1:%d", timeout = 5 %s } } }')
          :format(port, extra))
        local r = H.chorus_run({ "run", FIX .. "tls.lua", "--config", c })
        os.remove(c)
        return r
      end
      local strict = run("")
      assert.are.equal(0, strict.code, strict.stderr)
      assert.are.same({ error = "tls" }, H.decode(strict.stdout),
        "s_server said: " .. H.read(tls_dir .. "/s_server.log"))
      local lax = run(", tls_verify = false")
      assert.are.equal(0, lax.code, lax.stderr)
      assert.are.same({ status = 200 }, H.decode(lax.stdout), "s_server said: " .. H.read(tls_dir .. "/s_server.log"))
      assert.truthy(lax.stderr:find("TLS verification is off", 1, true))
    end)
  end)
end)
