-- Durable state through real processes: idempotency keys, runs resumed
-- after SIGKILL, durable sleep and polling, non-determinism detection, the
-- outbox's order and DLQ, locks, webhooks, and the runs/outbox/dlq commands.
local H = require "tests.integration.helpers"

local FIX = "tests/integration/fixtures/durable/"
local NAMES = { "charge.lua", "receipt.lua", "required.lua", "slow.lua", "branch.lua", "order.lua",
  "dead.lua", "locked.lua", "hook.lua", "rollback.lua", "odd.lua", "polled.lua" }

local function config_text(mock_url)
  return ([[
return {
  admin_token = "s3cret",
  webhook_secret = "whsec",
  egress = { allow = { "127.0.0.1" } }, -- the webhook test delivers to the mock
  outbox = { base = 0.05, cap = 0.2, poll = 0.02 },
  upstreams = { mock = { base_url = %q }, cards = { base_url = %q }, vault = { base_url = %q },
    mailer = { base_url = %q } },
}
]]):format(mock_url, mock_url .. "/cards?status=201&body=%7B%22id%22%3A%22ch_1%22%7D", mock_url .. "/vault",
    mock_url .. "/mailer")
end

local hmac = H.hmac_sha256

describe("durable state", function()
  local mock, dir, conf, data, srv

  local function start(env)
    srv = H.start_server({ "--config", conf, "--scripts", dir, "--data", data }, env)
  end

  local function post(path, body, headers)
    return H.request(srv.url .. path, { method = "POST", body = body, headers = headers })
  end

  local function run_record(id)
    return H.run_record(srv, id)
  end

  local function cli(...)
    local args = { ... }
    for i, a in ipairs(args) do
      args[i] = H.quote(a)
    end
    return H.exec(H.chorus .. " " .. table.concat(args, " ") .. " --data " .. H.quote(data))
  end

  local function lines(text)
    local out = {}
    for line in text:gmatch("[^\n]+") do
      out[#out + 1] = H.decode(line)
    end
    return out
  end

  setup(function()
    mock = H.start_mock(300)
    local files = {}
    for _, name in ipairs(NAMES) do
      files[name] = H.read(FIX .. name)
    end
    for _, name in ipairs({ "donation.lua", "tokenize_card.lua", "send_receipt.lua" }) do
      files[name] = H.read("examples/donation/" .. name) -- the example, unchanged
    end
    dir = H.temp_dir(files)
    conf = H.write_temp(config_text(mock.url))
    data = H.temp_dir()
    start()
  end)

  teardown(function() H.clean(srv, mock, dir, data, conf) end)

  before_each(function()
    mock.reset()
  end)

  describe("Idempotency-Key", function()
    it("replays the stored response of a finished run with Idempotent-Replayed: true", function()
      local first = post("/workflows/charge", '{"amount":5}', { ["Idempotency-Key"] = "k-replay" })
      assert.are.equal(201, first.status)
      assert.is_nil(first.headers["idempotent-replayed"])
      local again = post("/workflows/charge", '{"amount":5}', { ["Idempotency-Key"] = "k-replay" })
      assert.are.equal(201, again.status)
      assert.are.equal("true", again.headers["idempotent-replayed"])
      assert.are.equal(first.body, again.body)
      assert.are.equal(first.headers["x-run-id"], again.headers["x-run-id"])
      -- the workflow ran once: the mock saw one charge
      local charges = 0
      for _, e in ipairs(mock.stats().log) do
        charges = charges + (e.path == "/charge" and 1 or 0)
      end
      assert.are.equal(1, charges)
    end)

    it("accepts the key as an RFC 8941 string and as a bare token alike", function()
      local a = post("/workflows/charge", '{"amount":6}', { ["Idempotency-Key"] = '"k-quoted"' })
      local b = post("/workflows/charge", '{"amount":6}', { ["Idempotency-Key"] = "k-quoted" })
      assert.are.equal(201, a.status)
      assert.are.equal("true", b.headers["idempotent-replayed"])
    end)

    it("answers 409 while the first request with the key is in flight", function()
      local slow = H.request_async(srv.url .. "/workflows/charge", { method = "POST",
        body = '{"amount":7,"delay":800}', headers = { ["Idempotency-Key"] = "k-409" } })
      -- the first request's call is at the mock: it is in flight
      assert.is_truthy(H.eventually(function() return mock.stats().in_flight > 0 end, 5))
      local second = H.eventually(function()
        local r = post("/workflows/charge", '{"amount":7,"delay":800}', { ["Idempotency-Key"] = "k-409" })
        return r.status == 409 and r
      end, 5)
      assert.is_truthy(second, "no 409 while the first request was in flight")
      assert.are.equal("application/problem+json", second.headers["content-type"])
      assert.are.equal(201, slow.wait().status)
    end)

    it("answers 422 when the key comes back with a different body", function()
      assert.are.equal(201, post("/workflows/charge", '{"amount":8}', { ["Idempotency-Key"] = "k-422" }).status)
      local r = post("/workflows/charge", '{"amount":9}', { ["Idempotency-Key"] = "k-422" })
      assert.are.equal(422, r.status)
      assert.are.equal("application/problem+json", r.headers["content-type"])
    end)

    it("answers 400 when a workflow requires a key and none is given, and stores nothing", function()
      local r = post("/workflows/required", "{}")
      assert.are.equal(400, r.status)
      assert.matches("Idempotency%-Key", r.json.detail)
      local ok = post("/workflows/required", "{}", { ["Idempotency-Key"] = "k-required" })
      assert.are.equal(200, ok.status)
    end)

    it("answers 400 to a key over 255 characters or an unterminated quoted key", function()
      assert.are.equal(400, post("/workflows/charge", "{}", { ["Idempotency-Key"] = ("x"):rep(256) }).status)
      assert.are.equal(400, post("/workflows/charge", "{}", { ["Idempotency-Key"] = '"abc' }).status)
    end)

    it("stores a run whose error JSON cannot carry, and replays its 500 under the key", function()
      local r = post("/workflows/odd", "{}", { ["Idempotency-Key"] = "k-odd" })
      assert.are.equal(500, r.status)
      local rec = run_record(r.json.run_id)
      assert.are.equal("failed", rec.status)
      assert.are.equal("weird", rec.error.kind)
      local again = post("/workflows/odd", "{}", { ["Idempotency-Key"] = "k-odd" })
      assert.are.equal(500, again.status)
      assert.are.equal("true", again.headers["idempotent-replayed"])
    end)

    it("answers 400 to a number JSON cannot carry back out (1e400)", function()
      local r = post("/workflows/charge", '{"amount":1e400}', { ["Idempotency-Key"] = "k-inf" })
      assert.are.equal(400, r.status)
      assert.matches("out of range", r.json.detail)
      assert.are.equal(201, post("/workflows/charge", '{"amount":1}', { ["Idempotency-Key"] = "k-inf" }).status)
    end)

    it("forgets a key after the workflow's ttl: the same key runs again", function()
      local first = post("/workflows/charge", '{"amount":10}', { ["Idempotency-Key"] = "k-ttl" })
      H.sleep(1.2) -- charge.lua: idempotency.ttl = 1
      local again = post("/workflows/charge", '{"amount":10}', { ["Idempotency-Key"] = "k-ttl" })
      assert.are.equal(201, again.status)
      assert.is_nil(again.headers["idempotent-replayed"])
      assert.are_not.equal(first.headers["x-run-id"], again.headers["x-run-id"])
    end)
  end)

  describe("examples/donation, unchanged", function()
    it("charges at once, then tokenizes and sends the receipt through the outbox", function()
      local input = '{"amount":500,"card":"tok_visa","email":"ada@example.com"}'
      assert.are.equal(400, post("/workflows/donation", input).status) -- a key is required
      local r = post("/workflows/donation", input, { ["Idempotency-Key"] = "don-1" })
      assert.are.equal(201, r.status, r.body)
      assert.are.same({ id = "ch_1" }, r.json)
      local seen = H.eventually(function()
        local paths = {}
        for _, e in ipairs(mock.stats().log) do
          paths[e.path:match("^/(%a+)")] = e
        end
        return paths.vault and paths.mailer and paths
      end, 10)
      assert.is_truthy(seen, "the background work never arrived")
      assert.are.equal(r.headers["x-run-id"] .. ":charge", seen.cards.key)
      assert.are.equal("ada@example.com", H.decode(seen.mailer.body).to)
    end)
  end)

  describe("the outbox", function()
    it("delivers ctx.later work as a workflow run with its own idempotency key", function()
      post("/workflows/charge", '{"amount":11}', { ["Idempotency-Key"] = "k-later" })
      local receipt = H.eventually(function()
        for _, e in ipairs(mock.stats().log) do
          if e.path == "/receipt" and H.decode(e.body).amount == 11 then
            return e
          end
        end
      end, 5)
      assert.is_truthy(receipt, "the receipt workflow never ran")
      assert.are.same({ amount = 11 }, H.decode(receipt.body))
      assert.matches("^[%x%-]+:receipt$", receipt.key)
    end)

    it("delivers entries in order of due time, not of enqueueing", function()
      assert.are.equal(200, post("/workflows/order", "{}").status)
      local log = H.eventually(function()
        local seen = {}
        for _, e in ipairs(mock.stats().log) do
          local n = e.path:match("^/order/(%d)$")
          if n then
            seen[#seen + 1] = tonumber(n)
          end
        end
        return #seen == 3 and seen
      end, 5)
      assert.are.same({ 2, 3, 1 }, log)
    end)

    it("moves permanent failures at once and exhausted retries to the DLQ, with the last error", function()
      local r = post("/workflows/dead", "{}")
      assert.are.equal(200, r.status)
      local dead = H.eventually(function()
        local list = lines(cli("dlq", "list").stdout)
        local ids = {}
        for _, e in ipairs(list) do
          ids[e.id] = e
        end
        return ids[r.json.permanent] and ids[r.json.flaky] and ids
      end, 10)
      assert.is_truthy(dead, "the entries never reached the DLQ")
      local permanent, flaky = dead[r.json.permanent], dead[r.json.flaky]
      assert.are.equal(1, permanent.attempts)
      assert.are.equal(400, permanent.last_error.status)
      assert.are.equal(2, flaky.attempts)
      assert.are.equal(503, flaky.last_error.status)
      local admin = H.request(srv.url .. "/admin/dlq", { headers = { Authorization = "Bearer s3cret" } })
      assert.are.equal(200, admin.status)
      assert.is_true(admin.json.depth >= 2)

      -- replay through the CLI: back in the outbox, fails again, back to the DLQ
      local out = cli("dlq", "replay", r.json.permanent)
      assert.are.equal(0, out.code, out.stderr)
      local back = H.eventually(function()
        for _, e in ipairs(lines(cli("dlq", "list").stdout)) do
          if e.id == r.json.permanent and e.replayed == 1 then
            return e
          end
        end
      end, 10)
      assert.is_truthy(back, "the replayed entry was not delivered again")
      -- drop through the admin endpoint; a second drop is a 404
      local url = srv.url .. "/admin/dlq/" .. r.json.flaky
      local auth = { Authorization = "Bearer s3cret" }
      assert.are.equal(200, H.request(url, { method = "DELETE", headers = auth }).status)
      assert.are.equal(404, H.request(url, { method = "DELETE", headers = auth }).status)
      assert.are.equal(1, cli("dlq", "drop", "no-such-id").code)
      assert.are.equal(2, cli("dlq", "frobnicate").code)
    end)

    it("signs the run-end webhook to callback_url with HMAC-SHA256 of the body", function()
      local r = post("/workflows/hook?callback_url=" .. mock.url .. "/hook", '{"x":1}',
        { Prefer = "respond-async" })
      assert.are.equal(202, r.status)
      local hook = H.eventually(function()
        for _, e in ipairs(mock.stats().log) do
          if e.path == "/hook" then
            return e
          end
        end
      end, 5)
      assert.is_truthy(hook, "no webhook arrived")
      local body = H.decode(hook.body)
      assert.are.equal(r.json.run_id, body.run_id)
      assert.are.equal("succeeded", body.status)
      assert.are.same({ echoed = { x = 1 } }, body.result)
      assert.are.equal("sha256=" .. hmac("whsec", hook.body), hook.signature)
      assert.are.equal(400, post("/workflows/hook?callback_url=ftp://x", "{}").status)
    end)

    it("rolls a saga back through the outbox; the run's status is compensated", function()
      local r = post("/workflows/rollback", "{}")
      assert.are.equal(409, r.status)
      assert.are.same({ "reserve" }, r.json.rolled_back)
      assert.are.equal("compensated", run_record(r.headers["x-run-id"]).status)
      local undo = H.eventually(function()
        for _, e in ipairs(mock.stats().log) do
          if e.path == "/undo-reserve" then
            return e
          end
        end
      end, 5)
      assert.is_truthy(undo, "the compensation was never delivered")
      assert.are.equal(r.headers["x-run-id"] .. ":undo", undo.key)
    end)

    it("lists outbox entries with chorus outbox list", function()
      local out = cli("outbox", "list")
      assert.are.equal(0, out.code, out.stderr)
    end)
  end)

  describe("ctx.lock", function()
    it("never lets two runs for the same key interleave, and releases on error", function()
      local a = H.request_async(srv.url .. "/workflows/locked", { method = "POST", body = '{"buyer":1,"fail":true}' })
      local b = H.request_async(srv.url .. "/workflows/locked", { method = "POST", body = '{"buyer":1}' })
      local c = H.request_async(srv.url .. "/workflows/locked", { method = "POST", body = '{"buyer":1}' })
      local other = post("/workflows/locked", '{"buyer":2}')
      local ra, rb, rc = a.wait(), b.wait(), c.wait()
      assert.are.equal(500, ra.status)
      assert.are.equal(200, rb.status)
      assert.are.equal(200, rc.status)
      local x, y = rb.json, rc.json
      if x.t0 > y.t0 then
        x, y = y, x
      end
      assert.is_true(x.t1 <= y.t0, "two holders of buyer:1 overlapped")
      -- another key does not wait for buyer:1
      assert.are.equal(200, other.status)
    end)
  end)

  describe("after SIGKILL", function()
    it("resumes a sleeping run and sleeps only what is left of its timer", function()
      local r = post("/workflows/slow", '{"sleep":3}', { Prefer = "respond-async" })
      assert.are.equal(202, r.status)
      H.sleep(1)
      srv.kill("KILL")
      srv.wait()
      start()
      local rec = H.eventually(function()
        local rec = run_record(r.json.run_id)
        return rec and rec.status ~= "running" and rec
      end, 10)
      assert.is_truthy(rec, "the run did not finish after the restart")
      assert.are.equal("succeeded", rec.status)
      local slept = rec.result.after - rec.result.before
      assert.is_true(slept >= 2.95 and slept < 4.5, ("slept %.2f s for a 3 s timer"):format(slept))
      assert.are.equal(1, mock.stats().by_path["/after-sleep"])
    end)

    it("resumes ctx.poll without polling again what the journal has, nor waiting again", function()
      local r = post("/workflows/polled", "{}", { Prefer = "respond-async" })
      assert.are.equal(202, r.status)
      assert.is_truthy(H.eventually(function() return (mock.stats().by_path["/polled"] or 0) >= 2 end, 5))
      H.sleep(0.3) -- the second poll is journaled, its wait begun
      srv.kill("KILL")
      srv.wait()
      start()
      local rec = H.eventually(function()
        local rec = run_record(r.json.run_id)
        return rec and rec.status ~= "running" and rec
      end, 10)
      assert.is_truthy(rec, "the run did not finish after the restart")
      assert.are.equal("succeeded", rec.status)
      assert.are.equal(4, rec.result.polls)
      assert.are.equal(4, mock.stats().by_path["/polled"])
      local took = rec.result.after - rec.result.before
      assert.is_true(took >= 2.95 and took < 4.5, ("polled for %.2f s, 3 waits of 1 s"):format(took))
    end)

    it("gives a lock back to the run that held it at the crash, before any waiter", function()
      local async = { Prefer = "respond-async" }
      local a = post("/workflows/locked", '{"buyer":9,"delay":1500}', async)
      assert.is_truthy(H.eventually(function() return mock.stats().in_flight > 0 end, 5))
      local b = post("/workflows/locked", '{"buyer":9}', async)
      H.sleep(0.3) -- b is queued behind a, and both are on disk
      srv.kill("KILL")
      srv.wait()
      start()
      local function finished(id)
        return H.finished(srv, id, nil, 15)
      end
      local ra, rb = finished(a.json.run_id), finished(b.json.run_id)
      assert.are.equal("succeeded", ra.status)
      assert.are.equal("succeeded", rb.status)
      assert.is_true(ra.result.t1 <= rb.result.t0, "the waiter ran inside the holder's critical section")
    end)

    it("fails a replay that diverges from its journal with a non-determinism error", function()
      local r = post("/workflows/branch", "{}", { Prefer = "respond-async" })
      assert.are.equal(202, r.status)
      assert.is_truthy(H.eventually(function() return mock.stats().by_path["/branch-a"] end, 5))
      H.sleep(0.2) -- the journal entry of the call is committed
      srv.kill("KILL")
      srv.wait()
      start({ CHORUS_TEST_BRANCH = "b" })
      local rec = H.eventually(function()
        local rec = run_record(r.json.run_id)
        return rec and rec.status ~= "running" and rec
      end, 10)
      assert.is_truthy(rec)
      assert.are.equal("failed", rec.status)
      assert.are.equal("nondeterminism", rec.error.kind)
      assert.matches("step r#1", rec.error.message)
      assert.matches("/branch%-a", rec.error.message)
      -- chorus runs show reads the same record from the data folder
      local shown = cli("runs", "show", r.json.run_id)
      assert.are.equal(0, shown.code)
      assert.are.equal("failed", H.decode(shown.stdout).status)
      srv.stop()
      start()
    end)
  end)
end)
