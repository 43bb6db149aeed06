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

  it("replays after a crash without resending the calls made after a hedged one", function()
    -- the hedged GET spawns its two attempts; the chorus.all after it must
    -- get the same task names on replay, or its recorded calls are not found
    testing.mock("api", { { status = 200, delay = 5 }, { status = 200, delay = 0.1 } }, HEDGE)
    testing.mock("other", { status = 201 })
    local wf = chorus.workflow { name = "hedge-then-all", run = function()
      local first = http.upstream("api"):get("/x").status
      local a, b = chorus.all(function() return http.upstream("other"):post("/a").status end,
        function() return http.upstream("other"):post("/b").status end)
      return { first, a, b }
    end }
    local r = testing.run(wf, {}, { crash_after = 3 })
    assert.is_true(r.ok, r.error and r.error.message)
    assert.is_true(r.crashed)
    assert.are.same({ 200, 201, 201 }, r.value)
    assert.are.equal(3, r.replayed)
    assert.are.equal(1, #testing.calls_to(r, "other", "POST", "/a"))
    assert.are.equal(1, #testing.calls_to(r, "other", "POST", "/b"))
  end)
end)
