-- chorus.errors: one constructor and one metatable for every error chorus
-- raises, in Lua and in C.
local errors = require "chorus.errors"
local core = require "chorus.core"
local chorus = require "chorus"

describe("chorus.errors", function()
  it("new makes { kind, message, fields } that prints as kind: message", function()
    local e = errors.new("upstream", "the charge answered 503", { status = 503, kind = "ignored" })
    assert.are.equal("upstream", e.kind)
    assert.are.equal(503, e.status)
    assert.are.equal("upstream: the charge answered 503", tostring(e))
    assert.are.equal(errors.MT, getmetatable(e))
  end)

  it("errors made in C carry the same metatable", function()
    local ok, err = core.run({ instructions = 100000 }, function()
      while true do end
    end)
    assert.is_false(ok)
    assert.are.equal("budget", err.kind)
    assert.are.equal(errors.MT, getmetatable(err))
    assert.are.equal("budget: " .. err.message, tostring(err))
  end)

  it("is what the runtime's own errors use (chorus.any)", function()
    local ok, e = core.run(nil, function()
      local _, err = pcall(chorus.any, function() error("a") end)
      return err
    end)
    assert.is_true(ok)
    assert.are.equal(errors.MT, getmetatable(e))
    assert.are.equal("all_failed", e.kind)
  end)
end)
