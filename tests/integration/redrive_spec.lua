-- Finishing a failed keyed request without doing its work twice: redrive
-- (admin endpoint, CLI, idempotency on_failure = "redrive"), the canonical
-- JSON fingerprint, and ctx.request (also after a SIGKILL and resume).
local H = require "tests.integration.helpers"

local FIX = "tests/integration/fixtures/redrive/"
local NAMES = { "pay.lua", "pay_redrive.lua", "ok.lua", "timeout.lua", "echo_request.lua" }
local ADMIN = { Authorization = "Bearer s3cret" }

local function config_text(mock_url)
  return ([[
return {
  admin_token = "s3cret",
  request_headers = { "X-Tenant" },
  upstreams = { mock = { base_url = %q } },
}
]]):format(mock_url)
end

describe("redrive", function()
  local mock, dir, conf, data, srv
  local n = 0

  local function start()
    srv = H.start_server({ "--config", conf, "--scripts", dir, "--data", data })
  end

  local function post(path, body, headers)
    return H.request(srv.url .. path, { method = "POST", body = body, headers = headers })
  end

  local function record(id)
    return H.run_record(srv, id, ADMIN)
  end

  local function finished(id)
    return H.finished(srv, id, ADMIN, 10)
  end

  local function tag()
    n = n + 1
    return "t" .. n
  end

  -- The Idempotency-Key headers the mock saw on path, in order.
  local function keys_seen(path)
    local out = {}
    for _, e in ipairs(mock.stats().log) do
      if e.path == path then
        out[#out + 1] = e.key
      end
    end
    return out
  end

  local function cli(...)
    local args = { ... }
    for i, a in ipairs(args) do
      args[i] = H.quote(a)
    end
    return H.exec(H.chorus .. " " .. table.concat(args, " ") .. " --config " .. H.quote(conf)
      .. " --data " .. H.quote(data))
  end

  setup(function()
    mock = H.start_mock(300)
    local files = {}
    for _, name in ipairs(NAMES) do
      files[name] = H.read(FIX .. name)
    end
    files["rollback.lua"] = H.read("tests/integration/fixtures/durable/rollback.lua")
    dir = H.temp_dir(files)
    conf = H.write_temp(config_text(mock.url))
    data = H.temp_dir()
    start()
  end)

  teardown(function() H.clean(srv, mock, dir, data, conf) end)

  describe("POST /admin/runs/ID/redrive", function()
    it("replays the recorded effects and sends the failed one again with its key", function()
      local t = tag()
      local r = post("/workflows/pay", H.encode({ tag = t, seq = "500,200" }))
      assert.are.equal(500, r.status)
      local id = r.json.run_id
      assert.are.equal("failed", record(id).status)

      local d = post("/admin/runs/" .. id .. "/redrive", "", ADMIN)
      assert.are.equal(202, d.status, d.body)
      local rec = finished(id)
      assert.are.equal("succeeded", rec.status, H.encode(rec))
      assert.are.same({ reserved = 200, charged = 200 }, rec.result)
      -- the reserve ran once; the charge twice, both times with one key
      local stats = mock.stats()
      assert.are.equal(1, stats.by_path["/reserve/" .. t])
      assert.are.equal(2, stats.by_path["/charge/" .. t])
      local keys = keys_seen("/charge/" .. t)
      assert.are.equal(2, #keys)
      assert.are.equal(id .. ":charge", keys[1])
      assert.are.equal(keys[1], keys[2])
      -- the record lists the redrive
      assert.are.equal(1, #rec.redrives)
      assert.are.equal("admin", rec.redrives[1].via)
      assert.are.equal(1, rec.redrives[1].replayed)
      assert.are.equal(1, rec.redrives[1].failed_effects)
      assert.are.equal("upstream", rec.redrives[1].previous_error.kind)
    end)

    it("lists every redrive of a run that fails again", function()
      local t = tag()
      local id = post("/workflows/pay", H.encode({ tag = t, seq = "500,503,200" })).json.run_id
      assert.are.equal(202, post("/admin/runs/" .. id .. "/redrive", "", ADMIN).status)
      assert.are.equal("failed", finished(id).status)
      assert.are.equal(202, post("/admin/runs/" .. id .. "/redrive", "", ADMIN).status)
      local rec = finished(id)
      assert.are.equal("succeeded", rec.status)
      assert.are.equal(2, #rec.redrives)
      assert.are.equal(503, tonumber(rec.redrives[2].previous_error.message:match("%d+$")))
      assert.are.equal(1, mock.stats().by_path["/reserve/" .. t])
      assert.are.equal(3, mock.stats().by_path["/charge/" .. t])
    end)

    it("refuses a succeeded, compensated or timed-out run with 409, and an unknown one with 404", function()
      local ok = post("/workflows/ok", "{}")
      local comp = post("/workflows/rollback", "{}")
      local slow = post("/workflows/timeout", "{}")
      for what, r in pairs({ succeeded = ok, compensated = comp, timed_out = slow }) do
        local id = r.headers["x-run-id"] or r.json.run_id
        assert.are.equal(what, finished(id).status)
        local d = post("/admin/runs/" .. id .. "/redrive", "", ADMIN)
        assert.are.equal(409, d.status, what)
        assert.matches("application/problem+json", d.headers["content-type"], 1, true)
        assert.matches("only a failed run is redriven, and this one is " .. what, d.json.detail, 1, true)
      end
      assert.are.equal(404, post("/admin/runs/nope/redrive", "", ADMIN).status)
      assert.are.equal(401, post("/admin/runs/nope/redrive", "").status)
    end)
  end)

  describe("chorus runs redrive", function()
    it("refuses while a server holds the data folder, then redrives in-process", function()
      local t = tag()
      local id = post("/workflows/pay", H.encode({ tag = t, seq = "500,200" })).json.run_id
      local busy = cli("runs", "redrive", id)
      assert.are.equal(1, busy.code)
      assert.matches("/admin/runs/" .. id .. "/redrive", busy.stderr, 1, true)
      srv.kill("TERM")
      srv.wait()
      local r = cli("runs", "redrive", id)
      assert.are.equal(0, r.code, r.stderr)
      local rec = H.decode(r.stdout)
      assert.are.equal("succeeded", rec.status)
      assert.are.equal("cli", rec.redrives[1].via)
      assert.are.equal(1, mock.stats().by_path["/reserve/" .. t])
      local keys = keys_seen("/charge/" .. t)
      assert.are.same({ id .. ":charge", id .. ":charge" }, keys)
      -- a second one is refused: the run succeeded
      local again = cli("runs", "redrive", id)
      assert.are.equal(1, again.code)
      assert.matches("this one is succeeded", again.stderr, 1, true)
      start()
      assert.are.equal("succeeded", record(id).status)
    end)
  end)

  describe("chorus run --data", function()
    it("records the run in the folder as a served one; a failed one is redriven with its keys", function()
      local t = tag()
      local folder = H.temp_dir()
      local function exec(...)
        local args = { ... }
        for i, a in ipairs(args) do
          args[i] = H.quote(a)
        end
        return H.exec(H.chorus .. " " .. table.concat(args, " ") .. " --config " .. H.quote(conf)
          .. " --data " .. H.quote(folder))
      end
      local r = exec("run", dir .. "/pay.lua", "--input", H.encode({ tag = t, seq = "500,200" }))
      assert.are.equal(1, r.code, r.stderr)
      local out = H.decode(r.stderr:match("([^\n]+)\n?$"))
      assert.are.equal("upstream", out.error.kind)
      local id = out.run_id
      -- the record, as `chorus serve` keeps it
      local show = exec("runs", "show", id)
      assert.are.equal(0, show.code, show.stderr)
      local rec = H.decode(show.stdout)
      assert.are.equal("failed", rec.status)
      assert.are.equal("pay", rec.workflow)
      assert.are.equal("upstream", rec.error.kind)
      local listed = exec("runs", "list")
      assert.matches(id, listed.stdout, 1, true)
      -- its journal was kept: the redrive replays the reserve, sends the charge again
      local d = exec("runs", "redrive", id)
      assert.are.equal(0, d.code, d.stderr)
      rec = H.decode(d.stdout)
      assert.are.equal("succeeded", rec.status)
      assert.are.equal("cli", rec.redrives[1].via)
      assert.are.equal(1, mock.stats().by_path["/reserve/" .. t])
      assert.are.same({ id .. ":charge", id .. ":charge" }, keys_seen("/charge/" .. t))
      os.execute("rm -rf " .. H.quote(folder))
    end)
  end)

  describe("idempotency on_failure", function()
    it("replays the stored 500 by default", function()
      local t = tag()
      local h = { ["Idempotency-Key"] = "k-" .. t }
      local body = H.encode({ tag = t, seq = "500,200" })
      assert.are.equal(500, post("/workflows/pay", body, h).status)
      local again = post("/workflows/pay", body, h)
      assert.are.equal(500, again.status)
      assert.are.equal("true", again.headers["idempotent-replayed"])
      assert.are.equal(1, mock.stats().by_path["/charge/" .. t])
    end)

    it("= \"redrive\": the same key finishes the failed run (409 while it runs), then replays", function()
      local t = tag()
      local h = { ["Idempotency-Key"] = "k-" .. t }
      local body = H.encode({ tag = t, seq = "500,200", delay = 1500 })
      local first = post("/workflows/pay_redrive", body, h)
      assert.are.equal(500, first.status)
      local id = first.json.run_id
      local retry = H.request_async(srv.url .. "/workflows/pay_redrive", { method = "POST", body = body,
        headers = h })
      assert.is_truthy(H.eventually(function() return mock.stats().in_flight > 0 end, 5))
      local during = post("/workflows/pay_redrive", body, h)
      assert.are.equal(409, during.status)
      local done = retry.wait(20)
      assert.are.equal(200, done.status, done.body)
      assert.are.equal(id, done.headers["x-run-id"])
      assert.are.same({ reserved = 200, charged = 200 }, done.json)
      local replay = post("/workflows/pay_redrive", body, h)
      assert.are.equal(200, replay.status)
      assert.are.equal("true", replay.headers["idempotent-replayed"])
      assert.are.equal(1, mock.stats().by_path["/reserve/" .. t])
      assert.are.same({ id .. ":charge", id .. ":charge" }, keys_seen("/charge/" .. t))
      assert.are.equal("idempotency", record(id).redrives[1].via)
    end)
  end)

  describe("the fingerprint of a JSON body", function()
    it("ignores key order and whitespace, not values", function()
      local h = { ["Idempotency-Key"] = "fp-1", ["Content-Type"] = "application/json" }
      local first = post("/workflows/ok", '{"a":1,"b":[1,{"x":"y","w":null}]}', h)
      assert.are.equal(200, first.status)
      local same = post("/workflows/ok", ' { "b" : [ 1, {"w":null, "x":"y"} ],\n "a": 1 } ', h)
      assert.are.equal(200, same.status, same.body)
      assert.are.equal("true", same.headers["idempotent-replayed"])
      assert.are.equal(422, post("/workflows/ok", '{"b":[1,{"w":null,"x":"z"}],"a":1}', h).status)
      assert.are.equal(422, post("/workflows/ok", '{"b":[{"w":null,"x":"y"},1],"a":1}', h).status)
    end)

    it("compares the bytes without a JSON content type", function()
      local h = { ["Idempotency-Key"] = "fp-2", ["Content-Type"] = "text/plain" }
      assert.are.equal(200, post("/workflows/ok", '{"a":1,"b":2}', h).status)
      assert.are.equal(422, post("/workflows/ok", '{"b":2,"a":1}', h).status)
    end)
  end)

  describe("ctx.request", function()
    it("request_headers must be a list of header names", function()
      for _, bad in ipairs({ "{ tenant = true }", "{ 'x tenant' }", "{ 1 }" }) do
        local c = H.write_temp(("return { request_headers = %s }"):format(bad))
        local r = H.chorus_run({ "run", dir .. "/ok.lua", "--config", c })
        os.remove(c)
        assert.are.equal(2, r.code, bad)
        assert.matches("request_headers must be a list of header names", r.stderr, 1, true)
      end
    end)

    local function check(req, key)
      assert.are.equal("POST", req.method)
      assert.are.equal("/workflows/echo_request", req.path)
      assert.are.same({ mode = "test" }, req.query)
      assert.are.equal(key, req.idempotency_key)
      assert.are.same({ ["x-tenant"] = "acme" }, req.headers) -- x-other is not allow-listed
    end

    it("shows method, path, query, the key and the allow-listed headers only", function()
      local r = post("/workflows/echo_request?mode=test", "{}", { ["X-Tenant"] = "acme", ["X-Other"] = "no",
        ["Idempotency-Key"] = "req-1" })
      assert.are.equal(200, r.status, r.body)
      check(r.json.before, "req-1")
      check(r.json.after, "req-1")
    end)

    it("is the same after a SIGKILL and a resume", function()
      local r = post("/workflows/echo_request?mode=test", '{"sleep":1.5}', { ["X-Tenant"] = "acme",
        ["X-Other"] = "no", ["Idempotency-Key"] = "req-2", Prefer = "respond-async" })
      assert.are.equal(202, r.status, r.body)
      H.sleep(0.5)
      srv.kill("KILL")
      srv.wait()
      start()
      local rec = finished(r.json.run_id)
      assert.are.equal("succeeded", rec.status, H.encode(rec))
      check(rec.result.before, "req-2")
      check(rec.result.after, "req-2")
    end)
  end)
end)
