-- The edges probe (tests/soak/edges/probe.py) as part of `make test`: a
-- server SIGKILLed at random moments while clients send keyed sync and
-- async requests to a saga with ctx.lock + pcall, chorus.all, ctx.call and
-- ctx.later, with cancels sent while recovery runs. The probe audits that
-- no effect was done twice, no run is left running, the listings agree
-- with every record, each 202 cancel ended its run cancelled, redrive works,
-- the data folder verifies, the server exits 0 on SIGTERM and — run
-- against build-asan/ by `make test`'s sanitized pass — that no start of
-- the server printed a sanitizer report. A short run here
-- (CHORUS_EDGES_KILLS, default 10); the soak runs it longer.
local H = require "tests.integration.helpers"

local KILLS = tonumber(os.getenv("CHORUS_EDGES_KILLS") or "10")

describe("edges probe", function()
  it(("keeps every promise across %d SIGKILLs and cancels during recovery"):format(KILLS), function()
    local r = H.exec(("python3 tests/soak/edges/probe.py --kills %d --build %s"):format(KILLS, H.quote(H.build)),
      nil, 600)
    if r.code ~= 0 then
      print(r.stdout:sub(-4000), r.stderr:sub(-2000))
    end
    assert.are.equal(0, r.code)
    assert.truthy(r.stdout:find("edges: PASS", 1, true))
  end)
end)
