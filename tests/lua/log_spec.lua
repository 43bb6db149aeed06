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
end)
