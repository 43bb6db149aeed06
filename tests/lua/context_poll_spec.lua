-- ctx.poll: calls fn until it returns a value, waiting `every` seconds or as
-- a backoff policy says, within its timeout and the run's deadline; its
-- waits are journaled, so a replay neither waits nor polls again.
local testing = require "chorus.testing"
local chorus = require "chorus"
local http = require "chorus.http"
local retry = require "chorus.retry"

-- A job that is "running" for `running` polls, then "done".
local function job(running)
  local seq = {}
  for i = 1, running do
    seq[i] = { status = 200, json = { state = "running" } }
  end
  seq[running + 1] = { status = 200, json = { state = "done", result = 42 } }
  testing.mock("jobs", seq)
end

local function check_job()
  local r = http.upstream("jobs"):get("/jobs/1")
  return r.json.state == "done" and r.json.result or nil
end

-- A workflow polling the job with opts; its value is { value, polls }.
local function poller(opts, timeout, on_timeout)
  return chorus.workflow { name = "poller", timeout = timeout, on_timeout = on_timeout, run = function(ctx)
    local value, polls = ctx.poll(check_job, opts)
    return { value = value, polls = polls }
  end }
end

-- The start times of the calls to the job, relative to the first.
local function call_times(r)
  local times, first = {}, nil
  for _, e in ipairs(r.timeline) do
    if e.target == "jobs" then
      first = first or e.start
      times[#times + 1] = e.start - first
    end
  end
  return times
end

describe("ctx.poll", function()
  before_each(testing.reset)

  it("returns the first non-nil value and the polls it took, waiting every seconds in between", function()
    job(2)
    local r = testing.run(poller { every = 5 })
    assert.is_true(r.ok, r.error and r.error.message)
    assert.are.same({ value = 42, polls = 3 }, r.value)
    assert.are.equal(3, #r.calls)
    assert.are.same({ 0, 5, 10 }, call_times(r))
    assert.are.equal(10, r.elapsed)
  end)

  it("waits every seconds after each poll ends (a fixed delay, not a fixed rate)", function()
    testing.mock("jobs", { { status = 200, delay = 2, json = { state = "running" } },
      { status = 200, delay = 2, json = { state = "done", result = 1 } } })
    local r = testing.run(poller { every = 5 })
    assert.are.same({ 0, 7 }, call_times(r))
    assert.are.equal(9, r.elapsed)
  end)

  it("returns at once when the first poll has a value, without waiting", function()
    job(0)
    local r = testing.run(poller { every = 5, timeout = 60 })
    assert.are.same({ value = 42, polls = 1 }, r.value)
    assert.are.equal(0, r.elapsed)
  end)

  it("takes false as a value: only nil means not yet", function()
    local r = testing.run(chorus.workflow { name = "falsy", run = function(ctx)
      return { ctx.poll(function(n) if n == 2 then return false end end, { every = 1 }) }
    end })
    assert.are.same({ false, 2 }, r.value)
  end)

  it("passes fn the number of the poll", function()
    local r = testing.run(chorus.workflow { name = "numbered", run = function(ctx)
      local seen = {}
      ctx.poll(function(n)
        seen[#seen + 1] = n
        if n == 3 then return true end
      end, { every = 1 })
      return seen
    end })
    assert.are.same({ 1, 2, 3 }, r.value)
  end)

  it("grows its waits as a backoff policy says, up to its cap", function()
    job(4)
    local policy = retry.policy { attempts = 10, backoff = "exponential", base = 1, cap = 4 }
    local r = testing.run(poller { backoff = policy })
    assert.are.same({ value = 42, polls = 5 }, r.value)
    assert.are.same({ 0, 1, 3, 7, 11 }, call_times(r)) -- waits 1, 2, 4, 4
  end)

  it("takes the backoff policy's options as a plain table too", function()
    job(2)
    local r = testing.run(poller { backoff = { attempts = 5, base = 2, cap = 10 } })
    assert.are.same({ 0, 2, 6 }, call_times(r))
  end)

  it("stops after the backoff policy's attempts polls with kind timeout", function()
    job(10)
    local r = testing.run(poller { backoff = retry.policy { attempts = 3, base = 1, cap = 1 } })
    assert.is_false(r.ok)
    assert.are.equal("timeout", r.error.kind)
    assert.are.equal(3, r.error.polls)
    assert.matches("no value after 3 polls %(the backoff policy's attempts = 3%)", r.error.message)
    assert.are.equal(3, #r.calls)
  end)

  it("stops when the next wait would pass the policy's max_elapsed", function()
    job(10)
    local r = testing.run(poller { backoff = { attempts = 100, base = 4, cap = 4, max_elapsed = 10 } })
    assert.are.equal("timeout", r.error.kind)
    assert.matches("max_elapsed = 10 s", r.error.message)
    assert.are.same({ 0, 4, 8 }, call_times(r))
  end)

  it("raises kind timeout as soon as the next poll would come after its timeout", function()
    job(10)
    local r = testing.run(poller { every = 10, timeout = 25 })
    assert.is_false(r.ok)
    assert.are.equal("timeout", r.error.kind)
    assert.are.equal(3, r.error.polls)
    assert.matches("ctx.poll: no value after 3 polls %(timeout = 25 s%)", r.error.message)
    assert.are.equal(3, #r.calls)
    assert.are.equal(20, r.elapsed) -- not 25: no poll could come in the last 5 s
  end)

  it("still polls when the next poll falls exactly on its timeout", function()
    job(3)
    local r = testing.run(poller { every = 10, timeout = 30 })
    assert.are.same({ value = 42, polls = 4 }, r.value)
    assert.are.equal(30, r.elapsed)
  end)

  it("lets the script catch its timeout like any error", function()
    job(10)
    local r = testing.run(chorus.workflow { name = "caught", run = function(ctx)
      local ok, err = pcall(ctx.poll, check_job, { every = 1, timeout = 2 })
      return { ok = ok, kind = err.kind, polls = err.polls }
    end })
    assert.are.same({ ok = false, kind = "timeout", polls = 3 }, r.value)
  end)

  it("raises the errors of fn as they are", function()
    testing.mock("jobs", { { status = 200, json = { state = "running" } }, { fault = "connect" } })
    local r = testing.run(poller { every = 1 })
    assert.are.equal("connect", r.error.kind)
    assert.are.equal(2, #r.calls)
  end)

  it("is bounded by the run's deadline: the run ends timed out at the deadline, not at the next poll", function()
    job(10)
    local r = testing.run(poller({ every = 2 }, 5, function() return { cleaned = true } end))
    assert.is_false(r.ok)
    assert.are.equal("deadline", r.error.kind)
    assert.matches("ctx.poll's wait before poll 4", r.error.message)
    assert.are.equal(5, r.elapsed)
    assert.are.equal(3, #r.calls)
    assert.are.same({ ok = true, value = { cleaned = true } }, r.on_timeout)
  end)

  it("cannot have its deadline caught by the script", function()
    job(10)
    local r = testing.run(chorus.workflow { name = "swallow", timeout = 5, run = function(ctx)
      pcall(ctx.poll, check_job, { every = 2 })
      return "caught"
    end })
    assert.are.equal("deadline", r.error.kind)
  end)

  describe("after a crash", function()
    it("replays the polls already journaled without calling the upstream again", function()
      job(2)
      -- effects: poll start, GET, wait 1, GET (crash), wait 2, GET
      local r = testing.run(poller { every = 5, timeout = 60 }, nil, { crash_after = 4 })
      assert.is_true(r.crashed)
      assert.are.equal(4, r.replayed)
      assert.is_true(r.ok, r.error and r.error.message)
      assert.are.same({ value = 42, polls = 3 }, r.value)
      assert.are.equal(3, #r.calls)
      assert.are.equal(10, r.elapsed)
    end)

    it("goes on with a wait journaled just before the crash", function()
      job(2)
      local r = testing.run(poller { every = 5 }, nil, { crash_after = 3 }) -- right after wait 1 was journaled
      assert.is_true(r.crashed)
      assert.are.same({ value = 42, polls = 3 }, r.value)
      assert.are.equal(3, #r.calls)
      assert.are.same({ 0, 5, 10 }, call_times(r))
      assert.are.equal(10, r.elapsed)
    end)

    it("counts its timeout from the first execution's start", function()
      job(10)
      local r = testing.run(poller { every = 10, timeout = 25 }, nil, { crash_after = { 4, 6 } })
      assert.is_true(r.crashed)
      assert.are.equal("timeout", r.error.kind)
      assert.are.equal(3, r.error.polls)
      assert.are.equal(3, #r.calls)
    end)

    it("keeps a backoff's waits as journaled", function()
      job(3)
      local r = testing.run(poller { backoff = { attempts = 10, backoff = "full_jitter", base = 1, cap = 8 } },
        nil, { crash_after = 5 })
      assert.is_true(r.crashed)
      assert.are.same({ value = 42, polls = 4 }, r.value)
      assert.are.equal(4, #r.calls)
    end)
  end)

  describe("refuses bad arguments, naming the option", function()
    local cases = {
      { "a missing fn", nil, { every = 1 }, "fn must be a function" },
      { "missing options", check_job, nil, "opts must be a table" },
      { "neither every nor backoff", check_job, { timeout = 5 }, "give one of every = seconds or backoff" },
      { "both every and backoff", check_job, { every = 1, backoff = { attempts = 2 } }, "give one of every" },
      { "every = 0", check_job, { every = 0 }, "every must be a positive, finite number of seconds" },
      { "a negative every", check_job, { every = -1 }, "every must be a positive" },
      { "an infinite every", check_job, { every = math.huge }, "every must be a positive, finite" },
      { "every as a string", check_job, { every = "5" }, "every must be a positive" },
      { "timeout = 0", check_job, { every = 1, timeout = 0 }, "timeout must be a positive number of seconds" },
      { "a NaN timeout", check_job, { every = 1, timeout = 0 / 0 }, "timeout must be a positive" },
      { "an unknown option", check_job, { every = 1, interval = 5 }, "unknown option 'interval'" },
      { "backoff as a string", check_job, { backoff = "exponential" }, "backoff must be a retry.policy" },
      { "a bad policy option", check_job, { backoff = { tries = 3 } },
        "ctx.poll: backoff: retry.policy: unknown option 'tries'" },
      { "a bad policy value", check_job, { backoff = { attempts = 0 } },
        "ctx.poll: backoff: retry.policy: attempts must be >= 1" },
    }
    for _, case in ipairs(cases) do
      local what, fn, opts, message = case[1], case[2], case[3], case[4]
      it(what, function()
        job(0)
        local r = testing.run(chorus.workflow { name = "bad", run = function(ctx)
          local value = ctx.poll(fn, opts)
          return value
        end })
        assert.is_false(r.ok)
        assert.matches(message, r.error, 1, true)
        assert.are.equal(0, #r.calls)
      end)
    end

    it("with the script's line in the message", function()
      local r = testing.run(chorus.workflow { name = "where", run = function(ctx)
        local value = ctx.poll(check_job, {})
        return value
      end })
      assert.matches("context_poll_spec.lua:%d+: ctx.poll: give one of", r.error)
    end)
  end)
end)
