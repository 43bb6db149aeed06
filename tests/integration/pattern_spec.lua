-- A served workflow whose pattern backtracks for ever: the run ends with
-- kind budget (a 500 problem+json), and the server keeps answering.
local H = require "tests.integration.helpers"

local FIX = "tests/integration/fixtures/pattern/"

describe("a runaway pattern in a served workflow", function()
  local srv, dir

  setup(function()
    dir = H.temp_dir({ ["backtrack.lua"] = H.read(FIX .. "backtrack.lua") })
    srv = H.start_server({ "--scripts", dir })
  end)

  teardown(function() H.clean(srv, dir) end)

  for _, how in ipairs({ "find", "method", "gsub" }) do
    it(("ends its run with kind budget while /healthz answers (%s)"):format(how), function()
      local pending = H.request_async(srv.url .. "/workflows/backtrack",
        { method = "POST", body = ('{"how":%q}'):format(how), max_time = 60 })
      -- meanwhile: the loop is busy at most one budget's worth of matching
      assert.are.equal(200, H.request(srv.url .. "/healthz", { max_time = 30 }).status)
      local r = pending.wait(90)
      assert.are.equal(500, r.status)
      assert.are.equal("application/problem+json", r.headers["content-type"])
      assert.are.equal("budget", r.json.kind)
      -- and right after
      assert.are.equal(200, H.request(srv.url .. "/healthz").status)
      local rec = H.request(srv.url .. "/runs/" .. r.json.run_id).json
      assert.are.equal("failed", rec.status)
      assert.are.equal("budget", rec.error.kind)
      assert.matches("instruction budget", rec.error.message)
    end)
  end
end)
