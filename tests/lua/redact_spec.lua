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

  it("masks paths mixing keys and * at every level, as before", function()
    local value = { a = { b = 1, c = { d = 2 } }, x = { p = { y = 3 }, q = { y = 4, z = 5 } }, [1] = { c = 6 },
      list = { { c = 7 }, { e = 8, c = { 9 } } } }
    local out = redact.value(value, { "a.b", "*.c", "x.*.y", "a", "1" })
    assert.are.same({ a = "[REDACTED]", x = { p = { y = "[REDACTED]" }, q = { y = "[REDACTED]", z = 5 } },
      [1] = "[REDACTED]", list = { "[REDACTED]", { e = 8, c = "[REDACTED]" } } }, out)
  end)

  -- Records are masked after their run, outside any budget: every path
  -- tried on every key (20,000 paths over a result of 3,000 keys: 10 s of
  -- the server's thread), or one JSON text of 200 KB referred to 200 times
  -- (decoded and walked each time: 39 s), held the whole server.
  it("masks a value whose masking would cost too much whole", function()
    local text = core.json.encode({ card = "4242", list = { 1, 2, 3 } })
    local big = "[" .. ("1,"):rep(50000) .. "1]"
    local refs = {}
    for i = 1, 50 do refs[i] = big end
    assert.are.equal("[REDACTED]", redact.value({ refs = refs }, { "card" }))
    local wide = {}
    for i = 1, redact.FUEL + 1 do wide[i] = i end
    assert.are.equal("[REDACTED]", redact.value(wide, { "card" }))
    -- one text, or a few thousand keys under thousands of paths, are masked as usual
    local out = redact.value({ a = text, b = text }, { "card" })
    assert.are.same({ card = "[REDACTED]", list = { 1, 2, 3 } }, core.json.decode(out.a))
    local paths, keys = {}, {}
    for i = 1, 20000 do paths[i] = "k" .. i end
    for i = 1, 3000 do keys["k" .. i] = i; keys["x" .. i] = i end
    out = redact.value(keys, paths)
    assert.are.equal("[REDACTED]", out.k3000)
    assert.are.equal(3000, out.x3000)
  end)

  -- A log line's fields are masked this way: the copy took the value's
  -- getmetatable, which a script sets with __metatable to a table that was
  -- never checked for __gc: the copy's finalizer then ran at a collection,
  -- outside any run (a loop there hung the server).
  it("keeps json.array's marker on a copy, and no other metatable", function()
    local finalized = false
    local gcmt = { __gc = function() finalized = true end }
    local out = redact.value({ v = setmetatable({}, { __metatable = gcmt }), a = core.json.array({}) }, { "card" })
    assert.is_nil(debug.getmetatable(out.v))
    assert.are.equal(debug.getmetatable(core.json.array({})), debug.getmetatable(out.a))
    assert.are.equal("[]", core.json.encode(out.a))
    out = nil -- luacheck: no unused
    collectgarbage()
    collectgarbage()
    assert.is_false(finalized)
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
