-- A served run that passes its deadline: the caller gets 504 problem+json
-- with the run id, the record says timed_out with on_timeout's value, and
-- the callback carries it too.
local H = require "tests.integration.helpers"

local FIX = "tests/integration/fixtures/ctlerr/"

describe("a served run that times out", function()
  local mock, srv, dir, conf

  setup(function()
    mock = H.start_mock(120)
    dir = H.temp_dir({ ["slow.lua"] = H.read(FIX .. "slow.lua") })
    conf = H.write_temp(([[
return {
  admin_token = "s3cret",
  egress = { allow = { "127.0.0.1" } }, -- the callback goes to the mock
  outbox = { base = 0.05, cap = 0.2, poll = 0.02 },
  upstreams = { mock = { base_url = %q } },
}
]]):format(mock.url))
    srv = H.start_server({ "--config", conf, "--scripts", dir })
  end)

  teardown(function() H.clean(srv, mock, dir, conf) end)

  it("answers a synchronous request 504 problem+json with the run id; the record keeps on_timeout's value", function()
    local r = H.request(srv.url .. "/workflows/slow", { method = "POST", body = "{}" })
    assert.are.equal(504, r.status, r.body)
    assert.are.equal("application/problem+json", r.headers["content-type"])
    assert.are.equal(504, r.json.status)
    assert.are.equal("deadline", r.json.kind)
    assert.is_string(r.json.run_id)
    local rec = H.request(srv.url .. "/runs/" .. r.json.run_id, { headers = { Authorization = "Bearer s3cret" } })
    assert.are.equal(200, rec.status)
    assert.are.equal("timed_out", rec.json.status)
    assert.are.equal("deadline", rec.json.error.kind)
    assert.are.same({ ok = true, value = { alerted = r.json.run_id } }, rec.json.on_timeout)
  end)

  it("sends on_timeout's value in the callback", function()
    local r = H.request(srv.url .. "/workflows/slow?callback_url=" .. mock.url .. "/hook",
      { method = "POST", body = "{}", headers = { Prefer = "respond-async" } })
    assert.are.equal(202, r.status, r.body)
    local hook = H.eventually(function()
      for _, e in ipairs(mock.stats().log) do
        if e.path == "/hook" then
          return e
        end
      end
    end, 10)
    assert.is_truthy(hook, "no callback arrived")
    local body = H.decode(hook.body)
    assert.are.equal("timed_out", body.status)
    assert.are.same({ ok = true, value = { alerted = r.json.run_id } }, body.on_timeout)
  end)
end)
