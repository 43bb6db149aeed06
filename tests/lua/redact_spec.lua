-- Specs of lua/chorus/redact.lua: a workflow's redact paths mask fields at
-- any depth, inside JSON text too, in copies only.
local redact = require "chorus.redact"
local core = require "chorus.core"

describe("chorus.redact", function()
  it("masks a path wherever it appears, in a copy", function()
    local input = { card = { number = "4242", exp = "12/30" }, donation = { card = { number = "5555" } },
      amount = 5 }
    local out = redact.value(input, { "card.number" })
    assert.are.same({ card = { number = "[REDACTED]", exp = "12/30" },
      donation = { card = { number = "[REDACTED]" } }, amount = 5 }, out)
    assert.are.equal("4242", input.card.number) -- the original is untouched
  end)

  it("takes * for any key or element, and masks whole subtrees", function()
    local value = { cards = { { pan = "1" }, { pan = "2" } }, card = { a = 1 } }
    local out = redact.value(value, { "cards.*.pan", "card" })
    assert.are.same({ cards = { { pan = "[REDACTED]" }, { pan = "[REDACTED]" } }, card = "[REDACTED]" }, out)
  end)

  it("masks inside a string that holds JSON (a call body)", function()
    local body = core.json.encode({ card = { number = "4242" }, amount = 5 })
    local out = redact.value({ request = { body = body } }, { "card.number" })
    assert.are.same({ card = { number = "[REDACTED]" }, amount = 5 }, core.json.decode(out.request.body))
    assert.are.equal("not json {", redact.value("not json {", { "card" }))
  end)

  it("leaves values alone without paths, and copies only the fields named", function()
    local t = { input = { card = "x" } }
    assert.are.equal(t, redact.value(t, nil))
    assert.are.equal(t, redact.fields(t, {}, { "input" }))
    local rec = { input = { card = "x" }, id = "r1", journal = { card = "kept" } }
    local out = redact.fields(rec, { "card" }, { "input" })
    assert.are.same({ input = { card = "[REDACTED]" }, id = "r1", journal = { card = "kept" } }, out)
  end)

  it("checks a declaration, naming the bad entry", function()
    assert.is_nil(redact.check({ "card.number", "a_b-c.*" }))
    assert.are.equal('redact[2] must be a path such as "card.number"', redact.check({ "ok", 5 }))
    assert.truthy(redact.check({ "card..number" }):find("each key", 1, true))
    assert.are.equal("redact must be a list of paths", redact.check({ card = true }))
  end)

  it("is a field of chorus.workflow, checked there", function()
    local chorus = require "chorus"
    local wf = chorus.workflow { name = "r", run = function() end, redact = { "card" } }
    assert.are.same({ "card" }, wf.redact)
    local ok, err = pcall(chorus.workflow, { name = "r", run = function() end, redact = { "" } })
    assert.is_false(ok)
    assert.truthy(err:find('redact[1] must be a path', 1, true))
  end)
end)
