-- os.time, os.date, os.clock and math.random in workflow scripts: journaled
-- inside a run (a replay sees the first execution's values), refused at the
-- top level; math.randomseed refused everywhere.
local testing = require "chorus.testing"
local script = require "chorus.script"

local function compile(src)
  return script.compile(src, "inline.lua")
end

describe("determinism", function()
  before_each(testing.reset)

  it("journals os.time, os.date, os.clock and math.random: a replay gets the same values", function()
    testing.mock("api", { status = 200, json = {} })
    local first = testing.run(testing.here("fixtures/clock_random.lua"), {}, { crash_after = 7 })
    assert.is_true(first.ok, first.error and first.error.message)
    assert.is_true(first.crashed)
    -- the first execution sent its values and crashed; the replay got the
    -- six clock/random effects and the call back from the journal
    assert.equal(7, first.replayed)
    assert.equal(1, #first.calls)
    assert.same(first.calls[1].json, first.value)
    assert.equal(1767225600, first.value.time) -- the virtual clock, like ctx.now
    assert.equal("2026-01-01 00:00:00", first.value.date)
    assert.is_true(first.value.r6 >= 1 and first.value.r6 <= 6)
    assert.is_true(first.value.r10 >= 5 and first.value.r10 <= 10)
    assert.equal(os.time({ year = 2020, month = 1, day = 1, hour = 12 }), first.value.fixed)
  end)

  it("refuses them at the top level of a script, naming ctx.now / ctx.random", function()
    for expr, instead in pairs({ ["os.time()"] = "ctx.now", ["os.date()"] = "ctx.now",
      ["os.clock()"] = "ctx.now", ["math.random()"] = "ctx.random" }) do
      local wf, err = compile("local chorus = require 'chorus'\nlocal t = " .. expr
        .. "\nreturn chorus.workflow { name = 'w', run = function() return t end }")
      assert.is_nil(wf)
      assert.matches("inline.lua:2:", err, 1, true)
      assert.matches("top level", err, 1, true)
      assert.matches(instead, err, 1, true)
    end
    -- pure conversions stay available
    local wf = compile("local chorus = require 'chorus'\nlocal t = os.time({ year = 2020, month = 1, day = 1 })"
      .. "\nlocal d = os.date('!%Y', 0)\nreturn chorus.workflow { name = 'w', run = function() return t end }")
    assert.is_truthy(wf)
  end)

  it("refuses math.randomseed in a run", function()
    local wf = assert(compile("local chorus = require 'chorus'\nreturn chorus.workflow { name = 'w', "
      .. "run = function() math.randomseed(42) return math.random() end }"))
    local r = testing.run(wf, {})
    assert.is_false(r.ok)
    assert.matches("math.randomseed", tostring(r.error), 1, true)
    assert.matches("ctx.random", tostring(r.error), 1, true)
  end)

  it("leaves the config file the real clock", function()
    local path = os.tmpname()
    local f = assert(io.open(path, "w"))
    f:write("local t = os.time() + os.clock() + math.random(3)\n",
      "return { listen = '127.0.0.1:' .. (t > 0 and 8080 or 1) }\n")
    f:close()
    local conf, err = require("chorus.config").load(path)
    os.remove(path)
    assert.is_nil(err)
    assert.equal("127.0.0.1:8080", conf.listen)
  end)
end)

describe("chorus check's determinism warnings", function()
  local cli = require "chorus.cli"

  it("names each clock or random read in code, with its line and what to use instead", function()
    local w = cli.determinism_warnings(table.concat({
      "local s = 'os.time()' -- os.clock()",
      "--[[ math.random() ]]",
      "local t = os.time()",
      "local r = math.random(3) + os . clock()",
      "local fixed = os.time({ year = 2020, month = 1, day = 1 }) .. os.time { year = 2021 }",
      "local d = os.date('%Y', 0) .. os.date('%Y')",
      "math.randomseed(1)",
      "local alias = math.random",
    }, "\n"))
    assert.same({
      "3: os.time() is journaled inside a run and raises at the top level; say what you mean with ctx.now()",
      "4: math.random() is journaled inside a run and raises at the top level; say what you mean with ctx.random()",
      "4: os.clock() is journaled inside a run and raises at the top level; say what you mean with ctx.now()",
      "6: os.date() without a time is journaled inside a run and raises at the top level; say what you "
        .. "mean with ctx.now()",
      "7: math.randomseed() always raises in workflow scripts; math.random and ctx.random() are journaled",
      "8: math.random() is journaled inside a run and raises at the top level; say what you mean with ctx.random()",
    }, w)
  end)
end)
