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

  it("brief keeps a small error whole, and of a big one its kind and the ends of its message", function()
    local small = { kind = "k", message = "m", detail = "d" }
    assert.are.equal(small, errors.brief(small, 4096))
    local big = errors.brief({ kind = "k", message = ("a"):rep(5000) .. ("z"):rep(5000), detail = ("d"):rep(9000) },
      4096)
    assert.is_nil(big.detail)
    assert.truthy(#core.json.encode(big) <= 4096)
    assert.truthy(big.message:find("^aaa"))
    assert.truthy(big.message:find("zzz$"))
    assert.truthy(big.message:find("(10000 bytes)", 1, true))
    assert.are.equal("x", errors.cut("x", 1))
    assert.are.equal(5, errors.cut(5, 1))
  end)
end)
