-- chorus.breaker on the real engine and the virtual clock: a dead upstream
-- opens the breaker after min_calls; open calls fail without a request;
-- after open_for a half-open probe closes it again when the upstream heals.
local testing = require "chorus.testing"
local chorus = require "chorus"
local breaker = require "chorus.breaker"
local http = require "chorus.http"

-- Calls the "cards" upstream n times through the breaker, one per second,
-- and reports each outcome: a status, or the error kind.
local probe = chorus.workflow {
  name = "probe",
  run = function(ctx, input)
    local b = breaker.new { name = "cards", window = 10, min_calls = 4, failure_rate = 50,
      open_for = 30, half_open_calls = 2 }
    local seen = {}
    for i = 1, input.n do
      local ok, res = pcall(b.call, b, function() return http.upstream("cards"):get("/health") end)
      seen[i] = ok and res.status or res.kind
      ctx.sleep(input.every or 1)
    end
    return { seen = seen, state = b:state() }
  end,
}

describe("chorus.breaker", function()
  before_each(testing.reset)

  it("opens after min_calls failures and then fails fast without a request", function()
    testing.mock("cards", { status = 503 })
    local r = testing.run(probe, { n = 6 })
    assert.is_true(r.ok)
    assert.are.same({ 503, 503, 503, 503, "breaker_open", "breaker_open" }, r.value.seen)
    assert.are.equal(4, #r.calls)
    assert.are.equal("open", r.value.state)
  end)

  it("stays closed below min_calls even when every call fails", function()
    testing.mock("cards", { status = 500 })
    local r = testing.run(probe, { n = 3 })
    assert.are.equal("closed", r.value.state)
    assert.are.equal(3, #r.calls)
  end)

  it("goes half-open after open_for and closes when the probes succeed", function()
    local responses = {}
    for i = 1, 4 do responses[i] = { status = 503 } end
    responses[5] = { status = 200 }
    testing.mock("cards", responses)
    -- 4 failures open it at t=3; every 20 s: t=20 (open), t=40 and t=60 probe (half-open)
    local r = testing.run(probe, { n = 7, every = 20 })
    assert.are.same({ 503, 503, 503, 503, "breaker_open", 200, 200 }, r.value.seen)
    assert.are.equal("closed", r.value.state)
  end)

  it("counts 5xx, 408 and 429 responses as failures, 4xx as successes", function()
    testing.mock("cards", { status = 404 })
    local r = testing.run(probe, { n = 6 })
    assert.are.equal("closed", r.value.state)
    assert.are.equal(6, #r.calls)
  end)

  it("is shared by name across runs", function()
    testing.mock("cards", { status = 503 })
    testing.run(probe, { n = 4 })
    local r = testing.run(probe, { n = 1 })
    assert.are.same({ "breaker_open" }, r.value.seen)
    assert.are.equal(0, #r.calls)
  end)

  it("rejects unknown options and bad values, naming them", function()
    assert.has_error(function() breaker.new { name = "x", windw = 3 } end,
      "breaker.new: unknown option 'windw'")
    local ok, err = pcall(breaker.new, { name = "y", failure_rate = 150 })
    assert.is_false(ok)
    assert.truthy(tostring(err):find("failure_rate", 1, true))
  end)

  describe("made by a workflow script", function()
    local script = require "chorus.script"
    local core = require "chorus.core"

    -- A script whose breaker is called "cards", like the upstream's; it
    -- records failures on it without any call (fn raises).
    local function tripper(name)
      return assert(script.compile(([[
local chorus = require "chorus"
local breaker = require "chorus.breaker"
local b = breaker.new { name = "cards", window = 4, min_calls = 2, failure_rate = 50, open_for = 60 }
return chorus.workflow { name = %q, run = function()
  for _ = 1, 4 do pcall(b.call, b, function() error("boom") end) end
  return b:state()
end }]]):format(name), name .. ".lua"))
    end

    it("is its workflow's own: it cannot open the upstream's breaker nor another workflow's", function()
      testing.mock("cards", { status = 200 }, { breaker = { window = 4, min_calls = 2, failure_rate = 50 } })
      local r = testing.run(tripper("tripper"))
      assert.are.equal("open", r.value)
      local states = core.breakers()
      assert.are.equal("open", states["tripper/cards"])
      assert.is_nil(states["other/cards"])
      -- the upstream's breaker (the operator's config) still lets calls through
      local call = testing.run(chorus.workflow { name = "payer", run = function()
        return http.upstream("cards"):get("/x").status
      end })
      assert.are.equal(200, call.value)
      assert.are.equal("closed", core.breakers().cards)
      -- another workflow's breaker of the same name is untouched
      local other = testing.run(tripper("other"))
      assert.are.equal("open", other.value)
      assert.are.equal(1, #testing.calls_to(call, "cards"))
    end)

    -- the process's room for breakers (10,000, the upstreams' too) was
    -- everyone's: one workflow making 10,000 names left every other without
    -- breakers, and its upstream calls failing
    it("makes at most breaker.PER_WORKFLOW names per workflow; the others still get theirs", function()
      breaker.PER_WORKFLOW = 50
      finally(function() breaker.PER_WORKFLOW = 1000 end)
      testing.mock("cards", { status = 200 }, { breaker = { window = 4, min_calls = 2, failure_rate = 50 } })
      local hog = assert(script.compile([[
local chorus = require "chorus"
local breaker = require "chorus.breaker"
return chorus.workflow { name = "hog", run = function(_, input)
  for i = input.from, input.to do breaker.new({ name = "b" .. i }):call(function() end) end
  return "made"
end }]], "hog.lua"))
      assert.is_true(testing.run(hog, { from = 1, to = 50 }).ok)
      assert.is_true(testing.run(hog, { from = 1, to = 50 }).ok) -- the same names again
      local r = testing.run(hog, { from = 51, to = 51 })
      assert.is_false(r.ok)
      local message = type(r.error) == "table" and r.error.message or tostring(r.error)
      assert.matches("workflow 'hog' has made 50 breakers", message, 1, true)
      assert.matches("hog.lua:4:", message, 1, true) -- the script's line
      local other = testing.run(tripper("other"))
      assert.are.equal("open", other.value)
      local call = testing.run(chorus.workflow { name = "payer", run = function()
        return http.upstream("cards"):get("/x").status
      end })
      assert.are.equal(200, call.value)
    end)

    it("checks its options when the script loads", function()
      local wf, err = script.compile([[
local breaker = require "chorus.breaker"
local b = breaker.new { name = "y", failure_rate = 150 }]], "bad.lua")
      assert.is_nil(wf)
      assert.matches("failure_rate", err, 1, true)
    end)
  end)
end)

describe("named objects", function()
  before_each(testing.reset)
  after_each(testing.reset)

  it("refuses a breaker past 10,000 in a process: names made per run cannot grow it without bound", function()
    -- a script making a breaker of a new name on every run (or every call)
    local wf = chorus.workflow { name = "churn", run = function(_, input)
      for i = input.from, input.to do
        breaker.new { name = "b" .. i }:call(function() return true end)
      end
      return "made"
    end }
    local r = testing.run(wf, { from = 1, to = 10000 })
    assert.is_true(r.ok, r.error and r.error.message)
    r = testing.run(wf, { from = 10001, to = 10001 })
    assert.is_false(r.ok)
    local message = type(r.error) == "table" and r.error.message or tostring(r.error)
    assert.matches("chorus.breakers: at most 10000 exist in a process; 'b10001' was not made", message, 1, true)
    -- the ones made still work, and the admin listing still reads
    r = testing.run(wf, { from = 1, to = 3 })
    assert.is_true(r.ok, r.error and r.error.message)
    assert.are.equal("closed", require("chorus.core").breakers()["b2"])
  end)
end)
