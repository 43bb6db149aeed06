-- chorus.metrics: the Prometheus text a scrape gets — cumulative histogram
-- buckets, label escaping, stable series order.
local metrics = require "chorus.metrics"

local function lines_of(text, prefix)
  local out = {}
  for line in text:gmatch("[^\n]+") do
    if line:sub(1, #prefix) == prefix then
      out[#out + 1] = line
    end
  end
  return out
end

describe("chorus.metrics", function()
  it("renders histogram buckets cumulatively, a value on a bound counting in that bucket", function()
    local h = metrics.histogram("spec_latency_seconds", "Spec latency", { "upstream" }, { 0.01, 0.1, 1 })
    for _, v in ipairs({ 0.005, 0.01, 0.05, 0.5, 2, 0.1 }) do
      h.observe({ "a" }, v)
    end
    h.observe({ "b" }, 0.2)
    local text = metrics.render()
    assert.are.same({
      'spec_latency_seconds_bucket{upstream="a",le="0.01"} 2',
      'spec_latency_seconds_bucket{upstream="a",le="0.1"} 4',
      'spec_latency_seconds_bucket{upstream="a",le="1"} 5',
      'spec_latency_seconds_bucket{upstream="a",le="+Inf"} 6',
      'spec_latency_seconds_bucket{upstream="b",le="0.01"} 0',
      'spec_latency_seconds_bucket{upstream="b",le="0.1"} 0',
      'spec_latency_seconds_bucket{upstream="b",le="1"} 1',
      'spec_latency_seconds_bucket{upstream="b",le="+Inf"} 1',
    }, lines_of(text, "spec_latency_seconds_bucket"))
    assert.are.same({ 'spec_latency_seconds_count{upstream="a"} 6', 'spec_latency_seconds_count{upstream="b"} 1' },
      lines_of(text, "spec_latency_seconds_count"))
    assert.are.same({ 'spec_latency_seconds_sum{upstream="a"} 2.665' },
      lines_of(text, 'spec_latency_seconds_sum{upstream="a"}'))
    assert.truthy(text:find("# TYPE spec_latency_seconds histogram\n", 1, true))
  end)

  it("counts by label values, escaping quotes, backslashes and newlines", function()
    local c = metrics.counter("spec_calls_total", "Spec calls", { "upstream", "status" })
    c.inc({ "a", "200" })
    c.inc({ "a", "200" }, 2)
    c.inc({ 'we"ird\\\n', "500" })
    assert.are.same({
      'spec_calls_total{upstream="a",status="200"} 3',
      'spec_calls_total{upstream="we\\"ird\\\\\\n",status="500"} 1',
    }, lines_of(metrics.render(), "spec_calls_total{"))
  end)

  it("keeps at most MAX_SERIES series per metric, counting the rest in one _other series", function()
    -- label values come from outside (hosts scripts call): they must not
    -- grow the server's memory and every scrape without bound
    local c = metrics.counter("spec_hosts_total", "Hosts", { "upstream", "status" })
    local n = metrics.MAX_SERIES + 500
    for i = 1, n do
      c.inc({ "host-" .. i, 200 })
    end
    c.inc({ "host-1", 200 }) -- a series that exists still counts in its own
    local lines = lines_of(metrics.render(), "spec_hosts_total{")
    assert.are.equal(metrics.MAX_SERIES + 1, #lines)
    local text = table.concat(lines, "\n")
    assert.truthy(text:find('spec_hosts_total{upstream="host-1",status="200"} 2', 1, true))
    assert.truthy(text:find('spec_hosts_total{upstream="_other",status="_other"} 500', 1, true))
    assert.falsy(text:find('"host-' .. n .. '"', 1, true))
  end)

  it("keeps at most PER_WORKFLOW new series per workflow, the others' and the server's their own", function()
    local c = metrics.counter("spec_owned_total", "Owned", { "upstream" })
    for i = 1, metrics.MAX_SERIES + 10 do
      c.inc_key(c.key({ "bad-" .. i }, "hostile"))
    end
    local k = c.key({ "good" }, "honest")
    assert.are_not.equal(c.other(), k)
    c.inc_key(k)
    c.inc({ "server" })
    assert.are.equal(c.other(), c.key({ "bad-x" }, "hostile"))
    local text = table.concat(lines_of(metrics.render(), "spec_owned_total{"), "\n")
    assert.truthy(text:find('spec_owned_total{upstream="good"} 1', 1, true))
    assert.truthy(text:find('spec_owned_total{upstream="server"} 1', 1, true))
    assert.truthy(text:find('spec_owned_total{upstream="_other"} ' .. (metrics.MAX_SERIES + 10 - metrics.PER_WORKFLOW),
      1, true), text)
  end)

  it("updates a series through a key looked up once, the same series as by label values", function()
    local c = metrics.counter("spec_keyed_total", "Keyed", { "target", "status" })
    local k = c.key({ "x", 200 })
    c.inc_key(k)
    c.inc_key(k, 4)
    c.inc({ "x", "200" })
    assert.are.same({ 'spec_keyed_total{target="x",status="200"} 6' },
      lines_of(metrics.render(), "spec_keyed_total{"))
    local h = metrics.histogram("spec_keyed_seconds", "Keyed", { "target" }, { 1 })
    h.observe_key(h.key({ "x" }), 0.5)
    h.observe({ "x" }, 2)
    assert.are.same({ 'spec_keyed_seconds_bucket{target="x",le="1"} 1',
      'spec_keyed_seconds_bucket{target="x",le="+Inf"} 2' },
      lines_of(metrics.render(), "spec_keyed_seconds_bucket"))
  end)

  it("keeps a gauge's last value and adds to it", function()
    local g = metrics.gauge("spec_in_flight", "Spec gauge")
    g.set(nil, 5)
    g.add(nil, -2)
    assert.are.same({ "spec_in_flight 3" }, lines_of(metrics.render(), "spec_in_flight "))
  end)
end)
