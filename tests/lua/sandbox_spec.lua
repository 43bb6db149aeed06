-- The sandbox against a script attacking it (lua/chorus/sandbox.lua): each
-- case is a hole a review found, kept closed.
local core = require "chorus.core"
local sandbox = require "chorus.sandbox"
local script = require "chorus.script"
local testing = require "chorus.testing"

-- Runs source as a workflow script's chunk in a fresh sandbox, as a run
-- with opts; returns ok, value.
local function run_script(source, opts)
  local chunk = assert(load(source, "=script", "t", sandbox.env()))
  return core.run(opts or { instructions = 1000000 }, chunk)
end

describe("sandbox", function()
  before_each(testing.reset)

  describe("pairs on a view or on the sealed globals", function()
    it("does not hand out the table behind the globals: a run cannot set one through it", function()
      local wf = assert(script.compile([[
        local chorus = require "chorus"
        return chorus.workflow { name = "w", run = function()
          local _, g = pairs(_G)
          g.counter = (g.counter or 0) + 1
          return counter
        end }
      ]], "inline.lua"))
      local r = testing.run(wf, {})
      assert.is_false(r.ok)
      assert.matches("cannot assign the global 'counter'", tostring(r.error.message or r.error), 1, true)
      r = testing.run(wf, {})
      assert.is_false(r.ok) -- nothing was left behind by the first run
    end)

    it("still lists the globals and a module's functions", function()
      local ok, value = run_script([[
        local n, seen = 0, {}
        for k in pairs(require "chorus.http") do seen[k] = true end
        for k in pairs(string) do n = n + 1 end
        return { get = seen.get, string = n > 10 }
      ]])
      assert.is_true(ok, tostring(value))
      assert.are.same({ get = true, string = true }, value)
    end)

    it("does not hand out the table behind a module's or a library's view", function()
      for _, lib in ipairs({ 'require "chorus.http"', 'require "chorus"', "require('chorus').json", "string",
          "table", "coroutine" }) do
        local ok, err = run_script(([[
          local _, inner = pairs(%s)
          inner.get = function() return "forged" end
        ]]):format(lib))
        assert.is_false(ok, lib)
        assert.matches("is read-only in workflow scripts", tostring(err.message or err), 1, true)
      end
    end)
  end)
end)
