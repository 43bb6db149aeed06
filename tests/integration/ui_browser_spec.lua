-- The web console in a real browser: tests/integration/console_browser.py
-- drives headless Chromium (Debian's chromium, chromium-driver and
-- python3-selenium; `make deps` installs them) through sign in, the failed
-- runs, one run's timeline, a DLQ replay and drop and sign out, against a server
-- started here with a workflow that fails and a DLQ entry. Screenshots of
-- each step land in build/ui-screenshots/. Skipped, saying so, only when
-- chromium is not installed.
local H = require "tests.integration.helpers"

-- Fails after a lock and a step, a sleep, a child run, an event wait that
-- times out and three 503 attempts (the upstream retries);
-- its card number is redacted; it queues a call the upstream refuses for good.
local CHARGE = [[
local chorus = require "chorus"
local http = require "chorus.http"
return chorus.workflow {
  name = "charge", redact = { "card" },
  run = function(ctx, input)
    local mock = http.upstream "mock"
    mock:post("/refused?status=400", { json = { amount = input.amount }, later = { attempts = 1 } })
    ctx.lock("buyer:" .. input.buyer, function() ctx.step("price", function() return input.amount * 2 end) end)
    ctx.sleep(0.05)
    ctx.call("noop", {})
    pcall(ctx.event, "approved", { key = ctx.run_id, timeout = 0.05 })
    local r = mock:get("/charge?status=503")
    error({ kind = "declined", message = "card declined: upstream said " .. r.status })
  end,
}
]]

local NOOP = [[
local chorus = require "chorus"
return chorus.workflow { name = "noop", run = function() return { ok = true } end }
]]

-- A scheduled workflow, for the schedules page.
local NIGHTLY = [[
local chorus = require "chorus"
return chorus.workflow { name = "nightly", schedule = { cron = "0 3 * * *" }, run = function() return true end }
]]

-- The browser's path (CHROMIUM names another one), or nil when it is absent.
local function find_chromium()
  local p = io.popen("command -v " .. H.quote(os.getenv("CHROMIUM") or "chromium") .. " 2>/dev/null")
  local path = p:read("l")
  p:close()
  return path and path ~= "" and path or nil
end

describe("the web console in headless Chromium", function()
  local mock, dir, conf, srv
  local chromium = find_chromium()

  setup(function()
    if not chromium then
      return
    end
    mock = H.start_mock(300)
    dir = H.temp_dir({ ["charge.lua"] = CHARGE, ["noop.lua"] = NOOP, ["nightly.lua"] = NIGHTLY })
    conf = H.write_temp(([[
return {
  admin_token = "console-token",
  outbox = { base = 0.05, cap = 0.2, poll = 0.02 },
  upstreams = { mock = { base_url = %q, retry = { attempts = 3, base = 0.05, cap = 0.1 } } },
}
]]):format(mock.url))
    srv = H.start_server({ "--config", conf, "--scripts", dir })
  end)

  teardown(function() H.clean(srv, mock, dir, conf) end)

  it("signs in, filters failed runs, opens one's timeline, replays a DLQ entry and signs out", function()
    if not chromium then
      pending("SKIPPED: chromium is not installed, so the web console was not tested in a browser "
        .. "(make deps installs chromium, chromium-driver and python3-selenium)")
      return
    end
    for i = 1, 2 do
      local r = H.request(srv.url .. "/workflows/noop", { method = "POST", body = "{}" })
      assert.are.equal(200, r.status, r.body)
      r = H.request(srv.url .. "/workflows/charge", { method = "POST",
        body = ('{"amount":%d,"buyer":"b%d","card":"4242424242424242"}'):format(i * 10, i) })
      assert.are.equal(500, r.status, r.body)
    end
    local auth = { Authorization = "Bearer console-token" }
    local dead = H.eventually(function()
      local d = H.request(srv.url .. "/admin/dlq", { headers = auth }).json
      return d and d.entries and #d.entries >= 2 and d.entries
    end, 20)
    assert.is_truthy(dead, "the refused calls never reached the DLQ")
    local shots = H.build .. "/ui-screenshots"
    os.execute("rm -rf " .. H.quote(shots) .. " && mkdir -p " .. H.quote(shots))
    local py = io.open("/usr/bin/python3") and "/usr/bin/python3" or "python3"
    local r = H.exec(("%s tests/integration/console_browser.py %s %s %s %s %s %s"):format(py, H.quote(srv.url),
      "console-token", "charge", H.quote(dead[1].id), H.quote(dead[2].id), H.quote(shots)),
      { CHROMIUM = chromium }, 180)
    assert.are.equal(0, r.code, "the browser run failed:\n" .. r.stdout .. "\n" .. r.stderr)
    assert.is_nil(r.stdout:find("FAIL:"), r.stdout)
    assert.is_truthy(io.open(shots .. "/01-signin.png"), "no screenshot was saved")
  end)
end)
