-- A workflow's `redact` paths through a real server with its data folder:
-- the card number reaches the upstream and the caller's own answer (and its
-- idempotent replay), and nowhere chorus shows data: run records, GET
-- /runs/ID, outbox listings (HTTP and CLI), `chorus runs show`, log lines.
local H = require "tests.integration.helpers"

local CARD = "4242424242424242"

local PAY = [[
local chorus = require "chorus"
local http = require "chorus.http"
return chorus.workflow { name = "pay", redact = { "card.number" },
  run = function(ctx, input)
    local r = http.upstream("mock"):post("/charge", { json = { card = input.card, amount = input.amount } })
    ctx.later("receipt", { card = input.card, amount = input.amount }, { delay = 3600 })
    ctx.log.info("charged", { card = input.card })
    return { status = 201, json = { charged = r.status, card = input.card } }
  end }
]]

describe("redact", function()
  local mock, dir, conf, srv, data, run_id

  local ADMIN = { Authorization = "Bearer r3dact-admin" }

  setup(function()
    mock = H.start_mock(120)
    dir = H.temp_dir({ ["pay.lua"] = PAY })
    data = H.temp_dir()
    conf = H.write_temp(([[
return { admin_token = "r3dact-admin", upstreams = { mock = { base_url = %q } } }
]]):format(mock.url))
    srv = H.start_server({ "--config", conf, "--scripts", dir, "--data", data })
  end)

  teardown(function() H.clean(srv, mock, dir, data, conf) end)

  local function pay()
    return H.request(srv.url .. "/workflows/pay", { method = "POST", headers = { ["Idempotency-Key"] = "pay-1" },
      body = H.encode({ card = { number = CARD, exp = "12/30" }, amount = 5 }) })
  end

  it("the upstream and the caller get the real value, also on an idempotent replay", function()
    local r = pay()
    assert.are.equal(201, r.status, r.body)
    assert.are.equal(CARD, r.json.card.number)
    run_id = r.headers["x-run-id"]
    local again = pay()
    assert.are.equal("true", again.headers["idempotent-replayed"])
    assert.are.equal(CARD, again.json.card.number)
    local seen = false
    for _, e in ipairs(mock.stats().log) do
      seen = seen or (e.path == "/charge" and e.body:find(CARD, 1, true) ~= nil)
    end
    assert.is_true(seen, "the upstream got the card number")
  end)

  it("GET /runs/ID shows the record with the paths masked", function()
    local rec = H.request(srv.url .. "/runs/" .. run_id)
    assert.are.equal(200, rec.status)
    assert.is_nil(rec.body:find(CARD, 1, true), rec.body)
    assert.are.equal("[REDACTED]", rec.json.input.card.number)
    assert.are.equal("12/30", rec.json.input.card.exp)
    assert.are.equal("[REDACTED]", rec.json.result.json.card.number)
  end)

  it("the outbox listing masks the entry, which keeps the value to deliver", function()
    local r = H.request(srv.url .. "/admin/outbox", { headers = ADMIN })
    assert.are.equal(200, r.status)
    assert.is_nil(r.body:find(CARD, 1, true), r.body)
    assert.are.equal("[REDACTED]", r.json.entries[1].input.card.number)
  end)

  it("log lines carry no card number", function()
    local log = H.read(srv.log)
    assert.truthy(log:find('"msg":"charged"', 1, true), log)
    assert.is_nil(log:find(CARD, 1, true))
  end)

  it("the CLI listings of the data folder mask it too", function()
    srv.stop()
    srv = nil
    local show = H.chorus_run({ "runs", "show", run_id, "--data", data })
    assert.are.equal(0, show.code, show.stderr)
    assert.is_nil(show.stdout:find(CARD, 1, true), show.stdout)
    local list = H.chorus_run({ "outbox", "list", "--data", data })
    assert.are.equal(0, list.code, list.stderr)
    assert.truthy(list.stdout:find('"kind":"workflow"', 1, true), list.stdout)
    assert.is_nil(list.stdout:find(CARD, 1, true), list.stdout)
  end)
end)
