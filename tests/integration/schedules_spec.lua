-- Schedules under a real server: a workflow with schedule = { every = 1 }
-- starts a run each second, one per slot, across a SIGKILL and a restart;
-- the slots missed while the server was down follow catch_up; GET
-- /admin/schedules and `chorus schedules list` show the next slot and the
-- last run; a reload that removes the schedule stops it. Timing is
-- tolerant: slots are counted, never timed to the millisecond.
local H = require "tests.integration.helpers"

local TOKEN = "schedules-admin-token"

-- The workflow: tells the mock its slot (once per run: the call is
-- journaled), then sleeps `nap` seconds, and returns the slot.
local function script(sched, nap)
  return ([[
local chorus = require "chorus"
local http = require "chorus.http"
return chorus.workflow {
  name = "tick",
  schedule = %s,
  run = function(ctx, input)
    http.upstream("mock"):post("/slot/" .. input.slot, { json = input })
    if %s > 0 then ctx.sleep(%s) end
    return { slot = input.slot, slot_time = input.slot_time }
  end,
}
]]):format(sched, nap or 0, nap or 0)
end

local function setup(sched, nap)
  local mock = H.start_mock(120)
  local dir = H.temp_dir({ ["tick.lua"] = script(sched, nap) })
  local data = H.temp_dir()
  local conf = H.write_temp(([[
return { access_log = false, admin_token = %q, upstreams = { mock = { base_url = %q } } }
]]):format(TOKEN, mock.url))
  local env = { dir = dir, data = data, conf = conf, mock = mock, servers = {} }
  function env.start()
    local srv = H.start_server({ "--config", conf, "--scripts", dir, "--data", data })
    env.servers[#env.servers + 1] = srv
    env.srv = srv
    return srv
  end
  function env.teardown()
    for _, srv in ipairs(env.servers) do
      if not srv.stopped then
        srv.kill("KILL")
        srv.wait()
      end
      os.remove(srv.log)
    end
    mock.stop()
    os.execute("rm -rf " .. H.quote(dir) .. " " .. H.quote(data))
    os.remove(conf)
  end
  return env
end

-- The runs of the data folder: { slot → list of runs }, and the slots sorted.
local function runs_by_slot(data)
  local r = H.chorus_run({ "runs", "list", "--data", data, "--limit", "100000" })
  assert.are.equal(0, r.code, r.stderr)
  local by_slot, slots = {}, {}
  for line in r.stdout:gmatch("[^\n]+") do
    local run = H.decode(line)
    assert.is_number(run.slot, "a scheduled run lists its slot: " .. line)
    if not by_slot[run.slot] then
      by_slot[run.slot] = {}
      slots[#slots + 1] = run.slot
    end
    table.insert(by_slot[run.slot], run)
  end
  table.sort(slots)
  return by_slot, slots
end

-- How many times the mock saw each slot's call.
local function calls_by_slot(mock)
  local out = {}
  for path, n in pairs(mock.stats().by_path or {}) do
    local slot = tonumber(path:match("^/slot/(%d+)$"))
    if slot then
      out[slot] = n
    end
  end
  return out
end

local function count(t)
  local n = 0
  for _ in pairs(t) do
    n = n + 1
  end
  return n
end

local function admin_schedules(srv)
  local r = H.request(srv.url .. "/admin/schedules", { headers = { Authorization = "Bearer " .. TOKEN } })
  assert.are.equal(200, r.status, r.body)
  return r.json.schedules
end

local function stop(srv)
  srv.kill("TERM")
  srv.wait()
  srv.stopped = true
end

describe("schedules", function()
  local env
  after_each(function()
    if env then
      env.teardown()
      env = nil
    end
  end)

  it("start a run each second, one per slot, shown by GET /admin/schedules and `chorus schedules list`", function()
    env = setup("{ every = 1 }")
    local srv = env.start()
    assert.is_truthy(H.eventually(function() return count(calls_by_slot(env.mock)) >= 3 end, 15),
      "three slots should have run: " .. H.read(srv.log))
    local list = admin_schedules(srv)
    assert.are.equal(1, #list)
    local s = list[1]
    assert.are.equal("tick", s.workflow)
    assert.are.equal(1, s.every)
    assert.are.equal("latest", s.catch_up)
    assert.are.equal("skip", s.overlap)
    assert.is_table(s.last_run, H.encode(s))
    assert.are.equal(36, #s.last_run.id)
    assert.is_true(s.next_slot > s.last_run.slot)
    assert.matches("^%d%d%d%d%-%d%d%-%d%dT%d%d:%d%d:%d%dZ$", s.next_slot_time)
    assert.is_truthy(s.last_run.status == "running" or s.last_run.status == "succeeded", H.encode(s))

    -- the CLI reads the data folder, the server running
    local r = H.chorus_run({ "schedules", "list", "--data", env.data })
    assert.are.equal(0, r.code, r.stderr)
    local line = H.decode(r.stdout:match("[^\n]+"))
    assert.are.equal("tick", line.workflow)
    assert.are.equal(1, line.every)
    assert.is_number(line.next_slot)
    assert.is_string(line.last_run.id)
    assert.is_number(line.last_run.slot)

    stop(srv)
    local calls = calls_by_slot(env.mock)
    local by_slot, slots = runs_by_slot(env.data)
    assert.is_true(#slots >= 3)
    for i, slot in ipairs(slots) do
      assert.are.equal(1, #by_slot[slot], "one run per slot")
      assert.are.equal("succeeded", by_slot[slot][1].status)
      assert.are.equal(1, calls[slot], "the slot's run ran once")
      assert.are.equal(math.type(slot), "integer")
      if i > 1 then
        assert.is_true(slot > slots[i - 1])
      end
    end
    -- a run's record tells its slot, and the run got it as its input
    local show = H.chorus_run({ "runs", "show", by_slot[slots[1]][1].id, "--data", env.data })
    local rec = H.decode(show.stdout)
    assert.are.equal(slots[1], rec.schedule.slot)
    assert.are.equal(slots[1], rec.result.slot)
    assert.are.equal(os.date("!%Y-%m-%dT%H:%M:%SZ", slots[1]), rec.result.slot_time)
  end)

  it("start no slot twice across SIGKILLs and restarts, and finish the run the kill interrupted", function()
    env = setup("{ every = 1 }", 0.6) -- each run sleeps 0.6 s: the kill lands while one runs
    local srv = env.start()
    for _ = 1, 3 do
      -- two more slots each round (a fixed ">= 2" was met after the first
      -- round, and on a loaded machine the run saw only 5 slots in all)
      local before = count(calls_by_slot(env.mock))
      assert.is_truthy(H.eventually(function() return count(calls_by_slot(env.mock)) >= before + 2 end, 15))
      -- kill mid-run: a slot's call happens as the second starts, its run ends 0.6 s later
      H.eventually(function()
        local frac = select(2, math.modf(require("system").gettime()))
        return frac > 0.25 and frac < 0.45
      end, 2)
      srv.kill("KILL")
      srv.wait()
      srv.stopped = true
      srv = env.start()
    end
    local seen = count(calls_by_slot(env.mock))
    assert.is_truthy(H.eventually(function() return count(calls_by_slot(env.mock)) >= seen + 2 end, 15))
    H.sleep(1) -- the last run ends
    stop(srv)
    local calls = calls_by_slot(env.mock)
    local by_slot, slots = runs_by_slot(env.data)
    assert.is_true(#slots >= 6, #slots .. " slots ran")
    for _, slot in ipairs(slots) do
      assert.are.equal(1, #by_slot[slot])
      assert.are.equal(1, calls[slot], ("slot %d's call was made %s times"):format(slot, tostring(calls[slot])))
      assert.are.equal("succeeded", by_slot[slot][1].status, "the interrupted run was resumed to its end")
    end
    assert.are.equal(count(calls), #slots)
  end)

  -- Runs a server for a few slots, stops it, leaves it down ~3 s, starts it
  -- again. Returns the slot last run before the stop, the time (whole
  -- seconds) just before the restart and just after it listened, and the
  -- restarted server.
  local function downtime(catch_up)
    env = setup(("{ every = 1, catch_up = %q }"):format(catch_up))
    local srv = env.start()
    assert.is_truthy(H.eventually(function() return count(calls_by_slot(env.mock)) >= 2 end, 15))
    stop(srv)
    local _, slots = runs_by_slot(env.data)
    local last_before = slots[#slots]
    H.sleep(3.2)
    local restarted_at = os.time()
    srv = env.start()
    local listening_at = os.time()
    assert.is_truthy(H.eventually(function()
      local _, after = runs_by_slot(env.data)
      return after[#after] > listening_at + 1
    end, 15), "the schedule should go on after the restart")
    return last_before, restarted_at, listening_at, srv
  end

  local function runs_between(from, to)
    local by_slot = runs_by_slot(env.data)
    local out = {}
    for slot = from + 1, to do
      if by_slot[slot] then
        assert.are.equal(1, #by_slot[slot])
        out[#out + 1] = slot
      end
    end
    return out
  end

  it("catch_up = \"skip\": none of the slots missed while the server was down", function()
    local last_before, restarted_at, _, srv = downtime("skip")
    local skipped = admin_schedules(srv)[1].last_skipped
    assert.is_table(skipped, "the skip is shown")
    assert.are.equal("catch_up", skipped.reason)
    assert.is_true(skipped.slot >= restarted_at)
    assert.are.equal(skipped.slot - last_before, skipped.count)
    assert.are.same({}, runs_between(last_before, skipped.slot))
  end)

  it("catch_up = \"latest\": only the last slot missed while the server was down", function()
    local last_before, restarted_at, listening_at, srv = downtime("latest")
    local skipped = admin_schedules(srv)[1].last_skipped
    assert.is_table(skipped, "the older missed slots are skipped")
    assert.are.equal("catch_up", skipped.reason)
    assert.is_true(skipped.slot >= restarted_at - 1)
    assert.are.same({}, runs_between(last_before, skipped.slot))
    -- the newest missed slot ran, though it came due before the server listened
    local latest = skipped.slot + 1
    assert.is_true(latest <= listening_at)
    assert.are.same({ latest }, runs_between(skipped.slot, latest))
  end)

  it("catch_up = \"all\": every slot missed while the server was down, oldest first", function()
    local last_before, restarted_at, _, srv = downtime("all")
    local s = admin_schedules(srv)[1]
    assert.is_true(s.last_skipped == nil or s.last_skipped.reason ~= "catch_up", H.encode(s))
    local missed = {}
    for slot = last_before + 1, restarted_at do
      missed[#missed + 1] = slot
    end
    assert.is_true(#missed >= 3)
    assert.are.same(missed, runs_between(last_before, restarted_at))
    -- oldest first: each started no earlier than the one before
    local by_slot = runs_by_slot(env.data)
    for i = 2, #missed do
      assert.is_true(by_slot[missed[i]][1].started >= by_slot[missed[i - 1]][1].started)
    end
  end)

  it("follow a reload that changes the schedule, from the reload on", function()
    env = setup("{ every = 1 }")
    local srv = env.start()
    assert.is_truthy(H.eventually(function() return count(calls_by_slot(env.mock)) >= 2 end, 15))
    local f = assert(io.open(env.dir .. "/tick.lua", "wb"))
    f:write((script('{ cron = "0 0 1 1 *", catch_up = "all" }')))
    f:close()
    local r = H.request(srv.url .. "/admin/reload", { method = "POST",
      headers = { Authorization = "Bearer " .. TOKEN } })
    assert.are.equal(200, r.status, r.body)
    H.sleep(1) -- a turn of the scheduler, and any run it had started
    local s = admin_schedules(srv)[1]
    assert.are.equal("0 0 1 1 *", s.cron)
    assert.is_nil(s.every)
    assert.are.equal("all", s.catch_up)
    assert.matches("^%d%d%d%d%-01%-01T00:00:00Z$", s.next_slot_time)
    assert.is_table(s.last_run, "the last run of the old schedule is still shown")
    local seen = count(calls_by_slot(env.mock))
    H.sleep(2)
    assert.are.equal(seen, count(calls_by_slot(env.mock)), "no slot of the old schedule starts")
    -- a restart keeps the new schedule's record: nothing missed, nothing runs
    stop(srv)
    srv = env.start()
    H.sleep(1.5)
    assert.are.equal(seen, count(calls_by_slot(env.mock)))
    assert.are.equal("0 0 1 1 *", admin_schedules(srv)[1].cron)
  end)

  it("stop when a reload removes the schedule", function()
    env = setup("{ every = 1 }")
    local srv = env.start()
    assert.is_truthy(H.eventually(function() return count(calls_by_slot(env.mock)) >= 2 end, 15))
    local f = assert(io.open(env.dir .. "/tick.lua", "wb"))
    f:write((script("nil")))
    f:close()
    local r = H.request(srv.url .. "/admin/reload", { method = "POST",
      headers = { Authorization = "Bearer " .. TOKEN } })
    assert.are.equal(200, r.status, r.body)
    H.sleep(1) -- a turn of the scheduler, and any run it had started
    assert.are.same({}, admin_schedules(srv))
    local seen = count(calls_by_slot(env.mock))
    H.sleep(2.5)
    assert.are.equal(seen, count(calls_by_slot(env.mock)))
    stop(srv)
    local cli = H.chorus_run({ "schedules", "list", "--data", env.data })
    assert.are.equal(0, cli.code, cli.stderr)
    assert.are.equal("", cli.stdout)
  end)
end)
