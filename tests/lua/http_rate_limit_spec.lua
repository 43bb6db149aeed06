-- Upstream rate limits (token bucket) on the virtual clock.
local testing = require "chorus.testing"
local chorus = require "chorus"
local http = require "chorus.http"

local calls = chorus.workflow {
  name = "calls",
  run = function(ctx, input)
    local at = {}
    for i = 1, input.n do
      local ok, res = pcall(function() return http.upstream("api"):get("/x") end)
      at[i] = ok and ctx.now() or res.kind
    end
    return at
  end,
}

describe("upstream rate limits", function()
  before_each(testing.reset)

  it("lets a burst through at once, then spaces calls at the rate", function()
    testing.mock("api", { status = 200 }, { rate_limit = { rate = 2, burst = 3, wait = 10 } })
    local r = testing.run(calls, { n = 6 }, { now = 0 })
    assert.are.same({ 0, 0, 0, 0.5, 1, 1.5 }, r.value)
  end)

  it("rejects with kind = rate_limited when the wait would pass its limit", function()
    testing.mock("api", { status = 200 }, { rate_limit = { rate = 1, burst = 1, wait = 0 } })
    local r = testing.run(calls, { n = 2 }, { now = 0 })
    assert.are.equal(0, r.value[1])
    assert.are.equal("rate_limited", r.value[2])
    assert.are.equal(1, #r.calls)
  end)
end)
