-- Limits through real processes: response bodies count against the run's
-- memory cap and each call's max_response_bytes (issue 13, item 4); config
-- numbers are range-checked and a server drains within drain_timeout even
-- under a tiny memory cap (item 8).
local H = require "tests.integration.helpers"

local BIG_BODY = "tests/integration/fixtures/big_body.lua"

describe("response bodies", function()
  local mock, conf, small

  setup(function()
    mock = H.start_mock(200)
    conf = H.write_temp(([[
return { upstreams = { mock = { base_url = %q }, capped = { base_url = %q, max_response_bytes = 50000 } } }
]]):format(mock.url, mock.url))
    small = H.write_temp(([[
return { limits = { run_memory_mb = 4 },
  upstreams = { mock = { base_url = %q, max_response_bytes = 100000000 } } }
]]):format(mock.url))
  end)

  teardown(function()
    mock.stop()
    os.remove(conf)
    os.remove(small)
  end)

  local function run(config, input)
    local r = H.chorus_run({ "run", BIG_BODY, "--config", config, "--input", H.encode(input) }, nil, 60)
    return r, H.decode(r.stdout), H.decode(r.stderr)
  end

  it("stops an endless body at the default 16 MiB with kind too_large", function()
    local r, out = run(conf, { path = "/x?stream_bytes=endless" })
    assert.are.equal(0, r.code, r.stderr)
    assert.are.equal("too_large", out.kind)
    assert.are.equal("mock", out.upstream)
    assert.are.equal(1, out.attempts)
    assert.truthy(out.message:find("max_response_bytes (16777216 bytes)", 1, true), out.message)
  end)

  it("stops a body without Content-Length at the per-call limit", function()
    local _, out = run(conf, { path = "/x?stream_bytes=100000&chunked=1", max = 20000 })
    assert.are.equal("too_large", out.kind)
    assert.truthy(out.message:find("(20000 bytes)", 1, true), out.message)
  end)

  it("refuses a Content-Length past the upstream's limit before reading the body", function()
    local _, out = run(conf, { path = "/x?stream_bytes=60000" })
    assert.are.equal(200, out.status) -- "mock" has the default limit: 60,000 bytes pass
    local _, capped = run(conf, { path = "/x?stream_bytes=60000", via = "capped" })
    assert.are.equal("too_large", capped.kind)
    assert.are.equal("capped", capped.upstream)
    assert.truthy(capped.message:find("Content-Length exceeds max_response_bytes (50000 bytes)", 1, true),
      capped.message)
  end)

  it("ends a run whose body would pass its memory cap with kind memory", function()
    for _, path in ipairs({ "/x?stream_bytes=endless", "/x?stream_bytes=8000000" }) do
      local r, _, err = run(small, { path = path })
      assert.are.equal(1, r.code, r.stdout)
      assert.are.equal("memory", err.error.kind, r.stderr)
    end
  end)

  it("still delivers a body within every limit", function()
    local r, out = run(small, { path = "/x?stream_bytes=1000000" })
    assert.are.equal(0, r.code, r.stderr)
    assert.are.same({ status = 200, bytes = 1000000 }, out)
    local _, plain = run(conf, { url = mock.url, path = "/x?stream_bytes=200000" })
    assert.are.same({ status = 200, bytes = 200000 }, plain)
  end)
end)
