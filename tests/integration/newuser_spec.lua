-- What a new user runs into (issue 14, item 8), through real processes:
-- the DLQ listing, queued calls to a named upstream after a config fix, the
-- outbox age metric, reloads of a file saved in two writes, `chorus test`.
local H = require "tests.integration.helpers"

local FIX = "tests/integration/fixtures/newuser/"

local function config_text(api_url, mock_url)
  return ([[
return {
  admin_token = "s3cret",
  outbox = { base = 30, cap = 60, poll = 0.02 },
  upstreams = { api = { base_url = %q }, mock = { base_url = %q } },
}
]]):format(api_url, mock_url)
end

local function lines(text)
  local out = {}
  for line in text:gmatch("[^\n]+") do
    out[#out + 1] = H.decode(line)
  end
  return out
end

describe("the outbox and the DLQ", function()
  local mock, dir, conf, data, srv

  local function start()
    srv = H.start_server({ "--config", conf, "--scripts", dir, "--data", data })
  end

  local function post(path, body)
    return H.request(srv.url .. path, { method = "POST", body = body })
  end

  local function cli(...)
    local args = { ... }
    for i, a in ipairs(args) do
      args[i] = H.quote(a)
    end
    return H.exec(H.chorus .. " " .. table.concat(args, " ") .. " --data " .. H.quote(data))
  end

  local function dlq()
    return lines(cli("dlq", "list").stdout)
  end

  setup(function()
    mock = H.start_mock(300)
    dir = H.temp_dir({ ["queue.lua"] = H.read(FIX .. "queue.lua"), ["flaky.lua"] = H.read(FIX .. "flaky.lua") })
    conf = H.write_temp(config_text("http://127.0.0.1:1", mock.url)) -- api: nobody listens there
    data = H.temp_dir()
    start()
  end)

  teardown(function() H.clean(srv, mock, dir, data, conf) end)

  it("dlq list prints id, kind, target, due, attempts, last_error, newest first", function()
    local ids = {}
    for n = 1, 3 do
      local r = post("/workflows/queue", ('{"n":%d}'):format(n))
      assert.are.equal(200, r.status, r.body)
      ids[n] = r.json.id
      assert.is_truthy(H.eventually(function() return #dlq() == n end, 10), "entry never reached the DLQ")
    end
    local list = dlq()
    assert.are.same({ ids[3], ids[2], ids[1] }, { list[1].id, list[2].id, list[3].id })
    local e = list[1]
    assert.are.equal("http", e.kind)
    assert.are.equal("POST api:/moved", e.target)
    assert.are.equal(1, e.attempts)
    assert.is_number(e.due)
    assert.are.equal("connect", e.last_error.kind)
    assert.is_nil(e.request) -- the listing shows the documented fields, not the whole entry
    assert.are.equal(1, #lines(cli("dlq", "list", "--limit", "1").stdout))
  end)

  it("the outbox age metric grows while an entry fails and backs off", function()
    local r = post("/workflows/flaky", "{}")
    assert.are.equal(200, r.status, r.body)
    assert.is_truthy(H.eventually(function()
      for _, e in ipairs(mock.stats().log) do
        if e.path == "/flaky" then
          return true
        end
      end
    end, 10), "the entry was never tried")
    -- its next try is 15 to 30 s away; the age counts from its creation
    local age = H.eventually(function()
      local body = H.request(srv.url .. "/metrics").body
      local v = tonumber(body:match("\nchorus_outbox_oldest_due_age_seconds ([%d%.e+]+)"))
      return v and v >= 2 and v
    end, 15)
    assert.is_truthy(age, "chorus_outbox_oldest_due_age_seconds stayed under 2 s")
    local out = lines(cli("outbox", "list").stdout)
    assert.are.equal(r.json.id, out[1].id)
    assert.are.equal("POST mock:/flaky?status=503", out[1].target)
    assert.are.equal(1, out[1].attempts)
    assert.are.equal(503, out[1].last_error.status)
  end)

  it("a DLQ entry replayed after a config fix goes to the upstream's new base_url", function()
    local first = dlq()[3].id
    srv.stop()
    srv = nil
    local f = assert(io.open(conf, "w"))
    f:write(config_text(mock.url, mock.url))
    f:close()
    local out = cli("dlq", "replay", first)
    assert.are.equal(0, out.code, out.stderr)
    start()
    local hit = H.eventually(function()
      for _, e in ipairs(mock.stats().log) do
        if e.path == "/moved" then
          return e
        end
      end
    end, 10)
    assert.is_truthy(hit, "the replayed call did not reach the new address")
    assert.are.same({ n = 1 }, H.decode(hit.body))
  end)
end)

describe("reload on a file change", function()
  it("waits until the file is quiet: a file saved in two writes is no failed reload", function()
    local dir = H.temp_dir({ ["flaky.lua"] = H.read(FIX .. "flaky.lua") })
    local srv = H.start_server({ "--scripts", dir })
    local text = H.read(FIX .. "queue.lua")
    local half = #text // 2
    local f = assert(io.open(dir .. "/queue.lua", "w"))
    f:write(text:sub(1, half)) -- not valid Lua on its own
    f:flush()
    H.sleep(0.25)
    f:write(text:sub(half + 1))
    f:close()
    local loaded = H.eventually(function()
      local log = H.read(srv.log)
      return log:find('"reason":"file change"', 1, true) and log:find('"queue"', 1, true) and log
    end, 10)
    srv.stop()
    os.execute("rm -rf " .. H.quote(dir))
    assert.is_truthy(loaded, "the new script was never loaded")
    assert.is_nil(loaded:find("reload failed", 1, true), loaded)
  end)
end)

describe("chorus test without a folder", function()
  local root, chorus

  setup(function()
    root = H.temp_dir()
    chorus = H.exec("pwd").stdout:match("[^\n]+") .. "/" .. H.chorus
    for _, d in ipairs({ "other", "proj/specs", "proj/sub" }) do
      os.execute("mkdir -p " .. H.quote(root .. "/" .. d))
    end
    local function write(path, text)
      local f = assert(io.open(root .. "/" .. path, "w"))
      f:write(text)
      f:close()
    end
    write("other/x_spec.lua", 'it("other", function() error("ran the other project") end)\n')
    write("proj/.busted", 'return { default = { ROOT = { "specs" } } }\n')
    write("proj/specs/a_spec.lua", 'it("mine", function() assert.is_true(true) end)\n')
  end)

  teardown(function() H.clean(root) end)

  local function test_in(dir, ...)
    local args = { ... }
    for i, a in ipairs(args) do
      args[i] = H.quote(a)
    end
    return H.exec("sh -c " .. H.quote(("cd %s && %s test %s"):format(H.quote(root .. "/" .. dir),
      H.quote(chorus), table.concat(args, " "))), nil, 60)
  end

  it("runs no other project's specs from a folder that is no project", function()
    local r = test_in(".")
    assert.is_nil((r.stdout .. r.stderr):find("ran the other project", 1, true), r.stdout)
    assert.are.equal(2, r.code, r.stderr)
    assert.truthy(r.stderr:find("no project here", 1, true), r.stderr)
  end)

  it("runs the specs of the nearest project up (its .busted says where)", function()
    local r = test_in("proj/sub")
    assert.are.equal(0, r.code, r.stdout .. r.stderr)
    assert.truthy(r.stdout:find("1 success / 0 failures", 1, true), r.stdout)
  end)

  it("runs one spec file", function()
    local r = test_in("other", root .. "/proj/specs/a_spec.lua")
    assert.are.equal(0, r.code, r.stdout .. r.stderr)
    assert.truthy(r.stdout:find("1 success / 0 failures", 1, true), r.stdout)
  end)
end)

describe("the README's config example", function()
  it("runs as printed (with its secrets set)", function()
    local readme = H.read("README.md")
    local example = readme:match("### Config file\n\n```lua\n(.-)```")
    assert.truthy(example and example:find('local chorus = require "chorus"', 1, true))
    local path = H.write_temp(example)
    local srv = H.start_server({ "--config", path, "--scripts", "examples/fanout" }, {
      CHORUS_ADMIN_TOKEN = "t0ken", CHORUS_SECRET_WEBHOOK = "whsec",
      CHORUS_SECRET_DONATION_TOKEN = "dt", CHORUS_SECRET_DONATION_HMAC = "dh",
      CHORUS_SECRET_EVENTS_TOKEN = "et", CHORUS_SECRET_EVENTS_HMAC = "eh", CHORUS_SECRET_TOKENIZE_TOKEN = "tt" })
    local r = H.request(srv.url .. "/healthz")
    srv.stop()
    os.remove(path)
    assert.are.equal(200, r.status)
  end)

  -- The reference table names each key the config accepts, and names no
  -- key it does not: a row `| `limits.run_log_lines` | ...` or one that
  -- groups keys of a table (`| `outbox.attempts` / `concurrency` | ...`).
  local function reference()
    local readme = H.read("README.md")
    local ref = assert(readme:match("\n### Config file\n(.-)\n### "))
    local rows = {}
    for row in ref:gmatch("\n(| `[^\n]+)") do
      local head = row:match("^| ([^|]+) |")
      local prefix = head:match("^`([%w_.]+%.)")
      for name in head:gmatch("`([%w_.]+)`") do
        rows[name:find(".", 1, true) and name or prefix .. name] = true
      end
    end
    return ref, rows
  end

  it("names in its reference every key the config accepts, with no key it does not", function()
    local K = require("chorus.config").KEYS
    local ref, rows = reference()
    local want = {}
    for k in pairs(K.limits) do
      want["limits." .. k] = true
    end
    for section, keys in pairs(K.sections) do
      for k in pairs(keys) do
        want[section .. "." .. k] = true
      end
    end
    for sub, keys in pairs(K.upstream_numbers) do
      for k in pairs(keys) do
        want["upstreams.NAME." .. (sub == "" and "" or sub .. ".") .. k] = true
      end
    end
    for k in pairs(want) do
      assert.truthy(rows[k], ("README's config reference has no row for %s"):format(k))
    end
    for k in pairs(rows) do
      local top = k:match("^([%w_]+)%.")
      if top == "limits" or (K.sections[top] and top ~= "storage" and top ~= "telemetry") then
        assert.truthy(want[k], ("README's config reference names %s, which the config refuses"):format(k))
      end
    end
    -- the example sets every top-level key and every upstream key
    local example = ref:match("```lua\n(.-)```")
    for k in pairs(K.fields) do
      assert.truthy(example:find("%f[%w_]" .. k .. " = "), ("the config example has no %s"):format(k))
    end
    for k in pairs(K.upstream) do
      assert.truthy(example:find("%f[%w_]" .. k .. " = "), ("the config example's upstream has no %s"):format(k))
    end
  end)
end)
