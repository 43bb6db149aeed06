-- `chorus test DIR`: runs an operator's specs with the right paths.
local H = require "tests.integration.helpers"

describe("chorus test", function()
  it("runs the specs of a folder and exits 0 when they pass", function()
    local r = H.chorus_run({ "test", "examples/fanout" }, nil, 60)
    assert.are.equal(0, r.code, r.stdout .. r.stderr)
    assert.truthy(r.stdout:find("0 failures", 1, true))
  end)

  it("runs examples/donation: outbox delivery, retries, DLQ and a simulated crash", function()
    local r = H.chorus_run({ "test", "examples/donation" }, nil, 60)
    assert.are.equal(0, r.code, r.stdout .. r.stderr)
    assert.truthy(r.stdout:find("8 successes / 0 failures / 0 errors", 1, true), r.stdout)
  end)

  it("exits non-zero with a readable failure for a broken example", function()
    local r = H.chorus_run({ "test", "tests/fixtures/broken_example" }, nil, 60)
    assert.are_not.equal(0, r.code)
    assert.truthy(r.stdout:find("1 failure", 1, true), r.stdout)
    assert.truthy(r.stdout:find("greets by name", 1, true), r.stdout)
    assert.truthy(r.stdout:find("hello ada", 1, true), r.stdout)
    assert.truthy(r.stdout:find("hello nobody", 1, true), r.stdout)
  end)

  it("rejects a folder that does not exist with exit 2", function()
    local r = H.chorus_run({ "test", "no/such/folder" }, nil, 20)
    assert.are.equal(2, r.code)
    assert.truthy(r.stderr:find("cannot read the folder", 1, true))
  end)
end)

describe("chorus check", function()
  it("warns about os.time, os.date, os.clock and math.random and still passes the script", function()
    local r = H.chorus_run({ "check", "tests/lua/fixtures/clock_random.lua" }, nil, 20)
    assert.are.equal(0, r.code, r.stdout .. r.stderr)
    assert.truthy(r.stdout:find("ok   tests/lua/fixtures/clock_random.lua", 1, true), r.stdout)
    assert.truthy(r.stdout:find("warn tests/lua/fixtures/clock_random.lua:10: os.time() is journaled", 1, true),
      r.stdout)
    assert.truthy(r.stdout:find("clock_random.lua:11: math.random() is journaled", 1, true), r.stdout)
    assert.falsy(r.stdout:find("clock_random.lua:12:", 1, true), r.stdout) -- os.time(t) is pure
  end)
end)
