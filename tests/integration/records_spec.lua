-- Runs whose records grow big, through a real server and its data folder:
-- every run ends (never stays `running`, also after a restart) whatever
-- its caller's memory cap, what one run writes to disk is bounded by
-- limits.run_record_bytes (kind record_too_large, which pcall cannot
-- swallow), so one script cannot fill the folder for every workflow, and
-- GET and DELETE /runs/ID handle a record at the cap under a small cap.
local H = require "tests.integration.helpers"

-- input.count strings of input.kb KiB each: a result the run holds within a
-- 16 MiB cap but that its handler, encoding it again (record, answer),
-- could not.
local CHUNKS = H.read("tests/integration/fixtures/chunks.lua")

-- input.count calls to the mock, each answering input.bytes bytes: every
-- response is journaled with its body. Each call in a pcall: a script
-- that tries to go on past the record cap.
local CALLS = [[
local chorus = require "chorus"
local http = require "chorus.http"
return chorus.workflow { name = "calls", run = function(ctx, input)
  local done, caught = 0, nil
  for _ = 1, input.count do
    local ok, err = pcall(function() return http.upstream("mock"):get("/x?stream_bytes=" .. input.bytes) end)
    if ok then
      done = done + 1
    else
      caught = type(err) == "table" and err.kind or tostring(err)
    end
  end
  return { done = done, caught = caught }
end }
]]

-- input.count ctx.step calls named by input.kb KiB each: the timeline the
-- record keeps.
local STEPS = [[
local chorus = require "chorus"
return chorus.workflow { name = "steps", run = function(ctx, input)
  for i = 1, input.count do
    pcall(ctx.step, string.rep("s", input.kb * 1024) .. i, function() return i end)
  end
  return "done"
end }
]]

-- input.count zeros: a small record (two bytes a value) whose decoded
-- tree is large (cJSON's node is 64 bytes).
local ZEROS = [[
local chorus = require "chorus"
return chorus.workflow { name = "zeros", run = function(ctx, input)
  local out = chorus.json.array({})
  for i = 1, input.count do
    out[i] = 0
  end
  return out
end }
]]

local function scripts()
  return H.temp_dir({ ["chunks.lua"] = CHUNKS, ["calls.lua"] = CALLS, ["steps.lua"] = STEPS, ["zeros.lua"] = ZEROS,
    ["echo.lua"] = H.read("tests/integration/fixtures/serve/echo.lua") })
end

local ADMIN = { Authorization = "Bearer tok" }

local function post(srv, name, input, headers)
  return H.post_json(srv.url .. "/workflows/" .. name, H.encode(input), headers)
end

-- The run's record as GET /runs/ID answers it (admin), and the answer.
local function record(srv, id)
  local r = H.request(srv.url .. "/runs/" .. id, { headers = ADMIN, max_time = 30 })
  return r.json, r
end

-- Restarts srv over its data folder with the same arguments; the new server.
local function restart(srv, args)
  srv.kill("TERM")
  srv.wait()
  return H.start_server(args)
end

local BIG = { count = 30, kb = 250 }

describe("a run whose record its caller's memory cap cannot hold", function()
  local dir, data, conf, srv, args

  setup(function()
    dir, data = scripts(), H.temp_dir()
    -- a result of about 7.3 MiB (under the record cap): the run holds it
    -- within 10 MiB, its handler encoding it (a buffer, then a string of
    -- it) could not
    conf = H.write_temp([[return { admin_token = "tok", limits = { run_memory_mb = 10 } }]])
    args = { "--scripts", dir, "--data", data, "--config", conf }
    srv = H.start_server(args)
  end)

  teardown(function() H.clean(srv, dir, data, conf) end)

  it("ends succeeded, is answered, stored and served, also after a restart", function()
    local r = post(srv, "chunks", BIG)
    assert.are.equal(200, r.status, r.body:sub(1, 300))
    assert.are.equal(30 * 250 * 1024 + 30 * 3 + 1, #r.body)
    local id = r.headers["x-run-id"]
    local rec = record(srv, id)
    assert.are.equal("succeeded", rec.status)
    assert.are.equal(30, #rec.result)
    srv = restart(srv, args)
    rec = record(srv, id)
    assert.are.equal("succeeded", rec.status)
    assert.are.equal(30, #rec.result)
  end)

  it("ends when it runs detached (Prefer: respond-async)", function()
    local r = post(srv, "chunks", BIG, { Prefer = "respond-async" })
    assert.are.equal(202, r.status, r.body)
    local rec = H.finished(srv, r.json.run_id, ADMIN, 30)
    assert.truthy(rec, "the run never ended")
    assert.are.equal("succeeded", rec.status)
  end)

  it("leaves no run running", function()
    local list = H.request(srv.url .. "/admin/runs?status=running", { headers = ADMIN }).json
    assert.are.same({}, list.runs)
  end)
end)

describe("limits.run_record_bytes", function()
  local dir, conf, srv, mock

  setup(function()
    dir, mock = scripts(), H.start_mock(200)
    conf = H.write_temp(([[
return { admin_token = "tok", limits = { run_record_bytes = 3000000 },
  upstreams = { mock = { base_url = %q } } }
]]):format(mock.url))
    srv = H.start_server({ "--scripts", dir, "--config", conf })
  end)

  teardown(function() H.clean(srv, mock, dir, conf) end)

  local function kind_of(rec)
    return type(rec.error) == "table" and rec.error.kind or nil
  end

  it("fails a run whose result passes it with kind record_too_large, its result not kept", function()
    local r = post(srv, "chunks", { count = 4 })
    assert.are.equal(500, r.status)
    assert.are.equal("record_too_large", r.json.kind)
    local rec = record(srv, r.headers["x-run-id"] or r.json.run_id)
    assert.are.equal("failed", rec.status)
    assert.are.equal("record_too_large", kind_of(rec))
    assert.is_nil(rec.result)
    assert.truthy(rec.error.message:find("limits.run_record_bytes (3000000 bytes)", 1, true), rec.error.message)
  end)

  it("stops a run whose journal passes it; the script's pcall does not swallow the stop", function()
    local r = post(srv, "calls", { count = 6, bytes = 1000000 })
    assert.are.equal(500, r.status, r.body)
    assert.are.equal("record_too_large", r.json.kind)
    local rec = record(srv, r.json.run_id)
    assert.are.equal("failed", rec.status)
    assert.are.equal("record_too_large", kind_of(rec))
    assert.truthy(rec.error.message:find("journal entry", 1, true), rec.error.message)
    -- two calls fit, the third's entry did not: no more were made
    assert.are.equal(3, #rec.timeline)
  end)

  it("stops a run whose timeline passes it", function()
    local r = post(srv, "steps", { count = 40, kb = 100 })
    assert.are.equal(500, r.status, r.body)
    local rec = record(srv, r.json.run_id)
    assert.are.equal("record_too_large", kind_of(rec))
    assert.truthy(rec.error.message:find("ctx.step", 1, true), rec.error.message)
  end)

  it("lets every run within it through, and the server serves the others", function()
    local r = post(srv, "calls", { count = 2, bytes = 1000000 })
    assert.are.equal(200, r.status, r.body)
    assert.are.same({ done = 2 }, r.json)
    assert.are.equal(200, post(srv, "echo", { a = 1 }).status)
    assert.are.equal(200, H.request(srv.url .. "/healthz").status)
  end)
end)

describe("limits.run_record_bytes = 0", function()
  local dir, conf, srv

  setup(function()
    dir = scripts()
    conf = H.write_temp([[return { limits = { run_memory_mb = 16, run_record_bytes = 0 } }]])
    srv = H.start_server({ "--scripts", dir, "--config", conf })
  end)

  teardown(function() H.clean(srv, dir, conf) end)

  it("caps no record: a 12 MiB result is kept and answered under a 16 MiB memory cap", function()
    local r = post(srv, "chunks", { count = 12 })
    assert.are.equal(200, r.status, r.body:sub(1, 300))
    assert.are.equal(12 * 1024 * 1024 + 12 * 3 + 1, #r.body)
    local rec = H.run_record(srv, r.headers["x-run-id"])
    assert.are.equal("succeeded", rec.status)
    assert.are.equal(12, #rec.result)
  end)
end)

describe("a data folder one script fills", function()
  local dir, conf, srv, mock

  setup(function()
    dir, mock = scripts(), H.start_mock(200)
    -- a folder of 24 MiB; the default record cap (8 MiB) keeps each run's
    -- share of it bounded
    conf = H.write_temp(([[
return { storage = { map_size_mb = 24, max_size_mb = 24 }, upstreams = { mock = { base_url = %q } } }
]]):format(mock.url))
    srv = H.start_server({ "--scripts", dir, "--config", conf })
  end)

  teardown(function() H.clean(srv, mock, dir, conf) end)

  it("stays writable for the other workflows", function()
    local r = post(srv, "calls", { count = 40, bytes = 1000000 })
    assert.are.equal("record_too_large", r.json and r.json.kind, r.body)
    for i = 1, 3 do
      local e = post(srv, "echo", { i = i })
      assert.are.equal(200, e.status, e.body)
    end
  end)
end)

describe("a record near the cap under a small memory cap", function()
  local dir, data, conf, srv, args

  setup(function()
    dir, data = scripts(), H.temp_dir()
    conf = H.write_temp([[return { admin_token = "tok", limits = { run_memory_mb = 16 } }]])
    args = { "--scripts", dir, "--data", data, "--config", conf }
    srv = H.start_server(args)
  end)

  teardown(function() H.clean(srv, dir, data, conf) end)

  it("is served by GET /runs/ID and refused by DELETE as finished, from memory and from disk", function()
    -- 7 chunks of 1100 KiB: about 7.5 MiB, under the default 8 MiB cap
    local r = post(srv, "chunks", { count = 7, kb = 1100 })
    assert.are.equal(200, r.status, r.body:sub(1, 300))
    local id = r.headers["x-run-id"]
    for round = 1, 2 do
      local rec, resp = record(srv, id)
      assert.are.equal(200, resp.status, round .. ": " .. resp.body:sub(1, 300))
      assert.are.equal("succeeded", rec.status)
      assert.are.equal(7, #rec.result)
      local d = H.request(srv.url .. "/runs/" .. id, { method = "DELETE", headers = ADMIN })
      assert.are.equal(409, d.status, d.body)
      if round == 1 then -- then read back from the data folder
        srv = restart(srv, args)
      end
    end
  end)
end)

-- Without a data folder the facts GET and DELETE /runs/ID decide by (the
-- run's workflow and status) came from the record kept in memory, decoded
-- whole under the request handler's memory cap: 500.
describe("a record near the cap without a data folder", function()
  local dir, conf, srv

  setup(function()
    dir = scripts()
    conf = H.write_temp([[return { admin_token = "tok", storage = { durable = false },
      limits = { run_memory_mb = 16 } }]])
    srv = H.start_server({ "--scripts", dir, "--config", conf })
  end)

  teardown(function() H.clean(srv, dir, conf) end)

  it("is served by GET /runs/ID and refused by DELETE as finished", function()
    local r = post(srv, "chunks", { count = 7, kb = 1100 })
    assert.are.equal(200, r.status, r.body:sub(1, 300))
    local id = r.headers["x-run-id"]
    local rec, resp = record(srv, id)
    assert.are.equal(200, resp.status, resp.body:sub(1, 300))
    assert.are.equal("succeeded", rec.status)
    assert.are.equal(7, #rec.result)
    local d = H.request(srv.url .. "/runs/" .. id, { method = "DELETE", headers = ADMIN })
    assert.are.equal(409, d.status, d.body)
    assert.truthy(d.body:find("succeeded", 1, true), d.body)
  end)
end)

describe("a record of many small values", function()
  local dir, conf, srv

  setup(function()
    dir = scripts()
    conf = H.write_temp([[return { admin_token = "tok", limits = { run_memory_mb = 16 } }]])
    srv = H.start_server({ "--scripts", dir, "--config", conf })
  end)

  teardown(function() H.clean(srv, dir, conf) end)

  it("is served by GET /runs/ID without decoding it (a 600 KB record decodes to 20 MB)", function()
    local r = post(srv, "zeros", { count = 300000 })
    assert.are.equal(200, r.status, r.body:sub(1, 300))
    local rec, resp = record(srv, r.headers["x-run-id"])
    assert.are.equal(200, resp.status, resp.body:sub(1, 300))
    assert.are.equal(300000, #rec.result)
    local d = H.request(srv.url .. "/runs/" .. r.headers["x-run-id"], { method = "DELETE", headers = ADMIN })
    assert.are.equal(409, d.status, d.body)
  end)
end)

describe("limits.run_record_bytes in the config", function()
  local dir

  setup(function()
    dir = H.temp_dir({ ["echo.lua"] = H.read("tests/integration/fixtures/serve/echo.lua") })
  end)

  teardown(function() H.clean(dir) end)

  local function serve_with(body)
    local conf = H.write_temp("return { " .. body .. " }")
    local data = H.temp_dir()
    local r = H.chorus_run({ "serve", "--config", conf, "--scripts", dir, "--data", data,
      "--listen", "127.0.0.1:0" }, nil, 20)
    os.remove(conf)
    os.execute("rm -rf " .. H.quote(data))
    return r
  end

  local RANGE = "limits.run_record_bytes must be between 4096 and 1099511627776 (or 0 for none), got "
  local cases = {
    { "limits = { run_record_bytes = 100 }", RANGE .. "100" },
    { "limits = { run_record_bytes = -1 }", RANGE .. "-1" },
    { "limits = { run_record_bytes = 1e15 }", RANGE .. "1000000000000000" },
    { "limits = { run_record_bytes = 8192.5 }", "limits.run_record_bytes must be an integer, got 8192.5" },
    { "limits = { run_record_bytes = 0/0 }", "limits.run_record_bytes must be a number, got NaN" },
    { "limits = { run_record_bytes = '8MB' }", "limits.run_record_bytes must be a number, got string" },
  }
  for _, case in ipairs(cases) do
    it(("refuses to start with %s"):format(case[1]), function()
      local r = serve_with(case[1])
      assert.are.equal(2, r.code, r.stderr)
      assert.truthy(r.stderr:find(case[2], 1, true), r.stderr)
      assert.are.equal("", r.stdout)
    end)
  end
end)

-- Three calls answering input.bytes bytes each (journaled with their
-- bodies), a call the mock holds for CHORUS_TEST_PARK_MS, three more.
local GROWER = [[
local chorus = require "chorus"
local http = require "chorus.http"
return chorus.workflow { name = "grower", run = function(ctx, input)
  local mock = http.upstream "mock"
  for i = 1, 3 do
    mock:get("/grow/" .. i .. "?stream_bytes=" .. input.bytes)
  end
  mock:get("/grow-park?delay=" .. chorus.env("CHORUS_TEST_PARK_MS", "0"), { timeout = 120 })
  for i = 4, 6 do
    mock:get("/grow/" .. i .. "?stream_bytes=" .. input.bytes)
  end
  return "grown"
end }
]]

-- The journal's bytes were counted from the run's (re)start: a run that
-- crash-loops wrote past limits.run_record_bytes, each life under it.
describe("limits.run_record_bytes across a SIGKILL", function()
  local dir, data, conf, srv, mock, args

  setup(function()
    mock = H.start_mock(300)
    dir, data = H.temp_dir({ ["grower.lua"] = GROWER }), H.temp_dir()
    conf = H.write_temp(([[return { admin_token = "tok", limits = { run_record_bytes = 100000 },
      upstreams = { mock = { base_url = %q } } }]]):format(mock.url))
    args = { "--scripts", dir, "--data", data, "--config", conf }
  end)

  teardown(function() H.clean(srv, mock, dir, data, conf) end)

  it("counts the journal written before the restart", function()
    srv = H.start_server(args, { CHORUS_TEST_PARK_MS = "60000" })
    -- 3 × 25 KB journaled before the kill (under the cap), 3 × 25 KB after
    local r = post(srv, "grower", { bytes = 25000 }, { Prefer = "respond-async" })
    assert.are.equal(202, r.status, r.body)
    local id = r.json.run_id
    assert.truthy(H.eventually(function() return (mock.stats().by_path["/grow-park"] or 0) == 1 end, 10))
    srv.kill("KILL")
    srv.wait()
    srv = H.start_server(args)
    local rec = H.finished(srv, id, ADMIN, 30)
    assert.truthy(rec, "the run never ended")
    assert.are.equal("failed", rec.status)
    assert.are.equal("record_too_large", rec.error.kind)
    assert.is_nil(mock.stats().by_path["/grow/6"]) -- stopped before its sixth call
  end)
end)

-- Without a data folder the finished records live only in memory, in one
-- ring for every workflow: one workflow's large results pushed every other
-- workflow's records out, and their GET /runs/ID answered 404 soon after
-- the run ended. Each workflow now holds at most its share of the ring.
describe("records without a data folder", function()
  local dir, conf, srv

  setup(function()
    dir = scripts()
    conf = H.write_temp([[return { admin_token = "tok", storage = { durable = false },
      limits = { run_memory_mb = 32 } }]])
    srv = H.start_server({ "--scripts", dir, "--config", conf })
  end)

  teardown(function() H.clean(srv, dir, conf) end)

  it("keep one workflow's record readable while another floods the ring with large results", function()
    local r = post(srv, "echo", { mine = "kept" })
    assert.are.equal(200, r.status, r.body)
    local mine = r.headers["x-run-id"]
    -- 40 records of 2 MiB: past the 64 MiB every workflow shared
    local first, last
    for _ = 1, 40 do
      local f = post(srv, "chunks", { count = 1, kb = 2048 })
      assert.are.equal(200, f.status, f.body:sub(1, 300))
      first, last = first or f.headers["x-run-id"], f.headers["x-run-id"]
    end
    local rec, resp = record(srv, mine)
    assert.are.equal(200, resp.status, resp.body:sub(1, 300))
    assert.are.equal("kept", rec.result.input.mine)
    -- the flood pushed out only its own oldest records
    local _, gone = record(srv, first)
    assert.are.equal(404, gone.status, gone.body:sub(1, 300))
    local newest, ok = record(srv, last)
    assert.are.equal(200, ok.status, ok.body:sub(1, 300))
    assert.are.equal("succeeded", newest.status)
  end)
end)
