-- chorus.retry on the real engine and the virtual clock.
local core = require "chorus.core"
local testing = require "chorus.testing"
local chorus = require "chorus"
local retry = require "chorus.retry"
local http = require "chorus.http"

local fetch = chorus.workflow {
  name = "fetch",
  run = function(_, input)
    local res = retry.run(input.policy, function() return http.upstream("api"):get("/thing") end)
    return { status = res.status }
  end,
}

describe("chorus.retry", function()
  before_each(testing.reset)

  it("retries 503s with exponential backoff until a 200", function()
    testing.mock("api", { { status = 503 }, { status = 503 }, { status = 200 } })
    local r = testing.run(fetch, { policy = { attempts = 5, base = 1, cap = 60 } })
    assert.are.equal(200, r.value.status)
    assert.are.equal(3, #r.calls)
    assert.are.equal(3, r.elapsed) -- 1 + 2 seconds of backoff
  end)

  it("returns the last response when the attempts run out", function()
    testing.mock("api", { status = 503 })
    local r = testing.run(fetch, { policy = { attempts = 3, base = 1 } })
    assert.are.equal(503, r.value.status)
    assert.are.equal(3, #r.calls)
  end)

  it("does not retry a 4xx other than 408, 425 and 429", function()
    testing.mock("api", { status = 404 })
    local r = testing.run(fetch, { policy = { attempts = 5 } })
    assert.are.equal(404, r.value.status)
    assert.are.equal(1, #r.calls)
  end)

  it("honours Retry-After over a shorter backoff", function()
    testing.mock("api", { { status = 429, headers = { ["Retry-After"] = "7" } }, { status = 200 } })
    local r = testing.run(fetch, { policy = { attempts = 3, base = 1 } })
    assert.are.equal(200, r.value.status)
    assert.are.equal(7, r.elapsed)
  end)

  it("retries transport errors and raises the last one with its attempt count", function()
    testing.mock("api", { fault = "connect" })
    local r = testing.run(fetch, { policy = { attempts = 4, base = 0.5 } })
    assert.is_false(r.ok)
    assert.are.equal("connect", r.error.kind)
    assert.are.equal(4, r.error.attempts)
    assert.are.equal(4, #r.calls)
  end)

  it("stops at max_elapsed", function()
    testing.mock("api", { status = 500 })
    local r = testing.run(fetch, { policy = { attempts = 100, base = 1, cap = 1, max_elapsed = 5 } })
    assert.are.equal(500, r.value.status)
    assert.is_true(r.elapsed <= 5)
  end)

  it("offers the engine's backoff alone as core.retry_delay, equal jitter included", function()
    local p = { backoff = "equal_jitter", base = 1, cap = 300 }
    local seed = 7
    for _ = 1, 100 do
      local d
      d, seed = core.retry_delay(p, 4, 0, seed)
      assert.is_true(d >= 4 and d < 8, tostring(d))
    end
    assert.are.equal(8, (core.retry_delay({ backoff = "exponential", base = 1, cap = 300 }, 4)))
    local d1 = core.retry_delay(p, 4, 0, 42)
    assert.are.equal(d1, (core.retry_delay(p, 4, 0, 42))) -- the same seed, the same wait
    assert.are.equal("equal_jitter", retry.policy({ backoff = "equal_jitter" }).backoff)
  end)

  it("rejects bad policies, naming the field", function()
    assert.has_error(function() retry.policy { attempts = 3, backof = "x" } end,
      "retry.policy: unknown option 'backof'")
    local ok, err = pcall(retry.policy, { backoff = "linear" })
    assert.is_false(ok)
    assert.truthy(tostring(err):find("backoff must be", 1, true))
    ok, err = pcall(retry.policy, { attempts = 0 })
    assert.is_false(ok)
    assert.truthy(tostring(err):find("attempts", 1, true))
  end)
end)
