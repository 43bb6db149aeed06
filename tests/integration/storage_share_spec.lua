-- One workflow's share of the data folder (storage.workflow_share_mb),
-- through a real server: a workflow whose runs keep big records, or whose
-- runs enqueue big outbox entries, is refused once it holds its share
-- (507 for a new run, kind storage_share for a write of a running one),
-- as is one whose keyed requests keep big answers (the stored responses
-- count), and every other workflow is still served from the same folder.
local H = require "tests.integration.helpers"

-- input.count strings of input.kb KiB each: a finished record that big.
local CHUNKS = H.read("tests/integration/fixtures/chunks.lua")

-- input.count outbox entries due in an hour, each with input.kb KiB of
-- input: they stay pending. Each enqueue in a pcall: a script that tries
-- to go on past its share.
local LATER = [[
local chorus = require "chorus"
return chorus.workflow { name = "later", run = function(ctx, input)
  local done, caught = 0, nil
  for i = 1, input.count do
    local ok, err = pcall(ctx.later, "echo", { i = i, pad = string.rep("p", input.kb * 1024) }, { delay = 3600 })
    if ok then
      done = done + 1
    else
      caught = type(err) == "table" and err.kind or tostring(err)
    end
  end
  return { done = done, caught = caught }
end }
]]

local function scripts()
  return H.temp_dir({ ["chunks.lua"] = CHUNKS, ["later.lua"] = LATER,
    ["echo.lua"] = H.read("tests/integration/fixtures/serve/echo.lua") })
end

local function post(srv, name, input, headers)
  return H.post_json(srv.url .. "/workflows/" .. name, H.encode(input), headers)
end

-- The value of series `name{workflow="wf"}` in /metrics, or nil.
local function held_metric(srv, wf)
  local body = H.request(srv.url .. "/metrics").body
  return tonumber(body:match('chorus_workflow_storage_bytes{workflow="' .. wf .. '"} (%d+)'))
end

-- The victim: three runs of another workflow, each answered and stored.
local function victim_served(srv)
  for i = 1, 3 do
    local e = post(srv, "echo", { i = i })
    assert.are.equal(200, e.status, e.body)
  end
end

describe("a workflow whose runs keep big records in a small data folder", function()
  local dir, data, conf, srv, args

  setup(function()
    dir, data = scripts(), H.temp_dir()
    -- 32 MiB of folder; one workflow's share is half of it by default
    conf = H.write_temp([[return { storage = { map_size_mb = 32, max_size_mb = 32 } }]])
    args = { "--scripts", dir, "--data", data, "--config", conf }
    srv = H.start_server(args)
  end)

  teardown(function() H.clean(srv, dir, data, conf) end)

  it("gets 507 naming it and its share, while the other workflows are served", function()
    local refused
    for _ = 1, 30 do -- 2 MiB a run: 15 runs fill the folder whoever writes them
      local r = post(srv, "chunks", { count = 8, kb = 256 })
      if r.status ~= 200 then
        refused = r
        break
      end
    end
    assert.is_not_nil(refused, "no run of the flooding workflow was refused")
    assert.are.equal(507, refused.status, refused.body:sub(1, 300))
    assert.matches("application/problem+json", refused.headers["content-type"], 1, true)
    assert.matches("workflow 'chunks'", refused.json.detail, 1, true)
    assert.matches("storage.workflow_share_mb = 16", refused.json.detail, 1, true)
    victim_served(srv)
    local held = held_metric(srv, "chunks")
    assert.is_true(held >= 16 * 1024 * 1024 and held < 20 * 1024 * 1024, tostring(held))
    assert.is_true(held_metric(srv, "echo") > 0)
  end)

  it("keeps the counts across a restart", function()
    local before = held_metric(srv, "chunks")
    srv.kill("TERM")
    srv.wait()
    srv = H.start_server(args)
    assert.are.equal(before, held_metric(srv, "chunks"))
    assert.are.equal(507, post(srv, "chunks", { count = 1, kb = 1 }).status)
    victim_served(srv)
  end)
end)

describe("a workflow whose runs enqueue big outbox entries", function()
  local dir, data, conf, srv

  setup(function()
    dir, data = scripts(), H.temp_dir()
    conf = H.write_temp([[return { storage = { map_size_mb = 32, max_size_mb = 32, workflow_share_mb = 8 } }]])
    srv = H.start_server({ "--scripts", dir, "--data", data, "--config", conf })
  end)

  teardown(function() H.clean(srv, dir, data, conf) end)

  it("stops its run at the enqueue past its share (pcall does not catch it); others are served", function()
    -- 100 entries of 500 KiB: 50 MiB, more than the whole folder
    local r = post(srv, "later", { count = 100, kb = 500 })
    assert.are.equal(500, r.status, r.body:sub(1, 300))
    assert.are.equal("storage_share", r.json.kind, r.body)
    local rec = H.run_record(srv, r.json.run_id or r.headers["x-run-id"])
    assert.are.equal("failed", rec.status)
    assert.matches("workflow 'later' holds", rec.error.message, 1, true)
    assert.matches("storage.workflow_share_mb = 8", rec.error.message, 1, true)
    victim_served(srv)
    local held = held_metric(srv, "later")
    assert.is_true(held >= 8 * 1024 * 1024 and held < 10 * 1024 * 1024, tostring(held))
    -- and its next run is refused before it starts
    assert.are.equal(507, post(srv, "later", { count = 1, kb = 1 }).status)
  end)
end)

describe("a workflow whose keyed requests keep big answers", function()
  local dir, data, conf, srv

  setup(function()
    dir, data = scripts(), H.temp_dir()
    conf = H.write_temp([[return { storage = { map_size_mb = 32, max_size_mb = 32, workflow_share_mb = 8 } }]])
    srv = H.start_server({ "--scripts", dir, "--data", data, "--config", conf })
  end)

  teardown(function() H.clean(srv, dir, data, conf) end)

  it("counts each stored answer in its share, and gets 507 once they fill it", function()
    local MiB = 1024 * 1024
    local base = held_metric(srv, "chunks") or 0
    local r = post(srv, "chunks", { count = 4, kb = 256 }, { ["Idempotency-Key"] = "k1" })
    assert.are.equal(200, r.status, r.body:sub(1, 300))
    assert.is_true(#r.body >= MiB, tostring(#r.body))
    -- its record holds the 1 MiB result, and the answer kept for the key
    -- (24 h) as much again
    local one = held_metric(srv, "chunks")
    assert.is_true(one - base >= 2 * MiB and one - base < 3 * MiB, tostring(one - base))
    -- a replay stores nothing more
    local again = post(srv, "chunks", { count = 4, kb = 256 }, { ["Idempotency-Key"] = "k1" })
    assert.are.equal(200, again.status)
    assert.are.equal("true", again.headers["idempotent-replayed"])
    assert.are.equal(one, held_metric(srv, "chunks"))
    -- 2 MiB a keyed run: the 8 MiB share is full after 4 (without the
    -- answers counted, after 8), and a new key is refused like any run
    local refused
    for i = 2, 7 do
      local ri = post(srv, "chunks", { count = 4, kb = 256 }, { ["Idempotency-Key"] = "k" .. i })
      if ri.status ~= 200 then
        refused = ri
        break
      end
    end
    assert.is_not_nil(refused, "no keyed run of the workflow was refused")
    assert.are.equal(507, refused.status, refused.body:sub(1, 300))
    assert.matches("workflow 'chunks'", refused.json.detail, 1, true)
    local held = held_metric(srv, "chunks")
    assert.is_true(held >= 8 * MiB and held < 11 * MiB, tostring(held))
    victim_served(srv)
    -- a retry of a key that already has its answer still gets it: a replay
    -- stores nothing, so the full share does not refuse it
    local replay = post(srv, "chunks", { count = 4, kb = 256 }, { ["Idempotency-Key"] = "k1" })
    assert.are.equal(200, replay.status, replay.body:sub(1, 300))
    assert.are.equal("true", replay.headers["idempotent-replayed"])
  end)
end)

-- input.kb KiB of body in a call the outbox sends later, which the mock
-- refuses for good (400): the entry goes to the DLQ, held by its workflow
-- until it is dropped. No call without input.kb.
local DOOMED = [[
local chorus = require "chorus"
local http = require "chorus.http"
return chorus.workflow { name = "doomed", run = function(ctx, input)
  if input.kb then
    local r = http.upstream("mock"):post("/doomed?status=400", { json = { pad = string.rep("d", input.kb * 1024) },
      later = true })
    return { entry = r.outbox_id }
  end
  return { entry = false }
end }
]]

-- `chorus dlq drop` while the server runs on the same folder: the server
-- kept what the workflow held in memory and wrote it back with its next
-- commit, over the CLI's count, so the dropped entry's bytes were never
-- given back (the share drifted, up to 507 for good).
describe("chorus dlq drop while the server runs", function()
  local mock, dir, data, conf, srv

  setup(function()
    mock = H.start_mock(300)
    dir, data = H.temp_dir({ ["doomed.lua"] = DOOMED }), H.temp_dir()
    conf = H.write_temp(([[return { upstreams = { mock = { base_url = %q } } }]]):format(mock.url))
    srv = H.start_server({ "--scripts", dir, "--data", data, "--config", conf })
  end)

  teardown(function() H.clean(srv, mock, dir, data, conf) end)

  -- What workflow wf holds in the folder (the server stopped): the count
  -- stored, and its runs' records and journals counted one by one (its
  -- outbox and DLQ entries are gone by then).
  local function held_in_folder(wf)
    local store = require "chorus.store"
    local st = assert(store.open(data))
    local stored = tonumber(st.st:get("meta", "held\0" .. wf)) or 0
    local real = 0
    for _, row in ipairs(st.st:scan("runs", { limit = math.maxinteger })) do
      if H.decode(row[2]).workflow == wf then
        real = real + #row[2]
        for _, j in ipairs(st.st:scan("journal", { prefix = row[1], limit = math.maxinteger })) do
          real = real + #j[2]
        end
      end
    end
    for _, db in ipairs({ "outbox", "dlq" }) do
      assert.are.equal(0, st:count(db))
    end
    st:close()
    return stored, real
  end

  it("gives the dropped entry's bytes back, in the server's count and in the folder", function()
    local r = post(srv, "doomed", { kb = 64 })
    assert.are.equal(200, r.status, r.body)
    local id = r.json.entry
    assert.truthy(H.eventually(function()
      return H.chorus_run({ "dlq", "list", "--data", data }).stdout:find(id, 1, true)
    end, 10), "the entry never reached the DLQ")
    local before = held_metric(srv, "doomed")
    assert.is_true(before > 64 * 1024)
    local out = H.chorus_run({ "dlq", "drop", id, "--data", data })
    assert.are.equal(0, out.code, out.stderr)
    -- the server's count gives it back (it folds the CLI's change in)
    assert.truthy(H.eventually(function() return held_metric(srv, "doomed") < 64 * 1024 end, 10),
      "the server still counts the dropped entry: " .. tostring(held_metric(srv, "doomed")))
    -- and its next writes for the workflow keep it given back
    for _ = 1, 3 do
      assert.are.equal(200, post(srv, "doomed", {}).status)
    end
    local shown = held_metric(srv, "doomed")
    srv.stop()
    srv = nil
    local stored, real = held_in_folder("doomed")
    assert.are.equal(real, stored)
    assert.are.equal(real, shown)
  end)
end)

-- `chorus run --data` is a guest of the folder: it writes its changes of
-- what each workflow holds as delta rows the server folds in. It summed
-- them until it committed itself, but the store commits every loop turn:
-- a run killed (SIGKILL) after its outbox entry was on disk left no row
-- for it, and the server, delivering the entry, gave back bytes it never
-- counted (the workflow's count short by the entry for good).
describe("a `chorus run --data` killed, then resumed by the server", function()
  local mock, dir, data, srv

  local CRASHY = [[
local chorus = require "chorus"
local http = require "chorus.http"
return chorus.workflow { name = "crashy", run = function(ctx)
  ctx.later("echo", { pad = string.rep("p", 4096) })
  return http.get("%s/slow?delay=3000", { timeout = 30 }).status
end }
]]

  setup(function()
    mock = H.start_mock(300)
    dir = H.temp_dir({ ["crashy.lua"] = CRASHY:format(mock.url),
      ["echo.lua"] = H.read("tests/integration/fixtures/serve/echo.lua") })
    data = H.temp_dir()
  end)

  teardown(function() H.clean(srv, mock, dir, data) end)

  it("counts its outbox entry in what its workflow holds", function()
    local p = assert(io.popen(("sh -c 'echo $$; exec %s run %s --data %s >/dev/null 2>&1'")
      :format(H.chorus, H.quote(dir .. "/crashy.lua"), H.quote(data))))
    local pid = assert(tonumber(p:read("l")))
    assert.truthy(H.eventually(function() return (mock.stats().by_path["/slow"] or 0) > 0 end, 10))
    H.sleep(0.5) -- the entry and its journal entry are committed (the loop's group commit)
    os.execute("kill -KILL " .. pid)
    p:close()
    srv = H.start_server({ "--scripts", dir, "--data", data })
    -- the run resumes and ends, its entry is delivered
    assert.truthy(H.eventually(function()
      local list = H.chorus_run({ "runs", "list", "--data", data }).stdout
      local outbox = H.chorus_run({ "outbox", "list", "--data", data }).stdout
      return not list:find('"running"', 1, true) and list:find('"echo"', 1, true) and outbox == ""
    end, 20), "the run or its entry did not finish")
    srv.stop()
    srv = nil
    local store = require "chorus.store"
    local st = assert(store.open(data))
    local stored = tonumber(st.st:get("meta", "held\0crashy")) or 0
    local real = 0
    for _, row in ipairs(st.st:scan("runs", { limit = math.maxinteger })) do
      if H.decode(row[2]).workflow == "crashy" then
        real = real + #row[2]
      end
    end
    local journal = st:count("journal")
    st:close()
    assert.are.equal(0, journal)
    assert.are.equal(real, stored)
  end)
end)
