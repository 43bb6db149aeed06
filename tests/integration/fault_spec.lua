-- Fault injection through the real HTTP client and the mock upstream:
-- retries ride out 503s; a dead upstream opens the breaker, which then fails
-- fast without touching the network and closes again once the upstream heals.
local H = require "tests.integration.helpers"

local FIX = "tests/integration/fixtures/faults.lua"

local function run_with(mock, upstream, input)
  local conf = H.write_temp(("return { upstreams = { flaky = %s } }"):format(upstream:format(mock.url)))
  local r = H.chorus_run({ "run", FIX, "--config", conf, "--input", H.encode(input) }, nil, 60)
  os.remove(conf)
  return r
end

describe("faults against the mock upstream", function()
  local mock

  setup(function() mock = H.start_mock(120) end)
  teardown(function() mock.stop() end)
  before_each(function() mock.reset() end)

  it("succeeds through retries when half the answers are 503", function()
    local seq = ("503,200,"):rep(20) .. "200"
    local r = run_with(mock, '{ base_url = %q, retry = { attempts = 4, base = 0.01, cap = 0.05, budget = 0.5 } }',
      { n = 20, path = "/half?seq=" .. seq })
    assert.are.equal(0, r.code, r.stderr)
    for i, call in ipairs(H.decode(r.stdout)) do
      assert.are.equal(200, call.outcome, "call " .. i)
    end
    assert.are.equal(40, mock.stats().by_path["/half"])
  end)

  it("opens the breaker on a dead upstream, fails fast, and closes when it heals", function()
    -- 4 failures open it; calls 5-8 are rejected without a request; after
    -- open_for (0.3 s) the half-open probes get 200 and close it
    local seq = "500,500,500,500,200"
    local breaker = "{ window = 10, min_calls = 4, failure_rate = 50, open_for = 0.3, half_open_calls = 2 }"
    local r = run_with(mock, "{ base_url = %q, breaker = " .. breaker .. " }",
      { n = 11, path = "/dead?seq=" .. seq, pause_at = 9, pause = 0.4 })
    assert.are.equal(0, r.code, r.stderr)
    local out = H.decode(r.stdout)
    for i = 1, 4 do assert.are.equal(500, out[i].outcome) end
    for i = 5, 8 do
      assert.are.equal("breaker_open", out[i].outcome)
    end
    for i = 9, 11 do assert.are.equal(200, out[i].outcome) end
    -- fails fast: 4 failures + 3 calls after healing reached the network;
    -- the 4 rejected ones did not (the mock counts, not a clock)
    assert.are.equal(7, mock.stats().by_path["/dead"])
  end)

  it("keeps a healthy upstream fast while a slow one saturates its bulkhead", function()
    local conf = H.write_temp(([[
return { upstreams = {
  slow = { base_url = %q, bulkhead = { max = 2, queue = 0 } },
  healthy = { base_url = %q },
} }
]]):format(mock.url, mock.url))
    local r = H.chorus_run({ "run", "tests/integration/fixtures/bulkheads.lua", "--config", conf,
      "--input", '{"n":8}' }, nil, 60)
    os.remove(conf)
    assert.are.equal(0, r.code, r.stderr)
    local out = H.decode(r.stdout)
    local ok, full = 0, 0
    for _, v in ipairs(out.slow) do
      if v == 200 then ok = ok + 1 elseif v == "bulkhead_full" then full = full + 1 end
    end
    assert.are.equal(2, ok)
    assert.are.equal(6, full)
    assert.is_true(out.healthy_ms < 200, ("healthy call took %.1f ms"):format(out.healthy_ms))
    assert.are.equal(2, mock.stats().by_path["/slow"])
  end)
end)
