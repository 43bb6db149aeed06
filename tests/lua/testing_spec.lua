-- Specs of chorus.testing itself: mocks, the virtual clock, the run helper.
local testing = require "chorus.testing"
local system = require "system"

local BACKOFF = testing.here "fixtures/backoff.lua"

describe("chorus.testing", function()
  before_each(testing.reset)

  it("runs a workflow with a 10-minute backoff in well under a second", function()
    local responses = {}
    for i = 1, 10 do responses[i] = { status = 503 } end
    responses[11] = { status = 200 }
    testing.mock("flaky", responses)
    local t0 = system.monotime()
    local r = testing.run(BACKOFF)
    local wall = system.monotime() - t0
    assert.is_true(r.ok)
    assert.are.equal(11, r.value.attempts)
    assert.are.equal(600, r.elapsed)
    assert.are.equal(11, #r.calls)
    assert.is_true(wall < 1, ("took %.3f s of real time"):format(wall))
  end)

  it("answers with a handler function of the request", function()
    testing.mock("flaky", function(req)
      return { status = req.path == "/status" and 200 or 404, json = { seen = req.method } }
    end)
    local r = testing.run(BACKOFF)
    assert.are.equal(1, r.value.attempts)
    assert.called_upstream(r, "flaky", "GET", "/status")
  end)

  it("applies delays on the virtual clock and times out past the call's timeout", function()
    testing.mock("flaky", { { status = 200, delay = 7 } })
    local r = testing.run(BACKOFF)
    assert.is_false(r.ok)
    assert.are.equal("timeout", r.error.kind)
    assert.are.equal(5, r.elapsed)
  end)

  it("honours max_response_bytes for a mocked body", function()
    local chorus = require "chorus"
    local http = require "chorus.http"
    testing.mock("http://big.example.test", { status = 200, body = string.rep("x", 2000) })
    local r = testing.run(chorus.workflow { name = "bigmock", run = function()
      local ok, err = pcall(http.get, "http://big.example.test/x", { max_response_bytes = 1000 })
      return { ok = ok, kind = err.kind, bytes = #http.get("http://big.example.test/x").body }
    end })
    assert.is_true(r.ok)
    assert.are.same({ ok = false, kind = "too_large", bytes = 2000 }, r.value)
  end)

  it("fails a call to an upstream nobody mocked, naming it", function()
    local r = testing.run(BACKOFF)
    assert.is_false(r.ok)
    assert.are.equal("unknown_upstream", r.error.kind)
    assert.truthy(r.error.message:find("unknown upstream 'flaky'", 1, true))
  end)

  it("raises a { kind = ... } error table for an upstream nobody mocked, saying how to mock it", function()
    local chorus = require "chorus"
    local http = require "chorus.http"
    local r = testing.run(chorus.workflow { name = "nomock", run = function()
      local ok, err = pcall(function() return http.upstream("ghost"):get("/x") end)
      return { ok = ok, type = type(err), kind = err.kind, upstream = err.upstream, message = err.message }
    end })
    assert.is_true(r.ok)
    assert.are.equal(false, r.value.ok)
    assert.are.equal("table", r.value.type)
    assert.are.equal("unknown_upstream", r.value.kind)
    assert.are.equal("ghost", r.value.upstream)
    assert.truthy(r.value.message:find('testing.mock("ghost"', 1, true), r.value.message)
  end)

  it("fails a call to a URL nobody mocked, saying how to mock it", function()
    local chorus = require "chorus"
    local http = require "chorus.http"
    local r = testing.run(chorus.workflow { name = "nomock", run = function()
      return http.get("http://nowhere.test/x")
    end })
    assert.is_false(r.ok)
    assert.are.equal("connect", r.error.kind)
    assert.truthy(r.error.message:find("declare it with testing.mock", 1, true))
  end)

  it("mocks by base URL as well as by upstream name", function()
    testing.mock("http://api.example.test", { status = 201, json = { id = 7 } })
    local chorus = require "chorus"
    local http = require "chorus.http"
    local wf = chorus.workflow { name = "by_url", run = function()
      return http.post("http://api.example.test/things", { json = { a = 1 } }).json
    end }
    local r = testing.run(wf)
    assert.are.same({ id = 7 }, r.value)
    assert.are.same({ a = 1 }, r.calls[1].json)
    assert.are.equal("/things", r.calls[1].path)
  end)

  it("collects ctx.log lines instead of printing them", function()
    local chorus = require "chorus"
    local wf = chorus.workflow { name = "logs", run = function(ctx) ctx.log.warn("careful", { n = 1 }) end }
    local r = testing.run(wf)
    assert.are.equal(1, #r.logs)
    assert.are.equal("careful", r.logs[1].msg)
    assert.are.equal("warn", r.logs[1].level)
    assert.are.equal(r.run_id, r.logs[1].run_id)
  end)

  it("restores the real clock and transport after a run", function()
    local core = require "chorus.core"
    testing.run(require("chorus").workflow { name = "noop", run = function() end })
    assert.is_true(math.abs(core.now() - os.time()) < 5)
  end)
  -- The server refuses a call made while a race's loser closes its
  -- to-be-closed variables (core.http: the task is gone); the mocks, written
  -- in Lua, answered it, so a spec passed that the server then failed.
  it("refuses a call where the server's transport does: in a race loser's __close", function()
    testing.mock("api", { status = 200 })
    local chorus = require "chorus"
    local http = require "chorus.http"
    local wf = chorus.workflow { name = "racer", run = function(ctx)
      local refused
      local v = chorus.race(function() ctx.sleep(1) return "winner" end, function()
        local _ <close> = setmetatable({}, { __close = function()
          local ok, err = pcall(http.upstream("api").get, http.upstream("api"), "/from-close")
          refused = not ok and tostring(err.message or err)
        end })
        ctx.sleep(100)
      end)
      return { v = v, refused = refused }
    end }
    local r = testing.run(wf, {})
    assert.is_true(r.ok, tostring(r.error and r.error.message))
    assert.are.equal("winner", r.value.v)
    assert.matches("finished or cancelled task closes its to-be-closed variables", r.value.refused, 1, true)
    assert.are.equal(0, #r.calls)
  end)
end)
