-- Upstream-level resilience: the retry policy and breaker of an upstream's
-- config apply to every call made through http.upstream(name).
local testing = require "chorus.testing"
local chorus = require "chorus"
local http = require "chorus.http"

local call = chorus.workflow {
  name = "call",
  run = function(ctx, input)
    local api = http.upstream("api")
    local ok, res = pcall(api.request, api, {
      method = input.method or "GET", path = "/x",
      idempotency_key = input.key and ctx.key("x") or nil,
    })
    return ok and { status = res.status } or { error = res.kind }
  end,
}

local RETRY = { retry = { attempts = 3, base = 1 } }

describe("upstream config", function()
  before_each(testing.reset)

  it("retries idempotent calls with the upstream's policy", function()
    testing.mock("api", { { status = 503 }, { status = 200 } }, RETRY)
    local r = testing.run(call, {})
    assert.are.equal(200, r.value.status)
    assert.are.equal(2, #r.calls)
  end)

  it("does not retry a POST without an idempotency key", function()
    testing.mock("api", { { status = 503 }, { status = 200 } }, RETRY)
    local r = testing.run(call, { method = "POST" })
    assert.are.equal(503, r.value.status)
    assert.are.equal(1, #r.calls)
  end)

  it("retries a POST that carries an idempotency key, with the same key", function()
    testing.mock("api", { { status = 503 }, { status = 201 } }, RETRY)
    local r = testing.run(call, { method = "POST", key = true })
    assert.are.equal(201, r.value.status)
    assert.are.equal(2, #r.calls)
    assert.are.equal(r.calls[1].idempotency_key, r.calls[2].idempotency_key)
  end)

  it("opens the upstream's breaker and then fails fast", function()
    testing.mock("api", { status = 500 }, { breaker = { window = 4, min_calls = 2, open_for = 60 } })
    testing.run(call, {})
    testing.run(call, {})
    local r = testing.run(call, {})
    assert.are.equal("breaker_open", r.value.error)
    assert.are.equal(0, #r.calls)
  end)
end)

describe("the upstream retry budget", function()
  before_each(testing.reset)

  it("stops retrying a failing upstream once retries pass the budget", function()
    -- budget 0.2 with the default floor of 10 retries/s over 10 s = 100 spare
    -- retries: 200 runs against a dead upstream with 3 attempts each would
    -- retry 400 times without a budget
    testing.mock("api", { status = 503 }, { retry = { attempts = 3, base = 0, cap = 0, budget = 0.2 } })
    local calls = 0
    for _ = 1, 200 do
      calls = calls + #testing.run(call, {}).calls
    end
    local retries = calls - 200
    assert.is_true(retries <= 0.2 * 200 + 100, ("%d retries"):format(retries))
    assert.is_true(retries < 400)
    assert.is_true(retries >= 100, ("%d retries: the floor allows 100"):format(retries))
  end)
end)
