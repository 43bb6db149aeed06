-- Hedged reads: a second attempt after `after` seconds, first answer wins.
local testing = require "chorus.testing"
local chorus = require "chorus"
local http = require "chorus.http"

local read = chorus.workflow {
  name = "read",
  run = function(_, input)
    return http.upstream("api"):request({ method = input.method or "GET", path = "/x" }).status
  end,
}

local HEDGE = { hedge = { after = 0.5 } }

describe("hedged upstream reads", function()
  before_each(testing.reset)

  it("answers from the hedge when the first attempt is slow, cancelling the first", function()
    testing.mock("api", { { status = 200, delay = 5 }, { status = 200, delay = 0.1 } }, HEDGE)
    local r = testing.run(read, {})
    assert.are.equal(200, r.value)
    assert.are.equal(2, #r.calls)
    assert.is_true(math.abs(r.elapsed - 0.6) < 1e-6)
  end)

  it("sends no hedge when the first attempt answers in time", function()
    testing.mock("api", { status = 200, delay = 0.1 }, HEDGE)
    local r = testing.run(read, {})
    assert.are.equal(1, #r.calls)
  end)

  it("never hedges a POST", function()
    testing.mock("api", { { status = 201, delay = 5 }, { status = 201 } }, HEDGE)
    local r = testing.run(read, { method = "POST" })
    assert.are.equal(1, #r.calls)
    assert.are.equal(5, r.elapsed)
  end)

  it("raises the first error when both attempts fail", function()
    testing.mock("api", { fault = "connect" }, HEDGE)
    local r = testing.run(read, {})
    assert.is_false(r.ok)
    assert.are.equal("connect", r.error.kind)
  end)
end)
