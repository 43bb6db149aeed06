-- The soak test's short variant (tests/soak/soak.lua runs the full one: 10
-- minutes, 3 kills): 25 s of mixed load (fan-out with slow and failing
-- upstreams, a saga with failures, idempotent charges with receipts through
-- the outbox, duplicate keys, malformed requests) with one kill -9 and
-- restart. It passes when no acknowledged run is lost, no effect is
-- duplicated or missing at the mock, every replay and malformed answer is
-- as documented, the outbox drains, RSS stays within 10% after warm-up and
-- no sanitizer report shows up (CHORUS_BUILD=build-asan under make
-- test-asan). The summary line is printed.
local H = require "tests.integration.helpers"

describe("soak test (short)", function()
  it("loses, duplicates and leaks nothing over 25 s of mixed load with a kill -9", function()
    local r = H.exec(("lua5.4 tests/soak/soak.lua --seconds 25 --kills 1 --build %s"):format(H.quote(H.build)),
      nil, 400)
    local summary = r.stdout:match("\n(soak: [^\n]*)%s*$") or r.stdout:match("(soak: [^\n]*)")
    print("\n" .. (summary or "soak: no summary line"))
    if r.code ~= 0 then
      print(r.stdout:sub(-6000))
      print(r.stderr:sub(-2000))
    end
    assert.is_truthy(summary, "tests/soak/soak.lua printed no summary line")
    assert.matches("^soak: PASS", summary)
    assert.are.equal(0, r.code)
  end)
end)
