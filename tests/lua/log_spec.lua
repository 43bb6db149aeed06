-- chorus.log: the one log writer (server, run service, outbox, ctx.log).
local log = require "chorus.log"

describe("chorus.log", function()
  it("makes { ts, level, msg, ...fields }; fields never replace those three", function()
    local line = log.line("warn", "over", { level = "debug", value = 3 })
    assert.are.equal("warn", line.level)
    assert.are.equal("over", line.msg)
    assert.are.equal(3, line.value)
    assert.are.equal("number", type(line.ts))
  end)

  it("hands lines to a sink instead of printing them", function()
    local got = {}
    log.event("info", "hello", { n = 1 }, function(l) got[#got + 1] = l end)
    assert.are.equal(1, #got)
    assert.are.equal("hello", got[1].msg)
  end)

  it("prints a line JSON cannot carry with its level, message and why", function()
    local core = require "chorus.core"
    local written
    local saved = core.write_log
    core.write_log = function(text) written = text end
    finally(function() core.write_log = saved end)
    log.event("error", "bad field", { f = function() end })
    local line = core.json.decode(written)
    assert.are.equal("error", line.level)
    assert.are.equal("bad field", line.msg)
    assert.is_string(line.log_error)
  end)

  it("prints only lines at or above the level; a sink still gets every line", function()
    local core = require "chorus.core"
    local written = {}
    local saved = core.write_log
    core.write_log = function(text) written[#written + 1] = core.json.decode(text).msg end
    finally(function()
      core.write_log = saved
      log.set_level("info")
    end)
    log.set_level("warn")
    log.event("info", "quiet")
    log.event("warn", "loud")
    log.event("error", "louder")
    assert.are.same({ "loud", "louder" }, written)
    local got = {}
    log.event("debug", "to the sink", nil, function(l) got[#got + 1] = l end)
    assert.are.equal(1, #got)
    assert.has_error(function() log.set_level("verbose") end,
      "log_level must be one of debug, info, warn, error (got verbose)")
  end)

  it("config log_level is checked at load", function()
    local config = require "chorus.config"
    local path = os.tmpname()
    local f = assert(io.open(path, "w"))
    f:write('return { log_level = "loud" }')
    f:close()
    finally(function() os.remove(path) end)
    local conf, err = config.load(path)
    assert.is_nil(conf)
    assert.matches('log_level must be one of debug, info, warn, error (got "loud")', err, 1, true)
  end)

  it("puts the run's span id on ctx.log lines; each outbound call sends a span id of its own", function()
    local testing = require "chorus.testing"
    local chorus = require "chorus"
    local http = require "chorus.http"
    testing.reset()
    testing.mock("api", { status = 200 })
    local r = testing.run(chorus.workflow { name = "spans", run = function(ctx)
      ctx.log.info("hello")
      return http.upstream("api"):get("/x").status
    end })
    local span = r.calls[1].headers.traceparent:match("^00%-%x+%-(%x+)%-01$")
    assert.are.equal(16, #span)
    assert.are.equal(16, #r.logs[1].span_id)
    assert.are_not.equal(span, r.logs[1].span_id)
    assert.are.equal(span, r.timeline[1].span_id) -- the attempt's span
  end)
end)
