-- contrib/grafana-dashboard.json and contrib/prometheus-alerts.yml against a
-- live chorus serve: every metric their queries name is on its /metrics
-- after a few runs (a renamed metric breaks a panel or an alert silently
-- otherwise), and promtool accepts the rules when it is installed.
local H = require "tests.integration.helpers"

local DASHBOARD = "contrib/grafana-dashboard.json"
local ALERTS = "contrib/prometheus-alerts.yml"

-- A call to the mock through a breaker, and three queued calls: one the
-- mock takes (delivered), two to an upstream nobody listens on: one lands
-- in the DLQ after its one attempt, the other waits to be retried.
local CALL = [[
local chorus = require "chorus"
local http = require "chorus.http"
return chorus.workflow {
  name = "call",
  run = function(ctx)
    local r = http.upstream("mock"):get("/ok")
    http.upstream("mock"):post("/later", { json = { n = ctx.input.n }, later = true })
    local q = http.upstream("gone"):post("/dead", { json = { n = ctx.input.n }, later = { attempts = 1 } })
    http.upstream("gone"):post("/retried", { json = { n = ctx.input.n }, later = { attempts = 5 } })
    return { status = r.status, json = { queued = q.outbox_id } }
  end,
}
]]

local FAILS = [[
local chorus = require "chorus"
return chorus.workflow { name = "fails", run = function() error("no") end }
]]

-- PromQL words that are not metrics: aggregation modifiers and binary
-- operators (function names are told apart by the "(" after them).
local KEYWORDS = { by = true, without = true, on = true, ignoring = true, group_left = true,
  group_right = true, ["and"] = true, ["or"] = true, unless = true, bool = true, offset = true }

-- The metric names a PromQL expression reads.
local function metric_names(expr, into)
  expr = expr:gsub('"[^"]*"', ""):gsub("%b{}", ""):gsub("%b[]", "")
  -- label lists of by/without/on/ignoring/group_*: labels, not metrics
  for _, word in ipairs({ "by", "without", "on", "ignoring", "group_left", "group_right" }) do
    expr = expr:gsub("%f[%w_]" .. word .. "%s*%b()", " ")
  end
  -- Grafana's label_values(METRIC, LABEL): the metric alone
  expr = expr:gsub("label_values%s*%(%s*([%a_:][%w_:]*)%s*,[^)]*%)", "%1")
  for pos, name in expr:gmatch("()([%a_:][%w_:]*)") do
    local before = pos > 1 and expr:sub(pos - 1, pos - 1) or " "
    local after = expr:match("^%s*(.)", pos + #name)
    if not before:match("[%w_.]") and after ~= "(" and not KEYWORDS[name] and not name:match("^%$") then
      into[name] = true
    end
  end
  return into
end

-- Every expr of the dashboard: panel targets and template variable queries.
local function dashboard_exprs()
  local dash = assert(H.decode(H.read(DASHBOARD)), DASHBOARD .. " is not JSON")
  local exprs = {}
  for _, p in ipairs(dash.panels) do
    for _, t in ipairs(p.targets or {}) do
      exprs[#exprs + 1] = t.expr
    end
  end
  for _, v in ipairs(dash.templating.list) do
    if v.type == "query" then
      exprs[#exprs + 1] = v.definition
    end
  end
  return exprs, dash
end

-- Every expr of the rules file: `expr: ...` on one line, or `expr: |` and
-- the lines indented under it.
local function alert_exprs()
  local exprs, block, indent = {}, nil, nil
  for line in (H.read(ALERTS) .. "\n"):gmatch("([^\n]*)\n") do
    if block then
      local lead = line:match("^(%s*)%S")
      if lead and #lead > indent then
        block[#block + 1] = line
      elseif lead then
        exprs[#exprs + 1] = table.concat(block, "\n")
        block = nil
      end
    end
    if not block then
      local lead, rest = line:match("^(%s*)expr:%s*(.-)%s*$")
      if rest == "|" or rest == ">" or rest == "|-" or rest == ">-" then
        block, indent = {}, #lead
      elseif rest then
        exprs[#exprs + 1] = rest
      end
    end
  end
  if block then
    exprs[#exprs + 1] = table.concat(block, "\n")
  end
  return exprs
end

-- The sample names of a /metrics text (histograms: _bucket, _sum, _count).
local function scraped(text)
  local names = {}
  for line in text:gmatch("[^\n]+") do
    local name = line:match("^([%a_:][%w_:]*)[{ ]")
    if name then
      names[name] = true
    end
  end
  return names
end

local function sorted(set)
  local list = {}
  for k in pairs(set) do
    list[#list + 1] = k
  end
  table.sort(list)
  return list
end

describe("the PromQL reader of this spec", function()
  it("finds the metrics and leaves out functions, labels, keywords and variables", function()
    local names = metric_names('histogram_quantile(0.99, sum by (le, upstream) '
      .. '(rate(a_bucket{x="y"}[$__rate_interval]))) / ignoring(z) b_total > 0 and on (i) c or vector(0) '
      .. 'and label_values(d, instance)', {})
    assert.are.same({ "a_bucket", "b_total", "c", "d" }, sorted(names))
  end)
end)

describe("contrib/ dashboards and alerts", function()
  local mock, dir, conf, srv

  setup(function()
    mock = H.start_mock(300)
    dir = H.temp_dir({ ["call.lua"] = CALL, ["fails.lua"] = FAILS })
    conf = H.write_temp(([[
return {
  admin_token = "s3cret",
  outbox = { base = 30, cap = 60, poll = 0.02 },
  upstreams = {
    mock = { base_url = %q, breaker = { window = 10, min_calls = 5, failure_rate = 50 } },
    gone = { base_url = "http://127.0.0.1:1" },
  },
}
]]):format(mock.url))
    srv = H.start_server({ "--config", conf, "--scripts", dir })
  end)

  teardown(function() H.clean(srv, mock, dir, conf) end)

  it("names only metrics that a live /metrics serves", function()
    for n = 1, 3 do
      local r = H.request(srv.url .. "/workflows/call", { method = "POST", body = ('{"n":%d}'):format(n) })
      assert.are.equal(200, r.status, r.body)
    end
    assert.are.equal(500, H.request(srv.url .. "/workflows/fails", { method = "POST", body = "{}" }).status)
    local dlq = H.eventually(function()
      local r = H.request(srv.url .. "/admin/dlq", { headers = { Authorization = "Bearer s3cret" } })
      return r.json and r.json.depth == 3 and r
    end, 20)
    assert.is_truthy(dlq, "the queued calls never reached the DLQ")
    local used, from = {}, {}
    local dexprs = dashboard_exprs()
    local aexprs = alert_exprs()
    assert.is_true(#dexprs >= 20, "dashboard queries: " .. #dexprs)
    assert.are.equal(8, #aexprs)
    for _, list in ipairs({ { DASHBOARD, dexprs }, { ALERTS, aexprs } }) do
      for _, expr in ipairs(list[2]) do
        for name in pairs(metric_names(expr, {})) do
          used[name] = true
          from[name] = list[1]
        end
      end
    end
    -- the outbox gauges are set once a second: look until they are
    local metrics, missing
    H.eventually(function()
      metrics = H.request(srv.url .. "/metrics")
      assert.are.equal(200, metrics.status)
      local served = scraped(metrics.body)
      missing = {}
      for _, name in ipairs(sorted(used)) do
        if not served[name] then
          missing[#missing + 1] = name .. " (" .. from[name] .. ")"
        end
      end
      return #missing == 0 and metrics.body:find("\nchorus_dlq_depth 3\n", 1, true)
    end, 20)
    assert.are.same({}, missing, "not on /metrics:\n" .. metrics.body)
    assert.truthy(metrics.body:find('chorus_breaker_state{breaker="mock",state="closed"} 1', 1, true), metrics.body)
    -- what the issue asks the files to show is among them
    for _, name in ipairs({ "chorus_outbox_depth", "chorus_outbox_oldest_due_age_seconds", "chorus_dlq_depth",
      "chorus_breaker_state", "chorus_runs_total", "chorus_http_request_duration_seconds_bucket",
      "chorus_runs_in_flight" }) do
      assert.is_true(used[name], name)
    end
  end)

  it("covers outbox depth and age, DLQ, breakers, failure rate and p99 with alerts", function()
    local text = table.concat(alert_exprs(), "\n")
    for _, needle in ipairs({ "chorus_outbox_depth", "chorus_outbox_oldest_due_age_seconds", "chorus_dlq_depth",
      'chorus_breaker_state{state="open"}', 'outcome=~"failed|timed_out"', "histogram_quantile(0.99" }) do
      assert.truthy(text:find(needle, 1, true), needle)
    end
  end)

  it("has a dashboard Grafana can import: unique panel ids, a data source variable, no fixed data source", function()
    local _, dash = dashboard_exprs()
    local ids = {}
    for _, p in ipairs(dash.panels) do
      assert.is_nil(ids[p.id], "panel id " .. tostring(p.id) .. " twice")
      ids[p.id] = true
      if p.type ~= "row" then
        assert.are.equal("${datasource}", p.datasource.uid, p.title)
      end
    end
    assert.are.equal("datasource", dash.templating.list[1].type)
    assert.is_string(dash.uid)
  end)

  it("passes promtool check rules (skipped without promtool)", function()
    if not H.exec("sh -c 'command -v promtool'").stdout:match("promtool") then
      print("promtool is not installed (Debian package prometheus, make deps): skipping the rules check")
      return
    end
    local r = H.exec("promtool check rules " .. ALERTS, nil, 60)
    assert.are.equal(0, r.code, r.stdout .. r.stderr)
    assert.truthy(r.stdout:find("SUCCESS: 8 rules found", 1, true), r.stdout)
  end)
end)
