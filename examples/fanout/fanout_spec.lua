-- Specs of the fan-out story: one event to the CRM and the marketing
-- platform at once; one API down must not stop the other.
local testing = require "chorus.testing"

local SCRIPT = testing.here "fanout.lua"
local EVENT = { type = "signup", email = "ada@example.com" }

describe("fanout", function()
  before_each(testing.reset)

  it("delivers the event to both APIs concurrently", function()
    testing.mock("crm", { status = 200, delay = 0.2 })
    testing.mock("marketing", { status = 202, delay = 0.3 })
    local r = testing.run(SCRIPT, EVENT)
    assert.is_true(r.ok)
    assert.are.equal(200, r.value.status)
    assert.are.same({ ok = true, status = 200 }, r.value.json.crm)
    assert.are.same({ ok = true, status = 202 }, r.value.json.marketing)
    -- concurrent: the run takes as long as the slowest call, not the sum
    assert.are.equal(0.3, r.elapsed)
    assert.called_upstream(r, "crm", "POST", "/events")
    assert.called_upstream(r, "marketing", "POST", "/events")
  end)

  it("sends the event as JSON with a per-target idempotency key", function()
    testing.mock("crm", { status = 200 })
    testing.mock("marketing", { status = 200 })
    local r = testing.run(SCRIPT, EVENT)
    local crm = testing.calls_to(r, "crm")[1]
    assert.are.same(EVENT, crm.json)
    assert.are.equal(r.run_id .. ":crm", crm.idempotency_key)
    assert.are.equal(r.run_id .. ":marketing", testing.calls_to(r, "marketing")[1].idempotency_key)
  end)

  it("answers 207 and still delivers to the CRM when marketing is down", function()
    testing.mock("crm", { status = 200 })
    testing.mock("marketing", { fault = "connect" })
    local r = testing.run(SCRIPT, EVENT)
    assert.are.equal(207, r.value.status)
    assert.is_true(r.value.json.crm.ok)
    assert.are.same({ ok = false, error = "connect" }, r.value.json.marketing)
  end)

  it("reports an API error status without failing the run", function()
    testing.mock("crm", { status = 503 })
    testing.mock("marketing", { status = 200 })
    local r = testing.run(SCRIPT, EVENT)
    assert.are.equal(207, r.value.status)
    assert.are.same({ ok = false, status = 503 }, r.value.json.crm)
  end)

  it("cuts off an API that never answers after its 5 s timeout", function()
    testing.mock("crm", { status = 200 })
    testing.mock("marketing", { fault = "timeout" })
    local r = testing.run(SCRIPT, EVENT)
    assert.are.same({ ok = false, error = "timeout" }, r.value.json.marketing)
    assert.are.equal(5, r.elapsed)
  end)

  it("answers 400 to an input that is not an event, calling nobody", function()
    local r = testing.run(SCRIPT, { nope = true })
    assert.are.equal(400, r.value.status)
    assert.are.equal(0, #r.calls)
  end)
end)
