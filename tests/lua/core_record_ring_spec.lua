-- core.record_ring: the finished run records `chorus serve` keeps for
-- GET /runs/ID — the last N by first arrival, looked up by id, each in the
-- share of the workflow its run is charged to.
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
    -- alone past the cap: not kept (it would push every other record out)
    assert.is_false(ring:put("big", ("y"):rep(500)))
    assert.is_nil(ring:get("big"))
    assert.are.equal(4, #ring)
    assert.is_true(ring:put("id2", "z"))
    assert.are.equal("z", ring:get("id2"))
    assert.is_false(ring:put("id2", ("w"):rep(300))) -- a replaced text too: the old one goes with it
    assert.is_nil(ring:get("id2"))
    assert.are.equal(3, #ring)
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

  -- One workflow's many runs (or large results) pushed every other
  -- workflow's records out of one shared ring: their GET /runs/ID answered
  -- 404 soon after the run ended.
  it("drops a workflow's own oldest records past its share of records, never another's", function()
    local ring = core.record_ring(100, 0, 10)
    ring:put("b1", "{}", "b", "succeeded")
    for i = 1, 50 do
      ring:put("a" .. i, "{}", "a", "succeeded")
    end
    assert.are.equal("{}", ring:get("b1"))
    assert.are.same({ 10, 10 * (#"a50" + 2 + #"a" + #"succeeded" + 2) }, { ring:held("a") })
    assert.is_nil(ring:get("a40"))
    assert.are.equal("{}", ring:get("a41"))
    assert.are.same({ 1, #"b1" + 2 + #"b" + #"succeeded" + 2 }, { ring:held("b") })
    assert.are.same({ 0, 0 }, { ring:held("c") })
    assert.are.equal(11, #ring)
  end)

  it("drops a workflow's own oldest records past its share of bytes, never another's", function()
    local ring = core.record_ring(100, 1000, 0, 400)
    ring:put("b1", "small", "b", "succeeded")
    for i = 1, 20 do
      ring:put(("a%02d"):format(i), ("x"):rep(100), "a", "succeeded")
    end
    assert.are.equal("small", ring:get("b1"))
    local n, bytes = ring:held("a")
    assert.are.equal(3, n) -- 115 bytes each
    assert.is_true(bytes <= 400)
    assert.are.equal(("x"):rep(100), ring:get("a20"))
    assert.is_nil(ring:get("a17"))
    -- one record past its share is not kept at all, and takes nobody's place
    assert.is_false(ring:put("huge", ("y"):rep(450), "a", "succeeded"))
    assert.is_nil(ring:get("huge"))
    assert.are.equal(3, (ring:held("a")))
    assert.are.equal("small", ring:get("b1"))
  end)

  it("at the ring's own bounds, drops from the workflow holding the most, not from the oldest", function()
    -- two workflows filling their shares together fill the ring: the one
    -- that put the record gives up its own (it holds more than b)
    local ring = core.record_ring(10, 0, 5)
    ring:put("b1", "{}", "b", "succeeded")
    for i = 1, 20 do
      ring:put("a" .. i, "{}", "a", "succeeded")
      ring:put("c" .. i, "{}", "c", "succeeded")
    end
    assert.are.equal(10, #ring)
    assert.are.equal("{}", ring:get("b1"))
    assert.are.equal("{}", ring:get("a20"))
    assert.are.equal("{}", ring:get("c20"))
    -- without shares, by bytes the same: b keeps its record, a drops its own
    ring = core.record_ring(1000, 600)
    ring:put("b1", ("b"):rep(100), "b", "succeeded")
    for i = 1, 30 do
      ring:put("a" .. i, ("a"):rep(100), "a", "succeeded")
    end
    assert.is_true(ring:bytes() <= 600)
    assert.are.equal(("b"):rep(100), ring:get("b1"))
    assert.are.equal(("a"):rep(100), ring:get("a30"))
    -- and a workflow holding less than the oldest record's takes that one's place
    ring = core.record_ring(3)
    ring:put("a1", "{}", "a", "succeeded")
    ring:put("a2", "{}", "a", "succeeded")
    ring:put("b1", "{}", "b", "succeeded")
    ring:put("c1", "{}", "c", "succeeded")
    assert.is_nil(ring:get("a1"))
    assert.are.same({ 1, 1, 1 }, { (ring:held("a")), (ring:held("b")), (ring:held("c")) })
  end)

  it("counts a record in the share of the workflow it is charged to (a child run's caller)", function()
    local ring = core.record_ring(100, 0, 2)
    ring:put("b1", "{}", "b", "succeeded")
    ring:put("kid", "{}", "b", "succeeded", "a") -- a's child run, of workflow b
    assert.are.same({ "b", "succeeded" }, { ring:facts("kid") })
    assert.are.same({ 1, 1 }, { (ring:held("a")), (ring:held("b")) })
    ring:put("a1", "{}", "a", "succeeded")
    ring:put("a2", "{}", "a", "succeeded") -- a's share is full: its own oldest goes, the child's record
    assert.is_nil(ring:get("kid"))
    assert.are.equal("{}", ring:get("b1"))
    ring:put("a1", "{}", "a", "failed", "b") -- a known id charged elsewhere moves to that share
    assert.are.same({ 1, 2 }, { (ring:held("a")), (ring:held("b")) })
    assert.are.same({ "a", "failed" }, { ring:facts("a1") })
    ring:put("n1", "{}") -- without facts: the share of ""
    assert.are.equal(1, (ring:held("")))
  end)

  it("refuses a capacity it cannot hold and arguments that are not strings", function()
    assert.has_error(function() core.record_ring(0) end)
    assert.has_error(function() core.record_ring(-5) end)
    assert.has_error(function() core.record_ring("many") end)
    assert.has_error(function() core.record_ring(1e9) end)
    assert.has_error(function() core.record_ring(3, 0, -1) end)
    assert.has_error(function() core.record_ring(3, 0, 1, -1) end)
    local ring = core.record_ring(2)
    assert.has_error(function() ring:put("id") end)
    assert.has_error(function() ring:put({}, "text") end)
    assert.has_error(function() ring:get() end)
    assert.are.equal(0, #ring)
  end)
end)
