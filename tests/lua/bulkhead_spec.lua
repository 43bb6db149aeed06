-- Upstream bulkheads on the virtual clock: a slow API saturating its own
-- bulkhead rejects or queues its excess calls and never delays the calls
-- to another, healthy API.
local testing = require "chorus.testing"
local chorus = require "chorus"
local http = require "chorus.http"

-- n concurrent calls to "slow" and, in the middle of them, one to "healthy".
local burst = chorus.workflow {
  name = "burst",
  run = function(ctx, input)
    local fns = {}
    for i = 1, input.n do
      fns[i] = function()
        local ok, res = pcall(function() return http.upstream("slow"):get("/x") end)
        return ok and res.status or res.kind
      end
    end
    fns[#fns + 1] = function()
      local t0 = ctx.now()
      http.upstream("healthy"):get("/y")
      return ctx.now() - t0
    end
    return { chorus.all(table.unpack(fns)) }
  end,
}

local function count(list, value)
  local n = 0
  for _, v in ipairs(list) do
    if v == value then n = n + 1 end
  end
  return n
end

describe("upstream bulkheads", function()
  before_each(testing.reset)

  it("rejects calls beyond max + queue at once, and keeps the healthy API fast", function()
    testing.mock("slow", { status = 200, delay = 5 }, { bulkhead = { max = 2, queue = 0 } })
    testing.mock("healthy", { status = 200, delay = 0.01 })
    local r = testing.run(burst, { n = 6 })
    local out = r.value
    assert.are.equal(2, count(out, 200))
    assert.are.equal(4, count(out, "bulkhead_full"))
    assert.is_true(math.abs(out[#out] - 0.01) < 1e-6) -- the healthy call is not delayed
    assert.are.equal(5, r.elapsed)
    assert.are.equal(3, #r.calls)                -- 2 slow + 1 healthy reached the network
  end)

  it("queues callers FIFO and hands over slots as calls end", function()
    testing.mock("slow", { status = 200, delay = 5 }, { bulkhead = { max = 2, queue = 2, wait = 60 } })
    testing.mock("healthy", { status = 200 })
    local r = testing.run(burst, { n = 4 })
    assert.are.equal(4, count(r.value, 200))
    assert.are.equal(10, r.elapsed)              -- two waves of two 5 s calls
  end)

  it("gives up on a queued call after its wait", function()
    testing.mock("slow", { status = 200, delay = 5 }, { bulkhead = { max = 1, queue = 5, wait = 2 } })
    testing.mock("healthy", { status = 200 })
    local r = testing.run(burst, { n = 3 })
    assert.are.equal(1, count(r.value, 200))
    assert.are.equal(2, count(r.value, "bulkhead_full"))
  end)
end)
