-- core.record_ring: the finished run records `chorus serve` keeps for
-- GET /runs/ID — the last N by first arrival, looked up by id.
local core = require "chorus.core"

describe("core.record_ring", function()
  it("gives back each record by id, and nil for an id it does not hold", function()
    local ring = core.record_ring(4)
    ring:put("run-a", '{"id":"run-a"}')
    ring:put("run-b", "")
    assert.are.equal('{"id":"run-a"}', ring:get("run-a"))
    assert.are.equal("", ring:get("run-b"))
    assert.is_nil(ring:get("run-c"))
    assert.are.equal(2, #ring)
    assert.are.equal(#"run-a" + #'{"id":"run-a"}' + #"run-b", ring:bytes())
  end)

  it("forgets the oldest record when a new one arrives at capacity", function()
    local ring = core.record_ring(3)
    for i = 1, 5 do
      ring:put("id" .. i, "text" .. i)
    end
    assert.are.equal(3, #ring)
    assert.is_nil(ring:get("id1"))
    assert.is_nil(ring:get("id2"))
    for i = 3, 5 do
      assert.are.equal("text" .. i, ring:get("id" .. i))
    end
    assert.are.equal(3 * (#"id3" + #"text3"), ring:bytes())
  end)

  it("replaces a known id's text in place, keeping its age", function()
    local ring = core.record_ring(2)
    ring:put("a", "first")
    ring:put("b", "b")
    ring:put("a", "second, longer")
    assert.are.equal("second, longer", ring:get("a"))
    assert.are.equal(2, #ring)
    assert.are.equal(#"a" + #"second, longer" + #"b" + #"b", ring:bytes())
    ring:put("c", "c") -- "a" arrived first, so it goes first
    assert.is_nil(ring:get("a"))
    assert.are.equal("b", ring:get("b"))
  end)

  it("keeps many ids apart, with binary-safe texts", function()
    local ring = core.record_ring(1000)
    for i = 1, 2500 do
      ring:put(core.uuid(), "x")
      ring:put("k" .. i, "v\0" .. i)
    end
    assert.are.equal(1000, #ring)
    assert.is_nil(ring:get("k2000"))
    assert.are.equal("v\0" .. 2001, ring:get("k2001"))
    assert.are.equal("v\0" .. 2500, ring:get("k2500"))
  end)

  it("drops the oldest records past max_bytes, never the one just put", function()
    -- a record holds what its run returned (up to its memory cap): ten
    -- thousand big ones were gigabytes of the server's memory
    local ring = core.record_ring(1000, 100)
    for i = 1, 5 do
      ring:put("id" .. i, ("x"):rep(20)) -- 23 bytes each
    end
    assert.are.equal(4, #ring)
    assert.is_true(ring:bytes() <= 100)
    assert.is_nil(ring:get("id1"))
    assert.are.equal(("x"):rep(20), ring:get("id5"))
    ring:put("big", ("y"):rep(500)) -- alone past the cap: kept, the others go
    assert.are.equal(1, #ring)
    assert.are.equal(500, #ring:get("big"))
    ring:put("id2", "z") -- then the next one makes room by dropping it
    assert.is_nil(ring:get("big"))
    assert.are.equal("z", ring:get("id2"))
    ring:put("id2", ("w"):rep(300)) -- a replaced text counts too
    assert.are.equal(1, #ring)
    assert.are.equal(0, core.record_ring(3, 0):bytes()) -- 0: no byte cap
    assert.has_error(function() core.record_ring(3, -1) end)
  end)

  it("keeps a record's workflow and status with it, to be read without the text", function()
    local ring = core.record_ring(2, 1000)
    ring:put("a", "{}", "orders", "succeeded")
    ring:put("b", "{}")
    assert.are.same({ "orders", "succeeded" }, { ring:facts("a") })
    assert.are.equal(0, select("#", ring:facts("b"))) -- put without them
    assert.are.equal(0, select("#", ring:facts("none")))
    assert.are.equal(1 + 2 + #"orders" + 1 + #"succeeded" + 1 + 1 + 2, ring:bytes())
    ring:put("a", "{}", "orders", "failed") -- replaced with the text
    assert.are.same({ "orders", "failed" }, { ring:facts("a") })
    ring:put("c", "{}", "x", "y") -- "a" goes, and its facts with it
    assert.are.equal(0, select("#", ring:facts("a")))
    assert.has_error(function() ring:put("d", "{}", "w") end) -- a workflow without a status
  end)

  it("refuses a capacity it cannot hold and arguments that are not strings", function()
    assert.has_error(function() core.record_ring(0) end)
    assert.has_error(function() core.record_ring(-5) end)
    assert.has_error(function() core.record_ring("many") end)
    assert.has_error(function() core.record_ring(1e9) end)
    local ring = core.record_ring(2)
    assert.has_error(function() ring:put("id") end)
    assert.has_error(function() ring:put({}, "text") end)
    assert.has_error(function() ring:get() end)
    assert.are.equal(0, #ring)
  end)
end)
