-- Durable events through a real server: POST /events/NAME/KEY (auth, bad
-- JSON, too big, redeliveries), an event kept before the wait, chorus.emit
-- from a webhook-receiver workflow, and a run killed with SIGKILL while it
-- waits that gets its event after the restart.
local H = require "tests.integration.helpers"

local WAITER = [[
local chorus = require "chorus"
return chorus.workflow { name = "waiter", timeout = 600, run = function(ctx, input)
  local ok, payload = pcall(ctx.event, "processed", { key = input.task, timeout = input.timeout or 300 })
  if not ok then
    return { error = payload.kind }
  end
  return { got = payload }
end }
]]

-- a provider's webhook: checks nothing here but picks the task id out of
-- the payload and emits; the provider's event id absorbs its redeliveries
local RECEIVER = [[
local chorus = require "chorus"
return chorus.workflow { name = "receiver", run = function(_, input)
  return { emitted = chorus.emit("processed", input.task_id, { id = input.event_id, category = input.category }) }
end }
]]

-- another workflow of the server, not in events.processed.emitters
local INTRUDER = [[
local chorus = require "chorus"
return chorus.workflow { name = "intruder", run = function(_, input)
  local ok, err = pcall(chorus.emit, "processed", input.task_id, { category = "forged" })
  return { ok = ok, kind = not ok and err.kind or nil, message = not ok and err.message or nil }
end }
]]

-- another workflow waiting on the same event and key, not in
-- events.processed.waiters: each event goes to one wait
local THIEF = [[
local chorus = require "chorus"
return chorus.workflow { name = "thief", run = function(ctx, input)
  local ok, got = pcall(ctx.event, "processed", { key = input.task, timeout = 1 })
  if ok then
    return { ok = true, got = got }
  end
  return { ok = false, kind = got.kind, message = got.message }
end }
]]

describe("durable events over HTTP", function()
  local dir, conf, data, srv

  local function start()
    srv = H.start_server({ "--config", conf, "--scripts", dir, "--data", data })
  end

  local function send(name, key, body, headers)
    return H.request(srv.url .. "/events/" .. name .. "/" .. key, { method = "POST", body = body,
      headers = headers or { Authorization = "Bearer ev-token" } })
  end

  local function start_wait(task, timeout)
    local r = H.request(srv.url .. "/workflows/waiter", { method = "POST",
      body = H.encode({ task = task, timeout = timeout }), headers = { Prefer = "respond-async" } })
    assert.equal(202, r.status, r.body)
    return r.json.run_id
  end

  local function finished(id)
    return H.finished(srv, id, nil, 15)
  end

  setup(function()
    dir = H.temp_dir({ ["waiter.lua"] = WAITER, ["receiver.lua"] = RECEIVER, ["intruder.lua"] = INTRUDER,
      ["thief.lua"] = THIEF })
    data = H.temp_dir()
    conf = H.write_temp([[
return { admin_token = "adm", limits = { max_body_bytes = 4096 },
  events = { ttl = 3600, processed = { auth = { token = "ev-token", hmac_secret = "ev-hmac" },
    emitters = { "receiver" }, waiters = { "waiter" } } } }
]])
    start()
  end)

  teardown(function() H.clean(srv, dir, data, conf) end)

  it("keeps an event for the run that waits on it, and hands it over", function()
    local id = start_wait("t-1")
    local r = send("processed", "t-1", H.encode({ category = "food" }))
    assert.equal(202, r.status, r.body)
    assert.is_true(r.json.kept)
    local rec = finished(id)
    assert.equal("succeeded", rec.status)
    assert.same({ got = { category = "food" } }, rec.result)
  end)

  it("keeps an event that arrives before anyone waits, for the first wait", function()
    local r = send("processed", "t-early", H.encode({ category = "rent" }))
    assert.equal(202, r.status, r.body)
    assert.same({ kept = true }, r.json)
    local rec = finished(start_wait("t-early"))
    assert.same({ got = { category = "rent" } }, rec.result)
    -- taken: a second wait on the same key gets nothing
    rec = finished(start_wait("t-early", 0.5))
    assert.same({ error = "timeout" }, rec.result)
  end)

  it("absorbs a redelivery with the same Idempotency-Key or id field", function()
    local first = send("processed", "t-dup", H.encode({ seq = 1 }), { Authorization = "Bearer ev-token",
      ["Idempotency-Key"] = "evt-7" })
    assert.equal(202, first.status, first.body)
    local again = send("processed", "t-dup", H.encode({ seq = 2 }), { Authorization = "Bearer ev-token",
      ["Idempotency-Key"] = "evt-7" })
    assert.equal(200, again.status, again.body)
    assert.same({ kept = false, duplicate = true, id = "evt-7" }, again.json)
    assert.equal(202, send("processed", "t-dup2", H.encode({ id = "evt-8" })).status)
    assert.equal(200, send("processed", "t-dup2", H.encode({ id = "evt-8" })).status)
    assert.same({ got = { seq = 1 } }, finished(start_wait("t-dup")).result)
    assert.same({ error = "timeout" }, finished(start_wait("t-dup", 0.5)).result)
  end)

  it("takes the admin token and a signed body, and refuses other callers", function()
    assert.equal(202, send("processed", "t-auth", "{}", { Authorization = "Bearer adm" }).status)
    local body = H.encode({ category = "x" })
    assert.equal(202, send("processed", "t-auth", body,
      { ["X-Chorus-Signature"] = "sha256=" .. H.hmac_sha256("ev-hmac", body) }).status)
    local bad_sig = send("processed", "t-auth", body,
      { ["X-Chorus-Signature"] = "sha256=" .. H.hmac_sha256("wrong", body) })
    assert.equal(401, bad_sig.status)
    assert.equal("application/problem+json", bad_sig.headers["content-type"])
    assert.equal(401, send("processed", "t-auth", "{}", { Authorization = "Bearer nope" }).status)
    assert.equal(401, send("processed", "t-auth", "{}", {}).status)
    -- a name without events.NAME.auth takes the admin token only
    assert.equal(401, send("other", "k", "{}").status)
    assert.equal(202, send("other", "k", "{}", { Authorization = "Bearer adm" }).status)
  end)

  it("answers bad JSON, a body too big and another method with problem+json", function()
    local bad = send("processed", "t-bad", "{not json")
    assert.equal(400, bad.status)
    assert.equal("application/problem+json", bad.headers["content-type"])
    assert.matches("not valid JSON", bad.json.detail)
    local big = send("processed", "t-bad", H.encode({ pad = ("x"):rep(8000) }))
    assert.equal(413, big.status)
    assert.equal("application/problem+json", big.headers["content-type"])
    local get = H.request(srv.url .. "/events/processed/t-bad", { headers = { Authorization = "Bearer ev-token" } })
    assert.equal(405, get.status)
    local two_keys = H.request(srv.url .. "/events/processed/t-bad", { method = "POST", body = "{}",
      headers = { Authorization = "Bearer ev-token", ["Idempotency-Key"] = '"unterminated' } })
    assert.equal(400, two_keys.status)
    -- nothing of these was kept
    assert.same({ error = "timeout" }, finished(start_wait("t-bad", 0.5)).result)
  end)

  it("delivers what a webhook-receiver workflow emits, once per provider event id", function()
    local id = start_wait("t-hook")
    local function hook()
      return H.request(srv.url .. "/workflows/receiver", { method = "POST",
        body = H.encode({ task_id = "t-hook", event_id = "prov-1", category = "fuel" }) })
    end
    local r = hook()
    assert.equal(200, r.status, r.body)
    assert.same({ emitted = "kept" }, r.json)
    assert.same({ emitted = "duplicate" }, hook().json)
    assert.same({ got = { id = "prov-1", category = "fuel" } }, finished(id).result)
  end)

  it("refuses chorus.emit of a protected event to a workflow events.NAME.emitters does not list", function()
    local id = start_wait("t-forged", 1)
    local r = H.request(srv.url .. "/workflows/intruder",
      { method = "POST", body = H.encode({ task_id = "t-forged" }) })
    assert.equal(200, r.status, r.body)
    assert.is_false(r.json.ok)
    assert.equal("forbidden", r.json.kind)
    assert.matches("events.processed.emitters", r.json.message, 1, true)
    assert.same({ error = "timeout" }, finished(id).result) -- nothing reached the waiter
  end)

  it("refuses ctx.event of a protected event to a workflow events.NAME.waiters does not list", function()
    assert.equal(202, send("processed", "t-stolen", H.encode({ category = "secret" })).status)
    local r = H.request(srv.url .. "/workflows/thief", { method = "POST", body = H.encode({ task = "t-stolen" }) })
    assert.equal(200, r.status, r.body)
    assert.is_false(r.json.ok, r.body)
    assert.equal("forbidden", r.json.kind)
    assert.matches("events.processed.waiters", r.json.message, 1, true)
    assert.same({ got = { category = "secret" } }, finished(start_wait("t-stolen")).result) -- still kept for it
  end)

  it("gives the event to a run killed with SIGKILL while it waited, after the restart", function()
    local id = start_wait("t-kill")
    H.sleep(0.3) -- parked in ctx.event
    srv.kill("KILL")
    srv.wait()
    start()
    local r = send("processed", "t-kill", H.encode({ category = "travel" }))
    assert.equal(202, r.status, r.body)
    local rec = finished(id)
    assert.equal("succeeded", rec.status)
    assert.same({ got = { category = "travel" } }, rec.result)
  end)

  it("hands two events to a resumed run and a later wait, in arrival order", function()
    local id = start_wait("t-down")
    H.sleep(0.3)
    srv.kill("KILL")
    srv.wait()
    -- the events may come before the resumed run reaches its wait again
    -- (recovery runs in the background) or after: either way each is taken once
    start()
    assert.equal(202, send("processed", "t-down", H.encode({ seq = 1 })).status)
    assert.equal(202, send("processed", "t-down", H.encode({ seq = 2 })).status)
    assert.same({ got = { seq = 1 } }, finished(id).result)
    assert.same({ got = { seq = 2 } }, finished(start_wait("t-down")).result)
  end)
end)

describe("durable events without a data folder", function()
  it("keeps events in memory (storage.durable = false)", function()
    local dir = H.temp_dir({ ["waiter.lua"] = WAITER })
    local conf = H.write_temp([[return { admin_token = "adm", storage = { durable = false } }]])
    local srv = H.start_server({ "--config", conf, "--scripts", dir })
    finally(function() H.clean(srv, dir, conf) end)
    local r = H.request(srv.url .. "/events/processed/m-1", { method = "POST", body = '{"category":"mem"}',
      headers = { Authorization = "Bearer adm" } })
    assert.equal(202, r.status, r.body)
    local run = H.request(srv.url .. "/workflows/waiter", { method = "POST", body = '{"task":"m-1","timeout":5}' })
    assert.equal(200, run.status, run.body)
    assert.same({ got = { category = "mem" } }, run.json)
  end)
end)

-- emits one event per key k1..kN, catching every error it can
local FLOODER = [[
local chorus = require "chorus"
return chorus.workflow { name = "flooder", run = function(_, input)
  local kept = 0
  for i = 1, input.n do
    if pcall(chorus.emit, "spam", "k" .. i, { i = i }) then
      kept = kept + 1
    end
  end
  return { kept = kept }
end }
]]

-- takes the event of key input.key
local TAKER = [[
local chorus = require "chorus"
return chorus.workflow { name = "taker", run = function(ctx, input)
  return ctx.event("spam", { key = input.key, timeout = 1 })
end }
]]

describe("the events a workflow keeps (limits.events_kept_per_workflow)", function()
  it("stops a flooding run with events_full, counts again after a restart, frees a place per event taken", function()
    local dir = H.temp_dir({ ["flooder.lua"] = FLOODER, ["taker.lua"] = TAKER })
    local data = H.temp_dir()
    local conf = H.write_temp([[return { admin_token = "adm", limits = { events_kept_per_workflow = 3 } }]])
    local srv
    finally(function() H.clean(srv, dir, data, conf) end)
    local function flood(n)
      return H.request(srv.url .. "/workflows/flooder", { method = "POST", body = ('{"n":%d}'):format(n) })
    end
    srv = H.start_server({ "--config", conf, "--scripts", dir, "--data", data })
    local r = flood(50)
    assert.equal(500, r.status, r.body)
    assert.equal("events_full", r.json.kind, H.request(srv.url .. "/runs/" .. r.json.run_id,
      { headers = { Authorization = "Bearer adm" } }).body)
    srv.stop()
    srv = H.start_server({ "--config", conf, "--scripts", dir, "--data", data })
    r = flood(1)
    assert.equal("events_full", r.json.kind, r.body) -- its 3 kept events were counted at start
    -- POST /events is no workflow's: still kept
    local posted = H.request(srv.url .. "/events/spam/posted", { method = "POST", body = "{}",
      headers = { Authorization = "Bearer adm" } })
    assert.equal(202, posted.status, posted.body)
    local took = H.request(srv.url .. "/workflows/taker", { method = "POST", body = '{"key":"k2"}' })
    assert.same({ i = 2 }, took.json)
    r = flood(1)
    assert.equal(200, r.status, r.body)
    assert.same({ kept = 1 }, r.json)
  end)
end)
