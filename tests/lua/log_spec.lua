-- chorus.log: the one log writer (server, run service, outbox, ctx.log).
local log = require "chorus.log"

-- Inside an `it`: sets the run log cap context[field] to value (back to
-- default after the test) and catches what runs write to the log.
-- Returns the list of lines written.
local function capture_log(field, value, default)
  local context = require "chorus.context"
  local secrets = require "chorus.secrets"
  local printed, write_log = {}, secrets.write_log
  context[field] = value
  secrets.write_log = function(text) printed[#printed + 1] = text end
  finally(function()
    context[field] = default
    secrets.write_log = write_log
  end)
  return printed
end

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

  it("keeps a run's ctx.log lines to limits.run_log_lines: past it one warning, then nothing", function()
    local testing = require "chorus.testing"
    local chorus = require "chorus"
    local context = require "chorus.context"
    testing.reset()
    context.run_log_lines = 3
    finally(function() context.run_log_lines = 10000 end)
    local loud = chorus.workflow { name = "loud", run = function(ctx)
      for i = 1, 50 do
        ctx.log.info("line", { i = i })
      end
      return "done"
    end }
    local r = testing.run(loud)
    assert.are.equal("succeeded", r.status)
    assert.are.same({ 1, 2, 3 }, { r.logs[1].i, r.logs[2].i, r.logs[3].i })
    assert.are.equal(4, #r.logs)
    assert.are.equal("warn", r.logs[4].level)
    assert.are.equal(r.run_id, r.logs[4].run_id)
    assert.matches("logged 3 lines (limits.run_log_lines): its further lines are dropped", r.logs[4].msg, 1, true)
    -- the count is the run's: the next run logs again
    assert.are.equal(4, #testing.run(loud).logs)
    context.run_log_lines = 0 -- no cap
    assert.are.equal(50, #testing.run(loud).logs)
  end)

  -- print in a workflow script wrote to the same log around the cap: a run
  -- printing in a loop wrote as many lines as it liked
  it("keeps a run's print lines to limits.run_log_lines too", function()
    local testing = require "chorus.testing"
    local script = require "chorus.script"
    testing.reset()
    local printed = capture_log("run_log_lines", 3, 10000)
    local loud = assert(script.compile([[
      local chorus = require "chorus"
      return chorus.workflow { name = "printer", run = function(ctx)
        for i = 1, 50 do print("line", i) end
        return "done"
      end }
    ]], "printer.lua"))
    local r = testing.run(loud)
    assert.are.equal("succeeded", r.status)
    assert.are.equal(3, #printed)
    assert.matches([[line\t3]], printed[3], 1, true)
    assert.are.equal(1, #r.logs)
    assert.matches("logged 3 lines (limits.run_log_lines)", r.logs[1].msg, 1, true)
  end)

  for _, case in ipairs { { key = "run_log_lines", set = 20, default = 10000 },
    { key = "run_log_bytes", set = 2048, default = 4 * 1024 * 1024 },
    { key = "workflow_log_bytes_per_second", field = "workflow_log_rate", set = 4096, default = 4 * 1024 * 1024 } } do
    it(("config limits.%s is checked at load and applied"):format(case.key), function()
      local config = require "chorus.config"
      local context = require "chorus.context"
      local path = os.tmpname()
      finally(function()
        os.remove(path)
        context[case.field or case.key] = case.default
      end)
      local function load(text)
        local f = assert(io.open(path, "w"))
        f:write(text)
        f:close()
        return config.load(path)
      end
      local conf, err = load(("return { limits = { %s = -1 } }"):format(case.key))
      assert.is_nil(conf)
      assert.matches("limits." .. case.key, err, 1, true)
      config.apply(assert(load(("return { limits = { %s = %d } }"):format(case.key, case.set))))
      assert.are.equal(case.set, context[case.field or case.key])
    end)
  end

  -- Under the line cap alone one run wrote 800 MB of megabyte lines to the
  -- log every workflow shares (and held the server's thread on the writes).
  it("keeps a run's ctx.log and print lines to limits.run_log_bytes: past it one warning, then nothing", function()
    local testing = require "chorus.testing"
    local context = require "chorus.context"
    local script = require "chorus.script"
    testing.reset()
    local printed = capture_log("run_log_bytes", 10000, 4 * 1024 * 1024)
    local loud = assert(script.compile([[
      local chorus = require "chorus"
      return chorus.workflow { name = "big_lines", run = function(ctx, input)
        local big = ("x"):rep(3000)
        for i = 1, 20 do
          if input.print then print(big, i) else ctx.log.info(big, { i = i }) end
        end
        ctx.log.info("small")
        return "done"
      end }
    ]], "big_lines.lua"))
    local r = testing.run(loud, {})
    assert.are.equal("succeeded", r.status)
    assert.are.equal(4, #r.logs) -- three lines of 3,000 bytes fit in 10,000, then the notice
    assert.are.same({ 1, 2, 3 }, { r.logs[1].i, r.logs[2].i, r.logs[3].i })
    assert.are.equal("warn", r.logs[4].level)
    assert.matches("reached 10000 bytes (limits.run_log_bytes", r.logs[4].msg, 1, true)
    assert.matches("its further lines are dropped", r.logs[4].msg, 1, true)
    -- print counts against the same bytes
    r = testing.run(loud, { print = true })
    assert.are.equal("succeeded", r.status)
    assert.are.equal(3, #printed)
    assert.are.equal(1, #r.logs)
    assert.matches("(limits.run_log_bytes", r.logs[1].msg, 1, true)
    context.run_log_bytes = 0 -- no cap
    assert.are.equal(21, #testing.run(loud, {}).logs)
  end)


  -- The per-run caps bound one run; runs that start one another (a
  -- ctx.later chain) wrote 4 MiB each without end to the log every
  -- workflow shares.
  it("keeps the lines of a workflow's runs to limits.workflow_log_bytes_per_second: one notice, "
    .. "other workflows untouched, the next second logs again", function()
    local testing = require "chorus.testing"
    local core = require "chorus.core"
    local script = require "chorus.script"
    testing.reset()
    capture_log("workflow_log_rate", 10000, 4 * 1024 * 1024)
    local now, second = core.now, 1e9
    core.now = function() return second + 0.5 end
    finally(function() core.now = now end)
    local function compile(name)
      return assert(script.compile(([[
        local chorus = require "chorus"
        return chorus.workflow { name = "%s", run = function(ctx, input)
          for i = 1, input.lines do
            if input.print then print(("x"):rep(3000), i) else ctx.log.info(("x"):rep(3000), { i = i }) end
          end
          return "done"
        end }
      ]]):format(name), name .. ".lua"))
    end
    local loud, quiet = compile("loud"), compile("quiet")
    local r = testing.run(loud, { lines = 10 })
    assert.are.equal("succeeded", r.status)
    assert.are.equal(4, #r.logs) -- three lines of about 3,050 bytes fit in 10,000, then the notice
    assert.are.same({ 1, 2, 3 }, { r.logs[1].i, r.logs[2].i, r.logs[3].i })
    assert.are.equal("warn", r.logs[4].level)
    assert.matches("workflow 'loud'", r.logs[4].msg, 1, true)
    assert.matches("(limits.workflow_log_bytes_per_second", r.logs[4].msg, 1, true)
    -- another run of it in the same second: nothing, not even a second notice (print too)
    assert.are.equal(0, #testing.run(loud, { lines = 2 }).logs)
    -- another workflow logs as it would
    assert.are.equal(2, #testing.run(quiet, { lines = 2 }).logs)
    -- the next second, the loud workflow's lines come back
    second = second + 1
    assert.are.equal(3, #testing.run(loud, { lines = 3 }).logs)
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
